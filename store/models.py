"""SQLModel tables. Every swept parameter of a run is a real column so it can be filtered and sorted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache

from sqlalchemy import BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

from .settings import settings


# This host's clock shifted by MTP_CLOCK_OFFSET_S seconds (tests only: it stands in for a host
# whose clock is wrong, for this process and the SQLite it runs, as libfaketime would). Liveness
# never compares two hosts' clocks: heartbeats, claims and staleness use the database's clock
# (store.db.db_now), and an engine on this host is judged by its own heartbeats moving
# (store.queue._is_dead).
@cache
def clock_offset() -> timedelta:
    # Read on first use, not at import: the entry points check the settings first.
    return timedelta(seconds=settings().clock_offset_s)


def utcnow() -> datetime:
    """This host's idea of now (UTC): for records only (created_at), never for liveness."""
    return datetime.now(UTC) + clock_offset()


class RunStatus:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ALL = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
    FINISHED = (DONE, FAILED, CANCELLED)


class ExperimentStatus:
    DRAFT = "draft"
    QUEUED = "queued"  # has runs that are not finished
    DONE = "done"
    ARCHIVED = "archived"  # hidden from Home and the queue; runs and artifacts kept
    ALL = (DRAFT, QUEUED, DONE, ARCHIVED)


WEIGHT_KINDS = ("none", "custom_diffusion", "textual_inversion", "lora", "full")


class Meta(SQLModel, table=True):
    """Key/value facts about the database itself: schema version, queue paused flag."""

    key: str = Field(primary_key=True)
    value: str = ""


