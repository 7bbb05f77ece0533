"""Generation API: load a model, generate one source and N controlled targets in one batch.

The denoising loop is diffusers' own pipeline call (``callback_on_step_end`` for progress,
cancel, pinning and the finiteness check), so with control installed but inactive the output
is the stock pipeline's output, bit for bit.

Comparing with MasaCtrl's own code: pass its start code as ``latents`` (shape [1, 4, h, w],
shared by every row) and its scheduler as ``scheduler``, e.g.
``DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
clip_sample=False, set_alpha_to_one=False)``, with ``ControlSpec(layers="10-15", start_step=4)``.
"""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.control import ControlError, ControlSpec
from engine.inversion import invert, load_image
from engine.processors import RowControl, block_paths, install_control
from store.sweep.grammar import prompt_words

__all__ = [
    "ModelNotFound",
    "NonFiniteLatents",
    "Source",
    "Target",
    "GenerationResult",
    "load_pipeline",
    "block_paths",
    "generate",
    "token_indices",
]


from .errors import EngineError  # noqa: F401  (NonFiniteLatents' base, re-exported)
from .sampling import NonFiniteLatents  # noqa: F401  (re-exported: callers import it from here)
from .sampling import block_hw as _block_hw
from .sampling import check_sampling as _check_sampling
from .sampling import decode_latents as _decode


class ModelNotFound(EngineError, ValueError):
    """The model folder or hub id cannot be loaded."""


@dataclass
class Source:
    prompt: str
    image: Any = None  # path or PIL image of a real reference, used with invert=True
    invert: bool = False
    pin_to_inversion: bool = False
    # classifier-free guidance while inverting; 1.0 (none) inverts more faithfully, MasaCtrl's
    # real-image notebook uses 7.5
    inversion_guidance: float = 1.0


@dataclass
class Target:
    prompt: str
    control: ControlSpec | None = None  # None: a no-control baseline row


@dataclass
class GenerationResult:
    source_image: Any
    images: list  # one PIL image per target
    latents: torch.Tensor  # final latents, rows [source, t1..tN]
    masks: list  # per target: {"source": HxW, "target": HxW} float arrays in [0, 1], or None
    maps: list  # per target: word -> head/layer-averaged cross-attention map (map resolution)
    trace: set | None = None  # {(step, layer, target index 1..N)} controlled, when asked for
    inversion: Any = None  # InversionResult when the source was inverted


# --------------------------------------------------------------------------- loading
def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", ".", "~"))
        or "\\" in model
        or model.count("/") != 1
        or Path(model).expanduser().exists()
    )


def _is_xl(config: dict) -> bool:
    return "XL" in str(config.get("_class_name", "")) or "text_encoder_2" in config


