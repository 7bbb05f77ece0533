"""GPU check: cost of generation, MasaCtrl and the set methods at SD1.5's and SDXL's real sizes.

Nothing is downloaded. The UNets and VAEs are built from SD1.5's and SDXL's real configs
(runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0, unet/ and vae/
config.json, copied below) with random weights, in fp16 on CUDA, at 512 px (SD1.5) and 1024 px
(SDXL). Text goes through the project's tiny tokenizer (``engine.tiny``) and small random CLIP
text encoders with the real widths (768; SDXL: 768 + 1280 with a 1280 projection, so the UNet
sees 2048-wide cross-attention and 1280 pooled + 6 x 256 time ids = 2816): only the UNet and the
VAE cost anything, and the stock diffusers pipelines run end to end.

One table: per device, model and mode, seconds per image (median of the timed calls after a
warm-up call, each a batch of the set's images, ``torch.cuda.synchronize`` around it) and peak
memory (``torch.cuda.max_memory_allocated``, reset per row; weights included). Modes:

    plain          the stock pipeline (``generate_set(method="plain")``), no processors
    masactrl_off   ``engine.pipeline.generate``: MasaCtrl's controller installed and armed,
                   no target controlled (the "installed but inactive" path)
    masactrl_on    the same batch, every target controlled (layers "decoder", steps from 4)
    consistent_sa  ``generate_set(method="consistent_sa")``, the authors' defaults
    consistory     ``generate_set(method="consistory")``, the authors' defaults (injection on)

MasaCtrl rows are one source + the other prompts as targets, so every row makes the same
number of images. Then an out-of-memory check (CUDA, on SDXL when it is measured): the batch
the worker halves, one source + N MasaCtrl targets (1 step, not decoded), at doubling N until
``torch.cuda.OutOfMemoryError`` (capped at --oom-cap), then those N targets are completed with
the worker's rule (engine.worker: on an OOM ``batch = max(1, len(chunk) // 2)``, free memory as
the backend's ``after_oom`` does, retry the rest; ``is_oom`` is the worker's). By default a
ballast tensor first takes all free memory but a few times what a source + 1 target need, so the
doubling ends within a few batches on any card (``--no-oom-ballast``: double against the whole
card, up to the cap).

    python benchmarks/gpu_check.py                        # every CUDA device, side by side
    python benchmarks/gpu_check.py --devices 0,1 --steps 10 --quick
    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --device cpu --tiny    # the CPU test path

``--device cpu --tiny`` runs the same code with the project's tiny SD1.5/SDXL pipelines
(engine.tiny, engine.tiny_sdxl) in fp32 at 64 px and 2 steps, without the OOM check. Nothing is
asserted about timings. Exit status 1 when a row failed (its note says why).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# ----------------------------------------------------------------------------- real configs
# runwayml/stable-diffusion-v1-5, unet/config.json
SD15_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
}

# runwayml/stable-diffusion-v1-5, vae/config.json (scaling_factor: diffusers' default 0.18215)
SD15_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-xl-base-1.0, vae/config.json
SDXL_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# Text encoders: the real widths (SD1.5 / SDXL text_encoder: CLIP ViT-L; SDXL text_encoder_2:
# OpenCLIP bigG with a 1280 projection), few layers (SDXL reads the penultimate layer: >= 2).
TEXT_LAYERS = 2
CLIP_L_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "hidden_act": "quick_gelu",
}
CLIP_BIGG_TEXT = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}


@dataclass(frozen=True)
class ModelSpec:
    key: str
    size: int  # image side in px
    xl: bool
    unet: dict
    vae: dict


MODELS = {
    "sd15": ModelSpec("sd15", 512, False, SD15_UNET, SD15_VAE),
    "sdxl": ModelSpec("sdxl", 1024, True, SDXL_UNET, SDXL_VAE),
}
MODES = ("plain", "masactrl_off", "masactrl_on", "consistent_sa", "consistory")
PROMPTS = (
    "a photo of a corgi",
    "a corgi running on the beach",
    "a corgi sitting in the snow",
    "a corgi in a park with a red hat",
)
SUBJECT = "corgi"
GUIDANCE = 7.5
MASACTRL_LAYERS = "decoder"
MASACTRL_START = 4
TINY_SIZE = 64
TINY_STEPS = 2
OOM_FREE_FACTOR = 6  # ballast leaves this many times what a source + 1 target need
OOM_MIN_FREE = 256 * 2**20


# ----------------------------------------------------------------------------- OOM helpers
def _is_oom(exc: BaseException) -> bool:
    from engine.worker import is_oom

    return is_oom(exc)


def free_memory() -> None:
    """What the diffusion backend's ``after_oom`` does: collect, then empty CUDA's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Halving:
    total: int  # images asked for
    attempts: list[tuple[int, bool]] = field(default_factory=list)  # (batch, fitted)

    @property
    def ran(self) -> int:
        """The batch size the work was completed with (its largest chunk that fitted)."""
        fitted = [b for b, ok in self.attempts if ok]
        return max(fitted) if fitted else 0

    @property
    def calls(self) -> int:
        return sum(1 for _, ok in self.attempts if ok)


