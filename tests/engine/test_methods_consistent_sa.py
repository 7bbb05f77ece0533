"""StoryDiffusion's Consistent Self-Attention (engine.methods.consistent_sa) on tiny models.

Against the authors' own ``SpatialAttnProcessor2_0`` when MTP_ORACLE_STORYDIFFUSION names a
checkout of their repository; the properties below hold without it.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from engine.control import ControlSpec  # noqa: E402
from engine.methods import generate_set  # noqa: E402
from engine.methods.consistent_sa import ConsistentSAController, ConsistentSAParams  # noqa: E402
from engine.methods.sets import image_seed, set_latents  # noqa: E402
from engine.tiny_sdxl import load_tiny_sdxl_pipeline  # noqa: E402

PROMPTS = ["a corgi on a beach", "a corgi in the snow", "a corgi reading a book"]
NO_SKIP = dict(skip_early=0.0, skip_late=0.0)


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_tiny_sdxl_pipeline(tiny_sdxl_dir)


def _lat(n, side, seed=3):
    return torch.randn(n, 4, side // 8, side // 8, generator=torch.Generator().manual_seed(seed))


def _set(pipe, prompts, lat, steps=3, method="consistent_sa", **kw):
    return generate_set(
        pipe,
        prompts,
        method=method,
        seed=kw.pop("seed", 7),
        num_steps=steps,
        guidance=5.0,
        latents=lat,
        decode=False,
        **kw,
    )


# ------------------------------------------------------------------ the authors' code
@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_equals_the_authors_processor(pipe, rate):
    """Final latents equal the authors' at sampling rate 1.0 without skips, and at 0.5 with
    their random draws (authors' draw order; 21 steps so both skip regimes run)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from tests.engine import oracles

    ns = oracles.storydiffusion(pipe.unet.device)
    side, steps, seed = 64, 21, 11
    lat = _lat(3, side)
    params = dict(sa_rate_low=rate, sa_rate_high=rate, draws="authors")
    if rate == 1.0:
        params.update(NO_SKIP)
    ours = _set(pipe, PROMPTS, lat, steps=steps, params=params, seed=seed).final_latents
    saved = dict(pipe.unet.attn_processors)
    procs, count = {}, 0
    for name in saved:
        if name.endswith("attn1.processor") and name.startswith("up_blocks"):
            procs[name] = ns["SpatialAttnProcessor2_0"](id_length=len(PROMPTS))
            count += 1
        else:
            procs[name] = AttnProcessor2_0()
    ns.update(
        total_count=count,
        attn_count=0,
        cur_step=0,
        sa32=rate,
        sa64=rate,
        write=True,
        height=side,
        width=side,
        cur_character=["c"],
    )
    if rate == 1.0:
        ns["random"] = type("NoSkip", (), {"random": staticmethod(lambda: 1.0)})
    try:
        pipe.unet.set_attn_processor(procs)
        torch.manual_seed(seed)
        random.seed(seed)
        ref = pipe(
            prompt=PROMPTS,
            num_inference_steps=steps,
            guidance_scale=5.0,
            height=side,
            width=side,
            latents=lat.clone(),
            output_type="latent",
        ).images
    finally:
        pipe.unet.set_attn_processor(saved)
    assert count == 36
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    plain = _set(pipe, PROMPTS, lat, steps=steps, method="plain").final_latents
    assert (ours - plain).abs().max() > 1e-3  # the comparison saw sharing happen


# ------------------------------------------------------------------ properties
class _JointAttention:
    """Every image of the set attends to all tokens of every image of its CFG half."""

    def __init__(self, n, original, from_step=1):
        self.n, self.original, self.from_step = n, original, from_step
        self.step = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, **kw):
        if self.step[0] < self.from_step:
            return self.original(attn, hidden_states, encoder_hidden_states, **kw)
        b, t, c = hidden_states.shape
        halves = b // self.n
        x = hidden_states.reshape(halves, self.n * t, c)
        q = attn.to_q(hidden_states).reshape(halves, self.n * t, -1)
        k, v = attn.to_k(x), attn.to_v(x)
        h = attn.heads
        d = q.shape[-1] // h
        q, k, v = (z.reshape(halves, -1, h, d).transpose(1, 2) for z in (q, k, v))
        w = (q @ k.transpose(-1, -2) * d**-0.5).softmax(-1)
        out = (w @ v).transpose(1, 2).reshape(b, t, h * d)
        return attn.to_out[1](attn.to_out[0](out))


