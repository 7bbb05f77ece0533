"""What the engine loop asks of a generator backend, and what it hands one.

A backend loads a model (`LoadKey`) and generates one shared-source batch (`SourceJob` plus
`TargetJob`s). It raises `RunError` for failures that belong to the runs (bad input) and
`ModelUnavailable` when the model itself cannot be had.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine.control import ControlSpec
from store.models import Run

# ------------------------------------------------------------------ errors
from ..errors import EngineError


class RunError(EngineError):
    """An expected failure with a message fit for the Run's error column (no traceback needed)."""


class ModelUnavailable(RunError):
    """The model (or its personalization) cannot be loaded; every run needing it fails."""


# ------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class LoadKey:
    """What a loaded pipeline is: base model plus personalization (token matters for TI)."""

    model: str
    weights_kind: str = "none"
    weights_path: str | None = None
    token: str = ""

    @classmethod
    def of(cls, run: Run) -> LoadKey:
        return cls(run.model, run.weights_kind or "none", run.weights_path, run.token or "")


@dataclass
class SourceJob:
    prompt: str
    image: str | None
    invert: bool
    seed: int
    num_steps: int
    guidance: float
    width: int
    height: int
    inversion_guidance: float = 1.0  # classifier-free guidance of the inversion (with invert)

    @classmethod
    def of(cls, run: Run, home_root: Path) -> SourceJob:
        image = run.source_image
        if image and not Path(image).is_absolute():
            image = str(home_root / image)
        invert = bool(run.invert and image)
        # NULL: a run from before the column existed, when every inversion ran at 1.0
        inversion_guidance = (
            1.0 if run.inversion_guidance is None or not invert else float(run.inversion_guidance)
        )
        return cls(
            run.source_prompt,
            image,
            invert,
            int(run.seed),
            int(run.num_steps),
            float(run.guidance),
            int(run.width),
            int(run.height),
            inversion_guidance,
        )


@dataclass
class TargetJob:
    run_id: int
    prompt: str
    control: ControlSpec | None  # None: the no-control baseline
    # Set methods (store.sweep.methods.SET_METHODS): the runs of one group are one set, in
    # prompt_index order; a baseline of a set method is generated plainly from the same latents.
    method: str = "masactrl"
    method_params: dict = field(default_factory=dict)
    prompt_index: int = 0
    subject_words: tuple[str, ...] = ()
    is_baseline: bool = False


class Backend(Protocol):
    def load(self, key: LoadKey) -> None: ...
    def blocks(self) -> Sequence[str]: ...
    def generate(
        self, source: SourceJob, targets: list[TargetJob], step_callback: Callable[[int, int], None]
    ) -> Any: ...
    def after_oom(self) -> None: ...