def run_halving(
    fn: Callable[[int], object],
    total: int,
    *,
    is_oom: Callable[[BaseException], bool] = _is_oom,
    after_oom: Callable[[], None] = free_memory,
) -> Halving:
    """Do ``total`` images as ``fn(batch)`` calls, halving on out-of-memory like the worker.

    engine.worker (MasaCtrl groups): a chunk that runs out of memory sets
    ``batch = max(1, len(chunk) // 2)``, memory is freed (``backend.after_oom``) and the pending
    work is retried in chunks of that size; an OOM with a chunk of 1 is final (re-raised here).
    Any other error is re-raised at once.
    """
    result = Halving(total)
    batch, done = max(1, int(total)), 0
    while done < total:
        chunk = min(batch, total - done)
        failed = False
        try:
            fn(chunk)
        except Exception as exc:
            if chunk <= 1 or not is_oom(exc):
                raise
            failed = True  # leave the except block first: its traceback holds the tensors
        result.attempts.append((chunk, not failed))
        if failed:
            after_oom()
            batch = max(1, chunk // 2)
            continue
        done += chunk
    return result


def find_oom_batch(
    fn: Callable[[int], object],
    *,
    start: int = 1,
    cap: int = 64,
    is_oom: Callable[[BaseException], bool] = _is_oom,
    after_oom: Callable[[], None] = free_memory,
) -> tuple[int | None, int]:
    """Double the batch from ``start`` until ``fn(batch)`` runs out of memory or passes ``cap``.

    Returns (the first batch that did not fit or None, the largest batch that fitted)."""
    batch, fitted = max(1, int(start)), 0
    while batch <= cap:
        failed = False
        try:
            fn(batch)
        except Exception as exc:
            if not is_oom(exc):
                raise
            failed = True
        if failed:
            after_oom()
            return batch, fitted
        fitted = batch
        batch *= 2
    return None, fitted


# ----------------------------------------------------------------------------- pipelines
@contextmanager
def _default_dtype(dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def _tokenizers():
    from transformers import CLIPTokenizer

    from engine.tiny import write_tokenizer_files

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
        tok_2 = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="!")
    return tok, tok_2


def _text_config(tok, width: dict, layers: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tok),
        num_hidden_layers=layers,
        max_position_embeddings=77,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **width,
    )


def assemble_pipeline(
    spec: ModelSpec,
    device: str,
    dtype,
    *,
    unet_config: dict | None = None,
    vae_config: dict | None = None,
    text_layers: int = TEXT_LAYERS,
    seed: int = 0,
):
    """The real topology with random weights, built directly on ``device`` in ``dtype``.

    unet_config / vae_config replace the real ones (a test shrinks widths with them)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from engine.tiny import SCHEDULER_CONFIG

    tok, tok_2 = _tokenizers()
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # config keys of other diffusers versions
        unet = UNet2DConditionModel.from_config(unet_config or spec.unet)
        vae = AutoencoderKL.from_config(vae_config or spec.vae)
        text = CLIPTextModel(_text_config(tok, CLIP_L_TEXT, text_layers))
        text_2 = (
            CLIPTextModelWithProjection(_text_config(tok_2, CLIP_BIGG_TEXT, text_layers))
            if spec.xl
            else None
        )
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    pipe: Any
    if spec.xl:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text,
            text_encoder_2=text_2,
            tokenizer=tok,
            tokenizer_2=tok_2,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tok,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)  # built there in dtype already


def tiny_pipeline(spec: ModelSpec, device: str, dtype, models_dir: str):
    """The project's tiny pipeline of the same family (engine.tiny / engine.tiny_sdxl)."""
    if spec.xl:
        from engine.tiny_sdxl import ensure_tiny_sdxl_pipeline, load_tiny_sdxl_pipeline

        pipe = load_tiny_sdxl_pipeline(ensure_tiny_sdxl_pipeline(models_dir))
    else:
        from engine.tiny import ensure_tiny_pipeline, load_tiny_pipeline

        pipe = load_tiny_pipeline(ensure_tiny_pipeline(models_dir))
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    return pipe.to(device)


