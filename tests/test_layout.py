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


def test_no_screen_attribute_is_written_from_a_worker_thread():
    """Thread workers hand results over by message (or a Future), never by assigning to the
    screen: checked in every `@work(thread=True)` method and the methods it calls directly."""
    import ast

    root = Path(__file__).resolve().parents[1] / "tui"
    offenders = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            methods = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}

            def threaded(f):
                return any(
                    isinstance(d, ast.Call)
                    and getattr(d.func, "id", getattr(d.func, "attr", "")) == "work"
                    and any(
                        k.arg == "thread" and getattr(k.value, "value", False) for k in d.keywords
                    )
                    for d in f.decorator_list
                )

            for f in filter(threaded, methods.values()):
                called = {
                    c.func.attr
                    for c in ast.walk(f)
                    if isinstance(c, ast.Call)
                    and isinstance(c.func, ast.Attribute)
                    and isinstance(c.func.value, ast.Name)
                    and c.func.value.id == "self"
                }
                for g in [f] + [methods[n] for n in called if n in methods]:
                    for node in ast.walk(g):
                        targets = (
                            node.targets
                            if isinstance(node, ast.Assign)
                            else [node.target]
                            if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                            else []
                        )
                        for t in targets:
                            for a in ast.walk(t):
                                if (
                                    isinstance(a, ast.Attribute)
                                    and isinstance(a.value, ast.Name)
                                    and a.value.id == "self"
                                ):
                                    offenders.append(f"{path.name}:{node.lineno} self.{a.attr}")
    assert offenders == []
