"""The offline tiny pipeline: SD1.5's attention topology, real save/load path, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.processors import block_paths  # noqa: E402
from engine.tiny import build_tiny_pipeline, ensure_tiny_pipeline, load_tiny_pipeline  # noqa: E402
from store.sweep.grammar import SD15_BLOCKS  # noqa: E402


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    return load_tiny_pipeline(tiny_model_dir)


def test_reloads_with_sd15_attention_topology(pipe, tiny_model_dir):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    names = list(pipe.unet.attn_processors)
    attn1 = [n[: -len(".attn1.processor")] for n in names if n.endswith(".attn1.processor")]
    attn2 = [n[: -len(".attn2.processor")] for n in names if n.endswith(".attn2.processor")]
    assert len(attn1) == 16 and len(attn2) == 16 and len(names) == 32
    assert sorted(attn1) == sorted(SD15_BLOCKS) == sorted(attn2)
    assert block_paths(pipe.unet) == SD15_BLOCKS
    sched = pipe.scheduler
    assert isinstance(sched, DDIMScheduler)
    assert sched.config.clip_sample is False and sched.config.set_alpha_to_one is False
    assert sched.config.steps_offset == 1 and sched.config.beta_schedule == "scaled_linear"
    assert pipe.safety_checker is None
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"


def test_tokenizer_handles_english_words(pipe):
    tok = pipe.tokenizer
    ids = tok("a photo of a corgi on the beach").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert len(ids) == 2 + 8  # one token per known word
    # unknown words fall back to bytes instead of <unk>
    pieces = tok.tokenize("xylophone Zürich")
    assert pieces and tok.unk_token not in pieces[:-1]


def test_generates_finite_image(pipe):
    out = pipe(
        "a photo of a corgi",
        num_inference_steps=4,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    img = out.images[0]
    assert img.shape == (64, 64, 3) and np.isfinite(img).all()


def test_build_is_deterministic(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    other = build_tiny_pipeline(tmp_path / "again")
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(tiny_model_dir / part)), load_file(str(other / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ensure_is_idempotent_and_atomic(tmp_path):
    models = tmp_path / "models"
    first = ensure_tiny_pipeline(models)
    assert first == models / "tiny-sd" and (first / "model_index.json").is_file()
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert ensure_tiny_pipeline(models) == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp
    assert [p.name for p in models.iterdir()] == ["tiny-sd"]  # no temp build dir left behind
