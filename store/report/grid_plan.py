"""Which run goes in which cell of an image grid (A1111 X/Y/Z style), before any pixels.

Rows are the values of the Y axis, columns those of X, and an optional Z axis makes one panel
per value. Every other axis that the experiment varies is *pinned* to one value: the user's
(``pins``), else the value of the first run in sweep order that fits the user's pins and the
chosen axes. The pins are part of the plan and printed on the grid, so a grid by final step
never silently shows "seed 0 only". Seeds may instead be laid out as one row per seed
(``seeds="each"``).

An axis only constrains the runs it applies to: control settings (layers, steps, masks) do not
apply to baselines, and the mask details (layers, words, threshold, timing) do not apply to runs
with the mask off. So pinning ``mask_threshold=0.2`` keeps the baselines, and a grid across
``mask_mode`` still shows its ``off`` column.

Baselines (control off) appear as the first row when Y is a control axis, as a column after the
source when only X is, and not at all when both axes are base settings (the caption says so).
The source the targets attended to is a column when each row shares one source pass, a row when
each column does, and left out (with a note) when sources differ cell by cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from sqlalchemy import select

from store.db import Store
from store.models import OTSU, Concept, Run
from store.sweep.methods import SET_METHODS

from .aggregate import GROUPABLE, _fmt, iter_rows

CONTROL_AXES = (
    "method_params",  # a baseline has none: it is the plain generation of its set
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
# A set method's mask is fixed by the method (consistent_sa: none; consistory: its subject mask
# with Otsu's threshold), so these axes do not apply to its runs.
NOT_SET_KNOBS = ("mask_mode", "mask_threshold")
MASK_DETAIL = ("mask_layers", "mask_words", "mask_threshold", "mask_timing")
# prompt_index and target_prompt are one axis: the index keys it, the text labels it.
ALIASES = {
    "prompt_index": "target_prompt",
    "prompt": "target_prompt",
    "concept": "concept_id",
    "seeds": "seed",
}
GRID_AXES = tuple(a for a in GROUPABLE if a != "prompt_index")
_KEY_COLUMN = {"target_prompt": "prompt_index"}
_COLUMNS = (
    "id",
    "is_baseline",
    "grid_index",
    "status",
    "image_path",
    "source_image_path",
    "group_key",
    "target_prompt",
    "prompt_index",
    "concept_id",
) + GRID_AXES

BASELINE = ("baseline",)


def _input_error(message: str):
    from store.queries import InputError

    return InputError(message)


def canonical_axis(name: str, option: str = "axis") -> str:
    axis = ALIASES.get(name.strip(), name.strip())
    if axis not in GRID_AXES:
        raise _input_error(
            f"{option}: {name!r} is not a grid axis; choose one of {', '.join(GRID_AXES)}"
        )
    return axis


def applies(axis: str, run: Mapping[str, Any]) -> bool:
    """Whether ``axis`` means anything for ``run`` (see the module docstring)."""
    if axis in CONTROL_AXES and run["is_baseline"]:
        return False
    if axis in MASK_DETAIL and run["mask_mode"] == "off":
        return False
    if axis == "method_params" and not run["method_params"]:
        return False  # MasaCtrl has no parameters of its own
    if axis in NOT_SET_KNOBS and run["method"] in SET_METHODS:
        return False
    return True


def key_of(axis: str, run: Mapping[str, Any]) -> Any:
    return run[_KEY_COLUMN.get(axis, axis)]


@dataclass
class Axis:
    name: str
    values: list[Any]  # keys in sweep order
    labels: dict[Any, str]  # key -> value as written on the grid

    def label(self, key: Any) -> str:
        return self.labels.get(key, _fmt(key))

    def named(self, key: Any) -> str:
        """``axis=value``, or the bare prompt text for prompts."""
        text = self.label(key)
        return text if self.name == "target_prompt" else f"{self.name}={text}"

    def find(self, given: Any, option: str) -> Any:
        """The key of a value given on the command line or in the TUI (text, number, prompt index)."""
        if any(given == v and type(given) is type(v) for v in self.values):
            return given
        text = str(given).strip()
        for v in self.values:
            if text in (self.label(v), str(v), _fmt(v)):
                return v
        for v in self.values:
            if v is None and text.lower() in ("none", "otsu", "-", ""):
                return v
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                try:
                    if math.isclose(float(text), float(v)):
                        return v
                except ValueError:
                    pass
        shown = ", ".join(self.label(v) for v in self.values[:12]) + (
            " ..." if len(self.values) > 12 else ""
        )
        raise _input_error(f"{option}: {self.name} has no value {text!r}; it takes {shown}")


@dataclass
class Panel:
    z: Any  # the Z key, or None without a Z axis
    title: str
    cells: dict[tuple[Any, Any], dict] = field(default_factory=dict)  # (row key, col key) -> run
    sources: dict[Any, dict] = field(
        default_factory=dict
    )  # row or column key -> run whose source to show


@dataclass
class GridPlan:
    x: Axis
    y: Axis
    z: Axis | None
    seeds: str | None  # "each" when seeds are rows, else None
    pins: dict[str, Any]  # axis -> key, user's and defaulted
    user_pins: set[str]
    swept: list[str]  # every axis the experiment varies
    row_keys: list[tuple]  # ("baseline"[, seed]) or ("value", y key[, seed])
    col_keys: list[tuple]  # ("baseline",) or ("value", x key)
    panels: list[Panel]
    source_mode: str  # "column" | "row" | "none"
    baseline_note: str = ""
    ambiguous: int = 0  # cells where several runs fit (lowest grid index shown)
    axes: dict[str, Axis] = field(default_factory=dict)

    def row_label(self, key: tuple) -> str:
        head = "baseline" if key[0] == "baseline" else self.y.named(key[1])
        return f"{head}, seed {key[-1]}" if self.seeds == "each" else head

    def col_label(self, key: tuple) -> str:
        if key[0] == "baseline":
            return "baseline"
        if self.x.name == "seed":
            return f"seed {self.x.label(key[1])}"
        return self.x.named(key[1])

    @property
    def pin_text(self) -> str:
        return ", ".join(f"{a}={self.axes[a].label(k)}" for a, k in self.pins.items())

    def caption(self) -> list[str]:
        """What the grid shows, in words: axes, pins, how seeds and baselines appear."""
        head = f"rows: {self.y.name}, columns: {self.x.name}" + (
            f", one panel per {self.z.name}" if self.z else ""
        )
        lines = [head]
        lines.append(
            f"pinned: {self.pin_text}" if self.pins else "pinned: nothing (no other axis varies)"
        )
        if self.seeds == "each":
            lines.append("one row per seed")
        notes = [self.baseline_note] if self.baseline_note else []
        if self.source_mode == "none":
            notes.append("sources differ cell by cell: not shown")
        if self.ambiguous:
            notes.append(f"{self.ambiguous} cells fit several runs: lowest grid index shown")
        if notes:
            lines.append("; ".join(notes))
        return lines


def _load_runs(store: Store, experiment_id: int) -> list[dict]:
    t = Run.__table__
    names = list(dict.fromkeys(_COLUMNS))
    q = (
        select(*(t.c[c] for c in names))
        .where(t.c.experiment_id == experiment_id)
        .order_by(t.c.grid_index, t.c.id)
    )
    # The raw cursor path of iter_rows: ORM result processing doubled the time of a 100k-run plan.
    # SQLite hands booleans back as 0/1, which is all the plan needs of them.
    return [dict(zip(names, row)) for chunk in iter_rows(store, q) for row in chunk]


def _axes(store: Store, runs: list[dict]) -> dict[str, Axis]:
    names: dict[Any, str] = {}
    if any(r["concept_id"] is not None for r in runs):
        with store.session() as s:
            names = dict(s.execute(select(Concept.id, Concept.name)).all())
    out = {}
    # Runs come in sweep order, so first occurrences give each axis its sweep order. The runs an
    # axis applies to are filtered once, not once per axis, and read with itemgetter: the
    # per-axis generator passes were a third of a 100k-run plan.
    controlled = [r for r in runs if not r["is_baseline"]]
    masked = [r for r in controlled if r["mask_mode"] != "off"]
    for axis in GRID_AXES:
        col = _KEY_COLUMN.get(axis, axis)
        pool = masked if axis in MASK_DETAIL else controlled if axis in CONTROL_AXES else runs
        if axis == "method_params" or axis in NOT_SET_KNOBS:
            pool = [r for r in pool if applies(axis, r)]
        values = list(dict.fromkeys(map(itemgetter(col), pool)))
        labels: dict[Any, str] = {}
        if axis == "target_prompt":
            labels = {r["prompt_index"]: r["target_prompt"] for r in reversed(runs)}
        elif axis == "concept_id":
            labels = {v: names.get(v, _fmt(v)) for v in values}
        elif axis == "mask_threshold":
            # the axis applies to masked runs only, where NULL is Otsu's threshold
            labels = {None: OTSU}
        out[axis] = Axis(axis, values, labels)
    return out


def _matches(run: dict, fixed: Mapping[str, Any]) -> bool:
    return all(not applies(a, run) or key_of(a, run) == k for a, k in fixed.items())


def plan_grid(
    store: Store,
    experiment_id: int,
    y: str,
    x: str | None = None,
    z: str | None = None,
    pins: Mapping[str, Any] | None = None,
    seeds: str | int | None = None,
) -> GridPlan | None:
    """The plan of a grid, or None when the experiment has no runs. Raises InputError on an
    unknown axis, an axis used twice, or a pinned value the experiment does not have."""
    y = canonical_axis(y, "--y")
    runs = _load_runs(store, experiment_id)
    if not runs:
        return None
    axes = _axes(store, runs)
    swept = [a for a in GRID_AXES if len(axes[a].values) > 1]
    if x is None:
        x = next(
            (a for a in ("target_prompt", "seed") if a != y and a != z and a in swept),
            next((a for a in swept if a not in (y, z)), "seed" if y != "seed" else "target_prompt"),
        )
    x = canonical_axis(x, "--x")
    z = canonical_axis(z, "--z") if z else None
    chosen = [a for a in (x, y, z) if a]
    if len(set(chosen)) != len(chosen):
        raise _input_error(f"grid axes must differ: x={x}, y={y}" + (f", z={z}" if z else ""))

    user: dict[str, Any] = {}
    for name, given in (pins or {}).items():
        axis = canonical_axis(name, "--pin")
        if axis in chosen:
            raise _input_error(
                f"--pin: {axis} is already the grid's {'xyz'[[x, y, z].index(axis)]} axis"
            )
        user[axis] = axes[axis].find(given, "--pin")
    each = False
    if seeds is not None and str(seeds).strip() != "":
        if "seed" in chosen:
            raise _input_error("--seeds: seed is already a grid axis")
        if str(seeds).strip() == "each":
            if "seed" in user:
                raise _input_error("--seeds each: seed is also pinned")
            each = True
        else:
            key = axes["seed"].find(seeds, "--seeds")
            if "seed" in user and user["seed"] != key:
                raise _input_error(
                    f"--seeds {seeds} contradicts --pin seed={axes['seed'].label(user['seed'])}"
                )
            user["seed"] = key

    # Default pins come from one real run, so jointly varying settings (a mask mode and its
    # threshold) stay a combination the sweep made.
    free = [a for a in swept if a not in chosen and a not in user and not (each and a == "seed")]
    resolved = dict(user)
    if free:
        # The donors are the first fitting runs in sweep order: scanned lazily, since building
        # the list of every fitting run was a quarter of a 100k-run plan.
        def fits(r) -> bool:
            return not r["is_baseline"] and _matches(r, user) and all(applies(a, r) for a in chosen)

        if not any(map(fits, runs)):

            def fits(r) -> bool:  # noqa: F811 (no controlled run fits: any run matching the pins)
                return _matches(r, user)

        for axis in free:
            donor = next(
                (r for r in runs if fits(r) and applies(axis, r) and _matches(r, resolved)), None
            )
            if donor is not None:
                resolved[axis] = key_of(axis, donor)
    pins_out = {a: resolved[a] for a in swept if a in resolved}
    for a in user:  # a pin on an axis that does not vary is still the user's statement: keep it
        pins_out.setdefault(a, user[a])

    return _place(runs, axes, x, y, z, pins_out, set(user), swept, each)


def _place(runs, axes, x, y, z, pins, user_pins, swept, each) -> GridPlan:
    y_control, x_control = y in CONTROL_AXES, x in CONTROL_AXES
    baseline_mode = "row" if y_control else ("column" if x_control else "none")
    note = "" if baseline_mode != "none" else "baselines not shown (both axes are base settings)"
    if not any(r["is_baseline"] for r in runs):
        baseline_mode, note = "none", ""  # the sweep made none: no empty baseline row to count
    seed_values = axes["seed"].values if each else [None]
    row_keys = (
        [BASELINE + ((s,) if each else ()) for s in seed_values] if baseline_mode == "row" else []
    )
    row_keys += [("value", v) + ((s,) if each else ()) for v in axes[y].values for s in seed_values]
    # With control settings on both axes the baseline belongs to no value column: it gets its
    # own column, labelled as the baseline, instead of sitting under the first value's header.
    own_column = baseline_mode == "column" or (baseline_mode == "row" and x_control)
    col_keys = ([BASELINE] if own_column else []) + [("value", v) for v in axes[x].values]
    z_values = axes[z].values if z else [None]
    panels = [Panel(zv, axes[z].named(zv) if z else "") for zv in z_values]

    ambiguous = 0
    # Nothing pinned or no Z axis is the common case: skip the per-run checks that always pass.
    pinned = [r for r in runs if _matches(r, pins)] if pins else runs
    # Each panel's runs, in sweep order: one pass instead of a full scan per Z value.
    if z:
        by_z: dict[Any, list[dict]] = {p.z: [] for p in panels}
        everywhere = []  # runs Z does not apply to belong to every panel
        for r in pinned:
            if not applies(z, r):
                everywhere.append(r)
            elif key_of(z, r) in by_z:
                by_z[key_of(z, r)].append(r)
        if everywhere:
            order = {id(r): i for i, r in enumerate(pinned)}
            for key, members in by_z.items():
                by_z[key] = sorted(members + everywhere, key=lambda r: order[id(r)])
        panel_runs = [by_z[p.z] for p in panels]
    else:
        panel_runs = [pinned]
    xcol, ycol = _KEY_COLUMN.get(x, x), _KEY_COLUMN.get(y, y)
    # For a controlled run, only the mask details can fail to apply (when its mask is off).
    needs_mask = x in MASK_DETAIL or y in MASK_DETAIL
    for panel, members in zip(panels, panel_runs):
        cells = panel.cells
        for r in members:
            if r["is_baseline"]:
                if baseline_mode == "none":
                    continue
                seed = (r["seed"],) if each else ()
                if baseline_mode == "row":
                    row = BASELINE + seed
                    col = ("value", r[xcol]) if not x_control else BASELINE
                else:
                    row, col = ("value", r[ycol]) + seed, BASELINE
            else:
                if needs_mask and r["mask_mode"] == "off":
                    continue
                row, col = ("value", r[ycol]) + ((r["seed"],) if each else ()), ("value", r[xcol])
            current = cells.get((row, col))
            if current is not None:
                ambiguous += 1
                # Deterministic, and an image beats none: never "whichever came back first".
                if current["image_path"] or not r["image_path"]:
                    continue
            cells[(row, col)] = r

    source_mode = _source_mode(panels)
    # A source pass is shared by every run of its group: a line whose own runs have no source
    # image (a cancelled baseline) shows it from another run of the same group.
    group_source: dict[str, dict] = {}
    for r in runs:
        if r["source_image_path"]:
            group_source.setdefault(r["group_key"], r)
    for panel in panels:
        along = row_keys if source_mode == "column" else col_keys if source_mode == "row" else []
        others = col_keys if source_mode == "column" else row_keys
        cells = panel.cells
        for k in along:
            cell = (lambda o, k=k: (k, o)) if source_mode == "column" else (lambda o, k=k: (o, k))
            members = [m for m in map(cells.get, map(cell, others)) if m]
            first = next((m for m in members if m["source_image_path"]), None)
            if first is None:
                first = next(
                    (
                        group_source[m["group_key"]]
                        for m in members
                        if m["group_key"] in group_source
                    ),
                    None,
                )
            if first is None and members:
                # no run of this source pass has its image: the line's run says why
                # ("cancelled", "failed", "queued"), not "no source"
                first = members[0]
            if first:
                panel.sources[k] = first
    return GridPlan(
        axes[x],
        axes[y],
        axes[z] if z else None,
        "each" if each else None,
        pins,
        user_pins,
        swept,
        row_keys,
        col_keys,
        panels,
        source_mode,
        note,
        ambiguous,
        axes,
    )


def _source_mode(panels: list[Panel]) -> str:
    """Where the source image can be shown without pretending: per row, per column, or nowhere."""

    def shared(by_row: bool) -> bool:
        # Every filled cell sits on one of the plan's rows and columns, so one pass over the
        # cells finds any line whose cells come from more than one source pass.
        for panel in panels:
            seen: dict[Any, Any] = {}
            for (row, col), run in panel.cells.items():
                group = run["group_key"]
                if seen.setdefault(row if by_row else col, group) != group:
                    return False
        return True

    if shared(by_row=True):
        return "column"
    if shared(by_row=False):
        return "row"
    return "none"
