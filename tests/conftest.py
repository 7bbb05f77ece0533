"""Shared fixtures. Torch runs on one thread: on these shared 2-core machines two threads
were seen to make a denoising step 100x slower."""

from __future__ import annotations

import inspect
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def pytest_configure(config):
    # Only pin torch if something already imported it; the store/TUI tests never should.
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


# Test modules that set DB_BACKENDS = ("sqlite", "postgresql") run each test using `home` or
# `store` once per backend; every other module stays on SQLite.
def pytest_generate_tests(metafunc):
    backends = getattr(metafunc.module, "DB_BACKENDS", None)
    own = any(
        "db_backend" in str(m.args[0]) for m in metafunc.definition.iter_markers("parametrize")
    )
    if backends and "db_backend" in metafunc.fixturenames and not own:
        metafunc.parametrize("db_backend", backends, indirect=True)


# Test tiers (README, "Run the tests"). Markers follow from what a test uses, so a new test lands
# in its tier without anyone remembering to mark it: `pg` (a PostgreSQL server), `snapshot`
# (SVG snapshots), `subprocess` (starts processes), `model` (builds or runs a torch model),
# `pilot` (drives the app); each of these is also `slow`, and `pytest -m "not slow"` is the
# quick loop.
PG_FIXTURES = {"pg_server", "pg_url"}
MODEL_FIXTURES = {"tiny_model_dir", "tiny_sdxl_dir", "pipe", "sdxl_pipe"}
# Modules whose tests start engine or CLI processes (the process boundary is what they test).
SUBPROCESS_MODULES = {
    "test_recovery",
    "test_faults",
    "test_score_cli",
    "test_entrypoints",
    "test_multihost",
}
# Engine modules that build the tiny models or scorers in every test.
MODEL_MODULES = {
    "test_pipeline",
    "test_processors",
    "test_inversion",
    "test_inversion_sdxl",
    "test_personalize",
    "test_scoring",
    "test_dreamsim",
    "test_rescore",
    "test_tiny",
    "test_worker",
}
TIERS = ("pg", "snapshot", "subprocess", "model", "pilot")


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if fixtures & PG_FIXTURES or params.get("db_backend") == "postgresql":
            item.add_marker(pytest.mark.pg)
        if "snap_compare" in fixtures:
            item.add_marker(pytest.mark.snapshot)
        if module in SUBPROCESS_MODULES:
            item.add_marker(pytest.mark.subprocess)
        if fixtures & MODEL_FIXTURES or module in MODEL_MODULES:
            item.add_marker(pytest.mark.model)
        # The app driven by Textual's pilot: seconds each, a loop of its own (`pytest -m pilot`).
        if "/tests/tui/" in str(item.path) and inspect.iscoroutinefunction(
            getattr(item, "function", None)
        ):
            item.add_marker(pytest.mark.pilot)
        if any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _restore_mtp_environment():
    """The entry points export --db as MTP_DB_URL (and drop it under --demo) for the engines they
    start; a test that calls one in-process must not hand that to the next test."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("MTP_")}
    yield
    for key in [k for k in os.environ if k.startswith("MTP_")]:
        del os.environ[key]
    os.environ.update(saved)


@pytest.fixture(scope="session")
def pg_server():
    """A throwaway PostgreSQL server for the session. On CI a missing server fails the tests."""
    from tests.pg_server import NoServer, PgServer

    try:
        server = PgServer().start()
    except NoServer as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must test PostgreSQL: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A throwaway one-node SLURM (CPU-only partition) for the session, $SLURM_CONF pointing at
    it. On CI missing SLURM binaries fail the tests; locally they are skipped."""
    from tests.slurm_cluster import NoCluster, SlurmCluster

    try:
        cluster = SlurmCluster().start()
    except NoCluster as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must test SLURM: {exc}", pytrace=False)
        pytest.skip(f"SLURM tests skipped: {exc}")
    saved = os.environ.get("SLURM_CONF")
    os.environ.update(cluster.env())
    yield cluster
    cluster.cancel_all()
    cluster.stop()
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    url = pg_server.new_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def db_backend(request):
    return getattr(request, "param", "sqlite")


@pytest.fixture
def home(tmp_path, monkeypatch, db_backend, request):
    """The data folder; on the PostgreSQL backend $MTP_DB_URL names a fresh database, so every
    Store(home) of the test, and every engine process it starts, uses that database."""
    from store.paths import Home

    monkeypatch.setenv("MTP_HOME", str(tmp_path / "home"))
    if db_backend == "postgresql":
        monkeypatch.setenv("MTP_DB_URL", request.getfixturevalue("pg_url"))
    else:
        monkeypatch.delenv("MTP_DB_URL", raising=False)
    return Home.resolve(tmp_path / "home")


@pytest.fixture
def store(home):
    from store.db import Store

    s = Store(home)
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The offline tiny SD pipeline (SD1.5 attention topology), built once per test session."""
    import torch

    torch.set_num_threads(1)
    from engine.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """The offline tiny SDXL pipeline (SDXL's 70-block topology), built once per test session."""
    import torch

    torch.set_num_threads(1)
    from engine.tiny_sdxl import build_tiny_sdxl_pipeline

    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture
def reference_image(tmp_path):
    """A 64x64 random RGB image to invert."""
    import numpy as np
    from PIL import Image

    path = tmp_path / "reference.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path
    )
    return path
