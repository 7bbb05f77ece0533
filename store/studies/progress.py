"""How far a study is, and an ETA from its own recent throughput."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlmodel import col, func, select

from ..db import Store, db_now
from ..models import Experiment, Run, RunStatus

# The ETA's window: recent enough to follow engines joining or leaving, long enough to hold
# several batches.
WINDOW = timedelta(minutes=15)


@dataclass
class StudyProgress:
    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    recent_done: int = 0  # runs finished in the window
    recent_span_s: float = 0.0  # from the window's first finish to now

    @property
    def done(self) -> int:
        return self.counts.get(RunStatus.DONE, 0)

    @property
    def remaining(self) -> int:
        return self.counts.get(RunStatus.QUEUED, 0) + self.counts.get(RunStatus.RUNNING, 0)

    @property
    def eta_s(self) -> float | None:
        """Remaining runs at the rate of the last 15 minutes; None when nothing finished in
        them (no honest figure), 0 when nothing is left."""
        if self.remaining == 0:
            return 0.0
        if self.recent_done < 2 or self.recent_span_s <= 0:
            return None
        return self.remaining * self.recent_span_s / self.recent_done

    def eta_text(self) -> str:
        eta = self.eta_s
        if eta is None:
            return "ETA unknown (no run finished in the last 15 min)"
        if eta == 0:
            return "complete" if not self.counts.get(RunStatus.FAILED) else "nothing left to run"
        return f"ETA {format_duration(eta)} at the last 15 min's rate"

    def line(self) -> str:
        parts = [f"{self.done}/{self.total} done"]
        for status in (RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED):
            if self.counts.get(status):
                parts.append(f"{self.counts[status]} {status}")
        return ", ".join(parts) + "; " + self.eta_text()


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def study_progress(store: Store, study_id: int) -> StudyProgress:
    in_study = col(Run.experiment_id).in_(
        select(Experiment.id).where(Experiment.study_id == study_id)
    )
    with store.session() as s:
        counts = {
            status: n
            for status, n in s.exec(
                select(Run.status, func.count()).where(in_study).group_by(Run.status)
            )
        }
        now = db_now(s)
        since = now - WINDOW
        n, first = s.exec(
            select(func.count(), func.min(Run.finished_at)).where(
                in_study, Run.status == RunStatus.DONE, col(Run.finished_at) >= since
            )
        ).one()
    span = 0.0
    if first is not None:
        from ..queue import _aware

        start = _aware(first)
        assert start is not None
        span = max(0.0, (now - start).total_seconds())
    return StudyProgress(counts, sum(counts.values()), int(n or 0), span)