class Concept(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    token: str = ""  # e.g. "<new1>" or "sks"; written into prompts by the user
    class_word: str = ""  # e.g. "dog"; replaces the token when CLIP-T is scored
    ref_images_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    weights_path: str | None = None
    weights_kind: str = "none"
    base_model: str = "runwayml/stable-diffusion-v1-5"
    notes: str = ""
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def ref_images(self) -> list[str]:
        return json.loads(self.ref_images_json or "[]")

    @ref_images.setter
    def ref_images(self, paths: list[str]) -> None:
        self.ref_images_json = json.dumps(list(paths))


class Suite(SQLModel, table=True):
    """A benchmark suite as imported (`mtp suite import`): ConsiStory+, DreamBench or mtp's YAML."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    layout: str = ""  # consistory | dreambench | mtp (store.suites)
    source: str = ""  # the file or folder it was read from, as given
    prompt_rule: str = ""  # how each image's prompt was built from the unit's texts
    created_at: datetime = Field(default_factory=utcnow)


class SuiteUnit(SQLModel, table=True):
    """One independent unit of a suite: a ConsiStory+ prompt set or a DreamBench subject."""

    id: int | None = Field(default=None, primary_key=True)
    suite_id: int = Field(foreign_key="suite.id", index=True)
    position: int = 0
    name: str = ""
    group_name: str = ""  # superclass (ConsiStory+) or class word (DreamBench): the breakdown
    subject_prompt: str = ""
    prompts_json: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    subject_words: str = ""  # the subject's words (ConsiStory's mask words come from them)
    concept_id: int | None = Field(default=None, foreign_key="concept.id")
    live: bool = False

    @property
    def prompts(self) -> list[str]:
        return json.loads(self.prompts_json or "[]")


class Study(SQLModel, table=True):
    """A sweep over every unit of a suite: one experiment per unit, same grid and seeds."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    suite_id: int = Field(foreign_key="suite.id", index=True)
    spec_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    reference: str = ""  # the configuration the leaderboard compares with ("" = the baseline)
    priority: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class Experiment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    concept_id: int | None = Field(default=None, foreign_key="concept.id", index=True)
    # a study's experiment (one per suite unit); NULL for experiments made by hand
    study_id: int | None = Field(default=None, foreign_key="study.id", index=True)
    unit_id: int | None = Field(default=None, foreign_key="suiteunit.id")
    status: str = Field(default=ExperimentStatus.DRAFT, index=True)
    priority: int = 0  # higher runs first
    spec_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    run_count: int = 0
    tags: str = ""  # comma separated
    notes: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    __table_args__ = (
        Index("ix_run_exp_status", "experiment_id", "status"),
        Index("ix_run_queue", "status", "priority", "group_key", "id"),
        # The runs browser counts the marked runs on every page (bulk actions act on them).
        Index("ix_run_marked", "marked"),
    )

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    concept_id: int | None = Field(default=None, foreign_key="concept.id")
    group_key: str = Field(default="", index=True)  # runs with equal keys share one source pass
    grid_index: int = 0  # position in the experiment's expanded grid
    is_baseline: bool = False  # the no-control reference for its (prompt, seed)

    # shared-source settings
    model: str = ""
    weights_path: str | None = None
    weights_kind: str = "none"
    token: str = ""
    class_word: str = ""
    source_prompt: str = ""
    source_image: str | None = None
    invert: bool = False
    # classifier-free guidance of the DDIM inversion, a sweep field; NULL for a generated source
    inversion_guidance: float | None = None
    seed: int = Field(default=0, index=True, sa_type=BigInteger)  # 64-bit: 0 .. 2**63-1
    num_steps: int = 50
    guidance: float = 7.5
    width: int = 512
    height: int = 512

    # the consistency method (store.sweep.methods) and its own parameters as canonical JSON; for
    # a set method the runs of one set share group_key and differ in prompt_index
    method: str = Field(default="masactrl", index=True)
    method_params: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))

    # the target and its control
    target_prompt: str = ""
    prompt_index: int = 0
    layers: str = Field(default="", index=True)
    start_step: int = Field(default=0, index=True)
    final_step: int = Field(default=50, index=True)
    skip_interval: int = Field(default=1, index=True)
    mask_mode: str = "off"
    mask_layers: str = ""
    mask_words: str = ""
    # NULL: Otsu's threshold when the mask is on (shown, grouped, filtered and exported as
    # "otsu", see param_value), no threshold when it is off
    mask_threshold: float | None = None
    mask_timing: str = "current"

    # lifecycle
    status: str = Field(default=RunStatus.QUEUED, index=True)
    priority: int = 0
    attempts: int = (
        0  # claims, informational: a claim lost to a crash during model load counts here
    )
    # Consecutive engine deaths while this run was being generated (not merely claimed): only
    # these fail a run for crashing engines (store.queue.recover_stale), so a restart or a kill
    # during model load never burns it.
    crashes: int = 0
    # In flight with batch-mates when an engine died: which of them killed it is unknown, so none
    # is charged; each is retried alone, where a death is charged to it (recover_stale).
    solo: bool = False
    worker_id: str | None = Field(default=None, index=True)
    cancel_requested: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    claimed_at: datetime | None = None
    started_at: datetime | None = None  # generation began (None while only claimed)
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Set when the run is done (images kept) but scoring it failed; NULL once it is scored.
    score_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The engine session (library versions, model identity, dtype, device) that generated it.
    session_id: int | None = Field(default=None, foreign_key="enginesession.id")

    # artifacts, relative to the data folder
    image_path: str | None = None
    source_image_path: str | None = None
    mask_path: str | None = None
    source_mask_path: str | None = None
    maps_path: str | None = None

    # the researcher's own marks
    tags: str = ""
    notes: str = ""
    marked: bool = False


