"""Scoring existing images (`mtp score`): the engine side of store.scoring's ScoreRequest.

An engine with nothing to generate claims a request and scores, in batches, the done runs that
lack a score from its backbones; the images are only read. Each batch is committed on its own,
so progress is visible and a killed engine loses at most one batch (the request goes back to the
queue once its heartbeat is stale, and the next engine skips what is already scored).
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from store.db import Store
from store.models import Concept, Run, ScoreRequest, ScoreRequestStatus
from store.scoring import (
    claim_score_request,
    finish_request,
    runs_to_score,
    save_scores,
    update_request,
)

log = logging.getLogger("mtp.engine")

BATCH = 32


class Rescorer:
    """``scorer_for(families)`` returns an object with ``backbones`` and ``score(..., families=)``
    (engine.scoring.Scorer) or raises; ``scored_text(prompt, token, class_word)`` as the worker's."""

    def __init__(
        self,
        store: Store,
        worker_id: str,
        scorer_for: Callable[[Sequence[str]], object],
        scored_text: Callable[[str, str, str], str],
        stop_event: threading.Event | None = None,
        on_progress: Callable[[str], None] | None = None,
        stale_after_s: float = 60.0,
    ):
        self.store, self.worker_id = store, worker_id
        self.scorer_for, self.scored_text = scorer_for, scored_text
        self.stop_event = stop_event or threading.Event()
        self.on_progress = on_progress or (lambda message: None)
        self.stale_after_s = stale_after_s
        self.stats = {"requests": 0, "scored": 0, "failed": 0}
        self._sessions: dict[int, int | None] = {}  # id(scorer) -> its EngineSession row

    def run_one(self) -> bool:
        """Claim and work one request; False when there was none."""
        req = claim_score_request(self.store, self.worker_id, self.stale_after_s)
        if req is None:
            return False
        self.stats["requests"] += 1
        try:
            self.process(req)
        except (
            Exception
        ) as exc:  # a bug or a database error: the request says so, the engine lives on
            log.error("score request %d failed:\n%s", req.id, traceback.format_exc())
            finish_request(self.store, req.id, f"{type(exc).__name__}: {exc}")
        return True

    def process(self, req: ScoreRequest) -> None:
        families = [f for f in req.metrics.split(",") if f]
        try:
            scorer = self.scorer_for(families)
        except Exception as exc:
            log.error("score request %d: %s", req.id, exc)
            finish_request(self.store, req.id, str(exc))
            return
        backbones = {f: b for f, b in scorer.backbones.items() if f in families}
        todo = runs_to_score(self.store, req, backbones)
        update_request(self.store, req.id, total=len(todo), scored=0, failed=0)
        log.info(
            "score request %d: experiment %d, %s%s: %d run(s) to score",
            req.id,
            req.experiment_id,
            req.metrics,
            " (rescore)" if req.rescore else "",
            len(todo),
        )
        scored = failed = 0
        refs_cache: dict[int | None, list[Path] | str] = {}
        for start in range(0, len(todo), BATCH):
            if self.stop_event.is_set():
                # Back to the queue for the next engine; what is scored stays scored.
                update_request(self.store, req.id, status=ScoreRequestStatus.QUEUED, worker_id=None)
                return
            chunk = todo[start : start + BATCH]
            results = self._score_chunk(scorer, families, chunk, refs_cache)
            session_id = self._session_id(scorer)
            for r in results:
                r["session_id"] = session_id
            save_scores(self.store, results)
            bad = sum(1 for r in results if r.get("score_error"))
            scored, failed = scored + len(results) - bad, failed + bad
            update_request(self.store, req.id, scored=scored, failed=failed)
            self.on_progress(
                f"scoring experiment {req.experiment_id}: {scored + failed}/{len(todo)}"
            )
        self.stats["scored"] += scored
        self.stats["failed"] += failed
        finish_request(self.store, req.id, None)
        log.info("score request %d done: %d scored, %d not scorable", req.id, scored, failed)

    def _session_id(self, scorer) -> int | None:
        """This engine's own session record for ``scorer`` (written once per scorer): the
        rescored values were computed here, not by the engine that generated the images."""
        key = id(scorer)
        if key in self._sessions:
            return self._sessions[key]
        import os
        import socket

        from store.scoring import record_engine_session

        from .provenance import library_versions
        from .worker import scorer_description

        info = scorer_description(scorer)
        try:
            sid = record_engine_session(
                self.store,
                worker_id=self.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                backend="score",
                role="score",
                device=info.get("device", ""),
                dtype=info.get("dtype", ""),
                scorer_device=info.get("device", ""),
                scorer_dtype=info.get("dtype", ""),
                versions=library_versions(),
                scorers=info.get("backbones") or dict(getattr(scorer, "backbones", {}) or {}),
                preprocess=info.get("preprocess", {}),
            )
        except Exception:
            # The record is worth less than the scores: go on without it, try again next batch.
            log.warning("could not record the scoring session:\n%s", traceback.format_exc())
            return None
        self._sessions[key] = sid
        return sid

    # ------------------------------------------------------------------ one batch
    def _score_chunk(self, scorer, families, runs: list[Run], refs_cache) -> list[dict]:
        from store.images import image_problem, open_bounded

        home = self.store.home
        results: dict[int, dict] = {
            r.id: {"run_id": r.id, "scores": [], "score_error": None} for r in runs
        }
        # Runs of one concept whose source pixels are equal (a shared-source batch writes the same
        # source into each run's folder) are scored in one call, so the encoders see real batches.
        from .scoring import _file_digest

        groups: dict[tuple, list[Run]] = {}
        for r in runs:
            src = home.resolve_artifact(r.source_image_path) if r.source_image_path else None
            try:
                key = _file_digest(src) if src is not None else None
            except OSError:
                key = ("unreadable", r.source_image_path)  # reported below, run by run
            groups.setdefault((r.concept_id, key), []).append(r)
        for (concept_id, _source_key), members in groups.items():
            source_rel = members[0].source_image_path
            refs = self._refs(concept_id, refs_cache)
            if isinstance(refs, str):
                for r in members:
                    results[r.id]["score_error"] = refs
                continue
            source = None
            if source_rel:
                # The engine's own output, at the size the sweep chose: no shape limits.
                problem = image_problem(home.resolve_artifact(source_rel), shape=False)
                if problem:
                    for r in members:
                        results[r.id]["score_error"] = f"source image {problem}"
                    continue
                source = open_bounded(home.resolve_artifact(source_rel))
            images, ok = [], []
            for r in members:
                path = home.resolve_artifact(r.image_path)
                problem = image_problem(path, shape=False)
                if problem:
                    results[r.id]["score_error"] = f"image {problem}"
                    continue
                images.append(open_bounded(path))
                ok.append(r)
            if not ok:
                continue
            texts = [
                self.scored_text(r.target_prompt, r.token or "", r.class_word or "") for r in ok
            ]
            parts = [list(range(len(ok)))]  # one call; run by run when it fails
            while parts:
                part = parts.pop(0)
                try:
                    out = scorer.score(
                        [images[i] for i in part],
                        [texts[i] for i in part],
                        source,
                        refs,
                        families=families,
                    )
                except Exception as exc:
                    if len(part) > 1:
                        parts = [[i] for i in part] + parts
                        continue
                    log.error("scoring run %s failed:\n%s", ok[part[0]].id, traceback.format_exc())
                    results[ok[part[0]].id]["score_error"] = (
                        f"scoring failed: {type(exc).__name__}: {exc}"
                    )
                    continue
                for i, sc in zip(part, out):
                    results[ok[i].id]["scores"] = list(sc)
        self._score_sets(scorer, families, runs, results)
        return list(results.values())

    def _score_sets(self, scorer, families, runs: list[Run], results: dict[int, dict]) -> None:
        """Set consistency of the runs here that belong to a set (a set method's, or MasaCtrl's
        prompt set in a study), over every done image of the set (its other images may be in
        another batch, or already scored)."""
        from store.queries import prompt_set_runs

        from .artifacts import read_set_images

        seen: set[tuple[int, ...]] = set()
        covered: set[int] = set()
        for first in runs:
            if results[first.id]["score_error"] or first.id in covered:
                continue
            key = first.group_key
            # a set method's set, or MasaCtrl's prompt set in a study
            members = prompt_set_runs(self.store, first)
            ids = tuple(m.id for m in members)
            covered.update(ids)
            if ids in seen:
                continue
            seen.add(ids)
            images = read_set_images(self.store.home, members)
            if images is None:
                continue
            try:
                out = scorer.set_scores(images, families=families)
            except Exception:
                log.error("set scores of set %s failed:\n%s", key, traceback.format_exc())
                continue
            for m, sc in zip(members, out):
                if m.id in results and not results[m.id]["score_error"]:
                    results[m.id]["scores"] = list(results[m.id]["scores"]) + list(sc)

    def _refs(self, concept_id: int | None, cache) -> list[Path] | str:
        """The concept's reference images, or a message naming the one that cannot be read."""
        if concept_id in cache:
            return cache[concept_id]
        from store.images import image_problem

        refs: list[Path] | str = []
        if concept_id is not None:
            with self.store.session() as s:
                concept = s.get(Concept, concept_id)
            for rel in concept.ref_images if concept else []:
                path = self.store.home.resolve_artifact(rel)
                problem = image_problem(path)
                if problem:
                    refs = f"reference image {problem}"
                    break
                refs.append(path)
        cache[concept_id] = refs
        return refs


