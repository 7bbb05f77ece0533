"""The consistency methods mtp compares, and each method's own parameters (torch-free data).

A run's `method` names one of METHODS; `method_params` holds that method's parameters as canonical
JSON (`canonical_params`), defaults filled in, so equal settings give equal text and equal group
keys. Defaults are the authors' (StoryDiffusion's `gradio_app_sdxl_specific_id_low_vram.py`,
ConsiStory's `consistory_run.py`). The layer / step window / mask axes keep their meaning per method
as `AXIS_MEANING` says; `axis_problem` refuses combinations that mean nothing.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .grammar import Axis, SweepError, parse_values


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
            raise SweepError(self.name, str(value), 0, f"{value!r} is not a valid {want}") from None
        if self.minimum is not None and number < self.minimum:
            raise SweepError(self.name, str(value), 0, f"{number} is below {self.minimum}")
        if self.maximum is not None and number > self.maximum:
            raise SweepError(self.name, str(value), 0, f"{number} is above {self.maximum}")
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
        raise SweepError(
            "method", str(method), 0, f"{method!r} is not one of {', '.join(METHODS)}"
        ) from None


def canonical_params(method: str, given: dict[str, Any] | str | None = None) -> str:
    """Every parameter of `method`, defaults filled in, as sorted JSON ("" for none)."""
    schema = params_of(method)
    raw = json.loads(given) if isinstance(given, str) and given else dict(given or {})
    names = {p.name for p in schema}
    unknown = sorted(set(raw) - names)
    if unknown:
        allowed = ", ".join(sorted(names)) or "none"
        raise SweepError(
            f"method_params.{method}",
            str(unknown[0]),
            0,
            f"unknown parameter {unknown[0]!r} (its parameters: {allowed})",
        )
    if not schema:
        return ""
    values = {p.name: p.coerce(raw[p.name]) if p.name in raw else p.default for p in schema}
    return json.dumps(values, sort_keys=True)


def decode_params(method: str, text: str | None) -> dict[str, Any]:
    """The parameters a run stores, with defaults for any the text lacks."""
    return json.loads(canonical_params(method, text or None) or "{}")


def is_set_method(method: str) -> bool:
    """A set method generates the experiment's target prompts jointly, as one set."""
    return method in SET_METHODS


def parse_methods(text: str) -> list[str]:
    """The `method` axis: comma-separated method names, order kept, duplicates dropped."""
    return parse_values(Axis("method", "enum", choices=tuple(METHODS)), text or "")


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def param_axis(method: str, param: Param) -> Axis:
    """How a parameter's text is read: the sweep grammar of an axis of its kind."""
    name = f"method_params.{method}.{param.name}"
    if param.kind in ("int", "float"):
        return Axis(name, param.kind, minimum=param.minimum, maximum=param.maximum)
    if param.kind == "bool":
        return Axis(name, "enum", choices=_BOOL_WORDS)
    return Axis(name, "enum", choices=param.choices)


def default_text(param: Param) -> str:
    """A parameter's default as the text a field shows."""
    if param.kind == "bool":
        return "true" if param.default else "false"
    return str(param.default)


def sweep_params(method: str, given: dict[str, Any] | None = None) -> list[str]:
    """Every combination of `method`'s parameter values as canonical JSON (defaults filled in).

    Each given value is sweep grammar ("0,0.5", "0.1-0.5 [5]", "true,false"); one combination
    per element of the cartesian product, in field order. [""] for a method without parameters.
    """
    schema = params_of(method)
    given = dict(given or {})
    unknown = sorted(set(given) - {p.name for p in schema})
    if unknown:
        allowed = ", ".join(p.name for p in schema) or "none"
        raise SweepError(
            f"method_params.{method}",
            str(unknown[0]),
            0,
            f"unknown parameter {unknown[0]!r} (its parameters: {allowed})",
        )
    lists: list[list[Any]] = []
    for p in schema:
        if p.name not in given or str(given[p.name]).strip() == "":
            lists.append([p.default])
            continue
        axis = param_axis(method, p)
        text = given[p.name]
        if isinstance(text, bool):
            text = "true" if text else "false"
        text = str(text)
        try:
            values = parse_values(axis, text)
            lists.append([p.coerce(v) for v in values])
        except SweepError as exc:
            if exc.field == axis.name:
                raise
            # Param.coerce names the parameter alone: say which method's field it is.
            raise SweepError(axis.name, text, 0, exc.message) from None
    if not schema:
        return [""]
    return [
        json.dumps(dict(zip((p.name for p in schema), combo)), sort_keys=True)
        for combo in itertools.product(*lists)
    ]


