"""An offline SDXL pipeline with SDXL's topology and tiny widths.

Mirrors stabilityai/stable-diffusion-xl-base-1.0 where it matters to the engine: two text
encoders (CLIPTextModel + CLIPTextModelWithProjection, the second padding with "!"),
``text_time`` added conditioning (pooled text embeddings + original/crop/target size ids),
70 transformer blocks in the 1/2/10 arrangement with SDXL's module names, a VAE that asks for
fp16 upcasting, and ``force_zeros_for_empty_prompt``. Random but deterministic for a seed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .tiny import SCHEDULER_CONFIG, ensure_built, tiny_vae, write_tokenizer_files

TINY_SDXL_DIRNAME = "tiny-sdxl"
TEXT_WIDTH = 32  # both encoders; the UNet's cross-attention width is their concatenation
TIME_EMBED_DIM = 8  # addition_time_embed_dim (SDXL: 256)


def build_tiny_sdxl_pipeline(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny SDXL pipeline and save it with ``save_pretrained`` into ``path``."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="!")

    def text_config(tok, act: str, projection: bool) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=TEXT_WIDTH,
            intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act=act,
            projection_dim=TEXT_WIDTH if projection else 512,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        norm_num_groups=8,
        attention_head_dim=(1, 2, 4),  # read as head counts, as in SDXL's config
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # 6 size ids (original h/w, crop top/left, target h/w) + the pooled text embedding
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_WIDTH,
    )
    torch.manual_seed(seed + 1)
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE settings
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(text_config(tokenizer, "quick_gelu", projection=False))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(tokenizer_2, "gelu", projection=True))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)  # type: ignore[attr-defined]
    return path


def load_tiny_sdxl_pipeline(path: str | os.PathLike):
    """Reload through ``from_pretrained`` so the real loading path is what tests exercise."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(
        Path(path), local_files_only=True, add_watermarker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ensure_tiny_sdxl_pipeline(models_dir: str | os.PathLike) -> Path:
    """Build ``models_dir/tiny-sdxl`` once; a crash mid-build never leaves a half model there."""
    return ensure_built(Path(models_dir) / TINY_SDXL_DIRNAME, build_tiny_sdxl_pipeline)
