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


@pytest.fixture
def home(tmp_path, monkeypatch):
    from store.paths import Home

    monkeypatch.setenv("MTP_HOME", str(tmp_path / "home"))
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
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path