def serve_score_only(
    store: Store,
    rescorer: Rescorer,
    device: str,
    once: bool,
    poll_s: float = 2.0,
    heartbeat_s: float = 5.0,
) -> dict:
    """`mtp-engine --score-only`: work score requests only (never claims runs to generate)."""
    from store.queue import WorkerStatus, heartbeat, register_worker

    register_worker(store, device, rescorer.worker_id)
    stop = rescorer.stop_event
    progress = {"message": "scoring"}
    rescorer.on_progress = lambda m: progress.__setitem__("message", m)

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                heartbeat(
                    store,
                    rescorer.worker_id,
                    status=WorkerStatus.RUNNING,
                    message=progress["message"],
                )
            except Exception as exc:  # a busy database must not end the thread
                log.warning("heartbeat failed: %s", exc)

    thread = threading.Thread(target=beat, name="mtp-score-heartbeat", daemon=True)
    thread.start()
    try:
        while not stop.is_set():
            if rescorer.run_one():
                continue
            if once:
                break
            progress["message"] = "waiting for score requests"
            stop.wait(poll_s)
    finally:
        stop.set()
        thread.join(timeout=10)
        heartbeat(store, rescorer.worker_id, status=WorkerStatus.STOPPED, message="stopped")
    return rescorer.stats
