"""The reproducibility record of an engine session: library versions, model identity, dtype, device.

Stored once per engine process and loaded model (store.models.EngineSession) and linked from
every run it generates (Run.session_id), so a figure can name exactly what produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGES = (
    "torch",
    "diffusers",
    "transformers",
    "open_clip_torch",
    "mtp",
    "dreamsim",
    "numpy",
    "safetensors",
)
UNET_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    commit = _git_commit(Path(__file__).resolve().parent.parent)
    if commit:
        out["mtp_git"] = commit
    return out


def _git_commit(folder: Path) -> str | None:
    """The source commit (with "+dirty" for local changes) when mtp runs from a git checkout."""
    if not (folder / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def unet_weights_file(folder: str | os.PathLike) -> Path | None:
    unet = Path(folder) / "unet"
    for name in UNET_WEIGHTS:
        if (unet / name).is_file():
            return unet / name
    found = sorted(unet.glob("*.safetensors")) + sorted(unet.glob("*.bin"))
    return found[0] if found else None


def file_identity(path: str | os.PathLike | None) -> str | None:
    """sha256 of a weights file, or of the first weights file in a folder."""
    from .backbones import weights_digest

    if not path:
        return None
    p = Path(path)
    if p.is_dir():
        files = sorted(p.rglob("*.safetensors")) + sorted(p.rglob("*.bin"))
        p = files[0] if files else None
    return weights_digest(p, 64) if p is not None and p.is_file() else None


def model_identity(model: str, resolved: str) -> dict[str, str | None]:
    """{model, model_revision, model_hash}: a folder by the content hash of its UNet weights,
    a hub id by the commit found in the local hub cache."""
    from .backbones import hub_revision, weights_digest

    if Path(resolved).is_dir():
        unet = unet_weights_file(resolved)
        return {
            "model": model if model == resolved else f"{model} ({resolved})",
            "model_revision": None,
            "model_hash": weights_digest(unet, 64) if unet else None,
        }
    return {
        "model": model,
        "model_revision": hub_revision(model, "model_index.json"),
        "model_hash": None,
    }
