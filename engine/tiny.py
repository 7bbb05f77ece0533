"""An offline Stable Diffusion pipeline with SD1.5's attention topology and tiny widths.

No weights can be downloaded here or in CI, yet the engine must be exercised end to end
(loading from disk, tokenizing prompts, 16 self- and 16 cross-attention layers with SD1.5's
module names, DDIM). The tiny pipeline is random but deterministic for a given seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_DIRNAME = "tiny-sd"

# Words given whole-word BPE merges so common prompts tokenize to one token per word; any
# other text still tokenizes through the byte-level fallback.
_WORDS = (
    "a an the of on in at with and photo picture painting drawing image of corgi dog cat "
    "puppy bird horse car house tree man woman person beach park forest city street snow "
    "mountain river lake sea grass field room table chair hat sunglasses red blue green "
    "yellow black white running sitting standing jumping sleeping lying eating playing "
    "front back side view close up style watercolor oil sketch cartoon sks ktn"
).split()

# SD1.5 scheduler settings (v1-5 scheduler_config.json), with clip_sample off as in MasaCtrl.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable character table.
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer_files(folder: Path) -> None:
    """Write a small CLIP-style byte-level BPE vocabulary (vocab.json, merges.txt)."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(_WORDS):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merged = left + right
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((left, right))
            left = merged
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with open(folder / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n")
        fh.writelines(f"{a} {b}\n" for a, b in merges)


def tiny_vae(**config):
    """The tiny models' VAE (8x downsampling, 4 latent channels, like SD's); ``config`` adds the
    SDXL settings. Seed torch before calling: the weights are random."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=64,
        **config,
    )


def build_tiny_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it with ``save_pretrained`` into ``path``."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        attention_head_dim=2,  # diffusers reads this as the number of heads for SD1.x
        cross_attention_dim=32,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)  # type: ignore[attr-defined]
    return path


def load_tiny_pipeline(path: str | os.PathLike):
    """Reload through ``from_pretrained`` so the real loading path is what tests exercise."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(Path(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ensure_built(final: Path, build, marker: str = "model_index.json") -> Path:
    """Run ``build(folder)`` once into ``final`` (done when ``final/marker`` exists); a crash
    mid-build never leaves a half model there. Every offline tiny model is built through here."""
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp / final.name)
        try:
            os.rename(tmp / final.name, final)
        except OSError:
            # Another process finished first; its copy is equally valid.
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_tiny_pipeline(models_dir: str | os.PathLike) -> Path:
    """Build ``models_dir/tiny-sd`` once; a crash mid-build never leaves a half model there."""
    return ensure_built(Path(models_dir) / TINY_DIRNAME, build_tiny_pipeline)
