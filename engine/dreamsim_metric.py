"""DreamSim (Fu et al. 2023) through the `dreamsim` package, with its weights from a local folder.

DreamSim is the consistency metric of ConsiStory and 1Prompt1Story. The package downloads its
checkpoint zip into ``cache_dir`` on first use; a GPU server is often offline, so the files it
needs are checked first and a missing one is named with the URL to fetch it from, instead of
letting the package try a download. The folder is ``$MTP_DREAMSIM_DIR``, else
``<home>/models/dreamsim``; the demo uses a randomly initialised ``open_clip_vitb32`` model
(the smallest single-branch variant) written in the package's own checkpoint layout.

Values are distances, 1 - cosine of DreamSim embeddings (what ``model(a, b)`` returns).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DREAMSIM_DIR_ENV = "MTP_DREAMSIM_DIR"
DEFAULT_TYPE = "ensemble"  # the package's default and best variant
DEMO_TYPE = "open_clip_vitb32"
DEMO_DIRNAME = "dreamsim-random"

# What dreamsim.model.download_weights checks for, per variant (kept in step with dreamsim 0.2.x).
REQUIRED = {
    "ensemble": [
        "dino_vitb16_pretrain.pth",
        "open_clip_vitb16_pretrain.pth.tar",
        "clip_vitb16_pretrain.pth.tar",
        "ensemble_lora",
    ],
    "dino_vitb16": ["dino_vitb16_pretrain.pth", "dino_vitb16_single_lora"],
    "open_clip_vitb32": ["open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"],
    "clip_vitb32": ["clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"],
}
# DINO branches are built by torch.hub from the facebookresearch/dino repository, cached in the
# same folder (the package calls torch.hub.set_dir(cache_dir)).
DINO_HUB = ["facebookresearch_dino_main/hubconf.py", "checkpoints/dino_vitbase16_pretrain.pth"]


@dataclass(frozen=True)
class DreamSimSpec:
    cache_dir: Path
    dreamsim_type: str = DEFAULT_TYPE

    @classmethod
    def for_home(cls, home, demo: bool) -> DreamSimSpec:
        if demo:
            return cls(ensure_random_dreamsim(home.models / DEMO_DIRNAME), DEMO_TYPE)
        from store.settings import settings

        return cls(settings().dreamsim_dir or home.models / "dreamsim", DEFAULT_TYPE)


def required_files(dreamsim_type: str) -> list[str]:
    if dreamsim_type not in REQUIRED:
        raise ValueError(f"DreamSim variant {dreamsim_type!r} is not one of {', '.join(REQUIRED)}")
    return REQUIRED[dreamsim_type] + (
        DINO_HUB if "dino" in dreamsim_type or dreamsim_type == "ensemble" else []
    )


def missing_files(spec: DreamSimSpec) -> list[str]:
    return [
        f for f in required_files(spec.dreamsim_type) if not (Path(spec.cache_dir) / f).exists()
    ]


def _adapter_file(folder: Path) -> Path | None:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return None


class DreamSimModel:
    """The package's model and preprocessing; ``embed`` maps PIL images to embeddings."""

    def __init__(self, model, preprocess, spec: DreamSimSpec, device: str):
        import torch

        from .backbones import backbone_id, weights_digest

        self.model, self.preprocess, self.device, self.torch = model, preprocess, device, torch
        tag = (
            "ensemble_lora"
            if spec.dreamsim_type == "ensemble"
            else f"{spec.dreamsim_type}_single_lora"
        )
        adapter = _adapter_file(Path(spec.cache_dir) / tag)
        checkpoint = f"{tag}#sha256:{weights_digest(adapter)}" if adapter else tag
        self.backbone = backbone_id("dreamsim", spec.dreamsim_type, checkpoint)
        self.preprocess_text = "resize 224x224 bicubic, per-branch mean/std, distance = 1 - cos"

    def embed(self, images: Iterable) -> Any:
        with self.torch.no_grad():
            # Preprocessed one by one as they come: a generator of decoded files holds one.
            tensors = [self.preprocess(im.convert("RGB")) for im in images]
            batch = self.torch.cat(tensors).to(self.device)
            return self.model.embed(batch).reshape(len(tensors), -1)