def quiet() -> None:
    """No loading bars (the project's engine does the same) and no library chatter."""
    from engine.backends.diffusion import _quiet_progress_bars

    _quiet_progress_bars()
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def _millions(module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.1f}M"


# ----------------------------------------------------------------------------- modes
@dataclass
class Setting:
    steps: int
    size: int
    prompts: tuple[str, ...]

    @property
    def masactrl_start(self) -> int:
        return min(MASACTRL_START, self.steps - 1)


def mode_call(mode: str, pipe, s: Setting) -> Callable[[], object]:
    """One call of ``mode`` making ``len(s.prompts)`` images (decoded: the VAE counts too)."""
    from engine.control import ControlSpec
    from engine.methods.sets import generate_set
    from engine.pipeline import Source, Target, generate
    from engine.processors import remove_control

    common: dict[str, Any] = dict(
        seed=0, num_steps=s.steps, guidance=GUIDANCE, height=s.size, width=s.size
    )
    prompts = list(s.prompts)
    if mode in ("plain", "consistent_sa", "consistory"):
        remove_control(pipe.unet)  # set methods and plain: over the stock processors
        kwargs: dict[str, Any] = {"subject_words": [SUBJECT]} if mode == "consistory" else {}
        return lambda: generate_set(pipe, prompts, method=mode, **kwargs, **common)
    if mode in ("masactrl_off", "masactrl_on"):
        control = (
            ControlSpec(layers=MASACTRL_LAYERS, start_step=s.masactrl_start)
            if mode == "masactrl_on"
            else None
        )
        source, targets = Source(prompts[0]), [Target(p, control) for p in prompts[1:]]
        return lambda: generate(pipe, source, targets, **common)
    raise ValueError(f"unknown mode {mode!r}")


# ----------------------------------------------------------------------------- measuring
@dataclass
class Row:
    device: str
    model: str
    size: int
    mode: str
    images: int
    seconds: float | None = None  # per image, median
    peak: int | None = None  # bytes
    note: str = ""
    failed: bool = False


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def measure(call: Callable[[], object], images: int, reps: int, device: str):
    """(median seconds per image over ``reps`` timed calls after one warm-up, peak bytes)."""
    cuda = device.startswith("cuda")
    free_memory()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # random weights: odd pixel values
        call()  # warm-up: first-call costs (kernels, autotuning) are not the mode's
        times = []
        for _ in range(max(1, reps)):
            _sync(device)
            t0 = time.perf_counter()
            call()
            _sync(device)
            times.append((time.perf_counter() - t0) / images)
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return statistics.median(times), peak


def measure_rows(pipe, rows: list[Row], device: str, s: Setting, reps: int, deadline: float):
    """Fill in each row's seconds per image and peak memory (or why not) in place."""
    for row in rows:
        if time.monotonic() > deadline:
            row.note = "skipped: --budget-s spent"
            continue
        oom = False
        try:
            row.seconds, row.peak = measure(mode_call(row.mode, pipe, s), row.images, reps, device)
        except Exception as exc:
            row.failed = True
            oom = _is_oom(exc)
            row.note = "out of memory" if oom else f"{type(exc).__name__}: {exc}"[:120]
            if not oom:
                traceback.print_exc()
        if oom:
            free_memory()  # outside the except block: its traceback holds the tensors


