"""What a target's mutual self-attention control does: which steps, which layers, which mask.

Torch-free on purpose: the TUI and the store validate specs while the user types, and the
worker builds specs from Run rows, without paying for (or needing) torch.

Steps are 0-based denoising steps (one UNet call each); ``final_step`` is exclusive.
Layers are 0-based execution-order indices of the UNet's transformer blocks (SD1.x: 0-5
encoder, 6 mid, 7-15 decoder), written as layer-set expressions (see ``store.sweep.grammar``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from store.sweep.grammar import SweepError, resolve_layer_set
from store.sweep.spec import MASK_MODES, MASK_TIMINGS, mask_word_problem

# MasaCtrl's defaults: start_step=4, start_layer=10 of SD1.x's 16 blocks, to the end.
from .errors import EngineError

DEFAULT_LAYERS = "10-15"
DEFAULT_START_STEP = 4
DEFAULT_MASK_LAYERS = "all"
DEFAULT_MASK_THRESHOLD = 0.1


class ControlError(EngineError, ValueError):
    """An invalid control setting; ``field`` names the Run column / spec field at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class MaskSpec:
    """Restrict mutual self-attention to foreground->foreground and background->background.

    mode: ``off``; ``auto`` (MasaCtrl MaskAuto: masks from cross-attention maps); ``image``
        (``image`` is a user mask file used as both source and target mask).
    layers: layer-set expression of the cross-attention layers whose maps are averaged; only
        those whose spatial size is the map resolution contribute.
    words: target-prompt words whose tokens' maps are summed for the target mask; the source
        mask uses those of them found in the source prompt. Empty means every word.
    threshold: binarisation level of the min-max normalised map; None means Otsu.
    timing: ``current`` uses maps of layers already run in the same step, ``previous`` the
        maps of the previous step.
    res: side of the maps; None means latent side / 4 (16 for 512 px, as in MasaCtrl).
    """

    mode: str = "off"
    layers: str = DEFAULT_MASK_LAYERS
    words: tuple[str, ...] = ()
    threshold: float | None = DEFAULT_MASK_THRESHOLD
    timing: str = "current"
    image: str | None = None
    res: int | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def layer_indices(self, blocks: Sequence[str]) -> frozenset[int]:
        try:
            return frozenset(resolve_layer_set(self.layers, blocks, field="mask_layers"))
        except SweepError as exc:
            raise ControlError("mask_layers", exc.message) from None

    def validate(
        self, blocks: Sequence[str], prompt: str | None = None, source_prompt: str | None = None
    ) -> None:
        """`prompt` is the target prompt; with `source_prompt` too, mask words must be in both."""
        if self.mode not in MASK_MODES:
            raise ControlError("mask_mode", f"{self.mode!r} is not one of {', '.join(MASK_MODES)}")
        if not self.enabled:
            return
        if self.timing not in MASK_TIMINGS:
            raise ControlError(
                "mask_timing", f"{self.timing!r} is not one of {', '.join(MASK_TIMINGS)}"
            )
        if self.threshold is not None and not (0.0 < float(self.threshold) < 1.0):
            raise ControlError(
                "mask_threshold",
                f"threshold {self.threshold} must lie strictly between 0 and 1 (or be empty for Otsu)",
            )
        if self.res is not None and int(self.res) < 1:
            raise ControlError("mask_res", f"map resolution {self.res} must be at least 1")
        if self.mode == "image" and not self.image:
            raise ControlError("mask_image", "mask mode 'image' needs a mask image path")
        self.layer_indices(blocks)
        if prompt is not None and self.mode == "auto" and self.words:
            problem = mask_word_problem(self.words, prompt, source_prompt)
            if problem:
                raise ControlError("mask_words", problem)


