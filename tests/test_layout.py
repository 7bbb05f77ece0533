"""Imports flow one way: tui (app + `mtp` CLI) -> store / torch-free engine; engine -> store; store -> neither."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_SIDE = ("torch", "diffusers", "transformers", "open_clip", "dreamsim")
TORCH_FREE_ENGINE = {"engine.control", "engine.launch", "engine.slurm", "engine"}


def imported_modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield path, alias.name
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield path, node.module


def test_store_imports_neither_engine_nor_tui():
    bad = [
        (p.relative_to(ROOT), m)
        for p, m in imported_modules("store")
        if m.split(".")[0] in ("engine", "tui")
    ]
    assert bad == []


def test_tui_uses_only_torch_free_engine_modules():
    bad = [
        (p.relative_to(ROOT), m)
        for p, m in imported_modules("tui")
        if m.split(".")[0] in TORCH_SIDE
        or (m.split(".")[0] == "engine" and m not in TORCH_FREE_ENGINE)
    ]
    assert bad == []