def oom_check(pipe, device: str, s: Setting, cap: int, ballast: bool) -> list[str]:
    """Provoke an OOM with the worker's MasaCtrl batch (one source + N controlled targets, 1
    step, no decoding) at doubling N, then complete that N by halving as the worker does."""
    from engine.control import ControlSpec
    from engine.pipeline import Source, Target, generate

    control = ControlSpec(layers=MASACTRL_LAYERS, start_step=0)

    def fn(batch: int):
        targets = [Target(PROMPTS[1 + i % (len(PROMPTS) - 1)], control) for i in range(batch)]
        generate(
            pipe,
            Source(PROMPTS[0]),
            targets,
            seed=0,
            num_steps=1,
            guidance=GUIDANCE,
            height=s.size,
            width=s.size,
            decode=False,  # decoding goes in chunks of 4: the denoising batch is what grows
        )

    lines = []
    hold = None
    try:
        free_memory()
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(1)
        one = max(1, torch.cuda.max_memory_allocated(device) - base)
        free_memory()
        if ballast:
            free, total = torch.cuda.mem_get_info(device)
            nbytes = free - max(OOM_FREE_FACTOR * one, OOM_MIN_FREE)
            while nbytes > 0 and hold is None:
                try:
                    hold = torch.empty(nbytes, dtype=torch.uint8, device=device)
                except torch.cuda.OutOfMemoryError:
                    nbytes = int(nbytes * 0.95)
            free_left = torch.cuda.mem_get_info(device)[0]
            lines.append(
                f"ballast {(hold.numel() if hold is not None else 0) / 2**30:.1f} GiB of "
                f"{total / 2**30:.1f} GiB held, {free_left / 2**30:.2f} GiB left free "
                f"(a source + 1 target need {one / 2**30:.2f} GiB)"
            )
        t0 = time.perf_counter()
        failing, fitted = find_oom_batch(fn, cap=cap)
        if failing is None:
            lines.append(f"no out-of-memory up to a batch of {fitted} (cap); halving not exercised")
            return lines
        lines.append(f"batch tried: {failing} targets -> torch.cuda.OutOfMemoryError")
        result = run_halving(fn, failing)
        tried = ", ".join(f"{b}{'' if ok else ' OOM'}" for b, ok in result.attempts)
        lines.append(
            f"batch that ran: {result.ran} targets ({result.calls} calls made all {failing}; "
            f"attempts: {tried}; {time.perf_counter() - t0:.1f} s)"
        )
        return lines
    finally:
        del hold
        free_memory()


# ----------------------------------------------------------------------------- CLI
def parse_devices(text: str) -> list[str]:
    text = text.strip()
    if text == "all":
        n = torch.cuda.device_count()
        if n == 0:
            raise SystemExit(
                "gpu_check: no CUDA device here; use --device cpu --tiny for the CPU path"
            )
        return [f"cuda:{i}" for i in range(n)]
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.isdigit():
            part = f"cuda:{part}"
        elif part == "cuda":
            part = "cuda:0"
        if part.startswith("cuda"):
            index = int(part.split(":", 1)[1])
            if index >= torch.cuda.device_count():
                raise SystemExit(
                    f"gpu_check: {part} not found ({torch.cuda.device_count()} CUDA devices)"
                )
        elif part != "cpu":
            raise SystemExit(f"gpu_check: unknown device {part!r} (all, 0,1, cuda:0, cpu)")
        if part == "cpu" or part not in out:  # cpu may repeat: the side-by-side path on a CPU
            out.append(part)
    return out


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Seconds per image and peak memory of generation, MasaCtrl and the set "
        "methods at SD1.5/SDXL's real sizes (random weights, no downloads), and an OOM check."
    )
    ap.add_argument(
        "--devices",
        "--device",
        dest="devices",
        default="all",
        help="all (every CUDA device), 0,1, cuda:0 or cpu (default all); several devices run "
        "side by side, one child process each, into one table",
    )
    ap.add_argument("--steps", type=int, help="denoising steps (default 10; --tiny: 2)")
    ap.add_argument("--reps", type=int, help="timed calls per row after the warm-up (default 3)")
    ap.add_argument("--quick", action="store_true", help="1 timed call, a set of 3 prompts")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="the project's tiny SD1.5/SDXL pipelines in fp32 at 64 px (the CPU test path)",
    )
    ap.add_argument("--models", default="sd15,sdxl", help="comma list of sd15, sdxl")
    ap.add_argument(
        "--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)} (default all)"
    )
    ap.add_argument("--size", type=int, help="image side for every model (default 512 / 1024)")
    ap.add_argument("--dtype", choices=list(DTYPES), help="default fp16 on CUDA, else fp32")
    ap.add_argument(
        "--oom-cap", type=int, default=64, help="largest batch the OOM check tries (default 64)"
    )
    ap.add_argument(
        "--oom-ballast",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first hold all free memory but 6x what a source + 1 target need (default on)",
    )
    ap.add_argument("--no-oom", action="store_true", help="skip the out-of-memory check")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="rows not started within this many seconds of the start are skipped (default 420)",
    )
    ap.add_argument("--json-out", help=argparse.SUPPRESS)  # a child's rows, for its parent
    return ap


