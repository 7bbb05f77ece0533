"""Load a personalized subject into a pipeline: Custom Diffusion, textual inversion, LoRA.

Every file is read with safetensors or ``torch.load(weights_only=True)``; never with
unrestricted pickle.

Custom Diffusion is merged into attn2's own to_k/to_v (and to_q/to_out) weights instead of
installing its processors: at inference those processors are exactly replacement linear
layers, merging reproduces them, and it composes with any attention processor (mutual
self-attention included). diffusers 0.42's ``unet.load_attn_procs`` would build the
processors but not install them without its private ``_pipeline`` argument
(huggingface/diffusers#9320).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from store.models import WEIGHT_KINDS as KINDS  # the store validates concepts against the same list

CUSTOM_DIFFUSION_NAMES = (
    "pytorch_custom_diffusion_weights.safetensors",
    "pytorch_custom_diffusion_weights.bin",
    "delta.bin",
)
TEXTUAL_INVERSION_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
LORA_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")


class PersonalizationError(ValueError):
    """Personalization weights that are missing or not understood."""


def load_weights(path: str | os.PathLike) -> dict:
    """A state dict from .safetensors, or from a torch file restricted to tensors/containers."""
    path = Path(path)
    if not path.is_file():
        raise PersonalizationError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PersonalizationError(
            f"cannot read weights {path} (tensors only, no pickled code): {exc}"
        ) from None


def _find(path: Path, names: tuple[str, ...], kind: str) -> Path:
    if path.is_file():
        return path
    if not path.exists():
        raise PersonalizationError(f"{kind} weights not found: {path}")
    for name in names:
        if (path / name).is_file():
            return path / name
    raise PersonalizationError(f"no {kind} weights in {path} (looked for {', '.join(names)})")


def _add_tokens(pipe, embeddings: dict[str, torch.Tensor], token: str | None = None) -> list[str]:
    """Add learned token embeddings (modifier tokens) to the tokenizer/text encoder."""
    tokens = []
    for name, emb in embeddings.items():
        emb = emb.detach().to(torch.float32)
        if emb.ndim == 1:
            emb = emb[None]
        use = token if (token and len(embeddings) == 1) else name
        pipe.load_textual_inversion({use: emb[0] if emb.shape[0] == 1 else emb}, token=use)
        tokens.append(use)
    return tokens


@torch.no_grad()
def merge_custom_diffusion(unet, state_dict: dict) -> int:
    """Copy Custom Diffusion weights into the attention modules; returns tensors merged.

    Accepts diffusers' ``...attn2.processor.to_k_custom_diffusion.weight`` keys and
    adobe-research's ``delta.bin`` ``unet`` dict (``...attn2.to_k.weight`` full weights, or
    ``{"u", "v"}`` low-rank deltas from its compression).
    """
    params = dict(unet.named_parameters())
    merged = 0
    for key, value in state_dict.items():
        if not isinstance(value, (torch.Tensor, dict)) or (isinstance(value, dict) and not value):
            continue  # diffusers stores {} for processors without weights
        if "_custom_diffusion" in key:
            target = key.replace(".processor.", ".").replace("_custom_diffusion", "")
        else:
            target = key
        if target not in params:
            raise PersonalizationError(
                f"Custom Diffusion weight {key!r} matches no UNet parameter ({target!r})"
            )
        param = params[target]
        if isinstance(value, dict):
            if not {"u", "v"} <= set(value):
                raise PersonalizationError(
                    f"Custom Diffusion entry {key!r} is neither a tensor nor a u/v delta"
                )
            delta = value["u"].to(torch.float32) @ value["v"].to(torch.float32)
            param.add_(delta.to(param.device, param.dtype))
        else:
            if tuple(value.shape) != tuple(param.shape):
                raise PersonalizationError(
                    f"Custom Diffusion weight {key!r} has shape {tuple(value.shape)}, the UNet's is {tuple(param.shape)}"
                )
            param.copy_(value.to(param.device, param.dtype))
        merged += 1
    if merged == 0:
        raise PersonalizationError("the Custom Diffusion file holds no attention weights")
    return merged


def apply_personalization(
    pipe, kind: str, path: str | os.PathLike | None, token: str | None = None
) -> list[str]:
    """Load ``kind`` weights from ``path`` (file or folder) into ``pipe``; returns added tokens.

    kinds: none, full (the model path already is the fine-tuned model), custom_diffusion,
    textual_inversion (``token`` renames a single learned embedding), lora (needs peft).
    """
    kind = (kind or "none").strip().lower()
    if kind not in KINDS:
        raise PersonalizationError(
            f"unknown personalization kind {kind!r} (one of {', '.join(KINDS)})"
        )
    if kind in ("none", "full"):
        return []
    if not path:
        raise PersonalizationError(f"personalization {kind!r} needs a weights path")
    path = Path(path).expanduser()

    if kind == "custom_diffusion":
        file = _find(path, CUSTOM_DIFFUSION_NAMES, "Custom Diffusion")
        state = load_weights(file)
        tokens: list[str] = []
        if "unet" in state and isinstance(state["unet"], dict):  # adobe-research delta.bin
            merge_custom_diffusion(pipe.unet, state["unet"])
            if state.get("modifier_token"):
                tokens += _add_tokens(pipe, dict(state["modifier_token"]), token)
        else:
            merge_custom_diffusion(pipe.unet, state)
        # diffusers' training script saves each modifier token beside the weights as <tok>.bin
        if path.is_dir():
            for emb in sorted(list(path.glob("<*>.safetensors")) + list(path.glob("<*>.bin"))):
                tokens += _add_tokens(pipe, load_weights(emb), token)
        return tokens

    if kind == "textual_inversion":
        file = _find(path, TEXTUAL_INVERSION_NAMES, "textual inversion")
        state = load_weights(file)
        if "string_to_param" in state:  # A1111 format
            state = {token or file.stem: state["string_to_param"]["*"]}
        elif "emb_params" in state:
            state = {token or file.stem: state["emb_params"]}
        return _add_tokens(pipe, state, token)

    # lora
    try:
        import peft  # noqa: F401
    except ImportError:
        raise PersonalizationError("LoRA weights need the 'peft' package") from None
    file = _find(path, LORA_NAMES, "LoRA")
    pipe.load_lora_weights(load_weights(file))
    return []
