"""benchmarks/gpu_check.py: its CPU path runs end to end on the tiny pipelines, its configs are
SD1.5's and SDXL's real ones, and its OOM helpers halve like the worker. No timing is checked."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their module while being created
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    head = next(
        i for i, line in enumerate(lines) if line.split()[:4] == ["device", "model", "px", "mode"]
    )
    rows = []
    for line in lines[head + 1 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


@pytest.mark.subprocess
@pytest.mark.model
def test_cpu_tiny_run_prints_a_row_per_model_and_mode(gpu_check):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--reps", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _table(proc.stdout)
    seen = {}
    for cells in rows:
        device, model, px, mode, images, seconds = cells[:6]
        seen[(model, mode)] = float(seconds)  # numeric, whatever its value
        assert device == "cpu" and px == "64" and int(images) >= 3
    expected = {(m, mode) for m in gpu_check.MODELS for mode in gpu_check.MODES}
    assert set(seen) == expected, proc.stdout
    assert "OOM check" in proc.stdout and "skipped" in proc.stdout


def test_configs_are_the_real_sd15_and_sdxl_ones(gpu_check):
    sd15, sdxl = gpu_check.SD15_UNET, gpu_check.SDXL_UNET
    assert tuple(sd15["block_out_channels"]) == (320, 640, 1280, 1280)
    assert sd15["cross_attention_dim"] == 768
    assert sd15["attention_head_dim"] == 8
    assert tuple(sdxl["block_out_channels"]) == (320, 640, 1280)
    assert sdxl["cross_attention_dim"] == 2048
    assert tuple(sdxl["transformer_layers_per_block"]) == (1, 2, 10)
    assert sdxl["addition_embed_type"] == "text_time"
    assert sdxl["projection_class_embeddings_input_dim"] == 2816
    # the text side the pipelines feed them: 768 (SD1.5); 768 + 1280 and 1280 pooled + 6 x 256
    assert gpu_check.CLIP_L_TEXT["hidden_size"] == 768
    big_g = gpu_check.CLIP_BIGG_TEXT
    assert gpu_check.CLIP_L_TEXT["hidden_size"] + big_g["hidden_size"] == 2048
    assert big_g["projection_dim"] + 6 * sdxl["addition_time_embed_dim"] == 2816
    assert gpu_check.SDXL_VAE["scaling_factor"] == 0.13025 and gpu_check.SDXL_VAE["force_upcast"]


def test_configs_build_the_real_parameter_counts(gpu_check):
    """Built on the meta device (no memory): the published UNet / VAE sizes."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def count(cls, config):
        with torch.device("meta"):
            return sum(p.numel() for p in cls.from_config(config).parameters())

    assert count(UNet2DConditionModel, gpu_check.SD15_UNET) == 859_520_964
    assert count(UNet2DConditionModel, gpu_check.SDXL_UNET) == 2_567_463_684
    assert count(AutoencoderKL, gpu_check.SD15_VAE) == 83_653_863
    assert count(AutoencoderKL, gpu_check.SDXL_VAE) == 83_653_863


def _fake_allocation(threshold: int, calls: list[int]):
    import torch

    def fn(batch: int):
        calls.append(batch)
        if batch > threshold:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake, batch of {batch})")

    return fn


def test_halving_halves_until_the_fake_allocation_fits(gpu_check):
    calls: list[int] = []
    freed: list[int] = []
    result = gpu_check.run_halving(
        _fake_allocation(5, calls), 32, after_oom=lambda: freed.append(1)
    )
    assert calls == [32, 16, 8, 4, 4, 4, 4, 4, 4, 4, 4]
    assert result.attempts[:4] == [(32, False), (16, False), (8, False), (4, True)]
    assert result.ran == 4 and result.calls == 8
    assert sum(b for b, ok in result.attempts if ok) == 32  # every image was made
    assert len(freed) == 3  # memory freed after each OOM, as the backend's after_oom


def test_halving_rule_is_the_workers(gpu_check):
    # odd sizes: max(1, n // 2), the rest retried in chunks of the new size
    calls: list[int] = []
    result = gpu_check.run_halving(_fake_allocation(2, calls), 7, after_oom=lambda: None)
    assert calls == [7, 3, 1, 1, 1, 1, 1, 1, 1]
    assert sum(b for b, ok in result.attempts if ok) == 7 and result.ran == 1


def test_halving_gives_up_at_one_and_on_other_errors(gpu_check):
    import torch

    with pytest.raises(torch.cuda.OutOfMemoryError):
        gpu_check.run_halving(_fake_allocation(0, []), 4, after_oom=lambda: None)

    def broken(batch):
        raise ValueError("not memory")

    with pytest.raises(ValueError):
        gpu_check.run_halving(broken, 4, after_oom=lambda: None)


def test_doubling_finds_the_first_batch_that_does_not_fit(gpu_check):
    calls: list[int] = []
    failing, fitted = gpu_check.find_oom_batch(
        _fake_allocation(20, calls), cap=64, after_oom=lambda: None
    )
    assert (failing, fitted) == (32, 16) and calls == [1, 2, 4, 8, 16, 32]
    assert gpu_check.find_oom_batch(_fake_allocation(100, []), cap=64, after_oom=lambda: None) == (
        None,
        64,
    )


def test_oom_check_reports_the_batch_tried_and_the_batch_that_ran(gpu_check, monkeypatch):
    """The CUDA OOM check's bookkeeping, with the CUDA calls and the generation faked."""
    import torch

    import engine.pipeline

    targets_per_call: list[int] = []

    def fake_generate(pipe, source, targets, **kwargs):
        assert kwargs["num_steps"] == 1 and kwargs["decode"] is False
        assert all(t.control is not None for t in targets)
        targets_per_call.append(len(targets))
        if len(targets) > 6:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")

    monkeypatch.setattr(engine.pipeline, "generate", fake_generate)
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 2**30)
    setting = gpu_check.Setting(steps=10, size=1024, prompts=gpu_check.PROMPTS)
    lines = gpu_check.oom_check(None, "cuda:0", setting, cap=64, ballast=False)
    text = "\n".join(lines)
    assert "batch tried: 8 targets" in text
    assert "batch that ran: 4 targets (2 calls made all 8" in text
    assert targets_per_call == [1, 1, 2, 4, 8, 8, 4, 4]


@pytest.mark.model
@pytest.mark.parametrize("key", ["sd15", "sdxl"])
def test_real_text_side_runs_with_narrowed_unets(gpu_check, key):
    """The real-size build path on CPU: the real text widths (768; 768 + 1280, pooled 1280 with
    time ids) feed a UNet of the real config with only its channel widths narrowed."""
    import torch

    torch.set_num_threads(1)
    spec = gpu_check.MODELS[key]
    narrow = {
        "block_out_channels": [16, 32, 32, 32][: len(spec.unet["block_out_channels"])],
        "norm_num_groups": 8,
        "attention_head_dim": [1, 2, 4] if spec.xl else 2,  # read as head counts
    }
    vae = {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4, "layers_per_block": 1}
    pipe = gpu_check.assemble_pipeline(
        spec,
        "cpu",
        torch.float32,
        unet_config={**spec.unet, **narrow},
        vae_config={**spec.vae, **vae},
    )
    assert pipe.unet.config.cross_attention_dim == spec.unet["cross_attention_dim"]
    setting = gpu_check.Setting(steps=2, size=64, prompts=gpu_check.PROMPTS[:2])
    for mode in ("plain", "masactrl_on"):
        gpu_check.mode_call(mode, pipe, setting)()
