"""The fake backend (`mtp-engine --backend fake`): flat-colour images without torch or weights.

For checking a queue, a multi-host layout or an engine setup end to end on a machine with no GPU,
and for the queue benchmarks. It keeps the real backend's contract (batches, step callbacks,
masks for masked targets, OOM on oversize batches) so the engine loop behaves as with diffusers.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import LoadKey, ModelUnavailable, SourceJob, TargetJob


@dataclass
class FakeResult:
    source_image: Any
    images: list
    masks: list
    maps: list


class FakeBackend:
    """A torch-free stand-in with the real backend's contract, for tests and queue benchmarks.

    Images are flat colours derived from the seed and prompt; masks/maps appear for masked
    targets. ``step_s`` sleeps per step so a test can kill a worker mid-batch; ``log_path``
    gets one line per generate call (pid, batch size, run ids, methods) for counting source
    passes across processes and checking that a set is generated in one call. ``fail`` maps a prompt to an exception to raise for it; a target prompt
    equal to $MTP_FAKE_CRASH_PROMPT SIGKILLs the whole engine (a run that crashes engines).
    """

    def __init__(
        self,
        step_s: float = 0.0,
        log_path: str | os.PathLike | None = None,
        oom_above: int | None = None,
        fail: dict[str, BaseException] | None = None,
        crash_prompt: str | None = None,
    ):
        self.step_s = step_s
        self.crash_prompt = crash_prompt
        self.log_path = Path(log_path) if log_path else None
        self.oom_above = oom_above
        self.fail = fail or {}
        self.loads: list[LoadKey] = []
        self.calls: list[tuple[SourceJob, list[int]]] = []  # (source, run ids) per generate call
        self.key: LoadKey | None = None

    @classmethod
    def from_env(cls) -> FakeBackend:
        from store.settings import settings

        env = settings()
        return cls(
            step_s=env.fake_step_s,
            log_path=str(env.fake_log) if env.fake_log else None,
            crash_prompt=env.fake_crash_prompt,
        )

    def load(self, key: LoadKey) -> None:
        if key == self.key:
            return
        if "missing" in key.model:
            raise ModelUnavailable(f"model folder {key.model} not found")
        self.loads.append(key)
        self.key = key

    def identity(self) -> dict:
        key = self.key
        return {
            "backend": "fake",
            "model": key.model if key else "",
            "device": "cpu",
            "dtype": "uint8",
            "weights_kind": key.weights_kind if key else "none",
            "weights_path": key.weights_path if key else None,
        }

    def blocks(self) -> Sequence[str]:
        from store.sweep.grammar import blocks_for_model

        return blocks_for_model(self.key.model if self.key else "")

    def generate(self, source: SourceJob, targets: list[TargetJob], step_callback):
        import numpy as np
        from PIL import Image

        prompts = [t.prompt for t in targets]
        self.calls.append((source, [t.run_id for t in targets]))
        if self.log_path:
            with open(self.log_path, "a") as fh:
                # pid, batch size, run ids, each target's method: enough to see that a set
                # went in one call
                fh.write(
                    f"{os.getpid()}\t{len(targets)}\t{','.join(str(t.run_id) for t in targets)}"
                    f"\t{','.join(t.method for t in targets)}\n"
                )
        if self.oom_above is not None and len(targets) > self.oom_above:
            raise _fake_oom(len(targets))
        for p in prompts:
            if p in self.fail:
                raise self.fail[p]
        if self.crash_prompt is not None and self.crash_prompt in prompts:
            # A run that takes the whole engine down (as a segfault in a native library would).
            os.kill(os.getpid(), signal.SIGKILL)
        for i in range(source.num_steps):
            if self.step_s:
                time.sleep(self.step_s)
            step_callback(i, source.num_steps)

        def colour(text: str) -> tuple[int, int, int]:
            h = abs(hash((source.seed, text))) % (256**3)
            return (h & 255, (h >> 8) & 255, (h >> 16) & 255)

        size = (source.width, source.height)
        side = max(1, source.width // 32)
        masks, maps = [], []
        # One image per target, a set's too: each run of a set gets its own image (and, for a
        # masked method, its own subject mask), as the real backend's generate_set returns them.
        for t in targets:
            # ConsiStory's own subject mask is part of the method, not of the control columns.
            masked = (t.control is not None and t.control.mask.enabled) or (
                t.method == "consistory" and not t.is_baseline
            )
            m = np.linspace(0, 1, side * side, dtype=np.float32).reshape(side, side)
            masks.append({"source": m, "target": m[::-1].copy()} if masked else None)
            maps.append({w: m for w in t.prompt.split()[:3]} if masked else {})
        return FakeResult(
            Image.new("RGB", size, colour(source.prompt)),
            [Image.new("RGB", size, colour(t.prompt)) for t in targets],
            masks,
            maps,
        )

    def after_oom(self) -> None:
        pass


def _fake_oom(n: int) -> BaseException:
    try:
        import torch

        return torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake, batch of {n})")
    except ImportError:  # pragma: no cover
        return RuntimeError(f"CUDA out of memory (fake, batch of {n})")


def fake_score(images, texts, source, refs) -> list[list[dict]]:
    """Scores for FakeBackend runs: one deterministic number per image."""
    return [
        [
            {
                "metric": "fake",
                "backbone": "none",
                "value": float(len(t)) / 100.0,
                "preprocess": "",
                "scored_text": t,
            }
        ]
        for _img, t in zip(images, texts)
    ]
