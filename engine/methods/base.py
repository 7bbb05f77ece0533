"""Step counting shared by every method's controller.

A controller holds one generation's state; its processors read it. The step is counted by a
UNet forward pre-hook, one per pipeline UNet call; a method that makes more than one UNet
evaluation per step (ConsiStory's vanilla-query call) makes the extra one inside that call.
"""

from __future__ import annotations


class StepController:
    """The current denoising step of one generation, advanced by ``step_pre_hook``."""

    def __init__(self) -> None:
        self.armed = False
        self.step = -1

    def reset_steps(self) -> None:
        self.step = -1

    def begin_step(self) -> None:
        """Called before each UNet call."""
        self.step += 1


def step_pre_hook(attr: str):
    """A UNet forward pre-hook that advances the controller stored on the UNet as ``attr``."""

    def hook(module, args, kwargs):
        controller = getattr(module, attr, None)
        if controller is not None and controller.armed:
            controller.begin_step()

    return hook
