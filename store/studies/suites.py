"""`mtp suite import`: a parsed suite into the database (Suite, SuiteUnit, concepts)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlmodel import col, func, select

from ..db import Store
from ..errors import InputError
from ..models import Concept, Suite, SuiteUnit
from ..suites import ParsedSuite, read_suite

NAME_CHARS = "letters, digits and . _ -"


def check_suite_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("name: a suite needs a name")
    if name.isdigit() or name.startswith("#"):
        raise InputError(f"name: {name!r} would read as a suite id; use a name with a letter in it")
    return name


def import_suite(
    store: Store,
    path: str | Path,
    *,
    name: str | None = None,
    layout: str | None = None,
    prompt_rule: str | None = None,
    identifier: str = "sks",
    live_classes: set[str] | None = None,
    base_model: str = "runwayml/stable-diffusion-v1-5",
) -> Suite:
    """Read, validate and store a suite. Nothing is written unless the whole file is good; a
    unit with reference images becomes a concept `<suite>/<unit>` (images copied in)."""
    parsed = read_suite(
        path,
        layout=layout,
        prompt_rule=prompt_rule,
        identifier=identifier,
        live_classes=live_classes,
    )
    return store_suite(store, parsed, name=name, base_model=base_model)


def store_suite(
    store: Store, parsed: ParsedSuite, *, name: str | None = None, base_model: str = ""
) -> Suite:
    from ..queries import save_concept

    suite_name = check_suite_name(name or parsed.name)
    with store.session() as s:
        taken = s.exec(select(Suite.id).where(func.lower(Suite.name) == suite_name.lower())).first()
    if taken is not None:
        raise InputError(
            f"name: a suite named {suite_name!r} exists already (#{taken}); give --name"
        )
    made: list[int] = []
    try:
        concepts: dict[str, int] = {}
        for unit in parsed.units:
            if not unit.references:
                continue
            concept = save_concept(
                store,
                f"{suite_name}/{unit.name}",
                token=unit.token,
                class_word=unit.class_word,
                ref_images=list(unit.references),
                base_model=base_model or "runwayml/stable-diffusion-v1-5",
                notes=f"suite {suite_name}, unit {unit.name} ({parsed.layout})",
                check_model=False,
            )
            assert concept.id is not None
            made.append(concept.id)
            concepts[unit.name] = concept.id
        with store.write() as s:
            suite = Suite(
                name=suite_name,
                layout=parsed.layout,
                source=str(parsed.source),
                prompt_rule=parsed.prompt_rule,
            )
            s.add(suite)
            s.flush()
            assert suite.id is not None
            for i, unit in enumerate(parsed.units):
                s.add(
                    SuiteUnit(
                        suite_id=suite.id,
                        position=i,
                        name=unit.name,
                        group_name=unit.group,
                        subject_prompt=unit.subject_prompt,
                        prompts_json=json.dumps(list(unit.prompts)),
                        subject_words=" ".join(unit.subject_words),
                        concept_id=concepts.get(unit.name),
                        live=unit.live,
                    )
                )
        return suite
    except BaseException:
        _remove_concepts(store, made)
        raise


def _remove_concepts(store: Store, ids: list[int]) -> None:
    import shutil

    if not ids:
        return
    with store.write() as s:
        for concept in s.exec(select(Concept).where(col(Concept.id).in_(ids))):
            s.delete(concept)
    for cid in ids:
        shutil.rmtree(store.home.concept_dir(cid), ignore_errors=True)


def list_suites(store: Store) -> list[tuple[Suite, int]]:
    """Every suite with its number of units, by name."""
    with store.session() as s:
        counts = dict(
            s.exec(select(SuiteUnit.suite_id, func.count()).group_by(SuiteUnit.suite_id)).all()
        )
        return [(x, counts.get(x.id, 0)) for x in s.exec(select(Suite).order_by(Suite.name))]


def by_ref(store: Store, table, ref: str | int, what: str, plural: str, hint: str):
    """A row of ``table`` (Suite, Study) by id (`3`, `#3`) or name (any case); InputError naming
    the known ones (or ``hint`` when there are none)."""
    text = str(ref).strip()
    with store.session() as s:
        if text.lstrip("#").isdigit() and text.count("#") <= 1:
            found = s.get(table, int(text.lstrip("#")))
        else:
            found = s.exec(select(table).where(func.lower(table.name) == text.lower())).first()
        if found is None:
            names = [x.name for x in s.exec(select(table).order_by(table.name))]
            known = ", ".join(names) if names else f"none yet: {hint}"
            raise InputError(f"{what} {text!r} does not exist ({plural}: {known})")
        return found


def suite_by_ref(store: Store, ref: str | int) -> Suite:
    return by_ref(store, Suite, ref, "suite", "suites", "mtp suite import FILE")


def suite_units(store: Store, suite_id: int) -> list[SuiteUnit]:
    with store.session() as s:
        return list(
            s.exec(
                select(SuiteUnit).where(SuiteUnit.suite_id == suite_id).order_by(SuiteUnit.position)
            )
        )