def _fmt_row(cells) -> str:
    widths = (8, 6, 5, 14, 7, 9, 9)
    head = "".join(
        f"{c:<{w}}" if i < 4 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))
    )
    return (head + "  " + (cells[7] if len(cells) > 7 else "")).rstrip()


@dataclass
class Run:
    """What one invocation measures, shared by every device."""

    steps: int
    reps: int
    prompts: tuple[str, ...]
    modes: tuple[str, ...]
    tiny: bool
    size: int | None
    dtype: str | None
    oom: bool
    oom_cap: int
    oom_ballast: bool
    deadline: float
    failed: bool = False

    def dtype_for(self, device: str):
        if self.dtype:
            return DTYPES[self.dtype]
        return torch.float16 if device.startswith("cuda") and not self.tiny else torch.float32


def check_model(run: Run, spec: ModelSpec, device: str, models_dir: str, with_oom: bool):
    """Rows of one model on one device (and its OOM check lines); the pipeline is freed after."""
    size = run.size or (TINY_SIZE if run.tiny else spec.size)
    setting = Setting(run.steps, size, run.prompts)
    rows = [Row(device, spec.key, size, mode, len(run.prompts)) for mode in run.modes]
    notes: list[str] = []
    if time.monotonic() > run.deadline:
        for row in rows:
            row.note = "skipped: --budget-s spent"
        return rows, notes
    dtype = run.dtype_for(device)
    t0 = time.perf_counter()
    try:
        pipe = (
            tiny_pipeline(spec, device, dtype, models_dir)
            if run.tiny
            else assemble_pipeline(spec, device, dtype)
        )
        _sync(device)
    except Exception as exc:
        traceback.print_exc()
        for row in rows:
            row.failed, row.note = True, f"build failed: {type(exc).__name__}: {exc}"[:120]
        return rows, notes
    notes.append(
        f"{device} {spec.key}: UNet {_millions(pipe.unet)} params, VAE {_millions(pipe.vae)}, "
        f"{str(dtype).replace('torch.', '')}, {size}px, built in {time.perf_counter() - t0:.1f} s"
    )
    try:
        measure_rows(pipe, rows, device, setting, run.reps, run.deadline)
        if with_oom:
            head = f"OOM check {device} {spec.key} {size}px:"
            if not run.oom:
                notes.append(f"{head} skipped (--no-oom)")
            elif not device.startswith("cuda"):
                notes.append(
                    f"{head} skipped: not a CUDA device, so no torch.cuda.OutOfMemoryError to "
                    "provoke (the halving helper is unit-tested with a fake allocator)"
                )
            elif time.monotonic() > run.deadline:
                notes.append(f"{head} skipped: --budget-s spent")
            else:
                try:
                    lines = oom_check(pipe, device, setting, run.oom_cap, run.oom_ballast)
                except Exception as exc:
                    traceback.print_exc()
                    run.failed = True
                    lines = [f"FAILED: {type(exc).__name__}: {exc}"[:200]]
                notes += [f"{head} {line}" for line in lines]
    finally:
        del pipe
        free_memory()
    return rows, notes


