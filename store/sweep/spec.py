"""An experiment's sweep: base settings + axis texts, validated and expanded into run rows.

The run count is known before anything is queued, and every error names its field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .grammar import (
    Axis,
    SweepError,
    blocks_for_model,
    parse_values,
    prompt_words,
    resolve_layer_set,
)
from .methods import (
    CONSISTENT_SA,
    CONSISTORY,
    MASACTRL,
    METHODS,
    axis_problem,
    is_set_method,
    sweep_params,
)

DEFAULT_MODEL = "runwayml/stable-diffusion-v1-5"
# The offline tiny model (engine/tiny.py), built by the engine under <home>/models on first use.
# Offline tiny models any engine builds under <home>/models on first use (README, demo).
TINY_MODEL_NAMES = ("tiny", "tiny-sd", "demo")
TINY_SDXL_MODEL_NAMES = ("tiny-sdxl", "demo-sdxl")
MASK_MODES = ("off", "auto", "image")
MASK_TIMINGS = ("current", "previous")

# The swept fields, in the order the grid nests them (first = outermost).
AXES: dict[str, Axis] = {
    # The consistency method (store.sweep.methods): each value its own block of runs.
    "method": Axis("method", "enum", choices=tuple(METHODS)),
    "seeds": Axis("seeds", "int", minimum=0, maximum=2**63 - 1),
    # A source setting like the seed: each value is its own source pass (group_key).
    "inversion_guidance": Axis("inversion_guidance", "float", minimum=1.0),
    "layers": Axis("layers", "layers"),
    "start_step": Axis("start_step", "int", minimum=0),
    "final_step": Axis("final_step", "int", minimum=1, specials=("end",)),
    "skip_interval": Axis("skip_interval", "int", minimum=1),
    "mask_mode": Axis("mask_mode", "enum", choices=MASK_MODES),
    "mask_layers": Axis("mask_layers", "layers"),
    "mask_words": Axis("mask_words", "text", specials=("-",)),
    "mask_threshold": Axis("mask_threshold", "float", minimum=0.0, maximum=1.0, specials=("otsu",)),
    "mask_timing": Axis("mask_timing", "enum", choices=MASK_TIMINGS),
}
# The Run columns of a control setting (what ControlSpec.from_fields takes).
CONTROL_COLUMNS = (
    "layers",
    "start_step",
    "final_step",
    "skip_interval",
    "mask_mode",
    "mask_layers",
    "mask_words",
    "mask_threshold",
    "mask_timing",
)
MASK_AXES = ("mask_layers", "mask_words", "mask_threshold", "mask_timing")
# 1.0 inverts without classifier-free guidance: DDIM inversion error grows with guidance
# (Mokady et al., Null-text Inversion, 2023), so it is the better-behaved default; MasaCtrl's
# real-image notebook inverts at 7.5.
DEFAULT_INVERSION_GUIDANCE = "1"


@dataclass
class ExperimentSpec:
    """Base settings (one value each) and axis texts (sweep grammar)."""

    model: str = DEFAULT_MODEL
    source_prompt: str = "a photo of a dog"
    source_image: str | None = None  # a real image to invert instead of generating the source
    invert: bool = False
    inversion_guidance: str = (
        DEFAULT_INVERSION_GUIDANCE  # sweep grammar; used only with source_image
    )
    target_prompts: list[str] = field(default_factory=lambda: ["a photo of a dog on the beach"])
    num_steps: int = 50
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    baseline: bool = True  # add one no-control run per (prompt, seed)
    # Per method, its own parameters in sweep grammar ({"consistory": {"mask_dropout": "0,0.5"}});
    # a parameter not given takes the authors' default.
    method_params: dict[str, dict[str, str]] = field(default_factory=dict)
    # axes
    method: str = MASACTRL
    seeds: str = "0"
    layers: str = "decoder"
    start_step: str = "4"
    final_step: str = "end"
    skip_interval: str = "1"
    mask_mode: str = "off"
    mask_layers: str = "all"
    mask_words: str = "-"
    mask_threshold: str = "0.1"
    mask_timing: str = "current"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | dict) -> ExperimentSpec:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# The seed's four sweeps, ready to load into the sweep builder.
PRESETS: dict[str, dict[str, str]] = {
    "final step (4..20 / 4..25 / 4..end)": {
        "layers": "decoder",
        "start_step": "4",
        "final_step": "10,20,25,30,40,end",
        "skip_interval": "1",
    },
    "layer type (encoder vs decoder)": {
        "layers": "encoder,decoder",
        "start_step": "4",
        "final_step": "end",
        "skip_interval": "1",
    },
    "skip-step interval": {
        "layers": "decoder",
        "start_step": "4",
        "final_step": "end",
        "skip_interval": "1,2,3,5,10",
    },
    "start step": {
        "layers": "decoder",
        "start_step": "0,4,10,20,30",
        "final_step": "end",
        "skip_interval": "1",
    },
}


def parse_axes(spec: ExperimentSpec) -> dict[str, list]:
    """Parse every axis; raises the first SweepError (field, text, position)."""
    return {name: parse_values(axis, getattr(spec, name)) for name, axis in AXES.items()}


def model_problem(model: str) -> str | None:
    """Why `model` cannot be a base model, or None. A local-looking reference must be an existing
    folder now; a hub id (org/name) is checked when an engine loads it. The sweep builder, the
    concept editor, `mtp` and the engine all ask this one function."""
    from pathlib import Path

    m = (model or "").strip()
    if not m:
        return "needs a hub id (org/name) or a local folder"
    if m in TINY_MODEL_NAMES or m in TINY_SDXL_MODEL_NAMES:
        return None
    # org/name (and a bare legacy name) is a hub id; anything path-like must be a folder here.
    looks_local = m.startswith(("/", ".", "~")) or m.count("/") > 1 or "\\" in m
    if Path(m).expanduser().exists() and not Path(m).expanduser().is_dir():
        return f"{m} is a file, not a model folder"
    if looks_local and not Path(m).expanduser().is_dir():
        return f"folder {m} does not exist"
    return None


def mask_word_problem(words, target_prompt: str, source_prompt: str | None = None) -> str | None:
    """Why these mask words cannot build a mask for this prompt pair, or None.

    The mask is found from each word's cross-attention in the target and in the source, so every
    word must be a whole word of both prompts (a source that is an inverted image still has its
    prompt). One rule for the sweep builder, `mtp experiment create` and the engine."""
    words = words.split() if isinstance(words, str) else list(words)
    target = set(prompt_words(target_prompt))
    missing = [w for w in words if w.lower() not in target]
    if missing:
        return (
            f"{', '.join(map(repr, missing))} not in the prompt {target_prompt!r} "
            f"(mask words must be whole words of the target and the source prompt)"
        )
    if source_prompt is not None:
        source = set(prompt_words(source_prompt))
        missing = [w for w in words if w.lower() not in source]
        if missing:
            return (
                f"{', '.join(map(repr, missing))} not in the source prompt {source_prompt!r} "
                f"(mask words must be whole words of the target and the source prompt)"
            )
    return None


def source_prompt_for(class_word: str) -> str:
    """The source prompt a concept implies: its class word, so mask words like 'dog' match."""
    return f"a photo of a {class_word.strip()}" if class_word and class_word.strip() else ""


def controlled_steps(start: int, final: int, skip: int, num_steps: int | None = None) -> str:
    """The steps a control window really controls, both ends included, in the sweep grammar's
    own range notation (`4-20` is 4 through 20): start 2, final 4 (exclusive) -> "steps 2-3".
    One notation for run detail, `mtp runs`, `mtp show` and exports, so an exclusive final step
    is never shown as if it were controlled."""
    skip = max(1, int(skip or 1))
    end = final if num_steps is None else min(final, num_steps)
    of = f" of {num_steps}" if num_steps else ""
    if end <= start:
        return f"no steps controlled{of}"
    last = start + skip * ((end - 1 - start) // skip)
    if last == start:
        return f"step {start}{of}"
    every = f" every {skip}" if skip > 1 else ""
    return f"steps {start}-{last}{every}{of}"


def target_prompts_for(token: str, class_word: str) -> list[str]:
    """The default target prompts for a concept: the default scene with its token and class
    word ("a photo of sks corgi on the beach"), so the default never names another subject."""
    words = " ".join(w.strip() for w in (token or "", class_word or "") if w and w.strip())
    return [f"a photo of {words} on the beach"] if words else []


def validate_base(spec: ExperimentSpec) -> None:
    problem = model_problem(spec.model)
    if problem:
        raise SweepError("model", spec.model or "", 0, problem)
    prompts = [p for p in spec.target_prompts if p.strip()]
    if not prompts:
        raise SweepError("target_prompts", "", 0, "needs at least one target prompt")
    if not spec.source_prompt.strip() and not spec.source_image:
        raise SweepError(
            "source_prompt", spec.source_prompt, 0, "needs a source prompt or a reference image"
        )
    if spec.num_steps < 1 or spec.num_steps > 1000:
        raise SweepError("num_steps", str(spec.num_steps), 0, "must be between 1 and 1000")
    for name in ("width", "height"):
        v = getattr(spec, name)
        if v < 8 or v % 8:
            raise SweepError(name, str(v), 0, "must be a positive multiple of 8")
    if not isinstance(spec.guidance, (int, float)) or not math.isfinite(spec.guidance):
        # NaN slips past every comparison and the database refuses it only at insert.
        raise SweepError("guidance", str(spec.guidance), 0, "must be a finite number")
    if spec.guidance < 0:
        raise SweepError("guidance", str(spec.guidance), 0, "cannot be negative")
    if spec.invert and not spec.source_image:
        raise SweepError("source_image", "", 0, "inverting needs an image to invert")


def group_key(row: dict[str, Any], set_of: tuple | None = None) -> str:
    """Runs with equal keys share model, weights, source, seed, steps, guidance and size.

    ``set_of`` (method, method_params, is_baseline) makes the key a set's: the control columns
    join it, so each set of a set method is its own group."""
    parts = [
        row.get(k)
        for k in (
            "model",
            "weights_path",
            "weights_kind",
            "source_prompt",
            "source_image",
            "invert",
            "seed",
            "num_steps",
            "guidance",
            "width",
            "height",
        )
    ]
    # Appended only when set, so keys of runs without inversion stay what they were.
    if row.get("inversion_guidance") is not None:
        parts.append(row["inversion_guidance"])
    if set_of is not None:
        parts.append(["set", *set_of, *(row.get(k) for k in CONTROL_COLUMNS)])
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def expand(spec: ExperimentSpec, concept: Any | None = None) -> list[dict[str, Any]]:
    """The cartesian grid as a list of Run column dicts (baselines first per prompt x seed)."""
    validate_base(spec)
    axes = parse_axes(spec)
    blocks = blocks_for_model(spec.model)
    for name in ("layers", "mask_layers"):
        for expr in axes[name]:
            resolve_layer_set(expr, blocks, field=name)
    finals = [spec.num_steps if f == "end" else f for f in axes["final_step"]]
    for f in finals:
        if f > spec.num_steps:
            raise SweepError(
                "final_step",
                spec.final_step,
                spec.final_step.find(str(f)),
                f"final step {f} is beyond the {spec.num_steps} denoising steps",
            )
    for s in axes["start_step"]:
        if s >= spec.num_steps:
            raise SweepError(
                "start_step",
                spec.start_step,
                spec.start_step.find(str(s)),
                f"start step {s} is not before the {spec.num_steps} denoising steps",
            )
    for s, f in itertools.product(axes["start_step"], finals):
        if s >= f:
            raise SweepError(
                "start_step",
                spec.start_step,
                spec.start_step.find(str(s)),
                f"start step {s} is not before final step {f} (final is exclusive)",
            )
    inverting = bool(spec.invert or spec.source_image)
    if len(axes["inversion_guidance"]) > 1 and not inverting:
        raise SweepError(
            "inversion_guidance",
            spec.inversion_guidance,
            0,
            "several values only make sense with an image to invert",
        )
    inversion_guidances = [float(g) for g in axes["inversion_guidance"]] if inverting else [None]
    masks_on = [m for m in axes["mask_mode"] if m != "off"]
    if "image" in masks_on:
        raise SweepError(
            "mask_mode",
            spec.mask_mode,
            spec.mask_mode.find("image"),
            "mask_mode 'image' needs a mask file per run, which sweeps do not take yet; use auto or off",
        )
    prompts = [" ".join(p.split()) for p in spec.target_prompts if p.strip()]
    for words in axes["mask_words"]:
        # Only MasaCtrl reads a source; set methods check their words below.
        if words == "-" or not masks_on or MASACTRL not in axes["method"]:
            continue
        for prompt in prompts:
            problem = mask_word_problem(words, prompt, spec.source_prompt.strip())
            if problem:
                first = next(w for w in words.split() if repr(w) in problem)
                raise SweepError(
                    "mask_words", spec.mask_words, spec.mask_words.find(first), problem
                )

    method_params = _method_param_sets(spec, axes["method"])
    set_methods = [m for m in axes["method"] if is_set_method(m)]
    if set_methods and inverting:
        raise SweepError(
            "source_image",
            spec.source_image or "",
            0,
            f"{set_methods[0]} generates a set from its prompts and has no source image; "
            "drop the source image or the method",
        )
    refusal = axis_problem(
        axes["method"],
        mask_modes=axes["mask_mode"],
        mask_words=axes["mask_words"],
        mask_thresholds=axes["mask_threshold"],
        set_size=len(prompts),
        param_sets=method_params,
    )
    if refusal:
        name, why = refusal
        if name.startswith("method_params."):
            method, param = name.split(".")[1:]
            text = str((spec.method_params or {}).get(method, {}).get(param, ""))
        elif name == "target_prompts":
            text = " | ".join(prompts)
        else:
            text = str(getattr(spec, name, ""))
        raise SweepError(name, text, 0, why)
    if CONSISTORY in axes["method"]:
        # Its subject is named in every prompt of the set (a set has no source prompt).
        for words in axes["mask_words"]:
            for prompt in prompts:
                problem = mask_word_problem(words, prompt)
                if problem:
                    first = next(w for w in words.split() if repr(w) in problem)
                    raise SweepError(
                        "mask_words", spec.mask_words, spec.mask_words.find(first), problem
                    )

    base = {
        "model": spec.model.strip(),
        "weights_path": getattr(concept, "weights_path", None),
        "weights_kind": getattr(concept, "weights_kind", "none") or "none",
        "token": getattr(concept, "token", "") or "",
        "class_word": getattr(concept, "class_word", "") or "",
        "concept_id": getattr(concept, "id", None),
        "source_prompt": spec.source_prompt.strip(),
        "source_image": spec.source_image or None,
        "invert": inverting,
        "num_steps": spec.num_steps,
        "guidance": float(spec.guidance),
        "width": spec.width,
        "height": spec.height,
    }
    mask_variants: list[dict[str, Any]] = []
    for mode in axes["mask_mode"]:
        if mode == "off":
            mask_variants.append(
                {
                    "mask_mode": "off",
                    "mask_layers": "",
                    "mask_words": "",
                    "mask_threshold": None,
                    "mask_timing": "current",
                }
            )
            continue
        for ml, mw, mt, mtime in itertools.product(*(axes[a] for a in MASK_AXES)):
            mask_variants.append(
                {
                    "mask_mode": mode,
                    "mask_layers": ml,
                    "mask_words": "" if mw == "-" else mw,
                    "mask_threshold": None if mt == "otsu" else float(mt),
                    "mask_timing": mtime,
                }
            )

    rows: list[dict[str, Any]] = []
    for method in axes["method"]:
        if method == MASACTRL:
            rows += _masactrl_rows(
                spec, axes, base, prompts, finals, mask_variants, inversion_guidances
            )
        else:
            rows += _set_rows(spec, axes, base, prompts, finals, method, method_params[method])
    for i, row in enumerate(rows):
        row["grid_index"] = i
    return rows


def _method_param_sets(spec: ExperimentSpec, methods: list[str]) -> dict[str, list[str]]:
    """Per chosen method, every combination of its parameters (canonical JSON)."""
    given = spec.method_params or {}
    if not isinstance(given, dict):
        raise SweepError("method_params", str(given), 0, "must map a method to its parameters")
    for name, values in given.items():
        if name not in METHODS:
            raise SweepError(
                "method_params", str(name), 0, f"{name!r} is not one of {', '.join(METHODS)}"
            )
        if not isinstance(values, dict):
            raise SweepError(
                f"method_params.{name}", str(values), 0, "must map parameter names to values"
            )
    out = {}
    for method in methods:
        out[method] = sweep_params(method, _param_texts(given.get(method, {})))
    # Parameters of a method not chosen are checked too: a typo there should not wait until the
    # method is switched on.
    for method in set(given) - set(methods):
        sweep_params(method, _param_texts(given[method]))
    return out


def _param_texts(values: dict[str, Any]) -> dict[str, str]:
    """Spec-file values as sweep text: a JSON list is a comma list, true/false stay words."""

    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return ",".join(text(x) for x in v)
        return str(v)

    return {k: text(v) for k, v in values.items()}


_NEUTRAL_CONTROL = dict(
    layers="",
    start_step=0,
    final_step=0,
    skip_interval=1,
    mask_mode="off",
    mask_layers="",
    mask_words="",
    mask_threshold=None,
    mask_timing="current",
)


def _masactrl_rows(spec, axes, base, prompts, finals, mask_variants, inversion_guidances):
    """MasaCtrl: per prompt x seed a baseline and every control variant, one source pass each."""
    rows = []
    for p_index, prompt in enumerate(prompts):
        for seed, inv_guidance in itertools.product(axes["seeds"], inversion_guidances):
            shared = dict(
                base,
                seed=seed,
                inversion_guidance=inv_guidance,
                target_prompt=prompt,
                prompt_index=p_index,
            )
            shared["group_key"] = group_key(shared)
            shared.update(method=MASACTRL, method_params="")
            if spec.baseline:
                rows.append(dict(shared, is_baseline=True, **_NEUTRAL_CONTROL))
            for layers, start, final, skip, mask in itertools.product(
                axes["layers"], axes["start_step"], finals, axes["skip_interval"], mask_variants
            ):
                rows.append(
                    dict(
                        shared,
                        is_baseline=False,
                        layers=layers,
                        start_step=start,
                        final_step=final,
                        skip_interval=skip,
                        **mask,
                    )
                )
    return rows


def _one_set(shared, prompts, control, params, baseline):
    key = group_key(dict(shared, **control), set_of=(shared["method"], params, baseline))
    return [
        dict(
            shared,
            **control,
            method_params=params,
            is_baseline=baseline,
            target_prompt=prompt,
            prompt_index=i,
            group_key=key,
        )
        for i, prompt in enumerate(prompts)
    ]


def _set_mask_variants(axes, method):
    """What the mask axes give a set method: nothing for consistent_sa (no mask), ConsiStory's
    subject mask (always on, from the mask words, Otsu) for consistory."""
    if method == CONSISTENT_SA:
        return [
            {k: _NEUTRAL_CONTROL[k] for k in ("mask_mode", "mask_layers", "mask_words")}
            | {"mask_threshold": None, "mask_timing": "current"}
        ]
    return [
        {
            "mask_mode": "auto",
            "mask_layers": ml,
            "mask_words": mw,
            "mask_threshold": None,
            "mask_timing": mtime,
        }
        for ml, mw, mtime in itertools.product(
            axes["mask_layers"], axes["mask_words"], axes["mask_timing"]
        )
    ]


def _set_rows(spec, axes, base, prompts, finals, method, param_sets):
    """A set method: the target prompts are one set. Per seed a baseline set, then one set per
    (parameters, layers, step window, mask) value; a set's runs share one group_key and differ in
    prompt_index, so a claim takes them together."""
    rows = []
    for seed in axes["seeds"]:
        shared = dict(base, seed=seed, inversion_guidance=None, method=method)
        if spec.baseline:
            rows += _one_set(shared, prompts, dict(_NEUTRAL_CONTROL), "", True)
        for params, layers, start, final, skip, mask in itertools.product(
            param_sets,
            axes["layers"],
            axes["start_step"],
            finals,
            axes["skip_interval"],
            _set_mask_variants(axes, method),
        ):
            control = dict(
                layers=layers, start_step=start, final_step=final, skip_interval=skip, **mask
            )
            rows += _one_set(shared, prompts, control, params, False)
    return rows


def swept_axes(spec: ExperimentSpec) -> list[str]:
    """Axes with more than one value: what the results screen offers to group by."""
    axes = parse_axes(spec)
    out = [name for name, values in axes.items() if len(values) > 1]
    if len([p for p in spec.target_prompts if p.strip()]) > 1:
        out.append("target_prompt")
    if any(
        len(sweep_params(m, _param_texts((spec.method_params or {}).get(m, {})))) > 1
        for m in axes["method"]
    ):
        out.append("method_params")
    return out
