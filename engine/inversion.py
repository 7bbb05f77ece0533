"""DDIM inversion of a real reference image into the start latent of a generation.

Same recipe as MasaCtrl's ``invert``: the UNet is evaluated at the destination timestep of each
inverse step, and the trajectory is kept so the source row can be pinned to it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


class ImageError(ValueError):
    """A reference or mask image that cannot be read."""


@dataclass
class InversionResult:
    latent: torch.Tensor  # [1, C, h, w]: the start latent (most noisy)
    trajectory: list[torch.Tensor]  # [z_0 (encoded image), z_1, ..., z_n == latent]


def load_image(image, height: int, width: int, mode: str = "RGB"):
    """A PIL image from a path or a PIL image, converted and resized to (width, height)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        img = image
    else:
        path = Path(os.fspath(image)).expanduser()
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        try:
            with Image.open(path) as fh:
                img = fh.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"cannot read image {path}: {exc}") from None
    img = img.convert(mode)
    if img.size != (width, height):
        img = img.resize((width, height), Image.BICUBIC if mode == "RGB" else Image.NEAREST)
    return img


@torch.no_grad()
def encode_image(pipe, image, height: int, width: int) -> torch.Tensor:
    """The VAE posterior mean of ``image``, scaled into the UNet's latent space."""
    img = load_image(image, height, width)
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(img, height=height, width=width).to(vae.device, vae.dtype)
    latent = vae.encode(pixels).latent_dist.mean
    return latent * vae.config.scaling_factor


@torch.no_grad()
def invert(
    pipe,
    image,
    prompt: str,
    num_steps: int,
    *,
    guidance: float = 1.0,
    height: int = 512,
    width: int = 512,
) -> InversionResult:
    """Invert ``image`` with DDIM under ``prompt`` over ``num_steps`` steps (SD1.x/2.x)."""
    from diffusers import DDIMInverseScheduler

    if "text_encoder_2" in pipe.components:
        raise NotImplementedError("DDIM inversion is implemented for SD1.x/2.x pipelines, not SDXL")
    unet = pipe.unet
    device = unet.device
    # from_config: the bare DDIMInverseScheduler default has clip_sample=True
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(num_steps, device=device)
    cfg = guidance > 1.0
    cond, uncond = pipe.encode_prompt(prompt, device, 1, cfg, negative_prompt=None)
    embeds = torch.cat([uncond, cond]) if cfg else cond
    latent = encode_image(pipe, image, height, width).to(device, unet.dtype)
    trajectory = [latent]
    for t in inverse.timesteps:
        model_in = torch.cat([latent] * 2) if cfg else latent
        eps = unet(model_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        latent = inverse.step(eps, t, latent, return_dict=False)[0]
        trajectory.append(latent)
    return InversionResult(latent=latent, trajectory=trajectory)