def load_pipeline(
    model: str, device: str = "cpu", dtype=None, local_files_only: bool | None = None
):
    """Load an SD1.x/2.x or SDXL pipeline from a local folder or a hub id.

    fp16 on CUDA, fp32 otherwise unless ``dtype`` is given. The scheduler becomes DDIM with
    MasaCtrl's settings (clip_sample=False, set_alpha_to_one=False), which inversion needs.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if dtype is None:
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if local_files_only is not None:
        kwargs["local_files_only"] = local_files_only
    if _looks_like_path(model):
        folder = Path(model).expanduser()
        index = folder / "model_index.json"
        if not index.is_file():
            raise ModelNotFound(
                f"model folder {folder} not found"
                if not folder.exists()
                else f"{folder} is not a diffusers pipeline folder (no model_index.json)"
            )
        config = json.loads(index.read_text())
        source: str | Path = folder
    else:
        try:
            from diffusers import DiffusionPipeline

            config = DiffusionPipeline.load_config(
                model,
                **({"local_files_only": local_files_only} if local_files_only is not None else {}),
            )
        except Exception as exc:  # hub errors come as many types (offline, 404, auth)
            raise ModelNotFound(
                f"model {model!r} is neither a local folder nor a reachable/cached hub model "
                f"({type(exc).__name__}: {exc})"
            ) from None
        source = model
    cls = StableDiffusionXLPipeline if _is_xl(config) else StableDiffusionPipeline
    if cls is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with warnings.catch_warnings():
            # newer diffusers renamed torch_dtype to dtype; older ones only know torch_dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = cls.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot load model {model!r}: {exc}") from None
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# --------------------------------------------------------------------------- tokens
def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0


def token_indices(tokenizer, prompt: str, words: Sequence[str]) -> dict[str, list[int]]:
    """Token positions (BOS = 0) of each word in ``prompt``; every occurrence counts.

    Words are whitespace words of the prompt, matched case-insensitively as written or
    without surrounding punctuation. A word not in the prompt raises ControlError("mask_words").
    """
    limit = getattr(tokenizer, "model_max_length", 77) - 1
    positions: dict[str, list[int]] = {}
    start = 1
    for raw in prompt.split():
        n_raw = _n_tokens(tokenizer, raw)
        spans = {raw.lower(): (start, n_raw)}
        core = raw.strip(string.punctuation)
        if core and core != raw:
            lead = raw[: len(raw) - len(raw.lstrip(string.punctuation))]
            spans.setdefault(
                core.lower(), (start + _n_tokens(tokenizer, lead), _n_tokens(tokenizer, core))
            )
        for key, (first, n) in spans.items():
            positions.setdefault(key, []).extend(i for i in range(first, first + n) if i < limit)
        start += n_raw
    out: dict[str, list[int]] = {}
    for word in words:
        key = word.lower()
        if key not in positions:
            key = word.strip(string.punctuation).lower()
        if key not in positions:
            raise ControlError("mask_words", f"{word!r} not in the prompt {prompt!r}")
        if not positions[key]:
            raise ControlError("mask_words", f"{word!r} lies beyond the tokenizer's {limit} tokens")
        out[word] = positions[key]
    return out


def _all_words(prompt: str) -> list[str]:
    words = (raw.strip(string.punctuation).lower() or raw.lower() for raw in prompt.split())
    return list(dict.fromkeys(w for w in words if w))


# --------------------------------------------------------------------------- generation
def _map_size(spec: ControlSpec, latent_hw: tuple[int, int]) -> tuple[int, int]:
    lh, lw = latent_hw
    if spec.mask.res is None:
        return max(1, lh // 4), max(1, lw // 4)
    return int(spec.mask.res), max(1, round(int(spec.mask.res) * lw / lh))


def _map_layers(unet, blocks, chosen, latent_hw, map_size) -> frozenset[int]:
    """The chosen mask layers whose cross-attention maps have the map resolution."""
    at_res = frozenset(
        i for i, p in enumerate(blocks) if _block_hw(unet, p, latent_hw) == tuple(map_size)
    )
    usable = frozenset(chosen) & at_res
    if not usable:
        raise ControlError(
            "mask_layers",
            f"none of the chosen layers has {map_size[0]}x{map_size[1]} cross-attention maps at this image size; "
            f"layers at that resolution: {', '.join(map(str, sorted(at_res))) or 'none'}",
        )
    return usable


def _row_control(pipe, spec, source_prompt, target_prompt, num_steps, blocks, map_size, latent_hw):
    spec.validate(num_steps, blocks, prompt=target_prompt)
    row = RowControl(steps=spec.steps(num_steps), layers=spec.layer_indices(blocks))
    mask = spec.mask
    if mask.mode == "off":
        return row
    row.mask_mode = mask.mode
    row.threshold = mask.threshold
    row.timing = mask.timing
    if mask.mode == "image":
        img = load_image(mask.image, map_size[0], map_size[1], mode="L")
        fg = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0) >= 0.5
        row.fixed_masks = (fg, fg)
        return row
    row.mask_layers = _map_layers(
        pipe.unet, blocks, mask.layer_indices(blocks), latent_hw, map_size
    )
    tok = pipe.tokenizer
    words = list(mask.words) or _all_words(target_prompt)
    tgt = token_indices(tok, target_prompt, words)
    in_source = set(prompt_words(source_prompt))
    src_words = [
        w
        for w in words
        if w.lower() in in_source or w.strip(string.punctuation).lower() in in_source
    ]
    if not src_words:
        if mask.words:
            raise ControlError(
                "mask_words",
                f"none of {', '.join(map(repr, words))} is in the source prompt {source_prompt!r}",
            )
        src_words = _all_words(source_prompt)
    src = token_indices(tok, source_prompt, src_words)
    row.tgt_tokens = tuple(sorted({i for v in tgt.values() for i in v}))
    row.src_tokens = tuple(sorted({i for v in src.values() for i in v}))
    row.word_tokens = {w: tuple(v) for w, v in tgt.items()}
    return row


def generate(
    pipe,
    source: Source,
    targets: Sequence[Target],
    *,
    seed: int,
    num_steps: int = 50,
    guidance: float = 7.5,
    height: int = 512,
    width: int = 512,
    latents: torch.Tensor | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    scheduler=None,
    trace: bool = False,
    decode: bool = True,
) -> GenerationResult:
    """Generate the source and every target in one batch from the same initial noise.

    latents: explicit initial latent [1, C, h, w] shared by all rows (else drawn from
        ``torch.Generator(device).manual_seed(seed)``); not allowed with ``source.invert``.
    scheduler: used for this call instead of ``pipe.scheduler`` (restored afterwards).
    step_callback(i, n): called after each denoising step; an exception it raises aborts.
    trace: record the (step, layer, target) triples that were controlled.
    decode: False skips the VAE (images are then empty lists / None).
    Raises ValueError for num_steps < 1 or a guidance that is not a finite number.
    """
    from diffusers.utils.torch_utils import randn_tensor

    _check_sampling(num_steps, guidance)

    unet = pipe.unet
    device = unet.device
    blocks = block_paths(unet)
    latent_hw = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    map_sizes = {
        _map_size(t.control, latent_hw)
        for t in targets
        if t.control is not None and t.control.mask.enabled
    }
    if len(map_sizes) > 1:
        raise ControlError(
            "mask_res", "all masked targets of one batch must use the same map resolution"
        )
    map_size = next(iter(map_sizes), (max(1, latent_hw[0] // 4), max(1, latent_hw[1] // 4)))
    rows = [None] + [
        None
        if t.control is None
        else _row_control(
            pipe, t.control, source.prompt, t.prompt, num_steps, blocks, map_size, latent_hw
        )
        for t in targets
    ]

    inversion = None
    if source.pin_to_inversion and not source.invert:
        raise ValueError("Source.pin_to_inversion needs invert=True")
    if source.image is not None and not source.invert:
        raise ValueError(
            "Source.image is only used with invert=True (DDIM inversion of the reference)"
        )
    if source.invert:
        if source.image is None:
            raise ValueError("Source.invert needs Source.image")
        if latents is not None:
            raise ValueError("explicit latents and Source.invert are exclusive")
    elif source.inversion_guidance != 1.0:
        raise ValueError("Source.inversion_guidance is only used with invert=True")

    original_scheduler = pipe.scheduler
    if scheduler is not None:
        pipe.scheduler = scheduler
    controller = install_control(unet)
    controller.disarm()
    try:
        if source.invert:
            inversion = invert(
                pipe,
                source.image,
                source.prompt,
                num_steps,
                guidance=source.inversion_guidance,
                height=height,
                width=width,
            )
            start = inversion.latent
        elif latents is not None:
            start = latents.to(device=device, dtype=unet.dtype)
            if start.ndim != 4 or start.shape[0] != 1:
                raise ValueError(f"latents must have shape [1, C, h, w], got {tuple(start.shape)}")
        else:
            generator = torch.Generator(device).manual_seed(int(seed))
            shape = (1, unet.config.in_channels, latent_hw[0], latent_hw[1])
            start = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)
        n = len(rows)
        start = start.expand(n, -1, -1, -1).clone()
        cfg = guidance > 1.0 and getattr(unet.config, "time_cond_proj_dim", None) is None
        controller.arm(rows, cfg=cfg, latent_size=latent_hw, map_size=map_size, trace=trace)

        def on_step_end(_pipe, i, _t, kwargs):
            lat = kwargs["latents"]
            if inversion is not None and source.pin_to_inversion:
                lat = lat.clone()
                lat[0] = inversion.trajectory[num_steps - 1 - i][0].to(lat.dtype)
            if not bool(torch.isfinite(lat).all()):
                raise NonFiniteLatents(f"latents became NaN/inf at step {i} of {num_steps}")
            if step_callback is not None:
                step_callback(i, num_steps)
            return {"latents": lat}

        final = pipe(
            prompt=[source.prompt] + [t.prompt for t in targets],
            num_inference_steps=num_steps,
            guidance_scale=guidance,
            height=height,
            width=width,
            latents=start,
            output_type="latent",
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents"],
        ).images
        masks = [controller.result_masks(r) for r in range(1, n)]
        maps = [controller.result_maps(r) for r in range(1, n)]
        traced = set(controller.trace) if controller.trace is not None else None
    finally:
        controller.disarm()
        pipe.scheduler = original_scheduler
    images = _decode(pipe, final) if decode else [None] * n
    return GenerationResult(
        source_image=images[0],
        images=list(images[1:]),
        latents=final,
        masks=masks,
        maps=maps,
        trace=traced,
        inversion=inversion,
    )