class Score(SQLModel, table=True):
    # One value per (run, metric, backbone): a rescore replaces (store.queue.complete_runs), so
    # readers never need a "latest score" filter.
    __table_args__ = (
        Index("ux_score_run_metric", "run_id", "metric", "backbone", unique=True),
        # Runs sorted by a score page through this index instead of sorting every run
        # (store.queries.list_runs): covering, so a deep page reads no table rows.
        Index("ix_score_sort", "metric", "backbone", "value", "run_id"),
        # One run's value of a metric, covering too: without it SQLite answered "this run's
        # clip_t" from ix_score_sort by reading every clip_t score, once per run.
        Index("ix_score_run", "run_id", "metric", "value"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")  # indexed first in ix_score_run
    metric: str  # clip_t, clip_i_ref, clip_i_src, dino_ref, dino_src, dreamsim_ref, dreamsim_src
    backbone: str  # e.g. "open_clip:ViT-B-32-quickgelu:openai@open_clip_torch-3.3.0" (engine.scoring.backbone_id)
    value: float  # raw cosine
    preprocess: str = ""
    scored_text: str | None = None  # the exact text for text-alignment metrics
    created_at: datetime = Field(default_factory=utcnow)
    # The engine session that computed this value (library versions, device, dtype, scorer
    # weights, preprocessing): the generating engine's, or a rescoring engine's own. NULL for
    # scores written before scores were linked to sessions.
    session_id: int | None = Field(default=None, foreign_key="enginesession.id")


class EngineSession(SQLModel, table=True):
    """What generated a run, stored once per engine process and loaded model: enough to say
    which code, weights and numeric settings produced an image (Run.session_id points here)."""

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    worker_id: str = ""
    host: str = ""
    pid: int = 0
    backend: str = ""  # diffusers | fake
    device: str = ""
    dtype: str = ""  # e.g. torch.float16
    model: str = ""  # hub id or folder, as the run names it
    model_revision: str | None = None  # hub commit when loaded from the hub cache
    model_hash: str | None = None  # sha256 of the UNet weights file when loaded from a folder
    weights_kind: str = "none"
    weights_path: str | None = None
    weights_hash: str | None = None  # sha256 of the personalization weights file
    # The libraries that decide the pixels and the scores; versions_json holds these and more.
    torch_version: str = ""
    diffusers_version: str = ""
    transformers_version: str = ""
    open_clip_version: str = ""
    mtp_version: str = ""  # package version, plus "+git <commit>" when run from a checkout
    versions_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    scorers_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    # "generate" (an engine that generates, and scores what it generated) or "score" (an engine
    # rescoring existing images: `mtp score`); what the scorers ran on, and how each family
    # preprocessed its input (scorers_json names each family's backbone and weights).
    role: str = "generate"
    scorer_device: str = ""
    scorer_dtype: str = ""
    preprocess_json: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))

    @property
    def preprocess(self) -> dict[str, str]:
        return json.loads(self.preprocess_json or "{}")

    @property
    def versions(self) -> dict[str, str]:
        return json.loads(self.versions_json or "{}")

    @property
    def scorers(self) -> dict[str, str]:
        return json.loads(self.scorers_json or "{}")


class ScoreRequestStatus:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    OPEN = (QUEUED, RUNNING)


class ScoreRequest(SQLModel, table=True):
    """`mtp score`: score an experiment's existing images, picked up by an idle engine.

    Idempotent by construction: the engine scores only done runs that lack a score from its
    backbone for a requested family (with ``rescore``: lack one made after ``created_at``)."""

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: int = Field(foreign_key="experiment.id", index=True)
    metrics: str = "clip,dino"  # comma separated families: clip, dino, dreamsim
    rescore: bool = False
    status: str = Field(default=ScoreRequestStatus.QUEUED, index=True)
    worker_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    total: int = 0  # runs that needed scoring when the engine started on it
    scored: int = 0
    failed: int = 0  # runs whose images could not be scored (their score_error says why)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Worker(SQLModel, table=True):
    id: str = Field(primary_key=True)  # host:pid:device
    host: str = ""
    pid: int = 0
    device: str = ""
    status: str = "idle"  # idle, running, paused (message says why), stopped, dead
    started_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)
    current_run_id: int | None = None
    step: int = 0
    total_steps: int = 0
    its_per_s: float | None = None
    message: str = ""
    # Set when the engine runs inside a SLURM job (`mtp engine submit`): which job and node.
    slurm_job_id: str | None = None
    slurm_node: str | None = None


OTSU = "otsu"


def otsu_value(mask_mode: str | None, threshold: float | None) -> float | str | None:
    """A run's mask threshold as shown, grouped, filtered and exported: ``otsu`` for a masked run
    whose threshold is NULL (Otsu's method), None for an unmasked run, else the number."""
    if threshold is None and mask_mode not in (None, "", "off"):
        return OTSU
    return threshold


def param_value(run, name: str):
    """``getattr(run, name)``, except that an Otsu mask threshold reads ``otsu``."""
    if name == "mask_threshold":
        return otsu_value(getattr(run, "mask_mode", None), getattr(run, "mask_threshold", None))
    return getattr(run, name)


# Run columns a user can sort and filter on; the TUI and export read this list.
RUN_PARAM_COLUMNS = (
    "method",
    "method_params",
    "target_prompt",
    "seed",
    "layers",
    "start_step",
    "final_step",
    "skip_interval",
    "mask_mode",
    "mask_layers",
    "mask_words",
    "mask_threshold",
    "mask_timing",
    "source_prompt",
    "num_steps",
    "guidance",
    "width",
    "height",
    "model",
    "is_baseline",
    "inversion_guidance",
)
RUN_SORT_COLUMNS = (
    "id",
    "status",
    "created_at",
    "finished_at",
    "duration_s",
    "attempts",
) + RUN_PARAM_COLUMNS
