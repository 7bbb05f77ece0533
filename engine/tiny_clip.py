"""Offline tiny scoring backbones: a random open_clip CLIP and a random DINO ViT.

No CLIP or DINO weights can be downloaded here or in CI, yet scoring must go through the
real loading code. So the tiny CLIP is an open_clip model config registered with
``open_clip.add_model_config`` plus a safetensors file loaded through
``create_model_and_transforms(name, pretrained=<file>)``, and the tiny DINO is a
transformers ``ViTModel`` folder loaded with ``from_pretrained``. open_clip's default
``SimpleTokenizer`` ships its BPE vocabulary inside the package, so tokenizing needs no
download either; that is why the text tower keeps CLIP's 49408-token vocabulary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .tiny import ensure_built

TINY_CLIP_NAME = "mtp-tiny-clip"  # the open_clip model name its config registers
TINY_CLIP_DIRNAME = "tiny-clip"
TINY_CLIP_WEIGHTS = "tiny-random.safetensors"
TINY_DINO_DIRNAME = "tiny-dino"

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    # As the default scorer (ViT-B-32-quickgelu + OpenAI weights), so tests run that code path.
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def clip_config_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / f"{TINY_CLIP_NAME}.json"


def clip_weights_path(folder: str | os.PathLike) -> Path:
    return Path(folder) / TINY_CLIP_WEIGHTS


def register_clip_config(config_file: str | os.PathLike) -> str:
    """Make open_clip know the model named after the config file's stem; returns that name."""
    import open_clip

    path = Path(config_file)
    if path.stem not in open_clip.list_models():
        open_clip.add_model_config(path)
    return path.stem


def build_tiny_clip(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the config and random weights into ``folder``; returns the weights file."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip_config_path(folder).write_text(json.dumps(TINY_CLIP_CONFIG, indent=1))
    name = register_clip_config(clip_config_path(folder))
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    # safetensors refuses tensors sharing memory; clone so every entry owns its storage.
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(clip_weights_path(folder)))
    return clip_weights_path(folder)


def build_tiny_dino(folder: str | os.PathLike, seed: int = 0) -> Path:
    """A random ViT with DINO's interface (CLS token of the last layer), saved with save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTModel

    folder = Path(folder)
    torch.manual_seed(seed)
    # 224 input like DINO ViT-S/16 so the real preprocessing applies unchanged; patch 32 keeps it fast.
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=32,
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder, safe_serialization=True)
    return folder


def ensure_tiny_clip(models_dir: str | os.PathLike) -> tuple[str, Path]:
    """(open_clip model name, weights file) of the tiny CLIP under ``models_dir``, built if missing."""
    folder = ensure_built(Path(models_dir) / TINY_CLIP_DIRNAME, build_tiny_clip, TINY_CLIP_WEIGHTS)
    config = clip_config_path(folder)
    if json.loads(config.read_text()) != TINY_CLIP_CONFIG:
        # A demo folder built before the config gained quick_gelu: same weights, new activation.
        tmp = config.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(TINY_CLIP_CONFIG, indent=1))
        os.replace(tmp, config)
    return register_clip_config(clip_config_path(folder)), clip_weights_path(folder)


def ensure_tiny_dino(models_dir: str | os.PathLike) -> Path:
    return ensure_built(Path(models_dir) / TINY_DINO_DIRNAME, build_tiny_dino, "config.json")
