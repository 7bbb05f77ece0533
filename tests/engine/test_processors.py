"""Mutual self-attention processors checked against explicit attention formulas."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from engine.processors import (  # noqa: E402
    BatchLayoutError,
    CrossAttnRecorder,
    MutualSelfAttnProcessor,
    RowControl,
    block_paths,
    install_control,
    masked_allowed,
    otsu_threshold,
    remove_control,
)
from engine.tiny import load_tiny_pipeline  # noqa: E402
from store.sweep.grammar import SD15_BLOCKS  # noqa: E402

LAYER = 10  # up_blocks.2.attentions.0: latent 16x16 -> 8x8 tokens at this level


@pytest.fixture
def unet(tiny_model_dir):
    return load_tiny_pipeline(tiny_model_dir).unet


def _attn1(unet, layer):
    path = block_paths(unet)[layer]
    return unet.get_submodule(path + ".attn1")


def _heads(x, heads):
    n, length, inner = x.shape
    return x.view(n, length, heads, inner // heads).transpose(1, 2)


def _explicit(attn, hs_q, hs_kv, allowed=None):
    """softmax(q k^T / sqrt(d)) v from the module's own projections, heads merged, to_out."""
    q, k, v = (_heads(t, attn.heads) for t in (attn.to_q(hs_q), attn.to_k(hs_kv), attn.to_v(hs_kv)))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1) @ v
    out = out.transpose(1, 2).reshape(hs_q.shape[0], hs_q.shape[1], -1)
    return out


def test_block_order_is_execution_order_not_dict_order(unet):
    assert block_paths(unet) == SD15_BLOCKS
    dict_order = [
        n[: -len(".attn1.processor")] for n in unet.attn_processors if n.endswith("attn1.processor")
    ]
    assert dict_order[-1].startswith("mid_block")  # why the order must come from the structure
    assert dict_order != SD15_BLOCKS


def test_install_wraps_every_layer_and_is_idempotent(unet):
    c = install_control(unet)
    procs = unet.attn_processors
    assert sum(isinstance(p, MutualSelfAttnProcessor) for p in procs.values()) == 16
    assert sum(isinstance(p, CrossAttnRecorder) for p in procs.values()) == 16
    assert install_control(unet) is c and unet.attn_processors == procs
    remove_control(unet)
    assert not any(
        isinstance(p, (MutualSelfAttnProcessor, CrossAttnRecorder))
        for p in unet.attn_processors.values()
    )


