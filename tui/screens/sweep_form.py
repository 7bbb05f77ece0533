"""The sweep builder's form as data, apart from its widgets: which field holds what, the form's
values -> an ExperimentSpec (`read_spec`), an ExperimentSpec -> the fields' texts (`field_texts`).
The screen (`sweep.SweepScreen`) only moves these between its widgets and the store; drafts
(snapshot/restore) are these same values kept as a dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from store.errors import InputError

# Base settings typed as numbers: field -> (label, type).
BASE_NUMBERS = {
    "num_steps": ("Steps", int),
    "guidance": ("Guidance", float),
    "width": ("Width", int),
    "height": ("Height", int),
}

# Field names of method parameters: method_params.<method>.<parameter>, as SweepError names them.
PARAM_PREFIX = "method_params."


class BaseFieldError(InputError):
    """A base setting that is not a number; shaped like SweepError so the field shows it."""

    def __init__(self, field: str, text: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.text, self.pos, self.message = field, text, -1, message


def param_field_name(method: str, param: str) -> str:
    return f"{PARAM_PREFIX}{method}.{param}"


def read_spec(
    values: Mapping[str, str],
    targets_text: str,
    baseline: bool,
    methods: Iterable[str] = (),
):
    """The form's values as an ExperimentSpec: `values` maps every field name (method
    parameters as `param_field_name`) to its text; a non-number in a base field raises
    BaseFieldError. Method parameters are read for the `methods` chosen."""
    from store.sweep.spec import AXES, ExperimentSpec

    spec = ExperimentSpec()
    spec.source_prompt = values["source_prompt"]
    spec.source_image = values["source_image"].strip() or None
    spec.invert = bool(spec.source_image)
    spec.model = values["model"].strip()
    spec.target_prompts = [p.strip() for p in targets_text.splitlines() if p.strip()]
    spec.baseline = baseline
    for name, (_, kind) in BASE_NUMBERS.items():
        try:
            setattr(spec, name, kind(values[name].strip()))
        except ValueError:
            raise BaseFieldError(
                name,
                values[name],
                f"{values[name]!r} is not a {'whole ' if kind is int else ''}number",
            ) from None
    for name in AXES:
        setattr(spec, name, values[name])
    params: dict[str, dict[str, str]] = {}
    for method in methods:
        prefix = f"{PARAM_PREFIX}{method}."
        params[method] = {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}
    spec.method_params = params
    return spec


def field_texts(spec, names: Iterable[str]) -> dict[str, str]:
    """The text each of the spec's own fields shows (not the name, not method parameters)."""
    out = {}
    for name in names:
        if name == "name" or name.startswith(PARAM_PREFIX):
            continue
        value = getattr(spec, name, None)
        out[name] = "" if value is None else str(value)
    return out