def print_table(rows: list[Row]) -> None:
    print(_fmt_row(("device", "model", "px", "mode", "images", "s/image", "peak GiB", "note")))
    for r in rows:
        seconds = "-" if r.seconds is None else f"{r.seconds:.4f}"
        peak = "-" if r.peak is None else f"{r.peak / 2**30:.2f}"
        cells = (r.device, r.model, str(r.size), r.mode, str(r.images), seconds, peak, r.note)
        print(_fmt_row(cells))


def run_device(run: Run, device: str, keys: list[str], models_dir: str):
    """Every model's rows on one device; the OOM check on SDXL (else the last model)."""
    rows: list[Row] = []
    notes: list[str] = []
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        notes.append(f"{device}: {torch.cuda.get_device_name(device)}")
    else:
        torch.set_num_threads(1)
    oom_key = "sdxl" if "sdxl" in keys else keys[-1]
    for key in keys:
        got, said = check_model(run, MODELS[key], device, models_dir, key == oom_key)
        rows += got
        notes += said
    return rows, notes


def run_children(argv: list[str], devices: list[str]):
    """One child process per device, all at once (each has its own GPU); their rows and notes."""
    rows: list[Row] = []
    notes: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="gpu-check-children-") as tmp:
        children = []
        for i, device in enumerate(devices):
            out, log = Path(tmp) / f"{i}.json", Path(tmp) / f"{i}.log"
            cmd = [sys.executable, os.path.abspath(__file__), *argv]
            cmd += ["--devices", device, "--json-out", str(out)]  # argparse: the last wins
            with open(log, "w") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            children.append((device, proc, out, log))
        for device, proc, out, log in children:
            proc.wait()
            if not out.is_file():
                failed = True
                tail = log.read_text(errors="replace").splitlines()[-15:]
                notes.append(f"{device}: child exited {proc.returncode} without results:")
                notes += [f"  {line}" for line in tail]
                continue
            data = json.loads(out.read_text())
            rows += [Row(**r) for r in data["rows"]]
            notes += data["notes"]
            failed |= bool(data["failed"])
    return rows, notes, failed


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(raw)
    devices = parse_devices(args.devices)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    if not keys or any(k not in MODELS for k in keys):
        raise SystemExit(f"gpu_check: --models takes a comma list of {', '.join(MODELS)}")
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"gpu_check: --modes takes a comma list of {', '.join(MODES)}")
    start = time.monotonic()
    run = Run(
        steps=args.steps or (TINY_STEPS if args.tiny else 10),
        reps=args.reps or (1 if args.quick else 3),
        prompts=PROMPTS[:3] if args.quick else PROMPTS,
        modes=modes,
        tiny=args.tiny,
        size=args.size,
        dtype=args.dtype,
        oom=not args.no_oom,
        oom_cap=args.oom_cap,
        oom_ballast=args.oom_ballast,
        deadline=start + args.budget_s,
    )
    if run.steps < 1:
        raise SystemExit("gpu_check: --steps must be at least 1")

    import diffusers

    quiet()
    kind = "tiny pipelines (engine.tiny*)" if run.tiny else "real SD1.5/SDXL topologies"
    print(
        f"gpu_check: torch {torch.__version__}, diffusers {diffusers.__version__}, {kind}, "
        f"random weights, {run.steps} DDIM steps, CFG {GUIDANCE}, {len(run.prompts)} images a "
        f"call, median of {run.reps} timed call(s) after 1 warm-up"
    )
    print(
        f"masactrl_on: layers {MASACTRL_LAYERS!r}, steps from "
        f"{Setting(run.steps, 0, run.prompts).masactrl_start}; consistory subject {SUBJECT!r}"
    )
    if len(devices) > 1:
        print(f"{len(devices)} devices, one child process each, side by side", flush=True)
        rows, notes, run.failed = run_children(raw, devices)
    else:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as models_dir:
            rows, notes = run_device(run, devices[0], keys, models_dir)
    failed = run.failed or any(r.failed for r in rows)
    if args.json_out:
        data = {"rows": [asdict(r) for r in rows], "notes": notes, "failed": failed}
        Path(args.json_out).write_text(json.dumps(data))
    print()
    print_table(rows)
    print()
    for line in notes:
        print(line)
    print(f"total {time.monotonic() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