def test_rate_one_without_skips_is_joint_attention_and_order_invariant(pipe):
    lat = _lat(3, 64)
    params = dict(sa_rate_low=1.0, sa_rate_high=1.0, **NO_SKIP)
    ours = _set(pipe, PROMPTS, lat, params=params).final_latents

    saved = dict(pipe.unet.attn_processors)
    step = [-1]
    procs = {}
    for name, proc in saved.items():
        if name.endswith("attn1.processor") and name.startswith("up_blocks"):
            p = _JointAttention(3, proc)
            p.step = step
            procs[name] = p
    hook = pipe.unet.register_forward_pre_hook(lambda *a: step.__setitem__(0, step[0] + 1))
    try:
        pipe.unet.set_attn_processor({**saved, **procs})
        ref = _set(pipe, PROMPTS, lat, method="plain").final_latents
    finally:
        hook.remove()
        pipe.unet.set_attn_processor(saved)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)

    order = [2, 0, 1]
    permuted = _set(pipe, [PROMPTS[i] for i in order], lat[order], params=params).final_latents
    torch.testing.assert_close(permuted, ours[order], rtol=1e-4, atol=1e-5)


def test_step_zero_never_shares_and_skips_follow_their_thresholds(pipe):
    lat = _lat(3, 64)
    plain = _set(pipe, PROMPTS, lat, steps=1, method="plain").final_latents
    one = _set(pipe, PROMPTS, lat, steps=1, params=dict(sa_rate_low=1.0, **NO_SKIP))
    assert torch.equal(one.final_latents, plain)

    all_on = _set(pipe, PROMPTS, lat, steps=4, params=NO_SKIP, trace=True)
    assert {s for s, _ in all_on.trace} == {1, 2, 3} and len(all_on.trace) == 3 * 36
    always_skip = _set(pipe, PROMPTS, lat, steps=4, params=dict(skip_early=1.0), trace=True)
    assert always_skip.trace == set()
    assert torch.equal(
        always_skip.final_latents, _set(pipe, PROMPTS, lat, steps=4, method="plain").final_latents
    )
    # early threshold before skip_switch, late one from it on
    switched = _set(
        pipe,
        PROMPTS,
        lat,
        steps=4,
        params=dict(skip_early=1.0, skip_late=0.0, skip_switch=2),
        trace=True,
    )
    assert {s for s, _ in switched.trace} == {2, 3}
    # the control's window and layers restrict sharing
    window = ControlSpec(layers="up_blocks.1", start_step=2, final_step=3)
    restricted = _set(pipe, PROMPTS, lat, steps=4, params=NO_SKIP, control=window, trace=True)
    assert {s for s, _ in restricted.trace} == {2} and len(restricted.trace) == 6


def test_seeded_draws_are_reproducible_and_independent_of_the_set(pipe):
    lat = _lat(3, 64)
    a = _set(pipe, PROMPTS, lat, steps=4, trace=True)
    b = _set(pipe, PROMPTS, lat, steps=4, trace=True)
    assert torch.equal(a.final_latents, b.final_latents) and a.trace == b.trace
    c = _set(pipe, PROMPTS, lat, steps=4, trace=True, seed=8)
    assert c.trace != a.trace

    def subsets(indices):
        ctl = ConsistentSAController({0: 16, 1: 64}, low_tokens=16)
        ctl.arm(
            n_images=len(indices),
            halves=2,
            params=ConsistentSAParams(),
            seed=5,
            steps=frozenset(range(1, 4)),
            device="cpu",
            image_indices=indices,
        )
        drawn = []
        for _ in range(3):
            ctl.begin_step()
            drawn.append({t: dict(zip(indices, v)) for t, v in ctl.indices.items()})
        return drawn

    whole, part = subsets([0, 1, 2]), subsets([1, 2])
    for step_whole, step_part in zip(whole, part):
        for tokens in (16, 64):
            for j in (1, 2):
                assert torch.equal(step_whole[tokens][j], step_part[tokens][j])
    # per-image latents follow the same rule
    full = set_latents(pipe, 3, 5, 64, 64)
    assert image_seed(5, 2) != image_seed(5, 1)
    assert torch.equal(full[1:], set_latents(pipe, 3, 5, 64, 64)[1:])
    assert not torch.equal(full[0], full[1])


def test_read_mode(pipe):
    """Images after id_length read the bank; with an empty bank (rate 0) that is plain attention."""
    lat = _lat(3, 64)
    plain = _set(pipe, PROMPTS, lat, steps=3, method="plain").final_latents
    empty = _set(
        pipe, PROMPTS, lat, steps=3, params=dict(id_length=1, sa_rate_low=0.0, sa_rate_high=0.0)
    )
    torch.testing.assert_close(empty.final_latents, plain, rtol=1e-4, atol=1e-5)
    # with the whole bank (rate 1) the read image sees the written one's tokens; the written
    # image, alone in its write call, has no other image to see
    full = dict(sa_rate_low=1.0, sa_rate_high=1.0, **NO_SKIP)
    read = _set(pipe, PROMPTS[:2], lat[:2], steps=3, params=dict(full, id_length=1))
    assert not torch.allclose(read.final_latents[1], plain[1], atol=1e-4)
    torch.testing.assert_close(read.final_latents[0], plain[0], rtol=1e-4, atol=1e-5)
