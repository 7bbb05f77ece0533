"""Queries the app, the CLI and the engine share: concepts, experiments, paged runs, counts."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, case, func, or_
from sqlmodel import col, select

from store.sweep.spec import ExperimentSpec, expand

from .db import Store
from .errors import InputError  # noqa: F401  (re-exported: callers import it from here)
from .images import check_image
from .models import (
    RUN_SORT_COLUMNS,
    WEIGHT_KINDS,
    Concept,
    Experiment,
    ExperimentStatus,
    Run,
    RunStatus,
    Score,
    utcnow,
)
from .sweep.spec import CONTROL_COLUMNS


def _stored_source_image(store: Store, path: str) -> tuple[str, Path | None]:
    """Check an experiment's source image; return its path relative to the data folder and, when
    it still has to be copied in, the file to copy (content-addressed, so copies are shared)."""
    root = store.home.root
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (root / p).is_file():
        p = root / p  # already stored: a duplicated or re-queued experiment
    try:
        check_image(p)
    except InputError as exc:
        raise InputError(f"source image: {exc}") from None
    p = p.resolve()
    if p.is_relative_to(root):
        return str(p.relative_to(root)), None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()[:20]
    return str(Path("sources") / f"{digest}{p.suffix.lower()}"), p


def _copy_in(src: Path, dest: Path) -> None:
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


# ------------------------------------------------------------------ concepts
def check_model_ref(model: str) -> None:
    """A local-looking model reference must exist; a hub id is checked when the engine loads it."""
    from store.sweep.spec import model_problem

    problem = model_problem(model)
    if problem:
        raise InputError(f"base model: {problem}")


def save_concept(
    store: Store,
    name: str,
    token: str = "",
    class_word: str = "",
    ref_images: Sequence[str | Path] = (),
    weights_path: str | None = None,
    weights_kind: str = "none",
    base_model: str = "runwayml/stable-diffusion-v1-5",
    notes: str = "",
    concept_id: int | None = None,
    check_model: bool = True,
) -> Concept:
    """Create or update a concept; reference images are checked, then copied into the data folder."""
    name = (name or "").strip()
    if not name:
        raise InputError("name: a concept needs a name")
    if weights_kind not in WEIGHT_KINDS:
        raise InputError(f"weights kind: {weights_kind!r} is not one of {', '.join(WEIGHT_KINDS)}")
    if weights_kind not in ("none", "full"):
        if not weights_path or not Path(weights_path).expanduser().exists():
            raise InputError(f"weights: file {weights_path or '(empty)'} does not exist")
    if check_model:
        check_model_ref(base_model)
    for img in ref_images:
        check_image(img)
    with store.write() as s:
        if s.exec(select(Concept).where(Concept.name == name, Concept.id != concept_id)).first():
            raise InputError(f"name: a concept called {name!r} already exists")
        concept = s.get(Concept, concept_id) if concept_id else Concept(name=name)
        if concept is None:
            raise InputError(f"concept {concept_id} does not exist")
        concept.name = name
        concept.token = token.strip()
        concept.class_word = class_word.strip()
        concept.weights_path = str(Path(weights_path).expanduser()) if weights_path else None
        concept.weights_kind = weights_kind
        concept.base_model = base_model.strip()
        concept.notes = notes
        s.add(concept)
        s.flush()
        dest = store.home.concept_dir(concept.id)
        dest.mkdir(parents=True, exist_ok=True)
        kept = []
        for i, img in enumerate(ref_images):
            src = Path(img).expanduser().resolve()
            if src.parent == dest.resolve():
                kept.append(str(src.relative_to(store.home.root)))
                continue
            target = dest / f"{i:02d}-{src.name}"
            # copyfile, not copy2: the copy takes the data folder's private mode, not the original's.
            shutil.copyfile(src, target)
            kept.append(str(target.relative_to(store.home.root)))
        concept.ref_images = kept
        s.add(concept)
    return concept


def list_concepts(store: Store) -> list[Concept]:
    with store.session() as s:
        return list(s.exec(select(Concept).order_by(Concept.name)))


def get_concept(store: Store, concept_id: int) -> Concept | None:
    with store.session() as s:
        return s.get(Concept, concept_id)


def concept_by_name(store: Store, name: str) -> Concept | None:
    with store.session() as s:
        return s.exec(select(Concept).where(Concept.name == name)).first()


# ------------------------------------------------------------------ experiments
def save_experiment(
    store: Store,
    name: str,
    spec: ExperimentSpec,
    concept_id: int | None = None,
    queue: bool = False,
    tags: str = "",
    notes: str = "",
    priority: int = 0,
    experiment_id: int | None = None,
) -> Experiment:
    """Save a draft or queue it. Expansion happens first, so a bad sweep writes nothing."""
    name = (name or "").strip()
    check_experiment_name(name)
    concept = get_concept(store, concept_id) if concept_id else None
    if concept_id and concept is None:
        raise InputError(f"concept {concept_id} does not exist")
    copy_from = None
    if spec.source_image:
        # Checked and copied now, as reference images are: a file moved or broken later can
        # no longer fail the runs, and a bad one is refused before anything is queued.
        stored, copy_from = _stored_source_image(store, spec.source_image)
        spec = dataclasses.replace(spec, source_image=stored)
    rows = expand(spec, concept)  # raises SweepError before anything is written
    if copy_from is not None:
        _copy_in(copy_from, store.home.root / spec.source_image)
    with store.write() as s:
        exp = s.get(Experiment, experiment_id) if experiment_id else Experiment(name=name)
        if exp is None:
            raise InputError(f"experiment {experiment_id} does not exist")
        if exp.status != ExperimentStatus.DRAFT:
            raise InputError(
                f"experiment {exp.name!r} is already queued; duplicate it to change the sweep"
            )
        # Checked in the writing transaction: one writer at a time on SQLite. Names are not a
        # database constraint: older data folders may hold duplicates, which stay addressable
        # by id (`#4`) and are refused by name (experiment_by_ref).
        _check_name_free(s, name, exp.id)
        exp.name = name
        exp.concept_id = concept_id
        exp.spec_json = spec.to_json()
        exp.run_count = len(rows)
        exp.tags = tags
        exp.notes = notes
        exp.priority = priority
        exp.updated_at = utcnow()
        s.add(exp)
        s.flush()
        if queue:
            _insert_runs(s, exp, rows)
            exp.status = ExperimentStatus.QUEUED
            s.add(exp)
    return exp


def _insert_runs(session, exp: Experiment, rows: list[dict[str, Any]]) -> None:
    now = utcnow()
    payload = [
        dict(
            r, experiment_id=exp.id, priority=exp.priority, status=RunStatus.QUEUED, created_at=now
        )
        for r in rows
    ]
    # Core insert: 100x faster than ORM objects for a 10k-run sweep.
    session.execute(Run.__table__.insert(), payload)


def queue_experiment(store: Store, experiment_id: int) -> Experiment:
    with store.session() as s:
        exp = s.get(Experiment, experiment_id)
    if exp is None:
        raise InputError(f"experiment {experiment_id} does not exist")
    spec = ExperimentSpec.from_json(exp.spec_json)
    return save_experiment(
        store,
        exp.name,
        spec,
        exp.concept_id,
        queue=True,
        tags=exp.tags,
        notes=exp.notes,
        priority=exp.priority,
        experiment_id=exp.id,
    )


def check_experiment_name(name: str) -> None:
    """A name can never be read as an id: not empty, not all digits, not starting with `#`
    (`#4` and `4` address experiment 4 everywhere)."""
    if not name:
        raise InputError("name: an experiment needs a name")
    if name.isdigit() or name.startswith("#"):
        raise InputError(
            f"name: {name!r} would read as an experiment id; use a name with a letter in it"
        )


def _check_name_free(session, name: str, experiment_id: int | None) -> None:
    taken = session.exec(
        select(Experiment.id).where(
            func.lower(Experiment.name) == name.lower(), Experiment.id != (experiment_id or -1)
        )
    ).first()
    if taken is not None:
        raise InputError(
            f"name: an experiment named {name!r} exists already (#{taken}); "
            "names are unique in a data folder"
        )


def check_name_available(store: Store, name: str, experiment_id: int | None = None) -> None:
    """What save_experiment would say about `name` (an empty name is not checked: a form being
    filled in has none yet). Raises InputError."""
    name = (name or "").strip()
    if not name:
        return
    check_experiment_name(name)
    with store.session() as s:
        _check_name_free(s, name, experiment_id)


def free_experiment_name(store: Store, base: str) -> str:
    """`base`, or `base 2`, `base 3`, ... : the first name no experiment has."""
    with store.session() as s:
        taken = {
            n.lower()
            for n in s.exec(
                select(Experiment.name).where(func.lower(Experiment.name).like(f"{base.lower()}%"))
            )
        }
    if base.lower() not in taken:
        return base
    n = 2
    while f"{base} {n}".lower() in taken:
        n += 1
    return f"{base} {n}"


def duplicate_experiment(store: Store, experiment_id: int, name: str | None = None) -> Experiment:
    with store.session() as s:
        exp = s.get(Experiment, experiment_id)
    if exp is None:
        raise InputError(f"experiment {experiment_id} does not exist")
    spec = ExperimentSpec.from_json(exp.spec_json)
    return save_experiment(
        store,
        name or free_experiment_name(store, f"{exp.name} (copy)"),
        spec,
        exp.concept_id,
        queue=False,
        tags=exp.tags,
        notes=exp.notes,
        priority=exp.priority,
    )


def delete_experiment(store: Store, experiment_id: int) -> int:
    """Delete an experiment with its runs, scores and artifact folders; returns the runs removed.

    Refused while an engine holds one of its runs (it would write into a folder being removed):
    cancel first, then delete once the engine let go."""
    from .models import RunStatus

    with store.write() as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            raise InputError(f"experiment {experiment_id} does not exist")
        running = s.exec(
            select(func.count())
            .select_from(Run)
            .where(Run.experiment_id == experiment_id, Run.status == RunStatus.RUNNING)
        ).one()
        if running:
            raise InputError(
                f"experiment {exp.name!r} has {running} running run(s): cancel it and wait for "
                f"the engine to stop them, then delete"
            )
        run_ids = list(s.exec(select(Run.id).where(Run.experiment_id == experiment_id)))
        for chunk in range(0, len(run_ids), 900):  # stay under SQLite's bound-parameter limit
            ids = run_ids[chunk : chunk + 900]
            s.execute(Score.__table__.delete().where(col(Score.run_id).in_(ids)))
        s.execute(Run.__table__.delete().where(Run.experiment_id == experiment_id))
        s.delete(exp)
    # Files go after the commit: a failed transaction never leaves rows without their images.
    for run_id in run_ids:
        shutil.rmtree(store.home.run_dir(run_id), ignore_errors=True)
    return len(run_ids)


def archive_experiment(store: Store, experiment_id: int, archived: bool = True) -> Experiment:
    """Hide an experiment from Home and the queue (queued runs are cancelled); runs, scores and
    artifacts stay, and `archived=False` brings it back."""
    from .models import RunStatus

    with store.write() as s:
        exp = s.get(Experiment, experiment_id)
        if exp is None:
            raise InputError(f"experiment {experiment_id} does not exist")
        if archived:
            running = s.exec(
                select(func.count())
                .select_from(Run)
                .where(Run.experiment_id == experiment_id, Run.status == RunStatus.RUNNING)
            ).one()
            if running:
                raise InputError(
                    f"experiment {exp.name!r} has {running} running run(s): cancel it first"
                )
            s.execute(
                Run.__table__.update()
                .where(Run.experiment_id == experiment_id, Run.status == RunStatus.QUEUED)
                .values(status=RunStatus.CANCELLED, finished_at=utcnow())
            )
            exp.status = ExperimentStatus.ARCHIVED
        elif exp.status == ExperimentStatus.ARCHIVED:
            has_runs = s.exec(
                select(func.count()).select_from(Run).where(Run.experiment_id == experiment_id)
            ).one()
            exp.status = ExperimentStatus.DONE if has_runs else ExperimentStatus.DRAFT
        exp.updated_at = utcnow()
        s.add(exp)
    return exp


def get_experiment(store: Store, experiment_id: int) -> Experiment | None:
    with store.session() as s:
        return s.get(Experiment, experiment_id)


def experiment_by_ref(store: Store, ref: str | int) -> Experiment | None:
    """An experiment by id (`4` or `#4`) or by name; None when nothing matches. An id is never
    taken for a name nor a name for an id (names cannot be all digits or start with `#`); a
    name that several experiments share (data from before names were unique) is refused,
    listing their ids."""
    text = str(ref).strip()
    with store.session() as s:
        digits = text[1:] if text.startswith("#") else text
        if digits.isdigit():
            return s.get(Experiment, int(digits))
        found = list(
            s.exec(
                select(Experiment)
                .where(func.lower(Experiment.name) == text.lower())
                .order_by(col(Experiment.id))
            )
        )
    if len(found) > 1:
        ids = ", ".join(f"#{e.id}" for e in found)
        raise InputError(f"{len(found)} experiments are named {text!r} ({ids}): give the id")
    return found[0] if found else None


@dataclass
class ExperimentRow:
    experiment: Experiment
    counts: dict[str, int]

    @property
    def state(self) -> str:
        """What the experiment is doing now, from its runs: draft, archived, running, queued,
        done, partial (finished with some failed or cancelled), failed or cancelled."""
        e, c = self.experiment, self.counts
        if e.status in (ExperimentStatus.DRAFT, ExperimentStatus.ARCHIVED) or not self.total:
            return e.status
        if c.get(RunStatus.RUNNING):
            return "running"
        if c.get(RunStatus.QUEUED):
            return "queued"
        if self.done == self.total:
            return "done"
        if self.done:
            return "partial"
        return "cancelled" if c.get(RunStatus.CANCELLED, 0) == self.total else "failed"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return self.counts.get(RunStatus.DONE, 0)

    @property
    def failed(self) -> int:
        return self.counts.get(RunStatus.FAILED, 0)


def list_experiments(store: Store, include_archived: bool = False) -> list[ExperimentRow]:
    with store.session() as s:
        q = select(Experiment).order_by(col(Experiment.updated_at).desc())
        if not include_archived:
            q = q.where(Experiment.status != ExperimentStatus.ARCHIVED)
        exps = list(s.exec(q))
        counts: dict[int, dict[str, int]] = {}
        for exp_id, status, n in s.exec(
            select(Run.experiment_id, Run.status, func.count()).group_by(
                Run.experiment_id, Run.status
            )
        ):
            counts.setdefault(exp_id, {})[status] = n
    return [ExperimentRow(e, counts.get(e.id, {})) for e in exps]


def counts_by_status(store: Store, experiment_id: int | None = None) -> dict[str, int]:
    with store.session() as s:
        q = select(Run.status, func.count()).group_by(Run.status)
        if experiment_id is not None:
            q = q.where(Run.experiment_id == experiment_id)
        return {status: n for status, n in s.exec(q)}


# ------------------------------------------------------------------ runs
@dataclass
class RunFilter:
    experiment_id: int | None = None
    statuses: Sequence[str] = ()
    equals: dict[str, Any] = field(default_factory=dict)  # column -> value
    tag: str | None = None
    text: str | None = None  # matched against prompts, layers, tags, notes, error
    marked: bool | None = None
    baseline: bool | None = None
    methods: Sequence[str] = ()  # consistency methods (store.sweep.methods); empty = all
    # Comparisons from the filter grammar (store.runfilter.Compare: field, op, value).
    compare: list = field(default_factory=list)


def _compare_clause(c):
    """One `field op value` of the filter grammar as SQL (see store.runfilter)."""
    import operator

    from .models import Score

    ops = {
        "=": operator.eq,
        "!=": operator.ne,
        ">": operator.gt,
        ">=": operator.ge,
        "<": operator.lt,
        "<=": operator.le,
    }
    if c.field == "tag":
        tags = func.coalesce(Run.tags, "")
        hit = or_(*(col(tags).contains(v, autoescape=True) for v in c.value))
        return hit if c.op == "=" else ~hit
    if c.field in ("status", "experiment_id") and isinstance(c.value, tuple):
        column = col(getattr(Run, c.field))
        return column.in_(c.value) if c.op == "=" else column.not_in(c.value)
    if c.field not in RUN_SORT_COLUMNS and c.field != "experiment_id":  # a score
        return col(Run.id).in_(
            select(Score.run_id).where(Score.metric == c.field, ops[c.op](Score.value, c.value))
        )
    column = getattr(Run, c.field)

    def one(value):
        if value == "otsu":  # Otsu's threshold is stored as no threshold, with the mask on
            return and_(Run.mask_mode != "off", col(Run.mask_threshold).is_(None))
        other = Run.num_steps if value == "end" else value
        return ops["=" if c.op in ("=", "!=") else c.op](column, other)

    if c.op == "=":
        return or_(*(one(v) for v in c.value))
    if c.op == "!=":
        # A run without the value (no threshold, say) is "not equal" too, not unknown.
        return and_(
            *(~one(v) if v == "otsu" else or_(col(column).is_(None), ~one(v)) for v in c.value)
        )
    return one(c.value)


def _filter_clause(f: RunFilter):
    return and_(True, *_filter_conditions(f))


def _filter_conditions(f: RunFilter) -> list:
    clauses = []
    if f.experiment_id is not None:
        clauses.append(Run.experiment_id == f.experiment_id)
    if f.statuses:
        clauses.append(col(Run.status).in_(list(f.statuses)))
    for column, value in f.equals.items():
        if column not in RUN_SORT_COLUMNS:
            raise InputError(f"cannot filter on {column!r}")
        if column == "mask_threshold":
            clauses.append(_threshold_clause(value))
            continue
        clauses.append(getattr(Run, column) == value)
    if f.tag:
        clauses.append(col(Run.tags).contains(f.tag, autoescape=True))
    for c in f.compare:
        clauses.append(_compare_clause(c))
    if f.text:
        # % and _ typed by the user are literal characters, not wildcards.
        like = "%" + f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        clauses.append(
            or_(
                *(
                    col(c).like(like, escape="\\")
                    for c in (Run.target_prompt, Run.layers, Run.tags, Run.notes, Run.error)
                )
            )
        )
    if f.marked is not None:
        clauses.append(Run.marked == f.marked)
    if f.baseline is not None:
        clauses.append(Run.is_baseline == f.baseline)
    if f.methods:
        from .sweep.methods import METHODS

        unknown = [m for m in f.methods if m not in METHODS]
        if unknown:
            raise InputError(f"method: {unknown[0]!r} is not one of {', '.join(METHODS)}")
        clauses.append(col(Run.method).in_(list(f.methods)))
    return clauses


def _threshold_clause(value):
    """``mask_threshold=otsu`` is a masked run whose threshold is NULL (Otsu's), never an
    unmasked one; a number matches that threshold."""
    from .models import OTSU

    if isinstance(value, str) and value.strip().lower() == OTSU:
        return and_(col(Run.mask_threshold).is_(None), Run.mask_mode != "off")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"filter: mask_threshold needs a number or otsu, not {value!r}") from None
    return Run.mask_threshold == number


def score_column(metric: str, backbone: str | None = None):
    """A correlated subquery for one metric, so runs can be sorted by score in SQL."""
    q = select(func.avg(Score.value)).where(Score.run_id == Run.id, Score.metric == metric)
    if backbone:
        q = q.where(Score.backbone == backbone)
    return q.scalar_subquery()


# Below this many matching runs a score sort reads every run's score and sorts them (cheap at
# that size); above it, and when one backbone scored the metric, it walks `ix_score_sort`.
SCORE_INDEX_MIN_RUNS = 2000


def list_runs(
    store: Store,
    filt: RunFilter | None = None,
    sort: str = "id",
    descending: bool = False,
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[Run], int]:
    """One page of runs and the total matching; sorting and paging happen in SQL.

    Ties are broken by run id; sorted by a score, runs without that score come last either way."""
    filt = filt or RunFilter()
    conditions = _filter_conditions(filt)
    where = and_(True, *conditions)
    if not (sort.startswith("score:") or sort in RUN_SORT_COLUMNS):
        raise InputError(f"cannot sort by {sort!r}")
    with store.session() as s:
        total = s.exec(select(func.count()).select_from(Run).where(where)).one()
        if sort.startswith("score:"):
            metric = sort.split(":", 1)[1]
            backbone = _only_backbone(s, metric) if total >= SCORE_INDEX_MIN_RUNS else None
            if backbone is not None:
                ids = _score_page_by_index(
                    s, conditions, metric, backbone, descending, offset, limit
                )
            else:
                ids = _score_page_by_subquery(s, where, metric, descending, offset, limit)
        else:
            order = getattr(Run, sort)
            # Sort and page the ids alone, then read the page's full rows: sorting whole rows
            # (prompts, paths, errors) spilled a 100k-run sort into a wide temp b-tree, 2.5x slower.
            ids = list(
                s.exec(
                    select(Run.id)
                    .where(where)
                    .offset(offset)
                    .limit(limit)
                    .order_by(order.desc() if descending else order.asc(), col(Run.id).asc())
                )
            )
        by_id = {r.id: r for r in s.exec(select(Run).where(col(Run.id).in_(ids)))} if ids else {}
    return [by_id[i] for i in ids if i in by_id], total


def _only_backbone(s, metric: str) -> str | None:
    """The backbone, when exactly one scored this metric (then a run's score is that one value,
    not an average); three index seeks."""
    first = s.exec(select(Score.backbone).where(Score.metric == metric).limit(1)).first()
    if first is None:
        return None
    for other in (
        col(Score.backbone) < first,
        col(Score.backbone) > first,
    ):  # two seeks, not a scan
        if (
            s.exec(select(Score.id).where(Score.metric == metric, other).limit(1)).first()
            is not None
        ):
            return None
    return first


def _score_page_by_subquery(
    s, where, metric: str, descending: bool, offset: int, limit: int
) -> list[int]:
    value = score_column(metric)
    return list(
        s.exec(
            select(Run.id)
            .where(where)
            .order_by(
                value.is_(None), value.desc() if descending else value.asc(), col(Run.id).asc()
            )
            .offset(offset)
            .limit(limit)
        )
    )


def _score_page_by_index(
    s, conditions: list, metric: str, backbone: str, descending: bool, offset: int, limit: int
) -> list[int]:
    """The same page as `_score_page_by_subquery`, read in `ix_score_sort` order: the scored runs
    first, then (once they run out) the unscored ones by id."""
    scored = [Score.metric == metric, Score.backbone == backbone, col(Score.value).is_not(None)]
    q = select(Score.run_id).where(*scored)
    if conditions:  # a filter needs the run rows; without one the index alone answers
        q = q.join(Run, Run.id == Score.run_id).where(*conditions)
    value = col(Score.value)
    ids = list(
        s.exec(
            q.order_by(value.desc() if descending else value.asc(), col(Score.run_id).asc())
            .offset(offset)
            .limit(limit)
        )
    )
    if len(ids) == limit:
        return ids
    n_scored = s.exec(select(func.count()).select_from(q.subquery())).one()
    has_score = select(Score.id).where(Score.run_id == Run.id, *scored).exists()
    tail = select(Run.id).where(*conditions, ~has_score).order_by(col(Run.id).asc())
    return ids + list(s.exec(tail.offset(max(offset - n_scored, 0)).limit(limit - len(ids))))


def run_ids(store: Store, filt: RunFilter) -> list[int]:
    """Every run id the filter selects, in id order (bulk actions on a marked set)."""
    with store.session() as s:
        return list(s.exec(select(Run.id).where(_filter_clause(filt)).order_by(col(Run.id))))


def counts_by_run_status(store: Store, ids: Sequence[int]) -> dict[str, int]:
    out: dict[str, int] = {}
    with store.session() as s:
        for i in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            q = (
                select(Run.status, func.count())
                .where(col(Run.id).in_(list(ids[i : i + 900])))
                .group_by(Run.status)
            )
            for status, n in s.exec(q):
                out[status] = out.get(status, 0) + n
    return out


def get_run(store: Store, run_id: int) -> Run | None:
    with store.session() as s:
        return s.get(Run, run_id)


def set_runs(store: Store, run: Run) -> list[Run]:
    """Every run of ``run``'s set (itself included) in prompt_index order; [] for a run that is
    not part of a set (MasaCtrl's runs are one image each)."""
    from .sweep.methods import is_set_method

    if not is_set_method(run.method or ""):
        return []
    with store.session() as s:
        return list(
            s.exec(
                select(Run)
                .where(Run.experiment_id == run.experiment_id, Run.group_key == run.group_key)
                .order_by(col(Run.prompt_index), col(Run.id))
            )
        )


# What makes MasaCtrl targets of one experiment one prompt set besides their prompt.
_PROMPT_SET_COLUMNS = ("group_key", "is_baseline", "method", "method_params", *CONTROL_COLUMNS)


def study_experiment_ids(store: Store, experiment_ids: Iterable[int]) -> set[int]:
    """Those of these experiments that belong to a study (one query, for a batch)."""
    ids = set(experiment_ids)
    if not ids:
        return set()
    with store.session() as s:
        return set(
            s.exec(
                select(Experiment.id).where(
                    col(Experiment.id).in_(ids), col(Experiment.study_id).is_not(None)
                )
            )
        )


def prompt_set_runs(store: Store, run: Run) -> list[Run]:
    """The runs whose images are scored as one set with ``run``'s (set consistency): a set
    method's set; for MasaCtrl in a study, where the suite defines the unit's prompts as a
    set, the targets of the same seed and configuration over the unit's prompts. [] otherwise
    (an experiment's own prompts are not a set)."""
    from .sweep.methods import is_set_method

    if is_set_method(run.method or ""):
        return set_runs(store, run)
    with store.session() as s:
        exp = s.get(Experiment, run.experiment_id)
        if exp is None or exp.study_id is None:
            return []
        cond = []
        for name in _PROMPT_SET_COLUMNS:
            column, value = getattr(Run, name), getattr(run, name)
            cond.append(col(column).is_(None) if value is None else column == value)
        return list(
            s.exec(
                select(Run)
                .where(Run.experiment_id == run.experiment_id, *cond)
                .order_by(col(Run.prompt_index), col(Run.id))
            )
        )


def run_scores(store: Store, run_ids: Iterable[int]) -> dict[int, dict[str, float]]:
    """metric -> value per run (the first backbone wins when several scored the same metric)."""
    ids = list(run_ids)
    out: dict[int, dict[str, float]] = {i: {} for i in ids}
    if not ids:
        return out
    with store.session() as s:
        for sc in s.exec(select(Score).where(col(Score.run_id).in_(ids)).order_by(Score.id)):
            out[sc.run_id].setdefault(sc.metric, sc.value)
    return out


def neighbour_run(store: Store, run: Run, direction: int) -> Run | None:
    """The previous/next run of the same experiment in grid order (for [ and ] in run detail)."""
    with store.session() as s:
        q = select(Run).where(Run.experiment_id == run.experiment_id)
        if direction > 0:
            q = q.where(Run.grid_index > run.grid_index).order_by(col(Run.grid_index).asc())
        else:
            q = q.where(Run.grid_index < run.grid_index).order_by(col(Run.grid_index).desc())
        return s.exec(q.limit(1)).first()


def update_runs(store: Store, run_ids: Sequence[int], **values: Any) -> int:
    """Tag, note or mark runs (only user-editable columns)."""
    allowed = {"tags", "notes", "marked"}
    bad = set(values) - allowed
    if bad:
        raise InputError(f"cannot edit {', '.join(sorted(bad))}")
    if not run_ids:
        return 0
    with store.write() as s:
        res = s.execute(
            Run.__table__.update().where(col(Run.id).in_(list(run_ids))).values(**values)
        )
        return res.rowcount


def add_tag(store: Store, run_ids: Sequence[int], tag: str) -> int:
    tag = tag.strip().replace(",", " ")
    if not tag or not run_ids:
        return 0
    with store.write() as s:
        res = s.execute(
            Run.__table__.update()
            .where(col(Run.id).in_(list(run_ids)))
            .where(~col(Run.tags).contains(tag, autoescape=True))
            .values(tags=case((Run.tags == "", tag), else_=Run.tags + "," + tag))
        )
        return res.rowcount


# ------------------------------------------------------------------ what screens show
def best_points(store: Store, experiment_ids: list[int]) -> dict[int, tuple[int, float, float]]:
    """The run with the highest CLIP-T + CLIP-I per experiment: always on the Pareto front.

    Ranked inside SQLite (which releases the GIL), so 100k scored runs never stall the UI."""
    if not experiment_ids:
        return {}

    t = func.avg(case((Score.metric == "clip_t", Score.value))).label("t")
    i = func.avg(case((Score.metric == "clip_i_ref", Score.value))).label("i")
    per_run = (
        select(Run.experiment_id.label("exp"), Run.id.label("run"), t, i)
        .join(Score, Score.run_id == Run.id)
        .where(
            col(Run.experiment_id).in_(experiment_ids),
            Run.is_baseline == False,  # noqa: E712
            col(Score.metric).in_(["clip_t", "clip_i_ref"]),
        )
        .group_by(Run.id)
        .subquery()
    )
    rank = (
        func.row_number()
        .over(partition_by=per_run.c.exp, order_by=(per_run.c.t + per_run.c.i).desc())
        .label("rank")
    )
    ranked = (
        select(per_run.c.exp, per_run.c.run, per_run.c.t, per_run.c.i, rank)
        .where(per_run.c.t.is_not(None), per_run.c.i.is_not(None))
        .subquery()
    )
    q = select(ranked.c.exp, ranked.c.run, ranked.c.t, ranked.c.i).where(ranked.c.rank == 1)
    with store.session() as s:
        return {exp: (run, tv, iv) for exp, run, tv, iv in s.execute(q)}


def baseline_of(store: Store, run_id: int) -> int | None:
    """The no-control run that shares this run's source, prompt and seed (None if there is none)."""
    run = get_run(store, run_id)
    if run is None:
        return None
    from store.sweep.methods import is_set_method

    with store.session() as s:
        if is_set_method(run.method or ""):
            # A set's baseline is the plain generation of the same image of the same set.
            return s.exec(
                select(Run.id).where(
                    Run.experiment_id == run.experiment_id,
                    Run.method == run.method,
                    Run.seed == run.seed,
                    Run.prompt_index == run.prompt_index,
                    Run.is_baseline == True,  # noqa: E712
                )
            ).first()
        return s.exec(
            select(Run.id).where(
                Run.experiment_id == run.experiment_id,
                Run.group_key == run.group_key,
                Run.target_prompt == run.target_prompt,
                Run.is_baseline == True,  # noqa: E712
            )
        ).first()


# ------------------------------------------------------------------ time estimates
@dataclass(frozen=True)
class RunCost:
    """One finished run's cost: its share of its batch's time, and what it generated."""

    model: str
    device: str
    seconds: float
    steps: int
    pixels: int


def recent_run_costs(store: Store, limit: int = 500) -> list[RunCost]:
    """The most recent finished runs' costs, newest first (the sweep builder's estimate)."""
    q = (
        select(Run.model, Run.worker_id, Run.duration_s, Run.num_steps, Run.width, Run.height)
        .where(Run.status == RunStatus.DONE, col(Run.duration_s).is_not(None))
        .order_by(col(Run.id).desc())
        .limit(limit)
    )
    with store.session() as s:
        rows = list(s.exec(q))
    return [
        RunCost(
            model or "",
            (worker or "").rsplit(":", 1)[-1],
            float(secs),
            int(steps or 1),
            int(w or 1) * int(h or 1),
        )
        for model, worker, secs, steps, w, h in rows
    ]


@dataclass(frozen=True)
class Estimate:
    seconds: float
    samples: int
    device: str


# How a step's cost grows with the image's pixel count when the samples show one size only:
# measured on the tiny demo model (CPU) going 64 -> 128 px, a step cost 1.74x for 4x the pixels
# (exponent 0.4); a full-size UNet's attention grows faster than linearly. 0.75 keeps both
# within 2x; samples at two or more sizes fit their own exponent.
PIXEL_EXPONENT = 0.75


def estimate_seconds(
    costs: Sequence[RunCost],
    model: str,
    runs: int,
    steps: int,
    width: int,
    height: int,
    workers: int = 1,
    min_samples: int = 3,
) -> Estimate | None:
    """How long `runs` runs of `model` at `steps` steps and width x height take on `workers`
    engines, from that model's finished runs (on the device that ran the most recent of them,
    as runs batch there): runs at this very size and step count give their median time; other
    sizes are scaled by steps and by pixels to a fitted (or PIXEL_EXPONENT) power. None
    (unknown) with fewer than `min_samples` runs of the model: another model's speed says
    nothing about this one's."""
    import math

    same = [c for c in costs if c.model == (model or "").strip()]
    if not same:
        return None
    device = same[0].device  # newest first: the setup that ran this model last
    same = [c for c in same if c.device == device]
    if len(same) < min_samples:
        return None
    pixels = max(1, width * height)
    workers = max(1, workers)

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    exact = [c.seconds for c in same if c.steps == steps and c.pixels == pixels]
    if len(exact) >= min_samples:
        return Estimate(median(exact) * runs / workers, len(exact), device)
    per_size: dict[int, list[float]] = {}
    for c in same:
        per_size.setdefault(c.pixels, []).append(c.seconds / max(1, c.steps))
    exponent = PIXEL_EXPONENT
    if len(per_size) >= 2:  # least squares of log(cost per step) on log(pixels)
        xs = [math.log(p) for p in per_size]
        ys = [math.log(max(median(v), 1e-9)) for v in per_size.values()]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var > 0:
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
            exponent = min(2.0, max(0.3, slope))
    unit = median([c.seconds / max(1, c.steps) / c.pixels**exponent for c in same])
    return Estimate(unit * steps * pixels**exponent * runs / workers, len(same), device)
