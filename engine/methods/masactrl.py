"""Mutual self-attention (MasaCtrl) as diffusers attention processors, with per-row schedules.

One UNet batch holds one source and N targets, all from the same initial noise. With
classifier-free guidance the batch is ``[uncond: src, t1..tN, cond: src, t1..tN]``; without it
``[src, t1..tN]``. When control is active for target r at (step, layer), r's self-attention
queries attend to the source's keys and values of the same CFG half. The source row is always
computed exactly as the stock processor would, so source latents do not depend on control.

All per-generation state lives in one ``MutualAttentionController`` (not in
cross_attention_kwargs): the current step (counted by a UNet forward pre-hook, one per UNet
call), the batch layout, the per-target schedules and the recorded cross-attention maps.
When the controller is disarmed, or nothing is active at a (step, layer), every processor
defers to the processor it wraps, so "installed but inactive" equals the stock pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.methods.base import StepController, step_pre_hook

from ..errors import EngineError

_CONTROLLER_ATTR = "_mtp_mutual_attention_controller"


class BatchLayoutError(EngineError, RuntimeError):
    """A processor saw a batch that is not the controller's layout (e.g. rows were dropped)."""


def block_paths(unet) -> list[str]:
    """Transformer-block module paths in execution order (down, mid, up; resnet before attention).

    ``unet.attn_processors`` is ordered by module registration, which puts the mid block last,
    so the order is derived from the block structure instead; this also covers SDXL's 70 blocks.
    """
    paths: list[str] = []

    def visit(prefix: str, block) -> None:
        for a, attention in enumerate(getattr(block, "attentions", None) or []):
            for t, _ in enumerate(getattr(attention, "transformer_blocks", None) or []):
                paths.append(f"{prefix}.attentions.{a}.transformer_blocks.{t}")

    for i, block in enumerate(unet.down_blocks):
        visit(f"down_blocks.{i}", block)
    if getattr(unet, "mid_block", None) is not None:
        visit("mid_block", unet.mid_block)
    for i, block in enumerate(unet.up_blocks):
        visit(f"up_blocks.{i}", block)
    return paths


@dataclass
class RowControl:
    """One target's resolved schedule (torch side of ``engine.control.ControlSpec``).

    mask_mode: "off", "auto" (masks from cross-attention maps) or "image" (``fixed_masks``).
    src_tokens / tgt_tokens: token indices whose maps are summed for the source / target mask.
    word_tokens: word -> target token indices, for the per-word maps reported back.
    fixed_masks: (source, target) boolean masks at map resolution for mode "image".
    """

    steps: frozenset[int]
    layers: frozenset[int]
    mask_mode: str = "off"
    mask_layers: frozenset[int] = frozenset()
    src_tokens: tuple[int, ...] = ()
    tgt_tokens: tuple[int, ...] = ()
    word_tokens: dict[str, tuple[int, ...]] = field(default_factory=dict)
    threshold: float | None = 0.1
    timing: str = "current"
    fixed_masks: tuple[torch.Tensor, torch.Tensor] | None = None

    def records_at(self, step: int) -> bool:
        if self.mask_mode != "auto":
            return False
        return (step in self.steps) if self.timing == "current" else (step + 1 in self.steps)


