"""generate(): one source + N targets per batch, MasaCtrl semantics, against stock diffusers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.control import ControlError, ControlSpec, MaskSpec  # noqa: E402
from engine.pipeline import (  # noqa: E402
    ModelNotFound,
    NonFiniteLatents,
    Source,
    Target,
    generate,
    load_pipeline,
    token_indices,
)
from engine.processors import block_paths  # noqa: E402
from engine.tiny import load_tiny_pipeline  # noqa: E402
from store.sweep.grammar import SD15_BLOCKS  # noqa: E402

STEPS = 8
SRC = "a photo of a corgi"
TGT = "a corgi running on the beach"


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_tiny_pipeline(tiny_model_dir)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))


def _gen(pipe, targets, noise, **kw):
    kw = {"seed": 0, "num_steps": STEPS, "height": 64, "width": 64, "latents": noise, **kw}
    return generate(pipe, Source(SRC), targets, **kw)


def _expected_trace(spec: ControlSpec, row: int, n=STEPS):
    return {(s, l, row) for s in spec.steps(n) for l in spec.layer_indices(SD15_BLOCKS)}


@torch.no_grad()
def _stock(pipe, prompts, noise, guidance=7.5):
    from diffusers import StableDiffusionPipeline

    assert type(pipe) is StableDiffusionPipeline
    return pipe(
        prompt=prompts,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        height=64,
        width=64,
        latents=noise.expand(len(prompts), -1, -1, -1).clone(),
        output_type="latent",
    ).images


def test_inactive_control_is_bit_identical_to_stock_pipeline(tiny_model_dir, noise):
    pipe = load_tiny_pipeline(tiny_model_dir)
    stock = _stock(pipe, [SRC, TGT, "a cat"], noise)
    res = _gen(pipe, [Target(TGT, None), Target("a cat", None)], noise, trace=True)
    assert (
        type(pipe.unet.attn_processors[f"{SD15_BLOCKS[0]}.attn1.processor"]).__name__
        == "MutualSelfAttnProcessor"
    )
    assert torch.equal(res.latents, stock)
    assert res.trace == set() and res.masks == [None, None] and res.maps == [{}, {}]
    assert len(res.images) == 2 and res.source_image.size == (64, 64)
    # after a controlled run, a disarmed controller is inert again
    _gen(pipe, [Target(TGT, ControlSpec(start_step=0, layers="all"))], noise)
    assert torch.equal(_stock(pipe, [SRC, TGT, "a cat"], noise), stock)
    # without classifier-free guidance too
    assert torch.equal(
        _gen(pipe, [Target(TGT, None)], noise, guidance=1.0).latents,
        _stock(pipe, [SRC, TGT], noise, 1.0),
    )


def test_active_control_keeps_source_and_changes_target(pipe, noise):
    base = _gen(pipe, [Target(TGT, None)], noise)
    spec = ControlSpec(layers="decoder", start_step=2)
    res = _gen(pipe, [Target(TGT, spec)], noise, trace=True)
    assert torch.equal(res.latents[0], base.latents[0])
    assert (res.latents[1] - base.latents[1]).abs().max() > 1e-3
    assert res.trace == _expected_trace(spec, 1)


def test_batched_targets_match_separate_runs(pipe, noise):
    specs = [
        ControlSpec(layers="encoder", start_step=1, final_step=5),
        ControlSpec(layers="decoder", start_step=3, skip_interval=2),
        ControlSpec(layers="10-15", start_step=0),
    ]
    prompts = [TGT, "a corgi sitting in the snow", "a dog on the grass"]
    together = _gen(pipe, [Target(p, s) for p, s in zip(prompts, specs)], noise)
    # A batch of 4 rows and a batch of 2 take different GEMM blockings: on an AVX-512 CPU one
    # element of 256 differed by 1.45e-5 (latents of scale ~1), on AVX2 none above 1e-5. A row
    # reading the wrong keys/values moves latents by more than 1e-3 (the test above), so 5e-5
    # still separates rounding from a control bug.
    for i, (p, s) in enumerate(zip(prompts, specs)):
        alone = _gen(pipe, [Target(p, s)], noise)
        torch.testing.assert_close(together.latents[i + 1], alone.latents[1], rtol=1e-4, atol=5e-5)
        torch.testing.assert_close(together.latents[0], alone.latents[0], rtol=1e-4, atol=5e-5)


def test_schedules_trace_exactly(pipe, noise):
    specs = {
        "encoder only": ControlSpec(layers="encoder", start_step=4),
        "decoder only": ControlSpec(layers="decoder", start_step=4),
        "window 4..7": ControlSpec(layers="10-15", start_step=4, final_step=8),
        "every 2nd step": ControlSpec(layers="decoder", start_step=0, skip_interval=2),
        "all layers all steps": ControlSpec(layers="all", start_step=0),
    }
    res = _gen(pipe, [Target(TGT, s) for s in specs.values()], noise, trace=True)
    for row, (name, spec) in enumerate(specs.items(), start=1):
        got = {t for t in res.trace if t[2] == row}
        assert got == _expected_trace(spec, row), name
    assert {s for s, _, r in res.trace if r == 4} == {0, 2, 4, 6}
    assert {l for _, l, r in res.trace if r == 1} == set(range(6))


def test_mask_mode_produces_masks_and_maps(pipe):
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    auto = ControlSpec(
        layers="decoder", start_step=2, mask=MaskSpec(mode="auto", words=("corgi", "beach"))
    )
    prev = ControlSpec(
        layers="decoder",
        start_step=2,
        mask=MaskSpec(mode="auto", threshold=None, timing="previous"),
    )
    plain = ControlSpec(layers="decoder", start_step=2)
    res = generate(
        pipe,
        Source(SRC),
        [Target(TGT, auto), Target(TGT, prev), Target(TGT, plain)],
        seed=0,
        num_steps=6,
        height=128,
        width=128,
        latents=noise,
    )
    for r in (0, 1):
        masks = res.masks[r]
        assert set(masks) == {"source", "target"}
        for m in masks.values():
            assert m.shape == (4, 4) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
    assert set(res.maps[0]) == {"corgi", "beach"}
    assert set(res.maps[1]) == {"a", "corgi", "running", "on", "the", "beach"}
    assert all(m.shape == (4, 4) and np.isfinite(m).all() for m in res.maps[0].values())
    assert res.masks[2] is None and res.maps[2] == {}
    # masking changes the target but never the source
    assert (res.latents[1] - res.latents[3]).abs().max() > 0
    assert torch.equal(
        res.latents[0],
        generate(
            pipe,
            Source(SRC),
            [Target(TGT, plain)],
            seed=0,
            num_steps=6,
            height=128,
            width=128,
            latents=noise,
        ).latents[0],
    )


def test_image_mask_mode(pipe, tmp_path, noise):
    from PIL import Image

    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    spec = ControlSpec(start_step=1, mask=MaskSpec(mode="image", image=str(tmp_path / "mask.png")))
    res = _gen(pipe, [Target(TGT, spec)], noise)
    assert res.masks[0]["source"].tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_mask_words_must_be_in_prompts(pipe, noise):
    with pytest.raises(ControlError, match="'cat' not in the prompt"):
        _gen(pipe, [Target(TGT, ControlSpec(mask=MaskSpec(mode="auto", words=("cat",))))], noise)
    with pytest.raises(ControlError, match="source prompt"):
        _gen(pipe, [Target(TGT, ControlSpec(mask=MaskSpec(mode="auto", words=("beach",))))], noise)


def test_token_indices(pipe):
    tok = pipe.tokenizer
    got = token_indices(tok, "A photo of a Corgi, on the beach", ["corgi", "a", "beach"])
    assert got == {"corgi": [5], "a": [1, 4], "beach": [9]}
    multi = token_indices(tok, "a xylophone", ["xylophone"])["xylophone"]
    assert multi[0] == 2 and len(multi) > 1
    with pytest.raises(ControlError):
        token_indices(tok, "a photo", ["corgi"])


def test_step_callback_progress_and_abort(pipe, noise):
    seen = []
    _gen(pipe, [Target(TGT, None)], noise, step_callback=lambda i, n: seen.append((i, n)))
    assert seen == [(i, STEPS) for i in range(STEPS)]

    class Cancelled(Exception):
        pass

    def cancel(i, n):
        if i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        _gen(pipe, [Target(TGT, ControlSpec(start_step=0))], noise, step_callback=cancel)
    assert not pipe.unet._mtp_mutual_attention_controller.armed


def test_non_finite_latents_raise(tiny_model_dir, noise):
    pipe = load_tiny_pipeline(tiny_model_dir)
    forward = pipe.unet.forward

    def nan_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        return (out[0] * float("nan"),)

    pipe.unet.forward = nan_forward
    with pytest.raises(NonFiniteLatents, match="step 0"):
        _gen(pipe, [Target(TGT, None)], noise)


def test_seeded_noise_is_shared_and_reproducible(pipe):
    a = generate(
        pipe,
        Source(SRC),
        [Target(SRC, None)],
        seed=5,
        num_steps=3,
        height=64,
        width=64,
        decode=False,
    )
    b = generate(
        pipe,
        Source(SRC),
        [Target(SRC, None)],
        seed=5,
        num_steps=3,
        height=64,
        width=64,
        decode=False,
    )
    assert torch.equal(a.latents, b.latents)
    assert torch.equal(a.latents[0], a.latents[1])  # same prompt + same noise + no control


def test_explicit_scheduler_is_used_and_restored(pipe, noise):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    before = pipe.scheduler
    euler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    a = _gen(pipe, [Target(TGT, None)], noise, scheduler=euler)
    assert pipe.scheduler is before
    b = _gen(pipe, [Target(TGT, None)], noise)
    assert not torch.equal(a.latents, b.latents)
    assert isinstance(before, DDIMScheduler)


def test_load_pipeline(tiny_model_dir, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = load_pipeline(str(tiny_model_dir))
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.dtype == torch.float32 and block_paths(pipe.unet) == SD15_BLOCKS
    missing = tmp_path / "nope" / "model"
    with pytest.raises(ModelNotFound, match=str(missing)):
        load_pipeline(str(missing))
    with pytest.raises(ModelNotFound, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path))
    with pytest.raises(ModelNotFound, match="no-such-owner/no-such-model"):
        load_pipeline("no-such-owner/no-such-model", local_files_only=True)


def test_mask_layers_must_reach_the_map_resolution(pipe, noise):
    # 64 px: latent 8, maps 2x2 come from down_blocks.2 (4, 5) and up_blocks.1 (7, 8, 9) only
    bad = ControlSpec(mask=MaskSpec(mode="auto", layers="up_blocks.3"))
    with pytest.raises(ControlError, match="layers at that resolution: 4, 5, 7, 8, 9"):
        _gen(pipe, [Target(TGT, bad)], noise)
    enc = ControlSpec(start_step=0, layers="all", mask=MaskSpec(mode="auto", layers="encoder"))
    res = _gen(pipe, [Target(TGT, enc)], noise)
    assert res.masks[0]["target"].shape == (2, 2)


def test_cross_attention_recorded_only_where_needed(pipe, monkeypatch):
    from engine.processors import MutualAttentionController

    calls = []
    original = MutualAttentionController.record

    def spy(self, layer, rows, probs):
        calls.append((self.step, layer, tuple(rows), tuple(probs.shape)))
        return original(self, layer, rows, probs)

    monkeypatch.setattr(MutualAttentionController, "record", spy)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    cur = ControlSpec(
        layers="decoder", start_step=3, final_step=5, mask=MaskSpec(mode="auto", layers="decoder")
    )
    prev = ControlSpec(
        layers="decoder",
        start_step=3,
        final_step=5,
        mask=MaskSpec(mode="auto", layers="encoder", timing="previous"),
    )
    generate(
        pipe,
        Source(SRC),
        [Target(TGT, None), Target(TGT, cur), Target(TGT, prev)],
        seed=0,
        num_steps=6,
        height=128,
        width=128,
        latents=noise,
        decode=False,
    )
    # CFG batch of 2 x 4 rows: the cond half starts at row 4; 16 map tokens, 77 text tokens
    expected = {(s, l, (4, 6), (2, 16, 77)) for s in (3, 4) for l in (7, 8, 9)}
    expected |= {(s, l, (4, 7), (2, 16, 77)) for s in (2, 3) for l in (4, 5)}
    assert set(calls) == expected and len(calls) == len(expected)


class _MasaCtrlReference:
    """MasaCtrl's MutualSelfAttentionControl, re-derived independently for the test: one
    processor object for every attention call, counting calls the way MasaCtrl's
    AttentionBase does (layer = call index // 2, a new step after all 32 calls)."""

    def __init__(self, start_step, start_layer, num_att_layers=32):
        self.start_step, self.start_layer = start_step, start_layer
        self.num_att_layers = num_att_layers
        self.cur_step = self.cur_att_layer = 0

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs
    ):
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        h = attn.heads

        def attend(q, k, v):
            b, n, inner = q.shape
            d = inner // h
            q, k, v = (t.reshape(t.shape[0], -1, h, d).transpose(1, 2) for t in (q, k, v))
            w = (q @ k.transpose(-1, -2) * d**-0.5).softmax(-1)
            return (w @ v).transpose(1, 2).reshape(b, n, inner)

        controlled = (
            not is_cross
            and self.cur_step >= self.start_step
            and self.cur_att_layer // 2 >= self.start_layer
        )
        if controlled:
            qu, qc = q.chunk(2)
            ku, kc = k.chunk(2)
            vu, vc = v.chunk(2)
            out = torch.cat(
                [
                    attend(qu, ku[:1].expand_as(ku), vu[:1].expand_as(vu)),
                    attend(qc, kc[:1].expand_as(kc), vc[:1].expand_as(vc)),
                ]
            )
        else:
            out = attend(q, k, v)
        self.cur_att_layer += 1
        if self.cur_att_layer == self.num_att_layers:
            self.cur_att_layer = 0
            self.cur_step += 1
        return attn.to_out[1](attn.to_out[0](out))