def parse_param_option(text: str) -> tuple[str, str, str]:
    """`--param method.name=values` -> (method, name, values); the values stay sweep grammar."""
    head, sep, values = (text or "").partition("=")
    method, dot, name = head.strip().partition(".")
    if not sep or not dot or not method or not name or not values.strip():
        raise SweepError(
            "param",
            text or "",
            0,
            "expected METHOD.NAME=VALUES, e.g. consistory.mask_dropout=0,0.5",
        )
    if method not in METHODS:
        raise SweepError("param", text, 0, f"{method!r} is not one of {', '.join(METHODS)}")
    if name not in {p.name for p in METHODS[method]}:
        allowed = ", ".join(p.name for p in METHODS[method]) or "none"
        raise SweepError(
            "param",
            text,
            len(method) + 1,
            f"{method} has no parameter {name!r} (its parameters: {allowed})",
        )
    return method, name.strip(), values.strip()


def axis_problem(
    methods: list[str],
    *,
    mask_modes: Sequence[str] = ("off",),
    mask_words: Sequence[str] = ("-",),
    mask_thresholds: Sequence[Any] = ("otsu",),
    set_size: int = 0,
    param_sets: dict[str, list[str]] | None = None,
) -> tuple[str, str] | None:
    """(field, why) when an axis value means nothing to every chosen method that would get it.

    Each method takes the axis values that mean something to it (AXIS_MEANING): consistent_sa has
    no mask, ConsiStory's mask is always its subject mask (the mask words', Otsu threshold) and
    MasaCtrl takes them all. So a mask on consistent_sa alone is refused, ConsiStory without
    subject words is refused, a numeric threshold nobody uses is refused, and a set method needs
    a set (and its parameters must fit in it).
    """
    masks_on = [m for m in mask_modes if m != "off"]
    masactrl_masked = MASACTRL in methods and bool(masks_on)
    if masks_on and not any(AXIS_MEANING[m]["mask"] is not None for m in methods):
        return (
            "mask_mode",
            f"{', '.join(methods)} has no subject mask (it shares sampled tokens of the whole "
            "image): use mask_mode off",
        )
    if CONSISTORY in methods:
        if any(w in ("-", "") for w in mask_words):
            return (
                "mask_words",
                "consistory needs the subject word(s) whose cross-attention makes its subject "
                "masks (a word of every target prompt)",
            )
        if not masactrl_masked and any(t not in (None, "otsu") for t in mask_thresholds):
            return (
                "mask_threshold",
                "consistory thresholds its subject maps with Otsu's method: use otsu",
            )
    for method in methods:
        if not is_set_method(method):
            continue
        if set_size < 2:
            return (
                "target_prompts",
                f"{method} generates the target prompts as one set: give at least 2 target prompts",
            )
        for params in (param_sets or {}).get(method, [""]):
            p = decode_params(method, params)
            if method == CONSISTORY and p["n_anchors"] > set_size:
                return (
                    f"method_params.{method}.n_anchors",
                    f"{p['n_anchors']} anchors in a set of {set_size} images "
                    "(at most the set size)",
                )
            if method == CONSISTENT_SA and p["id_length"] > set_size:
                return (
                    f"method_params.{method}.id_length",
                    f"{p['id_length']} images written jointly in a set of {set_size} "
                    "(at most the set size)",
                )
    return None
