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

from .errors import EngineError

CUSTOM_DIFFUSION_NAMES = (
    "pytorch_custom_diffusion_weights.safetensors",
    "pytorch_custom_diffusion_weights.bin",
    "delta.bin",
)
TEXTUAL_INVERSION_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
LORA_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")


class PersonalizationError(EngineError, ValueError):
    """Personalization weights that are missing or not understood."""


# Bytes per element of each safetensors dtype (the format's own list).
_SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library refuses longer headers too


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file, read from its header alone, or None.

    The library reports a bad file as "Error while deserializing header: ..." without naming
    it, and a header that honestly describes tensors larger than memory would be loaded into
    memory: both are found here first, before anything is allocated."""
    import json
    import math

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"too short to be a safetensors file ({size} bytes)"
        n = int.from_bytes(head, "little")
        if n > _SAFETENSORS_MAX_HEADER or 8 + n > size:
            return (
                f"not a safetensors file, or cut short: its header claims {_size(n)} "
                f"and the file has {_size(size)}"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"its header is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data = size - 8 - n
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            return f"tensor {name!r} has a malformed entry in the header: {str(info)[:200]}"
        if dtype not in _SAFETENSORS_DTYPES:
            return f"tensor {name!r} has an unknown dtype {str(dtype)[:20]!r}"
        need = math.prod(shape) * _SAFETENSORS_DTYPES[dtype]
        if end - start != need or start < 0:
            return (
                f"tensor {name!r} ({dtype}, shape {list(shape)}) needs {_size(need)}, "
                f"but its header gives it {_size(max(0, end - start))}"
            )
        if end > data:
            return (
                f"tensor {name!r} ({dtype}, shape {list(shape)}, {_size(need)}) lies beyond "
                f"the end of the file (it holds {_size(data)} of tensor data): truncated or forged"
            )
        total += need
    memory = _memory_bytes()
    if memory and total > memory:
        return f"its tensors take {_size(total)}, more than this machine's memory ({_size(memory)})"
    return None


def load_weights(path: str | os.PathLike) -> dict:
    """A state dict from .safetensors, or from a torch file restricted to tensors/containers.

    Every failure is a PersonalizationError naming the file and what is wrong with it."""
    from store.images import file_problem

    path = Path(path)
    problem = file_problem(path, what="a weights file")
    if problem == "no such file":
        raise PersonalizationError(f"weights file not found: {path}")
    if problem:
        raise PersonalizationError(f"weights file {path}: {problem}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        problem = safetensors_problem(path)
        if problem:
            raise PersonalizationError(f"weights file {path}: {problem}")
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - SafetensorError and whatever the reader raises
            raise PersonalizationError(
                f"weights file {path}: not a readable safetensors file ({type(exc).__name__}: {exc})"
            ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PersonalizationError(
            f"cannot read weights {path} (tensors only, no pickled code): {exc}"
        ) from None


def _find(path: Path, names: tuple[str, ...], kind: str) -> Path:
    from store.images import file_problem

    if path.is_dir():
        for name in names:
            if os.path.lexists(path / name):  # load_weights says what it is when it is no file
                return path / name
        raise PersonalizationError(f"no {kind} weights in {path} (looked for {', '.join(names)})")
    problem = file_problem(path, what="a weights file")
    if problem == "no such file":
        raise PersonalizationError(f"{kind} weights not found: {path}")
    if problem:
        raise PersonalizationError(f"{kind} weights {path}: {problem}")
    return path


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