@torch.no_grad()
def test_controlled_layer_equals_explicit_mutual_attention(unet):
    c = install_control(unet)
    attn = _attn1(unet, LAYER)
    hs = torch.randn(2, 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(0))
    plain = attn(hs)  # not armed: the stock processor
    c.arm(
        [None, RowControl(steps=frozenset({0}), layers=frozenset({LAYER}))],
        cfg=False,
        latent_size=(16, 16),
        trace=True,
    )
    c.begin_step()
    out = attn(hs)
    expected_t = attn.to_out[0](_explicit(attn, hs[1:], hs[:1]))
    assert torch.equal(out[0], plain[0])  # the source row is untouched
    torch.testing.assert_close(out[1], expected_t[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[1], plain[1], atol=1e-4)
    assert c.trace == {(0, LAYER, 1)}
    # other layers / steps are not controlled
    other = _attn1(unet, LAYER - 1)
    hs2 = torch.randn(2, 64, other.to_q.in_features)
    c.disarm()
    ref = other(hs2)
    c.arm(
        [None, RowControl(steps=frozenset({0}), layers=frozenset({LAYER}))],
        cfg=False,
        latent_size=(16, 16),
    )
    c.begin_step()
    assert torch.equal(other(hs2), ref)
    c.begin_step()  # step 1: outside the schedule
    assert torch.equal(attn(hs), plain)


@torch.no_grad()
def test_cfg_halves_attend_to_their_own_source(unet):
    c = install_control(unet)
    attn = _attn1(unet, LAYER)
    # [uncond: src, t1, t2, cond: src, t1, t2]; only t2 is controlled
    hs = torch.randn(6, 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    rows = [None, None, RowControl(steps=frozenset({0}), layers=frozenset({LAYER}))]
    c.arm(rows, cfg=True, latent_size=(16, 16))
    c.begin_step()
    out = attn(hs)
    c.disarm()
    plain = attn(hs)
    for b in (0, 1, 3, 4):
        assert torch.equal(out[b], plain[b])
    for b, src in ((2, 0), (5, 3)):
        expected = attn.to_out[0](_explicit(attn, hs[b : b + 1], hs[src : src + 1]))[0]
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_masked_control_equals_two_pass_blend(unet):
    c = install_control(unet)
    attn = _attn1(unet, LAYER)
    g = torch.Generator().manual_seed(2)
    hs = torch.randn(2, 64, attn.to_q.in_features, generator=g)
    # map 4x4, layer 8x8: nearest upsampling by 2
    fg_s = torch.rand(4, 4, generator=g) > 0.5
    fg_t = torch.rand(4, 4, generator=g) > 0.5
    row = RowControl(
        steps=frozenset({0}), layers=frozenset({LAYER}), mask_mode="image", fixed_masks=(fg_s, fg_t)
    )
    c.arm([None, row], cfg=False, latent_size=(16, 16), map_size=(4, 4))
    c.begin_step()
    out = attn(hs)
    up = lambda m: m.repeat_interleave(2, 0).repeat_interleave(2, 1).flatten()  # noqa: E731
    ms, mt = up(fg_s), up(fg_t)
    fg_keys = ms[None, None, None, :].expand(1, attn.heads, 64, 64)
    out_fg = _explicit(attn, hs[1:], hs[:1], allowed=fg_keys)
    out_bg = _explicit(attn, hs[1:], hs[:1], allowed=~fg_keys)
    m = mt.float()[None, :, None]
    expected = attn.to_out[0](out_fg * m + out_bg * (1 - m))
    torch.testing.assert_close(out[1], expected[0], rtol=1e-5, atol=1e-6)
    c.disarm()
    assert torch.equal(out[0], attn(hs)[0])
    assert c.result_masks(1)["source"].shape == (4, 4)


def test_masked_allowed_never_leaves_a_query_without_keys():
    fg_t = torch.tensor([True, False, True])
    for fg_s in (torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)):
        allowed = masked_allowed(fg_t, fg_s)
        assert allowed.any(dim=1).all()
        q = torch.randn(1, 1, 3, 2)
        k = v = torch.randn(1, 1, 4, 2)
        assert torch.isfinite(F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)).all()


def test_batch_layout_mismatch_fails_loudly(unet):
    c = install_control(unet)
    attn = _attn1(unet, LAYER)
    c.arm(
        [None, RowControl(steps=frozenset({0}), layers=frozenset({LAYER}))],
        cfg=True,
        latent_size=(16, 16),
    )
    c.begin_step()
    with pytest.raises(BatchLayoutError, match="expects 4"):
        attn(torch.randn(2, 64, attn.to_q.in_features))


def test_otsu_splits_bimodal_values():
    values = torch.cat([torch.full((50,), 0.1), torch.full((50,), 0.8)])
    level = otsu_threshold(values)
    assert 0.1 < level <= 0.8


def test_block_paths_cover_sdxl_topology():
    from diffusers import UNet2DConditionModel

    from store.sweep.grammar import SDXL_BLOCKS

    unet = UNet2DConditionModel(
        sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 8, 8),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        norm_num_groups=4,
        attention_head_dim=1,
        cross_attention_dim=8,
    )
    assert block_paths(unet) == SDXL_BLOCKS and len(SDXL_BLOCKS) == 70
    install_control(unet)
    assert sum(isinstance(p, MutualSelfAttnProcessor) for p in unet.attn_processors.values()) == 70


def test_the_adapted_diffusers_processor_is_the_one_installed():
    """MutualSelfAttnProcessor adapts diffusers' AttnProcessor2_0.__call__: when the installed
    diffusers' method differs (its code, not its comments or formatting), the copy must be
    reviewed against it and FOLLOWS updated."""
    import ast
    import hashlib
    import importlib
    import inspect
    import textwrap

    import diffusers

    from engine.methods.masactrl import FOLLOWS

    dotted, fingerprint = FOLLOWS
    module, cls, meth = dotted.rsplit(".", 2)
    fn = getattr(getattr(importlib.import_module(module), cls), meth)
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    node.decorator_list = []
    if (
        node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    ):
        node.body = node.body[1:]  # the docstring
    got = hashlib.sha256(ast.dump(node, annotate_fields=False).encode()).hexdigest()[:16]
    assert got == fingerprint, (
        f"diffusers {diffusers.__version__}: {dotted} changed; review "
        "engine/methods/masactrl.MutualSelfAttnProcessor against it, then update FOLLOWS"
    )