def load_dreamsim(spec: DreamSimSpec, device: str = "cpu") -> DreamSimModel:
    from .errors import ScorerUnavailable

    try:
        missing = missing_files(spec)
    except ValueError as exc:
        raise ScorerUnavailable(str(exc)) from None
    if missing:
        from_url = _weights_url(spec.dreamsim_type)
        raise ScorerUnavailable(
            f"DreamSim ({spec.dreamsim_type}) weights are not in {spec.cache_dir}: missing {', '.join(missing)}. "
            f"On a machine with network, download {from_url} and unzip it into that folder "
            f"(or point ${DREAMSIM_DIR_ENV} at a folder that has them), or score without the dreamsim metric"
        )
    try:
        from dreamsim import dreamsim
    except ImportError as exc:
        raise ScorerUnavailable(
            f"the dreamsim package is not installed ({exc}): pip install 'mtp[dreamsim]' "
            f"(or pip install dreamsim), or score without the dreamsim metric"
        ) from None
    try:
        model, preprocess = dreamsim(
            pretrained=True,
            device=device,
            cache_dir=str(spec.cache_dir),
            dreamsim_type=spec.dreamsim_type,
        )
    except Exception as exc:
        raise ScorerUnavailable(
            f"DreamSim ({spec.dreamsim_type}) could not be loaded from {spec.cache_dir}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return DreamSimModel(model, preprocess, spec, device)


def _weights_url(dreamsim_type: str) -> str:
    try:
        from dreamsim.config import dreamsim_weights

        return dreamsim_weights.get(dreamsim_type, "the DreamSim release checkpoint")
    except ImportError:
        return "the DreamSim release checkpoint (github.com/ssundaram21/dreamsim/releases)"


# ---------------------------------------------------------------- offline random model (demo, tests)
def build_random_dreamsim(
    folder: str | os.PathLike, dreamsim_type: str = DEMO_TYPE, seed: int = 0, lora_rank: int = 4
) -> Path:
    """Random weights in the package's layout for a single-branch CLIP variant:
    ``<type>_pretrain.pth.tar`` ({"state_dict": ViT-as-DINO weights + "proj"}) and the LoRA
    adapter folder ``<type>_single_lora`` as peft saves it."""
    import torch
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction.vision_transformer import vit_base
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    if dreamsim_type not in ("open_clip_vitb32", "clip_vitb32"):
        raise ValueError("only the single-branch ViT-B/32 CLIP variants can be built offline")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vit = vit_base(patch_size=32)
    vit.pos_drop = torch.nn.LayerNorm(vit.embed_dim)  # what load_(open_)clip_as_dino expects
    state = {k: v.detach().clone() for k, v in vit.state_dict().items()}
    state["proj"] = torch.randn(vit.embed_dim, 512) * vit.embed_dim**-0.5
    torch.save({"state_dict": state}, folder / f"{dreamsim_type}_pretrain.pth.tar")
    model = PerceptualModel(
        **dreamsim_args["model_config"][dreamsim_type],
        device="cpu",
        load_dir=str(folder),
        normalize_embeds=True,
    )
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=lora_rank,
            lora_alpha=lora_rank * 2,
            lora_dropout=0.0,
            bias="none",
            target_modules=["qkv"],
        ),
    )
    # peft starts LoRA B at zero (a no-op); random values make the adapter actually matter.
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    peft_model.save_pretrained(str(folder / f"{dreamsim_type}_single_lora"))
    return folder


def ensure_random_dreamsim(folder: str | os.PathLike) -> Path:
    from .tiny import ensure_built

    folder = Path(folder)
    return ensure_built(
        folder, build_random_dreamsim, f"{DEMO_TYPE}_single_lora/adapter_config.json"
    )