def test_matches_an_independent_masactrl_reference(tiny_model_dir, noise):
    pipe = load_tiny_pipeline(tiny_model_dir)
    ours = _gen(pipe, [Target(TGT, ControlSpec(start_step=4, layers="10-15"))], noise)
    ref_pipe = load_tiny_pipeline(tiny_model_dir)
    ref_pipe.unet.set_attn_processor(_MasaCtrlReference(start_step=4, start_layer=10))
    ref = _stock(ref_pipe, [SRC, TGT], noise)
    torch.testing.assert_close(ours.latents, ref, rtol=1e-4, atol=1e-5)
    ref_pipe.unet.set_attn_processor(_MasaCtrlReference(start_step=2, start_layer=10))
    assert not torch.allclose(ours.latents[1], _stock(ref_pipe, [SRC, TGT], noise)[1], atol=1e-4)


@pytest.mark.parametrize(
    "kw,fragment",
    [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=-3), "num_steps"),
        (dict(num_steps=2.5), "num_steps"),
        (dict(guidance=float("nan")), "guidance"),
        (dict(guidance=float("inf")), "guidance"),
    ],
)
def test_generate_refuses_zero_steps_and_non_finite_guidance(pipe, kw, fragment):
    # Before: ZeroDivisionError for 0 steps, and NaN guidance silently ran without guidance.
    with pytest.raises(ValueError, match=fragment):
        generate(
            pipe,
            Source("a dog"),
            [Target("a dog on the beach")],
            seed=0,
            height=64,
            width=64,
            **dict(dict(num_steps=2), **kw),
        )