@dataclass(frozen=True)
class ControlSpec:
    """Mutual self-attention (MasaCtrl) for one target: where and when it attends to the source.

    Control is active at step s and layer l when s is in ``steps(num_steps)`` and l is in
    ``layer_indices(blocks)``. ``final_step`` is exclusive; None means ``num_steps``.
    """

    layers: str = DEFAULT_LAYERS
    start_step: int = DEFAULT_START_STEP
    final_step: int | None = None
    skip_interval: int = 1
    mask: MaskSpec = field(default_factory=MaskSpec)

    def final(self, num_steps: int) -> int:
        return num_steps if self.final_step is None else int(self.final_step)

    def steps(self, num_steps: int) -> frozenset[int]:
        return frozenset(
            range(
                int(self.start_step),
                min(self.final(num_steps), num_steps),
                max(1, int(self.skip_interval)),
            )
        )

    def layer_indices(self, blocks: Sequence[str]) -> frozenset[int]:
        try:
            return frozenset(resolve_layer_set(self.layers, blocks, field="layers"))
        except SweepError as exc:
            raise ControlError("layers", exc.message) from None

    def validate(
        self,
        num_steps: int,
        blocks: Sequence[str],
        prompt: str | None = None,
        source_prompt: str | None = None,
    ) -> None:
        """Raise ControlError naming the first bad field; ``prompt`` is the target prompt."""
        if int(num_steps) < 1:
            raise ControlError("num_steps", f"num_steps {num_steps} must be at least 1")
        if int(self.skip_interval) < 1:
            raise ControlError(
                "skip_interval", f"skip interval {self.skip_interval} must be at least 1"
            )
        if int(self.start_step) < 0:
            raise ControlError("start_step", f"start step {self.start_step} must not be negative")
        if int(self.start_step) >= num_steps:
            raise ControlError(
                "start_step",
                f"start step {self.start_step} is beyond the run's {num_steps} steps (0-{num_steps - 1})",
            )
        final = self.final(num_steps)
        if final > num_steps:
            raise ControlError(
                "final_step",
                f"final step {final} is beyond the run's {num_steps} steps (it is exclusive: at most {num_steps})",
            )
        if final <= int(self.start_step):
            raise ControlError(
                "final_step",
                f"final step {final} must be greater than the start step {self.start_step} (it is exclusive)",
            )
        if not self.layer_indices(blocks):
            raise ControlError("layers", f"layer set {self.layers!r} selects no transformer block")
        self.mask.validate(blocks, prompt, source_prompt)

    @classmethod
    def from_fields(
        cls,
        layers: str | None = None,
        start_step: int | None = None,
        final_step: int | None = None,
        skip_interval: int | None = None,
        mask_mode: str | None = None,
        mask_layers: str | None = None,
        mask_words: str | Sequence[str] | None = None,
        mask_threshold: float | None = None,
        mask_timing: str | None = None,
        mask_image: str | None = None,
        mask_res: int | None = None,
        **_other_columns: Any,
    ) -> ControlSpec:
        """Build a spec from Run columns; other columns of the row are ignored.

        Empty strings / None fall back to the defaults, except ``mask_threshold`` where None
        means Otsu (the Run column's meaning).
        """
        if isinstance(mask_words, str):
            words = tuple(mask_words.split())
        else:
            words = tuple(mask_words or ())
        mask = MaskSpec(
            mode=(mask_mode or "off").strip().lower(),
            layers=(mask_layers or "").strip() or DEFAULT_MASK_LAYERS,
            words=words,
            threshold=None if mask_threshold is None else float(mask_threshold),
            timing=(mask_timing or "current").strip().lower(),
            image=mask_image or None,
            res=None if mask_res is None else int(mask_res),
        )
        return cls(
            layers=(layers or "").strip() or DEFAULT_LAYERS,
            start_step=DEFAULT_START_STEP if start_step is None else int(start_step),
            final_step=None if final_step is None else int(final_step),
            skip_interval=1 if skip_interval is None else int(skip_interval),
            mask=mask,
        )
