"""The consistency methods mtp compares, and each method's own parameters (torch-free data).

A run's `method` names one of METHODS; `method_params` holds that method's parameters as canonical
JSON (`canonical_params`), defaults filled in, so equal settings give equal text and equal group
keys. Defaults are the authors' (StoryDiffusion's `gradio_app_sdxl_specific_id_low_vram.py`,
ConsiStory's `consistory_run.py`). The layer / step window / mask axes keep their meaning per method
as `AXIS_MEANING` says; `axis_problem` refuses combinations that mean nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .grammar import SweepError


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "float" | "int" | "bool" | "choice"
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    help: str = ""

    def coerce(self, value: Any) -> Any:
        try:
            if self.kind == "bool":
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low in ("1", "true", "yes", "on"):
                        return True
                    if low in ("0", "false", "no", "off"):
                        return False
                    raise ValueError(value)
                return bool(value)
            if self.kind == "choice":
                text = str(value).strip()
                if text not in self.choices:
                    raise ValueError(value)
                return text
            number = int(value) if self.kind == "int" else float(value)
        except (TypeError, ValueError):
            want = "/".join(self.choices) if self.kind == "choice" else self.kind
            raise SweepError(self.name, str(value), -1, f"not a valid {want}") from None
        if self.minimum is not None and number < self.minimum:
            raise SweepError(self.name, str(value), -1, f"below the minimum {self.minimum}")
        if self.maximum is not None and number > self.maximum:
            raise SweepError(self.name, str(value), -1, f"above the maximum {self.maximum}")
        return number


MASACTRL = "masactrl"
CONSISTENT_SA = "consistent_sa"
CONSISTORY = "consistory"

METHODS: dict[str, tuple[Param, ...]] = {
    # MasaCtrl's knobs are the existing axes (layers, step window, mask): no own parameters.
    MASACTRL: (),
    CONSISTENT_SA: (
        Param("sa_rate_low", "float", 0.5, 0.0, 1.0, help="token sampling rate, low-res layers"),
        Param("sa_rate_high", "float", 0.5, 0.0, 1.0, help="token sampling rate, other layers"),
        Param("skip_early", "float", 0.3, 0.0, 1.0, help="skip a layer call when U(0,1) <= this"),
        Param("skip_late", "float", 0.1, 0.0, 1.0, help="...from skip_switch on"),
        Param("skip_switch", "int", 20, 0, help="step from which skip_late applies"),
        # Images with prompt_index >= id_length are generated one by one against the bank the
        # first id_length images wrote (the authors' read mode); 0 = every image in write mode.
        Param("id_length", "int", 0, 0, help="images written jointly; later ones read the bank"),
        Param("draws", "choice", "seeded", choices=("seeded", "authors"), help="random draws"),
    ),
    CONSISTORY: (
        Param("n_anchors", "int", 2, 1, help="anchor images that share with every image"),
        Param("mask_dropout", "float", 0.5, 0.0, 1.0, help="subject-mask dropout"),
        Param("query_blend", "bool", True, help="vanilla-query blending in the first n//10 steps"),
        Param("inject", "bool", True, help="DIFT feature injection (a second pass)"),
        Param("inject_alpha", "float", 0.8, 0.0, 1.0, help="injection strength"),
        # Images with prompt_index >= n_anchors are generated one by one against the cached
        # anchors (the authors' anchor mode) when True; else the whole set is one batch.
        Param("anchor_mode", "bool", False, help="extra images against cached anchors"),
        Param("draws", "choice", "seeded", choices=("seeded", "authors"), help="random draws"),
    ),
}
SET_METHODS = (CONSISTENT_SA, CONSISTORY)

# What each existing axis means per method; None = the method has no such knob (refused when set
# to anything but its neutral value).
AXIS_MEANING: dict[str, dict[str, str | None]] = {
    MASACTRL: {
        "layers": "self-attention layers whose targets read the source's keys/values",
        "step window": "steps in which targets read the source",
        "mask": "restrict reading to the subject (foreground to foreground)",
    },
    CONSISTENT_SA: {
        "layers": "self-attention layers that share tokens across the set (authors: up_blocks)",
        "step window": "steps with sharing (authors: 1..end; step 0 never shares)",
        "mask": None,
    },
    CONSISTORY: {
        "layers": "self-attention layers that share subject tokens (authors: up_blocks)",
        "step window": "steps with sharing (authors: 1..end)",
        "mask": "subject masks from the mask words' cross-attention (auto, otsu threshold)",
    },
}


def params_of(method: str) -> tuple[Param, ...]:
    try:
        return METHODS[method]
    except KeyError:
        raise SweepError("method", method, -1, f"not one of {', '.join(METHODS)}") from None


def canonical_params(method: str, given: dict[str, Any] | str | None = None) -> str:
    """Every parameter of `method`, defaults filled in, as sorted JSON ("" for none)."""
    schema = params_of(method)
    raw = json.loads(given) if isinstance(given, str) and given else dict(given or {})
    names = {p.name for p in schema}
    unknown = sorted(set(raw) - names)
    if unknown:
        allowed = ", ".join(sorted(names)) or "none"
        raise SweepError(
            f"{method} parameters", unknown[0], -1, f"unknown parameter (its parameters: {allowed})"
        )
    if not schema:
        return ""
    values = {p.name: p.coerce(raw[p.name]) if p.name in raw else p.default for p in schema}
    return json.dumps(values, sort_keys=True)


def decode_params(method: str, text: str | None) -> dict[str, Any]:
    """The parameters a run stores, with defaults for any the text lacks."""
    return json.loads(canonical_params(method, text or None) or "{}")
