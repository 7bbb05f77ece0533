"""How a set method runs a pipeline: which layers and steps share, installing processors for one
call, one pipeline call to final latents. Shared by `sets` (consistent_sa and the plain baseline)
and `consistory`, so neither imports the other for them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from engine.control import ControlSpec
from engine.methods.base import step_pre_hook

_SET_CONTROLLER_ATTR = "_mtp_set_controller"


def block_tokens(unet, path: str, latent_hw: tuple[int, int]) -> int:
    from engine.sampling import block_hw as _block_hw

    h, w = _block_hw(unet, path, latent_hw)
    return h * w


def shared_layers(blocks: Sequence[str], control: ControlSpec | None) -> frozenset[int]:
    """Layers that share: the control's layer set, else the authors' (every up-block layer)."""
    if control is None:
        return frozenset(i for i, p in enumerate(blocks) if p.startswith("up_blocks."))
    return control.layer_indices(blocks)


def shared_steps(num_steps: int, control: ControlSpec | None) -> frozenset[int]:
    """Steps that share: the control's window, else the authors' (1..end); never step 0."""
    steps = frozenset(range(num_steps)) if control is None else control.steps(num_steps)
    return frozenset(s for s in steps if s >= 1)


@contextlib.contextmanager
def installed(unet, processors: dict[str, Any], controller):
    """Replace the named attention processors and count steps with ``controller``; undo after."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({**saved, **processors})
    setattr(unet, _SET_CONTROLLER_ATTR, controller)
    hook = unet.register_forward_pre_hook(step_pre_hook(_SET_CONTROLLER_ATTR), with_kwargs=True)
    try:
        yield controller
    finally:
        controller.armed = False
        hook.remove()
        delattr(unet, _SET_CONTROLLER_ATTR)
        unet.set_attn_processor(saved)


def _attn1_name(path: str) -> str:
    return f"{path}.attn1.processor"


def _check(num_steps, guidance) -> None:
    from engine.sampling import check_sampling as _check_sampling

    _check_sampling(num_steps, guidance)


def run_pipe(
    pipe,
    prompts,
    latents,
    *,
    num_steps,
    guidance,
    height,
    width,
    negative_prompt=None,
    step_callback=None,
    **extra,
):
    """One diffusers pipeline call returning final latents; checks finiteness each step."""
    from engine.sampling import NonFiniteLatents

    def on_step_end(_pipe, i, _t, kwargs):
        lat = kwargs["latents"]
        if not bool(torch.isfinite(lat).all()):
            raise NonFiniteLatents(f"latents became NaN/inf at step {i} of {num_steps}")
        if step_callback is not None:
            step_callback(i, num_steps)
        return {"latents": lat}

    kwargs = dict(
        prompt=list(prompts),
        num_inference_steps=num_steps,
        guidance_scale=guidance,
        height=height,
        width=width,
        latents=latents,
        output_type="latent",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        **extra,
    )
    if negative_prompt is not None:
        kwargs["negative_prompt"] = [negative_prompt] * len(prompts)
    return pipe(**kwargs).images


def _cfg(pipe, guidance: float) -> bool:
    return guidance > 1.0 and getattr(pipe.unet.config, "time_cond_proj_dim", None) is None
