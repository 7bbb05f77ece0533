"""Scores of existing images (`mtp score`) and the engine-session record; torch-free.

A ScoreRequest is a row the CLI or the app writes and an idle engine claims (one engine per
request, claimed in one write transaction like a run). The engine then asks
`runs_to_score` which done runs still lack a score from *its* backbone for each requested
family, so a second request adds nothing, a request interrupted by a dead engine resumes
where it stopped, and several engines never need to agree on anything but the claim.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, or_, update
from sqlmodel import col, select

from .db import Store
from .models import (
    EngineSession,
    Run,
    RunStatus,
    Score,
    ScoreRequest,
    ScoreRequestStatus,
    Worker,
    utcnow,
)

# Families `mtp score --metric` accepts, and the Score metrics each family writes.
FAMILY_METRICS = {
    # *_set: mean over pairs with the other images of the run's set (set methods only)
    "clip": ("clip_t", "clip_i_ref", "clip_i_src", "clip_i_set"),
    "dino": ("dino_ref", "dino_src", "dino_set"),
    "dreamsim": ("dreamsim_ref", "dreamsim_src", "dreamsim_set"),
}
DEFAULT_FAMILIES = ("clip", "dino")


def parse_families(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """'clip,dino' (or a list, or metric names such as clip_t) -> ('clip', 'dino'); unknown names refused."""
    from .queries import InputError

    items = text.split(",") if isinstance(text, str) else list(text or DEFAULT_FAMILIES)
    out: list[str] = []
    for raw in (i.strip().lower() for i in items):
        if not raw:
            continue
        fam = (
            raw
            if raw in FAMILY_METRICS
            else next((f for f, ms in FAMILY_METRICS.items() if raw in ms), None)
        )
        if fam is None:
            raise InputError(
                f"--metric: {raw!r} is not one of {', '.join(FAMILY_METRICS)} "
                f"(or a metric name: {', '.join(m for ms in FAMILY_METRICS.values() for m in ms)})"
            )
        if fam not in out:
            out.append(fam)
    if not out:
        raise InputError("--metric: give at least one of " + ", ".join(FAMILY_METRICS))
    return tuple(f for f in FAMILY_METRICS if f in out)


# ------------------------------------------------------------------ engine sessions
SESSION_VERSION_COLUMNS = {
    "torch_version": "torch",
    "diffusers_version": "diffusers",
    "transformers_version": "transformers",
    "open_clip_version": "open_clip_torch",
    "mtp_version": "mtp",
}
# Per scored metric, what the runs CSV says about the session that computed it
# (``<metric>@<backbone> scorer_<name>``), besides the score's own preprocessing description.
SCORER_EXPORT_COLUMNS = (
    "role",
    "scorer_device",
    "scorer_dtype",
    "torch_version",
    "open_clip_version",
    "transformers_version",
    "mtp_version",
    "scorers_json",
)
# EngineSession columns the runs CSV carries (as session_<name>).
SESSION_EXPORT_COLUMNS = (
    "backend",
    "device",
    "dtype",
    "model",
    "model_revision",
    "model_hash",
    "weights_hash",
    *SESSION_VERSION_COLUMNS,
)


def record_engine_session(store: Store, **fields: Any) -> int:
    """Insert one EngineSession row; ``versions``/``scorers``/``preprocess`` dicts are stored as
    JSON."""
    versions = fields.pop("versions", {}) or {}
    scorers = fields.pop("scorers", {}) or {}
    preprocess = fields.pop("preprocess", {}) or {}
    for column, package in SESSION_VERSION_COLUMNS.items():
        fields.setdefault(column, versions.get(package, ""))
    if versions.get("mtp_git"):
        fields["mtp_version"] = f"{fields['mtp_version']}+git {versions['mtp_git']}"
    with store.write() as s:
        row = EngineSession(
            versions_json=json.dumps(versions, sort_keys=True),
            scorers_json=json.dumps(scorers, sort_keys=True),
            preprocess_json=json.dumps(preprocess, sort_keys=True),
            **fields,
        )
        s.add(row)
        s.flush()
        return int(row.id)


def get_engine_session(store: Store, session_id: int | None) -> EngineSession | None:
    if session_id is None:
        return None
    with store.session() as s:
        return s.get(EngineSession, session_id)


# ------------------------------------------------------------------ requests
def request_scoring(
    store: Store,
    experiment_id: int,
    families: Sequence[str] = DEFAULT_FAMILIES,
    rescore: bool = False,
) -> tuple[ScoreRequest, bool]:
    """Queue scoring of an experiment's done runs; (request, created). An identical request
    still open is returned instead of adding a second one."""
    metrics = ",".join(parse_families(families))
    with store.write() as s:
        same = s.exec(
            select(ScoreRequest).where(
                ScoreRequest.experiment_id == experiment_id,
                ScoreRequest.metrics == metrics,
                ScoreRequest.rescore == bool(rescore),
                col(ScoreRequest.status).in_(ScoreRequestStatus.OPEN),
            )
        ).first()
        if same is not None:
            return same, False
        req = ScoreRequest(experiment_id=experiment_id, metrics=metrics, rescore=bool(rescore))
        s.add(req)
        s.flush()
        s.refresh(req)
        return req, True


def get_request(store: Store, request_id: int) -> ScoreRequest | None:
    with store.session() as s:
        return s.get(ScoreRequest, request_id)


def open_requests(store: Store, experiment_id: int | None = None) -> list[ScoreRequest]:
    with store.session() as s:
        q = select(ScoreRequest).where(col(ScoreRequest.status).in_(ScoreRequestStatus.OPEN))
        if experiment_id is not None:
            q = q.where(ScoreRequest.experiment_id == experiment_id)
        return list(s.exec(q.order_by(ScoreRequest.id)))


def claim_score_request(
    store: Store, worker_id: str, stale_after_s: float = 60.0
) -> ScoreRequest | None:
    """The oldest queued request (or one held by a dead engine), now running for ``worker_id``;
    None while the queue is paused."""
    import socket

    from .db import db_now
    from .queue import _is_dead, _paused_in

    with store.write() as s:
        if _paused_in(s):  # a paused queue pauses scoring too: engines take nothing new
            return None
        now = db_now(s)  # heartbeats carry the database's clock
        host = socket.gethostname()
        candidates = list(
            s.exec(
                select(ScoreRequest)
                .where(col(ScoreRequest.status).in_(ScoreRequestStatus.OPEN))
                .order_by(ScoreRequest.id)
                .with_for_update(skip_locked=True)
            )
        )
        for req in candidates:
            if req.status == ScoreRequestStatus.RUNNING:
                owner = s.get(Worker, req.worker_id) if req.worker_id else None
                if req.worker_id == worker_id or not _is_dead(
                    store, owner, stale_after_s, now, host
                ):
                    continue
            req.status, req.worker_id, req.started_at = (
                ScoreRequestStatus.RUNNING,
                worker_id,
                utcnow(),
            )
            req.error = None
            s.add(req)
            return req
    return None


def update_request(store: Store, request_id: int, **values: Any) -> None:
    with store.write() as s:
        s.execute(update(ScoreRequest).where(ScoreRequest.id == request_id).values(**values))


def finish_request(store: Store, request_id: int, error: str | None = None) -> None:
    update_request(
        store,
        request_id,
        status=ScoreRequestStatus.FAILED if error else ScoreRequestStatus.DONE,
        error=error,
        finished_at=utcnow(),
    )


def _created_cutoff(req: ScoreRequest) -> datetime | None:
    return req.created_at if req.rescore else None


def runs_to_score(
    store: Store,
    req: ScoreRequest,
    backbones: dict[str, str],
    limit: int | None = None,
    after_id: int = 0,
) -> list[Run]:
    """Done runs with an image that lack a score from ``backbones[family]`` for a requested family
    (with ``rescore``: one written after the request was made), ids above ``after_id``."""
    wanted = [f for f in req.metrics.split(",") if f in backbones]
    if not wanted:
        return []
    cutoff = _created_cutoff(req)
    lacking = []
    for fam in wanted:
        cond = [
            Score.run_id == Run.id,
            Score.backbone == backbones[fam],
            col(Score.metric).in_(FAMILY_METRICS[fam]),
        ]
        if cutoff is not None:
            cond.append(Score.created_at >= cutoff)
        lacking.append(~exists().where(*cond))
    q = (
        select(Run)
        .where(
            Run.experiment_id == req.experiment_id,
            Run.status == RunStatus.DONE,
            col(Run.image_path).is_not(None),
            Run.id > after_id,
            or_(*lacking),
        )
        .order_by(Run.id)
    )
    if limit:
        q = q.limit(limit)
    with store.session() as s:
        return list(s.exec(q))


def unscored_done_runs(
    store: Store, experiment_id: int, families: Sequence[str] = DEFAULT_FAMILIES
) -> tuple[int, int]:
    """(done runs with an image, those lacking every score of some family, whatever the
    backbone): what a score request for the experiment could still do."""
    metrics_lacking = [
        ~exists().where(Score.run_id == Run.id, col(Score.metric).in_(FAMILY_METRICS[f]))
        for f in parse_families(families)
    ]
    base = (
        select(func.count())
        .select_from(Run)
        .where(
            Run.experiment_id == experiment_id,
            Run.status == RunStatus.DONE,
            col(Run.image_path).is_not(None),
        )
    )
    with store.session() as s:
        done = s.exec(base).one()
        lacking = s.exec(base.where(or_(*metrics_lacking))).one() if metrics_lacking else 0
    return int(done), int(lacking)


def save_scores(store: Store, results: Iterable[dict[str, Any]]) -> int:
    """Write scores of existing runs: each result {run_id, scores, score_error}. A score replaces
    the one of the same run, metric and backbone; other backbones' scores stay. Runs are only
    touched in score_error, never in their images or status. One transaction, set-wise
    statements (a batch of 32 runs is ~160 rows)."""
    from sqlalchemy import insert

    results = list(results)
    if not results:
        return 0
    now = utcnow()
    rows: list[dict[str, Any]] = []
    replaced: dict[tuple[str, str], list[int]] = {}
    for r in results:
        rid = int(r["run_id"])
        for sc in r.get("scores") or ():
            rows.append(
                {
                    "run_id": rid,
                    "created_at": now,
                    **{
                        k: sc.get(k)
                        for k in ("metric", "backbone", "value", "preprocess", "scored_text")
                    },
                    # the session that computed it: the scoring engine's own record
                    "session_id": sc.get("session_id", r.get("session_id")),
                }
            )
            replaced.setdefault((sc["backbone"], sc["metric"]), []).append(rid)
    clean = [int(r["run_id"]) for r in results if not r.get("score_error")]
    with store.write() as s:
        for (backbone, metric), ids in replaced.items():
            s.execute(
                delete(Score).where(
                    col(Score.run_id).in_(ids), Score.backbone == backbone, Score.metric == metric
                )
            )
        if rows:
            s.execute(insert(Score), rows)
        if clean:
            s.execute(update(Run).where(col(Run.id).in_(clean)).values(score_error=None))
        for r in results:
            if r.get("score_error"):
                s.execute(
                    update(Run)
                    .where(Run.id == int(r["run_id"]))
                    .values(score_error=r["score_error"])
                )
    return len(results)
