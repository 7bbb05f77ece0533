"""What every generation path shares (MasaCtrl's `engine.pipeline.generate` and the set methods'
`engine.methods.sets.generate_set`): argument checks, token-grid sizes per block, decoding, and the
error for latents that left the finite range.
"""

from __future__ import annotations

import math
import numbers

import torch

from .errors import EngineError


class NonFiniteLatents(EngineError, FloatingPointError):
    """Latents became NaN/inf (typically fp16 overflow)."""


def block_hw(unet, path: str, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """Spatial size of a transformer block's tokens (each down block halves, up blocks restore)."""
    n = len(unet.down_blocks)
    head, index = path.split(".")[0], path.split(".")[1]
    level = {"down_blocks": int(index) if index.isdigit() else 0, "mid_block": n - 1}.get(head)
    if level is None:
        level = n - 1 - int(index)
    f = 2**level
    return latent_hw[0] // f, latent_hw[1] // f


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, chunk: int = 4) -> list:
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    images = []
    try:
        for part in latents.split(chunk):
            part = part.to(vae.dtype) / vae.config.scaling_factor
            decoded = vae.decode(part, return_dict=False)[0]
            images += pipe.image_processor.postprocess(
                decoded, output_type="pil", do_denormalize=[True] * len(part)
            )
    finally:
        if upcast:
            vae.to(torch.float16)
    return images


def check_sampling(num_steps, guidance) -> None:
    # NaN compares False with everything, so unchecked it silently meant "no guidance".
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise ValueError(f"num_steps must be a whole number of at least 1, got {num_steps!r}")
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, numbers.Real)
        or not math.isfinite(guidance)
    ):
        raise ValueError(f"guidance must be a finite number, got {guidance!r}")