@dataclass
class _Plan:
    kv_index: torch.Tensor
    # batch row -> (source fg, target fg) at the layer's resolution, flattened booleans
    masks: dict[int, tuple[torch.Tensor, torch.Tensor]]


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises between-class variance)."""
    hist = torch.histc(values.float().flatten(), bins=bins, min=0.0, max=1.0).double()
    centers = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    w0 = hist.cumsum(0)
    w1 = hist.sum() - w0
    m0 = (hist * centers).cumsum(0)
    mu0 = m0 / w0.clamp_min(1e-12)
    mu1 = (m0[-1] - m0) / w1.clamp_min(1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    k = int(torch.argmax(between))
    return float((k + 1) / bins)


def normalize_map(image: torch.Tensor) -> torch.Tensor:
    """Min-max normalise one map to [0, 1] (MasaCtrl's aggregate_cross_attn_map)."""
    lo, hi = image.min(), image.max()
    if float(hi - lo) <= 0:
        return torch.zeros_like(image)
    return (image - lo) / (hi - lo)


def binarize(image: torch.Tensor, threshold: float | None) -> torch.Tensor:
    level = otsu_threshold(image) if threshold is None else float(threshold)
    return image >= level


def masked_allowed(fg_t: torch.Tensor, fg_s: torch.Tensor) -> torch.Tensor:
    """[Lq, Lk] boolean: target fg queries see source fg keys, bg sees bg.

    Equals MasaCtrl's two passes blended as ``out_fg * M_t + out_bg * (1 - M_t)`` for a binary
    M_t. A query whose class has no source key (empty or full source mask) sees every key
    instead of producing NaN.
    """
    allowed = fg_t[:, None] == fg_s[None, :]
    empty = ~allowed.any(dim=1)
    if bool(empty.any()):
        allowed[empty] = True
    return allowed


class MutualAttentionController(StepController):
    """Per-generation state shared by every processor of one UNet."""

    def __init__(self, blocks: Sequence[str]):
        super().__init__()
        self.blocks = list(blocks)
        self.rows: list[RowControl | None] = []
        self.n_rows = 0
        self.halves = 1
        self.batch_size = 0
        self.latent_size = (0, 0)
        self.map_size = (0, 0)
        self.trace: set[tuple[int, int, int]] | None = None
        self.maps_cur: dict[tuple[int, int], torch.Tensor] = {}
        self.maps_prev: dict[tuple[int, int], torch.Tensor] = {}
        self.last_masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_maps: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ lifecycle
    def arm(
        self,
        rows: Sequence[RowControl | None],
        *,
        cfg: bool,
        latent_size: tuple[int, int],
        map_size: tuple[int, int] | None = None,
        trace: bool = False,
    ) -> None:
        """Start a generation. ``rows[0]`` is the source (must be None), ``rows[1:]`` the targets."""
        if not rows or rows[0] is not None:
            raise ValueError("rows[0] is the source row and takes no control (pass None)")
        self.rows = list(rows)
        self.n_rows = len(rows)
        self.halves = 2 if cfg else 1
        self.batch_size = self.n_rows * self.halves
        self.latent_size = tuple(latent_size)
        self.map_size = (
            tuple(map_size)
            if map_size
            else (max(1, latent_size[0] // 4), max(1, latent_size[1] // 4))
        )
        self.trace = set() if trace else None
        self.reset_steps()
        self.maps_cur, self.maps_prev = {}, {}
        self.last_masks, self.last_maps = {}, {}
        self._any_control = any(r is not None and r.steps and r.layers for r in self.rows)
        self._any_record = any(r is not None and r.mask_mode == "auto" for r in self.rows)
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def begin_step(self) -> None:
        """Called before each UNet call: advance the step, roll the recorded maps."""
        super().begin_step()
        if self.maps_cur or self.maps_prev:
            self.maps_prev = self.maps_cur
            self.maps_cur = {}

    # ------------------------------------------------------------------ batch layout
    @property
    def cond_half(self) -> int:
        return self.halves - 1

    def check_batch(self, batch: int, where: str) -> None:
        if batch != self.batch_size:
            raise BatchLayoutError(
                f"{where}: UNet batch has {batch} rows but the control layout expects {self.batch_size} "
                f"({self.halves} CFG half(s) x [source + {self.n_rows - 1} target(s)]); something changed "
                "the batch mid-generation (e.g. a callback that stops classifier-free guidance)"
            )

    def layer_hw(self, seq_len: int) -> tuple[int, int]:
        lh, lw = self.latent_size
        f = 1
        while (lh // f) * (lw // f) > seq_len and f < 1 << 12:
            f *= 2
        if (lh // f) * (lw // f) != seq_len:
            side = int(math.isqrt(seq_len))
            return side, seq_len // max(side, 1)
        return lh // f, lw // f

    # ------------------------------------------------------------------ self-attention plan
    def plan_self(self, layer: int, batch: int, seq_len: int, device) -> _Plan | None:
        self.check_batch(batch, f"self-attention of layer {layer}")
        if not self._any_control:
            return None
        step = self.step
        active = [
            r
            for r in range(1, self.n_rows)
            if self.rows[r] is not None
            and step in self.rows[r].steps
            and layer in self.rows[r].layers
        ]
        if not active:
            return None
        kv = list(range(batch))
        masks: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for r in active:
            pair = self._mask_pair(r, seq_len)
            for h in range(self.halves):
                kv[h * self.n_rows + r] = h * self.n_rows
                if pair is not None:
                    masks[h * self.n_rows + r] = pair
            if self.trace is not None:
                self.trace.add((step, layer, r))
        return _Plan(kv_index=torch.tensor(kv, device=device), masks=masks)

    def _mask_pair(self, r: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        row = self.rows[r]
        if row.mask_mode == "off":
            return None
        if row.mask_mode == "image":
            assert row.fixed_masks is not None  # an image mask comes with its two masks
            fg_s, fg_t = row.fixed_masks
        else:
            pair = self._auto_masks(r)
            if pair is None:
                return None  # no maps yet this step: plain control, as MasaCtrl
            fg_s, fg_t = pair
        self.last_masks[r] = (fg_s, fg_t)
        hw = self.layer_hw(seq_len)
        return _resize_mask(fg_s, hw), _resize_mask(fg_t, hw)

    def _auto_masks(self, r: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        row = self.rows[r]
        store = self.maps_cur if row.timing == "current" else self.maps_prev
        src, tgt = self.cond_half * self.n_rows, self.cond_half * self.n_rows + r
        layers = [li for li in sorted(row.mask_layers) if (src, li) in store and (tgt, li) in store]
        if not layers:
            return None
        src_map = torch.stack([store[(src, li)] for li in layers]).mean(0)
        tgt_map = torch.stack([store[(tgt, li)] for li in layers]).mean(0)
        self.last_maps[r] = tgt_map
        mh, mw = self.map_size
        masks = []
        for m, tokens in ((src_map, row.src_tokens), (tgt_map, row.tgt_tokens)):
            image = normalize_map(m[:, list(tokens)].sum(-1).reshape(mh, mw).float())
            masks.append(binarize(image, row.threshold))
        return masks[0], masks[1]

    # ------------------------------------------------------------------ cross-attention maps
    def rows_to_record(self, layer: int, batch: int, seq_len: int) -> list[int]:
        self.check_batch(batch, f"cross-attention of layer {layer}")
        if not self._any_record or seq_len != self.map_size[0] * self.map_size[1]:
            return []
        base = self.cond_half * self.n_rows
        wanted: set[int] = set()
        for r in range(1, self.n_rows):
            row = self.rows[r]
            if row is not None and layer in row.mask_layers and row.records_at(self.step):
                wanted.update((base, base + r))
        return sorted(wanted)

    def record(self, layer: int, rows: list[int], probs: torch.Tensor) -> None:
        for i, b in enumerate(rows):
            self.maps_cur[(b, layer)] = probs[i]

    # ------------------------------------------------------------------ results
    def result_masks(self, r: int) -> dict | None:
        pair = self.last_masks.get(r)
        if pair is None:
            return None
        return {"source": pair[0].float().cpu().numpy(), "target": pair[1].float().cpu().numpy()}

    def result_maps(self, r: int) -> dict:
        row = self.rows[r] if r < len(self.rows) else None
        m = self.last_maps.get(r)
        if row is None or m is None:
            return {}
        mh, mw = self.map_size
        return {
            word: m[:, list(tokens)].sum(-1).reshape(mh, mw).float().cpu().numpy()
            for word, tokens in row.word_tokens.items()
        }


def _resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(mask.shape) != tuple(hw):
        mask = F.interpolate(mask[None, None].float(), size=hw, mode="nearest")[0, 0] > 0.5
    return mask.flatten()


def _call_original(
    original, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs
):
    if temb is not None:
        kwargs = dict(kwargs, temb=temb)
    return original(
        attn,
        hidden_states,
        encoder_hidden_states=encoder_hidden_states,
        attention_mask=attention_mask,
        **kwargs,
    )


class _ControlledProcessor:
    """A processor that wraps ``original`` for one layer and reads the shared controller."""

    def __init__(self, controller: MutualAttentionController, layer: int, original):
        self.controller = controller
        self.layer = layer
        self.original = original


# The body of the controlled branch is adapted from
# diffusers.models.attention_processor.AttnProcessor2_0.__call__ (diffusers 0.42.1), as diffusers
# marks its own copies: everything but the K/V row selection and the masked SDPA calls is that
# method's. `FOLLOWS` fingerprints the version followed; tests/engine/test_processors.py fails when
# the installed diffusers' processor differs, so a change upstream is reviewed here.
FOLLOWS = ("diffusers.models.attention_processor.AttnProcessor2_0.__call__", "9a92c1f4df7dcb66")


class MutualSelfAttnProcessor(_ControlledProcessor):
    r"""
    Self-attention (attn1) processor implementing mutual self-attention for the rows the
    controller marks active at this (step, layer); defers to ``original`` otherwise.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        c = self.controller
        plan = None
        if c.armed and encoder_hidden_states is None:
            seq_len = (
                hidden_states.shape[1]
                if hidden_states.ndim == 3
                else hidden_states.shape[2] * hidden_states.shape[3]
            )
            plan = c.plan_self(self.layer, hidden_states.shape[0], seq_len, hidden_states.device)
        if plan is None:
            return _call_original(
                self.original,
                attn,
                hidden_states,
                encoder_hidden_states,
                attention_mask,
                temb,
                kwargs,
            )

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim

        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = hidden_states.shape

        if attention_mask is not None:
            raise NotImplementedError("mutual self-attention does not take an attention_mask")

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # each row attends to its own K/V, or to its half's source K/V when controlled
        key = key.index_select(0, plan.kv_index)
        value = value.index_select(0, plan.kv_index)

        if not plan.masks:
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, dropout_p=0.0, is_causal=False
            )
        else:
            # masked rows get their own call so unmasked rows (the source above all) run the
            # exact kernel the stock processor runs, whatever backend a mask would select
            masked = sorted(plan.masks)
            plain = [b for b in range(batch_size) if b not in plan.masks]
            hidden_states = torch.empty_like(query)
            if plain:
                idx = torch.tensor(plain, device=query.device)
                hidden_states[idx] = F.scaled_dot_product_attention(
                    query[idx], key[idx], value[idx], dropout_p=0.0, is_causal=False
                )
            idx = torch.tensor(masked, device=query.device)
            allowed = torch.stack(
                [masked_allowed(plan.masks[b][1], plan.masks[b][0]) for b in masked]
            )
            hidden_states[idx] = F.scaled_dot_product_attention(
                query[idx],
                key[idx],
                value[idx],
                attn_mask=allowed[:, None].to(query.device),
                dropout_p=0.0,
                is_causal=False,
            )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        # linear proj
        hidden_states = attn.to_out[0](hidden_states)
        # dropout
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(
                batch_size, channel, height, width
            )

        if attn.residual_connection:
            hidden_states = hidden_states + residual

        hidden_states = hidden_states / attn.rescale_output_factor

        return hidden_states


class CrossAttnRecorder(_ControlledProcessor):
    r"""
    Cross-attention (attn2) wrapper: the output is always ``original``'s (so personalization
    processors such as IP-Adapter keep working); for the rows and layers a mask needs, the
    head-averaged attention probabilities are recomputed for those rows only and handed to
    the controller.
    """

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        c = self.controller
        if c.armed and hidden_states.ndim == 3 and encoder_hidden_states is not None:
            rows = c.rows_to_record(self.layer, hidden_states.shape[0], hidden_states.shape[1])
            if rows:
                self._record(attn, hidden_states, encoder_hidden_states, rows)
        return _call_original(
            self.original, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs
        )

    @torch.no_grad()
    def _record(self, attn, hidden_states, encoder_hidden_states, rows: list[int]) -> None:
        if isinstance(encoder_hidden_states, tuple):  # IP-Adapter passes (text, image embeds)
            encoder_hidden_states = encoder_hidden_states[0]
        idx = torch.tensor(rows, device=hidden_states.device)
        hs = hidden_states.index_select(0, idx)
        ehs = encoder_hidden_states.index_select(0, idx)
        if attn.group_norm is not None:
            hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            ehs = attn.norm_encoder_hidden_states(ehs)
        query = attn.to_q(hs)
        key = attn.to_k(ehs)
        n, lq, inner = query.shape
        head_dim = inner // attn.heads
        query = query.view(n, lq, attn.heads, head_dim).transpose(1, 2)
        key = key.view(n, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * (head_dim**-0.5)
        probs = scores.softmax(dim=-1).mean(dim=1)  # [n, Lq, tokens], head-averaged
        self.controller.record(self.layer, rows, probs)


_step_pre_hook = step_pre_hook(_CONTROLLER_ATTR)


def install_control(unet) -> MutualAttentionController:
    """Wrap every transformer block's attn1/attn2 processor; idempotent.

    Re-wraps layers whose processor was replaced since (e.g. by loading an IP-Adapter), and
    keeps whatever processor was there (weights included) as the one deferred to.
    """
    blocks = block_paths(unet)
    layer_of = {p: i for i, p in enumerate(blocks)}
    controller = getattr(unet, _CONTROLLER_ATTR, None)
    if controller is None or controller.blocks != blocks:
        controller = MutualAttentionController(blocks)
        setattr(unet, _CONTROLLER_ATTR, controller)
        unet._mtp_step_hook = unet.register_forward_pre_hook(_step_pre_hook, with_kwargs=True)
    current = unet.attn_processors
    wanted = {}
    changed = False
    for name, proc in current.items():
        path, _, tail = name.rpartition(".")  # tail == "processor"
        block, _, kind = path.rpartition(".")
        layer = layer_of.get(block)
        if layer is None or kind not in ("attn1", "attn2"):
            wanted[name] = proc
            continue
        cls = MutualSelfAttnProcessor if kind == "attn1" else CrossAttnRecorder
        if isinstance(proc, cls) and proc.controller is controller:
            wanted[name] = proc
            continue
        if isinstance(proc, (MutualSelfAttnProcessor, CrossAttnRecorder)):
            proc = proc.original
        if (
            kind == "attn1"
            and isinstance(proc, torch.nn.Module)
            and any(True for _ in proc.parameters())
        ):
            raise NotImplementedError(
                f"{name} holds a trained self-attention processor ({type(proc).__name__}); merge its weights "
                "into the attention module before installing mutual self-attention control"
            )
        wanted[name] = cls(controller, layer, proc)
        changed = True
    if changed:
        unet.set_attn_processor(wanted)
    return controller


def remove_control(unet) -> None:
    """Restore the wrapped processors and drop the step hook."""
    controller = getattr(unet, _CONTROLLER_ATTR, None)
    if controller is None:
        return
    originals = {
        name: proc.original
        if isinstance(proc, (MutualSelfAttnProcessor, CrossAttnRecorder))
        else proc
        for name, proc in unet.attn_processors.items()
    }
    unet.set_attn_processor(originals)
    unet._mtp_step_hook.remove()
    delattr(unet, _CONTROLLER_ATTR)
