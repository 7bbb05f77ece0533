"""The diffusers backend: engine.pipeline with one pipeline kept loaded, switched only when needed."""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .base import LoadKey, ModelUnavailable, RunError, SourceJob, TargetJob

log = logging.getLogger("mtp.engine")


class PipelineBackend:
    """diffusers via engine.pipeline; keeps one pipeline loaded and switches only when needed."""

    def __init__(self, device: str = "cpu", home=None, dtype=None):
        self.device = device
        self.home = home
        self.dtype = dtype
        self.pipe = None
        self.key: LoadKey | None = None
        self._blocks: list[str] | None = None
        # A model that could not be loaded stays unavailable for this engine session: without
        # this every batch of its runs asked the hub again (retries took ~24 s per batch).
        self._unavailable: dict[str, str] = {}

    def _resolve_model(self, model: str) -> str:
        """The tiny model names (and those models' own folders) resolve under home/models, where
        the model is built on first use, with or without --demo."""
        if self.home is None:
            return model
        from engine.tiny import ensure_tiny_pipeline
        from engine.tiny_sdxl import ensure_tiny_sdxl_pipeline
        from store.sweep.spec import TINY_MODEL_NAMES, TINY_SDXL_MODEL_NAMES

        for names, folder, ensure in (
            (TINY_MODEL_NAMES, self.home.demo_model, ensure_tiny_pipeline),
            (TINY_SDXL_MODEL_NAMES, self.home.demo_sdxl_model, ensure_tiny_sdxl_pipeline),
        ):
            if model in names or _same_path(model, folder):
                return str(ensure(self.home.models))
        return model

    def load(self, key: LoadKey) -> None:
        if key == self.key and self.pipe is not None:
            return
        from engine.pipeline import ModelNotFound, block_paths, load_pipeline

        _quiet_progress_bars()
        self.pipe, self.key, self._blocks = None, None, None
        self._free()
        base = key.weights_path if key.weights_kind == "full" and key.weights_path else key.model
        if base in self._unavailable:
            raise ModelUnavailable(self._unavailable[base])
        t0 = time.monotonic()
        try:
            pipe = load_pipeline(self._resolve_model(base), device=self.device, dtype=self.dtype)
        except ModelNotFound as exc:
            self._unavailable[base] = f"{exc} (not retried until this engine restarts)"
            raise ModelUnavailable(str(exc)) from None
        if key.weights_kind not in ("none", "full", ""):
            if not key.weights_path or not Path(key.weights_path).exists():
                raise ModelUnavailable(f"weights file {key.weights_path or '(empty)'} not found")
            try:
                from engine.personalize import apply_personalization
            except ImportError as exc:
                raise ModelUnavailable(
                    f"personalization ({key.weights_kind}) is not available: {exc}"
                ) from None
            try:
                apply_personalization(
                    pipe, key.weights_kind, key.weights_path, token=key.token or None
                )
            except (OSError, ValueError, KeyError) as exc:
                raise ModelUnavailable(
                    f"cannot apply {key.weights_kind} weights {key.weights_path}: {exc}"
                ) from None
        self.pipe, self.key = pipe, key
        self._blocks = block_paths(pipe.unet)
        log.info(
            "loaded %s (%s %s) on %s in %.1fs",
            base,
            key.weights_kind,
            key.weights_path or "",
            self.device,
            time.monotonic() - t0,
        )

    def blocks(self) -> Sequence[str]:
        return self._blocks or []

    def identity(self) -> dict:
        """EngineSession fields of what is loaded (engine.provenance)."""
        from engine.provenance import file_identity, model_identity

        key, pipe = self.key, self.pipe
        assert key is not None and pipe is not None, "identity() of a backend with nothing loaded"
        base = key.weights_path if key.weights_kind == "full" and key.weights_path else key.model
        out = model_identity(base, self._resolve_model(base))
        out.update(
            backend="diffusers",
            device=self.device,
            dtype=str(pipe.unet.dtype),
            weights_kind=key.weights_kind,
            weights_path=key.weights_path,
            weights_hash=file_identity(key.weights_path)
            if key.weights_kind not in ("none", "full", "")
            else None,
        )
        return out

    def generate(self, source: SourceJob, targets: list[TargetJob], step_callback):
        from engine.control import ControlError as _CE
        from engine.inversion import ImageError
        from engine.pipeline import NonFiniteLatents, Source, Target, generate

        try:
            return generate(
                self.pipe,
                Source(
                    source.prompt,
                    image=source.image if source.invert else None,
                    invert=source.invert,
                    inversion_guidance=source.inversion_guidance if source.invert else 1.0,
                ),
                [Target(t.prompt, t.control) for t in targets],
                seed=source.seed,
                num_steps=source.num_steps,
                guidance=source.guidance,
                height=source.height,
                width=source.width,
                step_callback=step_callback,
            )
        except (NonFiniteLatents, ImageError, _CE) as exc:
            raise RunError(str(exc)) from None

    def generate_set(self, source: SourceJob, targets: list[TargetJob], step_callback):
        """One set of a set method (targets in prompt_index order), or its plain baseline.

        Each image starts from the latent of its prompt_index (engine.methods.sets.image_seed),
        so the baseline set and the method's set start from the same noise."""
        from engine.control import ControlError as _CE
        from engine.methods.sets import generate_set, set_latents
        from engine.pipeline import NonFiniteLatents

        first = targets[0]
        method = "plain" if first.is_baseline else first.method
        latents = set_latents(
            self.pipe,
            len(targets),
            source.seed,
            source.height,
            source.width,
            indices=[t.prompt_index for t in targets],
        )
        try:
            result = generate_set(
                self.pipe,
                [t.prompt for t in targets],
                method=method,
                params=first.method_params,
                control=first.control,
                seed=source.seed,
                num_steps=source.num_steps,
                guidance=source.guidance,
                latents=latents,
                subject_words=list(first.subject_words) or None,
                step_callback=step_callback,
            )
        except (NonFiniteLatents, _CE, ValueError, NotImplementedError) as exc:
            raise RunError(f"{method}: {exc}") from None
        return SetGeneration(
            images=result.images,
            masks=[None if m is None else {"target": m} for m in result.masks],
        )

    def after_oom(self) -> None:
        self._free()

    def _free(self) -> None:
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


class SetGeneration:
    """A set's images in target order, shaped like engine.pipeline.GenerationResult for the
    worker: no source image, each image's subject mask (consistory) as its target mask."""

    def __init__(self, images: list, masks: list):
        self.images = images
        self.masks = masks
        self.maps: list = [None] * len(images)
        self.source_image = None


def _same_path(model: str, folder: Path) -> bool:
    try:
        return Path(model).expanduser().resolve() == folder.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def _quiet_progress_bars() -> None:
    # Loading bars would fill the engine log with carriage-return noise.
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:  # downloads and cache checks (DINO, CLIP weights) draw bars too
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
