"""StoryDiffusion's Consistent Self-Attention as a diffusers attention processor.

The set of N images is one UNet batch ``[uncond: 1..N, cond: 1..N]`` (or one half without
classifier-free guidance). In a shared layer and step, image i's queries attend to its own
tokens plus a random subset of every other image's tokens of the same CFG half: keys and values
are ``to_k/to_v(cat([sampled tokens of j != i, ascending j] + [all tokens of i]))``, the subsets
being the attention *inputs* of the other images (as the authors' ``SpatialAttnProcessor2_0``).

Randomness, as the authors: per resolution and step, image j keeps each token with probability
``sa_rate`` (the lowest-resolution up-block layers use ``sa_rate_low``, every other resolution
``sa_rate_high``; at SDXL 1024 px these are the authors' ``(H//32)*(W//32)`` and
``(H//16)*(W//16)`` token layers); the subset is redrawn at the start of every step and shared
by every layer and both CFG halves. Each shared layer call draws one uniform number and skips
sharing (plain self-attention) when it is <= ``skip_early`` before ``skip_switch`` and
<= ``skip_late`` from it on. Step 0 never shares.

Draws (``draws``): "seeded" takes image j's token subsets from a CPU generator seeded from
(run seed, j), so an image's subsets do not depend on which other images share its batch, and
the layer skips from a generator seeded from the run seed; "authors" reproduces the authors'
order: ``torch.rand((N_write + 1, tokens), dtype=float16)`` on the UNet's device per resolution,
lowest first, from a torch generator seeded with the run seed, and Python's ``random.random()``
seeded with the run seed for the skips, both reseeded for every pipeline call as the app's
``setup_seed`` does.

Read mode: images after the first ``id_length`` are generated against the bank the written
images stored (their sampled attention inputs per layer and step); their keys are the bank's
tokens followed by their own.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.methods.base import StepController


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and labels (stable across processes and platforms)."""
    text = ":".join(["mtp", str(int(seed)), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@dataclass
class ConsistentSAParams:
    sa_rate_low: float = 0.5
    sa_rate_high: float = 0.5
    skip_early: float = 0.3
    skip_late: float = 0.1
    skip_switch: int = 20
    id_length: int = 0
    draws: str = "seeded"

    @classmethod
    def from_dict(cls, params: dict | None) -> ConsistentSAParams:
        known = {k: v for k, v in (params or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ConsistentSAController(StepController):
    """One generation's state for every ``ConsistentSelfAttnProcessor`` of a UNet.

    layer_tokens: layer -> token count of its self-attention (its resolution).
    low_tokens: token count of the lowest-resolution up-block self-attention.
    """

    def __init__(self, layer_tokens: dict[int, int], low_tokens: int):
        super().__init__()
        self.layer_tokens = dict(layer_tokens)
        self.low_tokens = low_tokens
        self.resolutions = sorted(set(layer_tokens.values()))
        self.params = ConsistentSAParams()
        self.indices: dict[int, list[torch.Tensor]] = {}
        self.bank: dict[tuple[int, int], list[torch.Tensor]] | None = None
        self.trace: set[tuple[int, int]] | None = None

    def arm(
        self,
        *,
        n_images: int,
        halves: int,
        params: ConsistentSAParams,
        seed: int,
        steps: frozenset[int],
        device,
        mode: str = "write",
        n_written: int | None = None,
        image_indices: Sequence[int] | None = None,
        keep_bank: bool = False,
        trace: bool = False,
    ) -> None:
        """Start one pipeline call.

        mode "write": the batch is the N images written jointly; "read": the batch holds images
        that read ``self.bank`` (kept from the write call). image_indices: each batch image's
        index in the set (its seeded draws depend on it, not on the batch).
        """
        if mode not in ("write", "read"):
            raise ValueError(f"mode must be write or read, not {mode!r}")
        if mode == "read" and self.bank is None:
            raise ValueError("read mode needs the bank of a write call (keep_bank=True)")
        self.n_images = int(n_images)
        self.halves = int(halves)
        self.params = params
        self.seed = int(seed)
        self.steps = frozenset(s for s in steps if s >= 1)
        self.device = device
        self.mode = mode
        self.n_written = int(n_written if n_written is not None else n_images)
        self.image_indices = list(image_indices if image_indices is not None else range(n_images))
        if mode == "write":
            self.bank = {} if keep_bank else None
        self.trace = set() if trace else None
        if params.draws == "authors":
            self._torch_gen = torch.Generator(device).manual_seed(self.seed)
            self._skip_rng = random.Random(self.seed)
        elif params.draws == "seeded":
            self._image_gens = {
                j: torch.Generator().manual_seed(
                    derive_seed(self.seed, "consistent_sa", "tokens", j)
                )
                for j in self.image_indices
            }
            self._skip_rng = random.Random(derive_seed(self.seed, "consistent_sa", "skips"))
        else:
            raise ValueError(f"draws must be seeded or authors, not {params.draws!r}")
        self.reset_steps()
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def rate(self, tokens: int) -> float:
        p = self.params
        return p.sa_rate_low if tokens == self.low_tokens else p.sa_rate_high

    def begin_step(self) -> None:
        super().begin_step()
        self._draw_indices()

    def _draw_indices(self) -> None:
        """The token subsets of this step, lowest resolution first (the authors' order)."""
        self.indices = {}
        if self.params.draws == "authors":
            rows = self.n_written + 1
            for n_tok in self.resolutions:
                keep = torch.rand(
                    (rows, n_tok),
                    generator=self._torch_gen,
                    device=self.device,
                    dtype=torch.float16,
                ) < self.rate(n_tok)
                self.indices[n_tok] = [
                    torch.nonzero(keep[r], as_tuple=True)[0] for r in range(rows)
                ]
        else:
            for n_tok in self.resolutions:
                per_image = []
                for j in self.image_indices:
                    keep = torch.rand(n_tok, generator=self._image_gens[j]) < self.rate(n_tok)
                    per_image.append(torch.nonzero(keep, as_tuple=True)[0].to(self.device))
                self.indices[n_tok] = per_image

    def shares(self, layer: int) -> bool:
        """Whether this layer call shares (draws the skip number, as the authors, from step 1)."""
        if self.step < 1:
            return False
        p = self.params
        threshold = p.skip_early if self.step < p.skip_switch else p.skip_late
        draw = self._skip_rng.random()
        active = self.step in self.steps and draw > threshold
        if active and self.trace is not None:
            self.trace.add((self.step, layer))
        return active


def attend(attn, hidden_states: torch.Tensor, context: torch.Tensor, scale=None) -> torch.Tensor:
    """Self-attention of ``hidden_states`` over ``context`` tokens (the authors' ``__call2__``)."""
    batch, _, _ = hidden_states.shape
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    key = attn.to_k(context)
    value = attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


class ConsistentSelfAttnProcessor:
    r"""
    Self-attention (attn1) processor of one shared layer: Consistent Self-Attention over the
    set when the controller says this call shares, else ``original``'s plain self-attention.
    """

    def __init__(self, controller: ConsistentSAController, layer: int, original):
        self.controller = controller
        self.layer = layer
        self.original = original

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
        if not c.armed or encoder_hidden_states is not None or hidden_states.ndim != 3:
            return self._plain(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs
            )
        batch, n_tok, channels = hidden_states.shape
        if batch != c.halves * c.n_images:
            raise RuntimeError(
                f"consistent self-attention: UNet batch of {batch} rows, expected "
                f"{c.halves} CFG half(s) x {c.n_images} image(s)"
            )
        per_half = hidden_states.view(c.halves, c.n_images, n_tok, channels)
        indices = c.indices.get(n_tok)
        if indices is None:
            raise RuntimeError(f"no token subsets drawn for {n_tok}-token layers")
        if c.mode == "write":
            samples = [per_half[:, j, indices[j], :] for j in range(c.n_images)]
            if c.bank is not None:
                c.bank[(self.layer, c.step)] = [s.clone() for s in samples]
        if not c.shares(self.layer):
            return self._plain(attn, hidden_states, None, attention_mask, temb, kwargs)
        outs = []
        for i in range(c.n_images):
            if c.mode == "write":
                others = [samples[j] for j in range(c.n_images) if j != i]
            else:
                others = list(c.bank[(self.layer, c.step)])
            context = torch.cat(others + [per_half[:, i]], dim=1)
            outs.append(attend(attn, per_half[:, i], context))
        return torch.stack(outs, dim=1).reshape(batch, n_tok, -1)

    def _plain(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, kwargs):
        if temb is not None:
            kwargs = dict(kwargs, temb=temb)
        return self.original(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kwargs,
        )
