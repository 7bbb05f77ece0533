"""The consistency methods' authors' own code, pulled out of their repositories at test time.

Their apps download weights and build UIs at import, so the classes are extracted from the
source with ``ast`` and executed into a namespace whose globals the caller sets. Nothing of
theirs is stored in this repository: tests that need it skip unless an environment variable
names a checkout (a plain folder with the repository's files):

- ``MTP_ORACLE_STORYDIFFUSION``: HVision-NKU/StoryDiffusion (needs
  ``gradio_app_sdxl_specific_id_low_vram.py`` and ``utils/gradio_utils.py``);
- ``MTP_ORACLE_CONSISTORY``: NVlabs/consistory (``attention_processor.py``,
  ``consistory_utils.py``, ``utils/general_utils.py``, ``utils/ptp_utils.py``).
"""

from __future__ import annotations

import ast
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F


def oracle_root(name: str) -> Path:
    from store.settings import settings

    var = f"MTP_ORACLE_{name.upper()}"
    value = getattr(settings(), f"oracle_{name.lower()}") or ""
    if not value or not Path(value).is_dir():
        pytest.skip(f"{var} does not name a checkout of the authors' repository")
    return Path(value)


def _extract(path: Path, names: set[str]) -> list[ast.stmt]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [
        node
        for node in tree.body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name in names
    ]
    missing = names - {n.name for n in found}
    if missing:
        raise LookupError(f"{path.name} lacks {', '.join(sorted(missing))}")
    return found


def _exec(nodes: list[ast.stmt], namespace: dict, label: str) -> dict:
    module = ast.Module(body=nodes, type_ignores=[])
    exec(compile(module, label, "exec"), namespace)  # noqa: S102 - the authors' code, by design
    return namespace


def storydiffusion(device) -> dict:
    """A namespace with the authors' ``SpatialAttnProcessor2_0`` and its index helper.

    The caller sets the module globals the processor reads: total_count, attn_count, cur_step,
    sa32, sa64, write, height, width, cur_character (and seeds ``torch``/``random``).
    """
    root = oracle_root("storydiffusion")
    ns: dict = {"torch": torch, "F": F, "random": random, "device": device, "np": np}
    helper = _extract(root / "utils" / "gradio_utils.py", {"cal_attn_indice_xl_effcient_memory"})
    _exec(helper, ns, "gradio_utils.py")
    cls = _extract(root / "gradio_app_sdxl_specific_id_low_vram.py", {"SpatialAttnProcessor2_0"})
    return _exec(cls, ns, "gradio_app_sdxl_specific_id_low_vram.py")


class _Xformers:
    """xformers' memory_efficient_attention on (B*heads, L, d) tensors, as SDPA."""

    class ops:  # noqa: N801 - mirrors the module path xformers.ops
        @staticmethod
        def memory_efficient_attention(q, k, v, attn_bias=None, op=None, scale=None):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=scale)


def consistory(threshold_otsu) -> types.SimpleNamespace:
    """The authors' ConsiStory classes and helpers, as modules of a namespace.

    ``threshold_otsu`` stands in for scikit-image's when it is not installed.
    """
    root = oracle_root("consistory")
    try:
        from skimage import filters  # noqa: F401
    except ImportError:
        filters = types.SimpleNamespace(threshold_otsu=threshold_otsu)
    from collections import defaultdict

    general = {"torch": torch, "np": np, "F": F, "filters": filters}
    _exec(
        _extract(
            root / "utils" / "general_utils.py",
            {
                "get_dynamic_threshold",
                "attn_map_to_binary",
                "gaussian_smooth",
                "cos_dist",
                "gen_nn_map",
                "cyclic_nn_map",
                "anchor_nn_map",
            },
        ),
        general,
        "general_utils.py",
    )
    ptp = {"torch": torch, "np": np, "F": F, "defaultdict": defaultdict, **general}
    _exec(_extract(root / "utils" / "ptp_utils.py", {"AttentionStore"}), ptp, "ptp_utils.py")
    utils = {
        "torch": torch,
        "np": np,
        "defaultdict": defaultdict,
        "xformers": _Xformers,
        "Optional": __import__("typing").Optional,
        "List": list,
        **general,
    }
    _exec(
        _extract(root / "consistory_utils.py", {"FeatureInjector", "AnchorCache", "QueryStore"}),
        utils,
        "consistory_utils.py",
    )
    procs = {
        "torch": torch,
        "Optional": __import__("typing").Optional,
        "Callable": object,
        "USE_PEFT_BACKEND": True,
        "Attention": object,
        "xformers": _Xformers,
        **utils,
    }
    _exec(
        _extract(
            root / "attention_processor.py",
            {
                "ConsistoryAttnStoreProcessor",
                "ConsistoryExtendedAttnXFormersAttnProcessor",
                "register_extended_self_attn",
            },
        ),
        procs,
        "attention_processor.py",
    )
    return types.SimpleNamespace(general=general, ptp=ptp, utils=utils, procs=procs)


__all__ = ["consistory", "oracle_root", "storydiffusion", "sys"]
