"""Generate one set of prompts with a set method (``consistent_sa``, ``consistory``) or plainly.

``generate_set(pipe, prompts, method=..., params=..., control=..., seed=..., latents=...)``
returns the final latents of every image of the set (and the decoded images). Initial latents:
explicit ``latents`` (one row per image), else image i is drawn from
``torch.Generator(device).manual_seed(image_seed(seed, i))``, so an image's noise depends on the
run seed and its index in the set only, never on which other images share its batch; the plain
baseline of a set (``method="plain"``) uses the same latents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from engine.control import ControlSpec
from engine.methods.consistent_sa import (
    ConsistentSAController,
    ConsistentSAParams,
    ConsistentSelfAttnProcessor,
    derive_seed,
)
from engine.methods.masactrl import block_paths
from engine.methods.running import (  # noqa: F401  (re-exported: callers import them from here)
    _attn1_name,
    _cfg,
    _check,
    block_tokens,
    installed,
    run_pipe,
    shared_layers,
    shared_steps,
)

__all__ = ["SetResult", "generate_set", "image_seed", "set_latents"]

SET_METHODS = ("consistent_sa", "consistory")


@dataclass
class SetResult:
    images: list  # PIL images in prompt order (None when decode=False)
    final_latents: torch.Tensor  # (N, C, h, w), rows in prompt order
    initial_latents: torch.Tensor  # (N, C, h, w) the set started from
    masks: list = field(default_factory=list)  # per image: HxW float array in [0, 1], or None
    trace: set | None = None  # consistent_sa: {(step, layer)} that shared, when asked for
    method: str = "plain"
    params: dict = field(default_factory=dict)


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a set generated with run seed ``seed``."""
    return derive_seed(seed, "latent", index)


def set_latents(
    pipe, n: int, seed: int, height: int, width: int, indices: Sequence[int] | None = None
) -> torch.Tensor:
    """Initial latents of a set of n images, each from its own seeded generator.

    indices: each row's index in the set (default 0..n-1), e.g. the runs' prompt_index when
    some images of the set are not generated."""
    from diffusers.utils.torch_utils import randn_tensor

    unet = pipe.unet
    device = unet.device
    shape = (
        1,
        unet.config.in_channels,
        height // pipe.vae_scale_factor,
        width // pipe.vae_scale_factor,
    )
    rows = [
        randn_tensor(
            shape,
            generator=torch.Generator(device).manual_seed(image_seed(seed, i)),
            device=device,
            dtype=unet.dtype,
        )
        for i in (range(n) if indices is None else indices)
    ]
    return torch.cat(rows)


def generate_set(
    pipe,
    prompts: Sequence[str],
    *,
    method: str = "consistory",
    params: dict | None = None,
    control: ControlSpec | None = None,
    seed: int = 0,
    num_steps: int = 50,
    guidance: float = 7.5,
    latents: torch.Tensor | None = None,
    scheduler=None,
    width: int | None = None,
    height: int | None = None,
    subject_words: Sequence[str] | None = None,
    negative_prompt: str | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    trace: bool = False,
    decode: bool = True,
) -> SetResult:
    """Generate the set ``prompts`` jointly with ``method``; see the module docstring.

    method: "consistent_sa", "consistory" or "plain" (no sharing: the baseline).
    params: the method's parameters (store.sweep.methods names; missing ones take the authors'
        defaults). control: layers and step window that share (None: the authors' choice); for
        consistory its mask words are the subject words unless ``subject_words`` is given.
    latents: (N, C, h, w) initial latents, one row per image (else ``set_latents``).
    scheduler: used for this call instead of ``pipe.scheduler`` (restored afterwards).
    """
    from engine.sampling import decode_latents as _decode

    prompts = list(prompts)
    if not prompts:
        raise ValueError("a set needs at least one prompt")
    _check(num_steps, guidance)
    unet = pipe.unet
    default_side = unet.config.sample_size * pipe.vae_scale_factor
    height = int(height or default_side)
    width = int(width or default_side)
    n = len(prompts)
    if latents is None:
        start = set_latents(pipe, n, seed, height, width)
    else:
        start = latents.to(device=unet.device, dtype=unet.dtype)
        if start.ndim != 4 or start.shape[0] != n:
            raise ValueError(
                f"latents must have shape [{n}, C, h, w] (one row per prompt), got {tuple(start.shape)}"
            )
        height = start.shape[2] * pipe.vae_scale_factor
        width = start.shape[3] * pipe.vae_scale_factor
    params = dict(params or {})
    original_scheduler = pipe.scheduler
    if scheduler is not None:
        pipe.scheduler = scheduler
    common = dict(
        num_steps=num_steps,
        guidance=guidance,
        height=height,
        width=width,
        negative_prompt=negative_prompt,
        step_callback=step_callback,
    )
    traced = None
    masks: list = [None] * n
    try:
        if method == "plain":
            final = run_pipe(pipe, prompts, start.clone(), **common)
        elif method == "consistent_sa":
            final, traced = _consistent_sa(
                pipe, prompts, start, params, control, seed, trace, common
            )
        elif method == "consistory":
            from engine.methods.consistory import run_consistory

            final, masks = run_consistory(
                pipe, prompts, start, params, control, subject_words, seed, common
            )
        else:
            raise ValueError(
                f"method must be one of plain, {', '.join(SET_METHODS)}; got {method!r}"
            )
    finally:
        pipe.scheduler = original_scheduler
    images = _decode(pipe, final) if decode else [None] * n
    return SetResult(
        images=list(images),
        final_latents=final,
        initial_latents=start,
        masks=masks,
        trace=traced,
        method=method,
        params=params,
    )


def _consistent_sa(pipe, prompts, start, params, control, seed, trace, common):
    p = ConsistentSAParams.from_dict(params)
    unet = pipe.unet
    n = len(prompts)
    blocks = block_paths(unet)
    latent_hw = (start.shape[2], start.shape[3])
    layers = shared_layers(blocks, control)
    steps = shared_steps(common["num_steps"], control)
    tokens = {li: block_tokens(unet, blocks[li], latent_hw) for li in layers}
    up = [block_tokens(unet, b, latent_hw) for b in blocks if b.startswith("up_blocks.")]
    low = min(up) if up else min(tokens.values(), default=0)
    controller = ConsistentSAController(tokens, low)
    current = unet.attn_processors
    procs = {
        _attn1_name(blocks[li]): ConsistentSelfAttnProcessor(
            controller, li, current[_attn1_name(blocks[li])]
        )
        for li in layers
    }
    n_write = n if p.id_length <= 0 else min(p.id_length, n)
    halves = 2 if _cfg(pipe, common["guidance"]) else 1
    traced: set | None = set() if trace else None
    with installed(unet, procs, controller):
        controller.arm(
            n_images=n_write,
            halves=halves,
            params=p,
            seed=seed,
            steps=steps,
            device=unet.device,
            mode="write",
            keep_bank=n_write < n,
            trace=trace,
        )
        parts = [run_pipe(pipe, prompts[:n_write], start[:n_write].clone(), **common)]
        if traced is not None:
            traced |= controller.trace
        if n_write < n:
            controller.arm(
                n_images=n - n_write,
                halves=halves,
                params=p,
                seed=seed,
                steps=steps,
                device=unet.device,
                mode="read",
                n_written=n_write,
                image_indices=range(n_write, n),
                trace=trace,
            )
            parts.append(run_pipe(pipe, prompts[n_write:], start[n_write:].clone(), **common))
            if traced is not None:
                traced |= controller.trace
    return torch.cat(parts), traced
