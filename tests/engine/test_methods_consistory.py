"""ConsiStory's subject-driven shared attention (engine.methods.consistory) on tiny models.

Against the authors' own classes when MTP_ORACLE_CONSISTORY names a checkout of their
repository (50 DDIM "leading" steps so their DIFT timestep 261 exists; minimal 64 px size);
the properties below hold without it.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.methods import generate_set  # noqa: E402
from engine.methods.consistory import (  # noqa: E402
    ConsistoryController,
    ConsistoryParams,
    anchor_mapping,
    subject_token_indices,
    threshold_otsu,
)
from engine.tiny_sdxl import load_tiny_sdxl_pipeline  # noqa: E402

PROMPTS = ["a corgi on a beach", "a corgi in the snow", "a corgi reading a book"]


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_tiny_sdxl_pipeline(tiny_sdxl_dir)


def _leading():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def _lat(n, side, seed=3):
    return torch.randn(n, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(seed))


def _set(pipe, prompts, lat, steps=4, method="consistory", **kw):
    return generate_set(
        pipe,
        prompts,
        method=method,
        seed=kw.pop("seed", 1),
        num_steps=steps,
        guidance=5.0,
        latents=lat,
        decode=False,
        subject_words=["corgi"] if method == "consistory" else None,
        **kw,
    )


@pytest.mark.parametrize("inject", [False, True])
def test_equals_the_authors_code(pipe, inject):
    from tests.engine.consistory_reference import run_authors_batch

    lat = _lat(3, 64)
    ref, store = run_authors_batch(
        pipe,
        PROMPTS,
        "corgi",
        lat,
        n_steps=50,
        guidance=5.0,
        mask_dropout=0.0,
        perform_injection=inject,
        threshold_otsu=threshold_otsu,
    )
    ours = _set(
        pipe,
        PROMPTS,
        lat,
        steps=50,
        scheduler=_leading(),
        params=dict(inject=inject, mask_dropout=0.0, draws="authors"),
    )
    torch.testing.assert_close(ours.final_latents, ref, rtol=0, atol=1e-5)
    masks = np.stack(ours.masks).reshape(3, -1) > 0.5
    assert np.array_equal(masks, store.last_mask[4].cpu().numpy())


@pytest.mark.parametrize("inject", [False, True])
def test_anchor_mode_equals_the_authors_code(pipe, inject):
    """run_anchor_generation on the two anchors, then run_extra_generation per extra image."""
    from tests.engine.consistory_reference import run_authors_batch

    prompts = PROMPTS + ["a corgi in a forest"]
    lat = _lat(4, 64)
    kw = dict(
        n_steps=50,
        guidance=5.0,
        mask_dropout=0.0,
        perform_injection=inject,
        threshold_otsu=threshold_otsu,
    )
    refs = []
    anchors, store = run_authors_batch(pipe, prompts[:2], "corgi", lat[:2], mode="anchors", **kw)
    refs.append(anchors)
    for i in (2, 3):
        extra, _ = run_authors_batch(
            pipe,
            prompts[i : i + 1],
            "corgi",
            lat[i : i + 1],
            mode="extra",
            caches=store.caches,
            **kw,
        )
        refs.append(extra)
    ours = _set(
        pipe,
        prompts,
        lat,
        steps=50,
        scheduler=_leading(),
        params=dict(inject=inject, mask_dropout=0.0, draws="authors", anchor_mode=True),
    )
    torch.testing.assert_close(ours.final_latents, torch.cat(refs), rtol=0, atol=1e-5)


def test_otsu_matches_scikit_image_on_float32():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 300), rng.normal(0.8, 0.05, 100)]).astype(
        np.float32
    )
    level = threshold_otsu(values)
    assert 0.3 < level < 0.7 and isinstance(level, np.float32)
    assert threshold_otsu(np.full(5, 0.25, dtype=np.float32)) == np.float32(0.25)
    try:
        from skimage.filters import threshold_otsu as skimage_otsu
    except ImportError:
        return
    for seed in range(50):
        maps = np.random.default_rng(seed).random((8, 8)).astype(np.float32) ** 3
        assert threshold_otsu(maps) == skimage_otsu(maps)


def test_mapping_and_subject_tokens(pipe):
    m = anchor_mapping(4, 2)
    assert m.tolist() == [
        [True, True, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, False, True],
    ]
    idx = subject_token_indices(pipe.tokenizer, ["a corgi", "a corgi corgi"], ["corgi"])
    first = pipe.tokenizer.encode("corgi", add_special_tokens=False)[0]
    ids = pipe.tokenizer("a corgi corgi").input_ids
    positions = [k for k, t in enumerate(ids) if t == first]
    # BOS counted; a repeated token's last position wins
    assert idx[0, 0] == 2 and len(positions) == 2 and idx[0, 1] == positions[-1]
    with pytest.raises(ValueError, match="no subject word"):
        subject_token_indices(pipe.tokenizer, ["a dog"], ["corgi"])


def test_extended_keys_follow_masks_and_mapping():
    c = ConsistoryController({0}, {0: 4}, (2, 2), {4: (2, 2)}, 4, set())
    c.arm(
        n=3,
        halves=2,
        params=ConsistoryParams(n_anchors=1, mask_dropout=0.0),
        token_indices=torch.tensor([[1, 1, 1]]),
        steps=frozenset({1}),
        num_steps=2,
        seed=0,
        pass_no=1,
        device="cpu",
    )
    c.last_mask_dropout[4] = torch.tensor(
        [[True, False, False, True], [False, True, True, False], [True, True, True, True]]
    )
    # image 2 sees itself and the anchor's subject tokens, not image 1's
    sel = c.key_selection(4, 2).view(3, 4)
    assert sel.tolist() == [[True, False, False, True], [False] * 4, [True] * 4]
    assert c.key_selection(4, 0).view(3, 4).tolist() == [[True] * 4, [False] * 4, [False] * 4]


def test_properties_without_the_authors_code(pipe):
    lat = _lat(3, 64)
    plain = _set(pipe, PROMPTS, lat, method="plain").final_latents
    base = dict(mask_dropout=0.0, inject=False)
    one_step = _set(pipe, PROMPTS, lat, steps=1, params=base).final_latents
    # step 0 never shares (query blending only blends where sharing happens)
    torch.testing.assert_close(
        one_step,
        _set(pipe, PROMPTS, lat, steps=1, method="plain").final_latents,
        rtol=1e-4,
        atol=1e-4,
    )
    shared = _set(pipe, PROMPTS, lat, params=base)
    assert (shared.final_latents - plain).abs().max() > 1e-3
    assert all(m is not None and m.shape == (4, 4) for m in shared.masks)
    # the first image is an anchor that sees only the other anchor: a set of the two anchors
    # alone gives it the same latents (no dropout, no injection, blending per image)
    pair = _set(pipe, PROMPTS[:2], lat[:2], params=base)
    torch.testing.assert_close(pair.final_latents, shared.final_latents[:2], rtol=1e-4, atol=1e-5)
    # seeded dropout: reproducible, and depends on the seed
    drop = dict(mask_dropout=0.5, inject=False)
    a = _set(pipe, PROMPTS, lat, params=drop).final_latents
    assert torch.equal(a, _set(pipe, PROMPTS, lat, params=drop).final_latents)
    assert not torch.equal(a, _set(pipe, PROMPTS, lat, params=drop, seed=2).final_latents)
    # anchor mode: the anchors do not depend on the extra images, which run one at a time
    anchored = dict(mask_dropout=0.0, inject=False, anchor_mode=True)
    four = _set(pipe, PROMPTS + ["a corgi in a forest"], _lat(4, 64), params=anchored)
    three = _set(pipe, PROMPTS, lat, params=anchored)
    torch.testing.assert_close(four.final_latents[:3], three.final_latents, rtol=1e-4, atol=1e-5)
    # without dropout an extra image sees what it sees in batch mode (own tokens and the
    # anchors' subject tokens), so anchor mode reproduces the batch
    torch.testing.assert_close(three.final_latents, shared.final_latents, rtol=1e-4, atol=1e-4)
