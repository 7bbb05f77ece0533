"""`mtp study create`: one sweep over every unit of a suite, as one experiment per unit.

Every unit gets the same grid (methods x configurations) and the same seeds, so each
configuration is compared with every other on the same units, prompts and seeds (a paired
design). Initial latents follow from the seed exactly as in any experiment: every configuration
of one method family starts from the same noise for a given (prompt, seed); MasaCtrl's targets
start from their source's noise by design, the set methods from per-image seeds shared by their
plain baseline set (`engine.methods.sets.image_seed`).
"""

from __future__ import annotations

import dataclasses
import json

from sqlmodel import col, func, select

from ..db import Store
from ..errors import InputError
from ..models import Experiment, ExperimentStatus, Study, Suite, SuiteUnit, utcnow
from ..sweep.grammar import SweepError
from ..sweep.methods import CONSISTORY
from ..sweep.spec import ExperimentSpec, expand, parse_axes
from .suites import by_ref, suite_by_ref, suite_units

DEFAULT_SOURCE_PROMPT = ExperimentSpec().source_prompt


@dataclasses.dataclass(frozen=True)
class Planned:
    """One unit's experiment, expanded but not written."""

    unit: SuiteUnit
    name: str
    spec: ExperimentSpec
    rows: list[dict]


def unit_spec(template: ExperimentSpec, unit: SuiteUnit) -> ExperimentSpec:
    """The template with the unit's prompts. The source prompt (MasaCtrl's) is the unit's
    subject prompt unless one was given; mask words left at `-` become the subject's last word
    (its noun) when a method or the mask settings need them."""
    spec = dataclasses.replace(template, target_prompts=list(unit.prompts))
    if template.source_prompt == DEFAULT_SOURCE_PROMPT and unit.subject_prompt:
        spec.source_prompt = unit.subject_prompt
    axes = parse_axes(template)
    needs_words = CONSISTORY in axes["method"] or any(m != "off" for m in axes["mask_mode"])
    words = unit.subject_words.split()
    if needs_words and template.mask_words.strip() in ("", "-") and words:
        spec.mask_words = words[-1]
    return spec


def with_method_defaults(template: ExperimentSpec) -> ExperimentSpec:
    """ConsiStory takes only Otsu's threshold: a template still at the default numeric
    threshold gets `otsu` when consistory is swept (MasaCtrl without a mask ignores it)."""
    axes = parse_axes(template)
    default = ExperimentSpec().mask_threshold
    if CONSISTORY in axes["method"] and template.mask_threshold == default:
        if all(m == "off" for m in axes["mask_mode"]):
            return dataclasses.replace(template, mask_threshold="otsu")
    return template


def plan_study(store: Store, name: str, suite: Suite, template: ExperimentSpec) -> list[Planned]:
    """Expand every unit first: a unit the grid cannot cover is refused, naming the unit, before
    anything is written."""
    from ..queries import get_concept

    assert suite.id is not None
    units = suite_units(store, suite.id)
    if not units:
        raise InputError(f"suite {suite.name!r} has no units")
    out = []
    for unit in units:
        spec = unit_spec(template, unit)
        concept = get_concept(store, unit.concept_id) if unit.concept_id else None
        try:
            rows = expand(spec, concept)
        except SweepError as exc:
            raise InputError(f"unit {unit.name!r}: {exc}") from None
        out.append(Planned(unit, f"{name}/{unit.name}", spec, rows))
    return out


def check_study_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("name: a study needs a name")
    if name.isdigit() or name.startswith("#"):
        raise InputError(f"name: {name!r} would read as a study id; use a name with a letter in it")
    if "/" in name:
        raise InputError(f"name: {name!r}: '/' separates a study from its units' experiments")
    return name


def create_study(
    store: Store,
    name: str,
    suite_ref: str | int,
    template: ExperimentSpec,
    *,
    queue: bool = False,
    priority: int = 0,
    reference: str = "",
) -> tuple[Study, int]:
    """Write the study and one experiment per unit (runs too with ``queue``) in one
    transaction. Returns the study and its number of runs."""
    from ..queries import _check_name_free, _insert_runs

    name = check_study_name(name)
    suite = suite_by_ref(store, suite_ref)
    template = with_method_defaults(template)
    planned = plan_study(store, name, suite, template)
    total = sum(len(p.rows) for p in planned)
    with store.write() as s:
        taken = s.exec(select(Study.id).where(func.lower(Study.name) == name.lower())).first()
        if taken is not None:
            raise InputError(f"name: a study named {name!r} exists already (#{taken})")
        assert suite.id is not None
        study = Study(
            name=name,
            suite_id=suite.id,
            spec_json=template.to_json(),
            reference=reference,
            priority=priority,
        )
        s.add(study)
        s.flush()
        now = utcnow()
        for p in planned:
            _check_name_free(s, p.name, None)
            exp = Experiment(
                name=p.name,
                concept_id=p.unit.concept_id,
                study_id=study.id,
                unit_id=p.unit.id,
                spec_json=p.spec.to_json(),
                run_count=len(p.rows),
                priority=priority,
                tags="study",
                notes=f"study {name}, {suite.layout} unit {p.unit.name}",
                status=ExperimentStatus.QUEUED if queue else ExperimentStatus.DRAFT,
                created_at=now,
                updated_at=now,
            )
            s.add(exp)
            s.flush()
            if queue:
                _insert_runs(s, exp, p.rows)
    return study, total


def queue_study(store: Store, study_id: int) -> int:
    """Queue a draft study's experiments; the number of runs queued."""
    from ..queries import queue_experiment

    n = 0
    for exp in study_experiments(store, study_id):
        if exp.status == ExperimentStatus.DRAFT:
            assert exp.id is not None
            n += queue_experiment(store, exp.id).run_count
    return n


def study_by_ref(store: Store, ref: str | int) -> Study:
    return by_ref(store, Study, ref, "study", "studies", "mtp study create")


def list_studies(store: Store) -> list[Study]:
    with store.session() as s:
        return list(s.exec(select(Study).order_by(col(Study.created_at).desc(), Study.id)))


def study_experiments(store: Store, study_id: int) -> list[Experiment]:
    with store.session() as s:
        return list(
            s.exec(
                select(Experiment).where(Experiment.study_id == study_id).order_by(Experiment.id)
            )
        )


def study_template(study: Study) -> ExperimentSpec:
    return ExperimentSpec.from_json(json.loads(study.spec_json or "{}"))


def set_study_priority(store: Store, study_id: int, priority: int) -> int:
    """The study's and its experiments' priority; the number of queued runs moved."""
    from ..queue import set_priority

    n = sum(set_priority(store, e.id, priority) for e in study_experiments(store, study_id) if e.id)
    with store.write() as s:
        row = s.get(Study, study_id)
        if row is not None:
            row.priority = priority
            s.add(row)
    return n


def cancel_study(store: Store, study_id: int) -> dict[str, int]:
    """Cancel every experiment of the study: queued runs at once, running ones between steps."""
    from ..queue import cancel_experiment

    total = {"cancelled": 0, "requested": 0}
    for exp in study_experiments(store, study_id):
        if exp.id is not None:
            for k, v in cancel_experiment(store, exp.id).items():
                total[k] = total.get(k, 0) + v
    return total


def requeue_study(store: Store, study_id: int, statuses) -> int:
    """Put the study's runs with these finished statuses back in the queue."""
    from ..queue import requeue

    return sum(requeue(store, e.id, statuses) for e in study_experiments(store, study_id) if e.id)
