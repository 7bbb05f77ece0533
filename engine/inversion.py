"""DDIM inversion of a real reference image into the start latent of a generation.

Same recipe as MasaCtrl's ``invert``: the UNet is evaluated at the destination timestep of each
inverse step, and the trajectory is kept so the source row can be pinned to it. SDXL gets its
added conditioning (pooled text embeddings, size ids) from the pipeline's own methods, exactly
as its generation call builds it, so inversion and generation see the same conditioning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import EngineError


class ImageError(EngineError, ValueError):
    """A reference or mask image that cannot be read."""


@dataclass
class InversionResult:
    latent: torch.Tensor  # [1, C, h, w]: the start latent (most noisy)
    trajectory: list[torch.Tensor]  # [z_0 (encoded image), z_1, ..., z_n == latent]


def load_image(image, height: int, width: int, mode: str = "RGB"):
    """A PIL image from a path or a PIL image, converted and resized to (width, height)."""
    from PIL import Image, UnidentifiedImageError

    from store.images import InputError, file_problem, open_bounded

    if isinstance(image, Image.Image):
        img = image
    else:
        path = Path(os.fspath(image)).expanduser()
        problem = file_problem(path)
        if problem == "no such file":
            raise ImageError(f"image file not found: {path}")
        if problem:
            raise ImageError(f"{path}: {problem}")
        try:
            # Bounded: a file within 4096 pixels is read exactly as before, a larger one
            # averaged down first, so the resize below never works on a giant image.
            img = open_bounded(path, mode)
        except InputError as exc:
            raise ImageError(str(exc)) from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise ImageError(f"cannot read image {path}: {exc}") from None
    img = img.convert(mode)
    if img.size != (width, height):
        img = img.resize(
            (width, height),
            Image.Resampling.BICUBIC if mode == "RGB" else Image.Resampling.NEAREST,
        )
    return img


@torch.no_grad()
def encode_image(pipe, image, height: int, width: int) -> torch.Tensor:
    """The VAE posterior mean of ``image``, scaled into the UNet's latent space.

    An fp16 VAE whose config asks for it (``force_upcast``, SDXL's overflows in fp16) runs in
    fp32 and is put back, as the diffusers pipelines do around their VAE calls.
    """
    img = load_image(image, height, width)
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    try:
        pixels = pipe.image_processor.preprocess(img, height=height, width=width).to(
            vae.device, vae.dtype
        )
        latent = vae.encode(pixels).latent_dist.mean
    finally:
        if upcast:
            vae.to(torch.float16)
    return latent * vae.config.scaling_factor


def is_xl(pipe) -> bool:
    return "text_encoder_2" in pipe.components


def _conditioning(pipe, prompt: str, cfg: bool, height: int, width: int) -> dict:
    """UNet keyword arguments for ``prompt`` ([uncond, cond] rows with ``cfg``), built by the
    pipeline's own methods with the arguments its ``__call__`` uses for a generation of this
    size, so inversion and generation condition the UNet identically."""
    device = pipe.unet.device
    if not is_xl(pipe):
        cond, uncond = pipe.encode_prompt(prompt, device, 1, cfg, negative_prompt=None)
        return {"encoder_hidden_states": torch.cat([uncond, cond]) if cfg else cond}
    embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
        prompt=prompt,
        device=device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=cfg,
    )
    if pipe.text_encoder_2 is None:
        projection_dim = int(pooled.shape[-1])
    else:
        projection_dim = pipe.text_encoder_2.config.projection_dim
    # __call__'s defaults: original_size = target_size = (height, width), crop (0, 0); the
    # negative rows reuse the same ids when no negative sizes are given.
    time_ids = pipe._get_add_time_ids(
        (height, width),
        (0, 0),
        (height, width),
        dtype=embeds.dtype,
        text_encoder_projection_dim=projection_dim,
    )
    if cfg:
        embeds = torch.cat([neg, embeds])
        pooled = torch.cat([neg_pooled, pooled])
        time_ids = torch.cat([time_ids, time_ids])
    return {
        "encoder_hidden_states": embeds.to(device),
        "added_cond_kwargs": {"text_embeds": pooled.to(device), "time_ids": time_ids.to(device)},
    }


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
    """Invert ``image`` with DDIM under ``prompt`` over ``num_steps`` steps (SD1.x/2.x and SDXL).

    guidance: classifier-free guidance while inverting; 1.0 (none) is the default because
    inversion error grows with it, 7.5 is what MasaCtrl's real-image notebook uses.
    """
    from diffusers import DDIMInverseScheduler

    guidance = float(guidance)
    if not guidance >= 1.0:  # also refuses NaN
        raise ValueError(f"inversion guidance must be at least 1 (1 = no guidance), got {guidance}")
    unet = pipe.unet
    device = unet.device
    # from_config: the bare DDIMInverseScheduler default has clip_sample=True
    inverse = DDIMInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(num_steps, device=device)
    cfg = guidance > 1.0
    cond = _conditioning(pipe, prompt, cfg, height, width)
    latent = encode_image(pipe, image, height, width).to(device, unet.dtype)
    trajectory = [latent]
    for t in inverse.timesteps:
        model_in = torch.cat([latent] * 2) if cfg else latent
        eps = unet(model_in, t, **cond, return_dict=False)[0]
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        latent = inverse.step(eps, t, latent, return_dict=False)[0]
        trajectory.append(latent)
    return InversionResult(latent=latent, trajectory=trajectory)
