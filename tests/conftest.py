"""Shared fixtures. Torch runs on one thread: on these shared 2-core machines two threads
were seen to make a denoising step 100x slower."""

from __future__ import annotations

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
