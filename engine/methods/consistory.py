"""ConsiStory's subject-driven shared self-attention (SDSA) as diffusers attention processors.

The set is one UNet batch ``[uncond: 1..N, cond: 1..N]``. As the authors' code
(``attention_processor.py``, ``consistory_pipeline.py``, ``utils/ptp_utils.py``):

- Subject masks: the cross-attention probabilities of the cond half, averaged over heads, at
  every layer whose maps are latent/4 (the authors' 32x32 at 1024 px), are kept per layer; after
  each step they are averaged over the layers and each layer's last <= 20 steps; for each image
  the maps of its subject tokens are resized (bilinear) to every shared resolution, binarised
  with Otsu's threshold (``threshold_otsu``, scikit-image's float32 histogram) and united. A
  step uses the masks of the steps before it.
- Mask dropout: each mask pixel is dropped with probability ``mask_dropout``, redrawn per step
  and resolution (lowest first).
- Extended attention, from step 1 in the shared (authors: up-block) layers: image i's queries
  attend to its own tokens plus the masked tokens of every image it maps to (the first
  ``n_anchors`` images map to each other, every image to the anchors), keys and values of its
  CFG half only.
- Vanilla-query blending: in steps 0..n//10 an extra UNet call without sharing caches the
  shared layers' queries; the main call uses ``s*q_vanilla + (1-s)*q`` where it shares, with
  ``s = linspace(0.9, 0.81836735, n//10 + 1)[step]``.
- DIFT injection (``inject``): a first pass records ``up_blocks[0]``'s output at the step whose
  timestep is nearest 261 (/1000; the authors' key, which exists with 50 DDIM "leading" steps),
  smooths it (3x3 Gaussian, sigma 1), and maps each image's pixels to their nearest neighbours
  (cosine distance) inside the other images' final masks at latent/2; a second pass from the same
  latents then blends, in steps n//10..n//3, the self-attention outputs (cond half) of the
  latent/2 down and up layers inside the image's mask where the neighbour distance is below Otsu's
  threshold: ``out = alpha*out[neighbour] + (1-alpha)*out``, images in order, in place.

Anchor mode (``anchor_mode``): the first ``n_anchors`` images are generated alone (both passes),
caching per layer and step their masked self-attention inputs and their injected outputs; each
later image is then generated alone, its keys being its own followed by the anchors' cached
tokens, its injection taking the nearest anchor pixels (the authors' ``run_anchor_generation`` /
``run_extra_generation``).

Draws (``draws``): "authors" takes the dropout from a torch generator seeded 0 for every pass
(their ``torch.manual_seed(0)``), one ``rand((N, tokens))`` per resolution and step; "seeded"
gives image i its own CPU generator seeded from (run seed, i, pass), so its dropout does not
depend on the other images of the batch.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.methods.base import StepController
from engine.methods.consistent_sa import derive_seed

DIFT_TIMESTEP = 261  # of 1000 training timesteps: the authors' '261_0' feature key
QUERY_BLEND = (0.9, 0.81836735)
MAP_STEPS = 20


def threshold_otsu(image: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold exactly as scikit-image's ``filters.threshold_otsu`` computes it.

    The histogram is numpy's on the array's own dtype (float32 maps give float32 bin edges),
    which decides the threshold bin: a float64 histogram picks another bin for some maps.
    """
    image = np.asarray(image)
    first = image.reshape(-1)[0]
    if np.all(image == first):
        return first
    counts, edges = np.histogram(image.reshape(-1), bins=nbins, range=None)
    centers = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return centers[int(np.argmax(variance12))]


def gaussian_smooth(features: torch.Tensor, kernel_size: int = 3, sigma: float = 1.0):
    """Per-channel Gaussian smoothing of (C, h, w) features (the authors' ``gaussian_smooth``)."""
    x = np.fromfunction(
        lambda a, b: (
            (1 / (2 * np.pi * sigma**2))
            * np.exp(
                -((a - (kernel_size - 1) / 2) ** 2 + (b - (kernel_size - 1) / 2) ** 2)
                / (2 * sigma**2)
            )
        ),
        (kernel_size, kernel_size),
    )
    kernel = torch.Tensor(x / x.sum()).to(features.dtype).to(features.device)[None, None]
    return torch.stack(
        [F.conv2d(c[None, None], kernel, padding=kernel_size // 2)[0, 0] for c in features]
    )


def nn_maps(features: torch.Tensor, masks: torch.Tensor, hw: tuple[int, int]):
    """Nearest neighbours of every pixel of image i among image j's masked pixels (i != j).

    features: (N, C, h0, w0); masks: (N, h*w) bool at ``hw``. Returns (nn_map, nn_distances) of
    shape (N, N, h*w); distances are cosine distances, 2 outside j's mask, inf on the diagonal.
    """
    return _nn(features, features, masks, hw, skip_self=True)


def nn_to_anchors(features, anchor_features, anchor_masks, hw):
    """Nearest neighbours of every pixel of each image among each anchor's masked pixels:
    (N, N_anchors, h*w) maps and distances (the authors' ``anchor_nn_map``)."""
    return _nn(features, anchor_features, anchor_masks, hw, skip_self=False)


def _flat(features, hw):
    resized = F.interpolate(features, size=hw, mode="bilinear", align_corners=False)
    flat = resized.permute(0, 2, 3, 1).reshape(features.shape[0], hw[0] * hw[1], -1)
    return F.normalize(flat, dim=-1)


def _nn(targets, sources, source_masks, hw, skip_self):
    nt, ns = targets.shape[0], sources.shape[0]
    tgt, src = _flat(targets, hw), _flat(sources, hw)
    tokens = hw[0] * hw[1]
    nn_map = torch.empty(nt, ns, tokens, dtype=torch.long, device=targets.device)
    nn_dist = torch.full((nt, ns, tokens), float("inf"), dtype=targets.dtype, device=targets.device)
    for i in range(nt):
        for j in range(ns):
            if skip_self and i == j:
                continue
            distances = 1 - src[j] @ tgt[i].T  # (source pixels of j, target pixels of i)
            distances[~source_masks[j]] = 2.0
            nn_dist[i, j], nn_map[i, j] = torch.min(distances, dim=0)
    return nn_map, nn_dist


@dataclass
class AnchorCache:
    """Anchor mode: what the anchors' generation leaves for the extra images.

    inputs[(layer, step)]: the anchors' masked self-attention inputs per CFG half (halves, K, C);
    outputs[(layer, step)]: the anchors' injected self-attention outputs (cond half);
    mode "cache" while the anchors run, "inject" while an extra image reads them."""

    inputs: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    mode: str = "cache"


def anchor_mapping(n: int, n_anchors: int) -> torch.Tensor:
    """Image i maps to itself and to the anchors (the first n_anchors images)."""
    mapping = torch.eye(n, dtype=torch.bool)
    mapping[:, : max(0, min(n_anchors, n))] = True
    return mapping


def subject_token_indices(tokenizer, prompts: Sequence[str], words: Sequence[str]) -> torch.Tensor:
    """(words, N) positions of each word's first sub-token in each prompt (BOS = 0), -1 if absent.

    The authors' rule: a word is its first sub-token id; a repeated token's last position wins.
    """
    ids = [tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
    tokens = tokenizer(list(prompts), padding=True, return_tensors="pt")["input_ids"]
    out = torch.full((len(words), len(prompts)), -1, dtype=torch.int64)
    for w, token_id in enumerate(ids):
        rows, cols = torch.where(tokens == token_id)
        out[w, rows] = cols
    missing = [prompts[i] for i in range(len(prompts)) if bool((out[:, i] < 0).all())]
    if missing:
        raise ValueError(
            f"no subject word ({', '.join(map(repr, words))}) in the prompt {missing[0]!r}"
        )
    return out


@dataclass
class ConsistoryParams:
    n_anchors: int = 2
    mask_dropout: float = 0.5
    query_blend: bool = True
    inject: bool = True
    inject_alpha: float = 0.8
    anchor_mode: bool = False
    draws: str = "seeded"

    @classmethod
    def from_dict(cls, params: dict | None) -> ConsistoryParams:
        known = {k: v for k, v in (params or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ConsistoryController(StepController):
    """One pass's state for every ConsiStory processor of a UNet.

    shared: layers that extend their attention; tokens_of: layer -> its self-attention token
    count; map_hw: the maps' (h, w) (latent/4); res_hw: token count -> (h, w) of each shared
    resolution, masks being made at each.
    """

    def __init__(self, shared, tokens_of, map_hw, res_hw, inject_tokens, inject_layers):
        super().__init__()
        self.shared = frozenset(shared)
        self.tokens_of = dict(tokens_of)
        self.map_hw = tuple(map_hw)
        self.res_hw = dict(sorted(res_hw.items()))
        self.inject_tokens = inject_tokens
        self.inject_layers = frozenset(inject_layers)
        self.phase = "main"

    def arm(
        self,
        *,
        n,
        halves,
        params,
        token_indices,
        steps,
        num_steps,
        seed,
        pass_no,
        device,
        injector=None,
        mapping=None,
        anchor_cache=None,
        image_indices=None,
    ):
        """Start one pass. mapping: (n, n) bool, default ``anchor_mapping``; anchor_cache: anchor
        mode's cache (mode "cache" for the anchors, "inject" for an extra image); image_indices:
        each batch image's index in the set (its seeded dropout depends on it)."""
        self.n, self.halves, self.params = n, halves, params
        self.token_indices = token_indices
        # only the subject tokens' maps are kept: all 77 made the store ~77x larger (1.1 GB of
        # maps at SDXL 1024 px) for columns nothing reads
        self.columns = sorted({int(t) for t in token_indices.flatten() if int(t) >= 0})
        self._column_of = {t: k for k, t in enumerate(self.columns)}
        self._column_index = torch.tensor(self.columns, dtype=torch.long, device=device)
        self.mapping = (anchor_mapping(n, params.n_anchors) if mapping is None else mapping).to(
            device
        )
        self.anchor_cache = anchor_cache
        self.steps = frozenset(s for s in steps if s >= 1)
        self.num_steps = num_steps
        self.blend_last = num_steps // 10
        self.strengths = np.linspace(*QUERY_BLEND, self.blend_last + 1)
        self.store: dict[int, deque] = {}
        self.queries: dict[int, torch.Tensor] = {}
        self.last_mask: dict[int, torch.Tensor] = {}
        self.last_mask_dropout: dict[int, torch.Tensor] = {}
        self.injector = injector
        self.device = device
        if params.draws == "authors":
            self._gen = torch.Generator(device).manual_seed(0)
        elif params.draws == "seeded":
            self._gens = [
                torch.Generator().manual_seed(
                    derive_seed(seed, "consistory", "dropout", pass_no, i)
                )
                for i in (range(n) if image_indices is None else image_indices)
            ]
        else:
            raise ValueError(f"draws must be seeded or authors, not {params.draws!r}")
        self.phase = "main"
        self.reset_steps()
        self.armed = True

    # ------------------------------------------------------------------ per call
    def extends(self, layer: int) -> bool:
        return self.phase == "main" and layer in self.shared and self.step in self.steps

    def records(self, tokens: int) -> bool:
        return self.phase == "main" and tokens == self.map_hw[0] * self.map_hw[1]

    def blends(self) -> bool:
        return self.params.query_blend and 0 <= self.step <= self.blend_last

    def record(self, layer: int, probs: torch.Tensor) -> None:
        """probs: (N, map tokens, text tokens) head-averaged cond-half probabilities."""
        kept = probs.index_select(-1, self._column_index.to(probs.device))
        self.store.setdefault(layer, deque(maxlen=MAP_STEPS)).append(kept)

    # ------------------------------------------------------------------ masks
    def aggregate(self) -> None:
        """Masks (and their dropout) from the maps recorded so far (after each step)."""
        if not self.store:
            return
        maps = torch.cat([torch.stack(list(v)) for v in self.store.values()]).mean(dim=0)
        mh, mw = self.map_hw
        per_image = []
        for i in range(self.n):
            toks = [int(t[i]) for t in self.token_indices if int(t[i]) != -1]
            per_image.append(
                torch.stack([maps[i, :, self._column_of[t]].view(mh, mw) for t in toks])
            )
        for tokens, hw in self.res_hw.items():
            masks = []
            for concept_maps in per_image:
                resized = F.interpolate(
                    concept_maps.unsqueeze(1), size=hw, mode="bilinear"
                ).squeeze(1)
                union = None
                for m in resized:
                    arr = m.cpu().numpy()
                    binary = torch.from_numpy(arr > threshold_otsu(arr)).to(maps.device).view(-1)
                    union = binary if union is None else union | binary
                masks.append(union)
            masks = torch.stack(masks)
            self.last_mask[tokens] = masks.clone()
            if self.params.draws == "authors":
                drop = torch.rand(masks.shape, generator=self._gen, device=self.device)
            else:
                drop = torch.stack([torch.rand(masks.shape[1], generator=g) for g in self._gens])
                drop = drop.to(masks.device)
            masks[drop < self.params.mask_dropout] = False
            self.last_mask_dropout[tokens] = masks

    def key_selection(self, tokens: int, i: int) -> torch.Tensor | None:
        """(N*tokens,) bool: image i's own tokens and the masked tokens of the images it maps to."""
        masks = self.last_mask_dropout.get(tokens)
        if masks is None:
            return None
        select = torch.zeros(self.n, tokens, dtype=torch.bool, device=masks.device)
        for j in range(self.n):
            if j == i:
                select[j] = True
            elif bool(self.mapping[i, j]):
                select[j] = masks[j]
        return select.view(-1)


class FeatureInjector:
    """DIFT injection into self-attention outputs (the authors' ``inject_outputs``, 'min')."""

    def __init__(self, nn_map, nn_dist, masks, alpha, first_step, last_step):
        self.nn_map, self.nn_dist, self.masks = nn_map, nn_dist, masks
        self.alpha, self.first, self.last = alpha, first_step, last_step

    def active(self, step: int) -> bool:
        return bool(self.alpha) and self.first <= step <= self.last

    def inject(self, output: torch.Tensor, mapping: torch.Tensor) -> None:
        """Blend in place; ``output`` is the cond half (N, tokens, C); images in order."""
        n, tokens = output.shape[0], output.shape[1]
        arange = torch.arange(tokens, device=output.device)
        for i in range(n):
            row = mapping[i]
            if not bool(torch.cat([row[:i], row[i + 1 :]]).any()):
                continue
            dists = self.nn_dist[i][row]
            nearest = dists.argmin(dim=0)
            src_pixel = self.nn_map[i][row][nearest, arange]
            src_dist = dists[nearest, arange]
            threshold = threshold_otsu(src_dist.cpu().numpy())
            select = self.masks[i] & (src_dist < torch.as_tensor(threshold, device=src_dist.device))
            others = output[row][nearest, src_pixel][select]
            output[i][select] = self.alpha * others + (1 - self.alpha) * output[i][select]

    def inject_anchors(self, output: torch.Tensor, anchor_outputs: torch.Tensor) -> None:
        """Anchor mode: blend the anchors' cached outputs in (the authors' ``inject_anchors``);
        nn maps are (N, N_anchors, tokens)."""
        tokens = output.shape[1]
        arange = torch.arange(tokens, device=output.device)
        for i in range(output.shape[0]):
            nearest = self.nn_dist[i].argmin(dim=0)
            src_pixel = self.nn_map[i][nearest, arange]
            src_dist = self.nn_dist[i][nearest, arange]
            threshold = threshold_otsu(src_dist.cpu().numpy())
            select = self.masks[i] & (src_dist < torch.as_tensor(threshold, device=src_dist.device))
            others = anchor_outputs[nearest, src_pixel][select]
            output[i][select] = self.alpha * others + (1 - self.alpha) * output[i][select]


class SubjectMapRecorder:
    r"""
    Cross-attention (attn2) processor computing attention explicitly (as the authors') and
    handing the cond half's head-averaged probabilities of latent/4 layers to the controller.
    """

    def __init__(self, controller: ConsistoryController, layer: int):
        self.controller = controller
        self.layer = layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        batch, tokens, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        key = attn.to_k(context)
        value = attn.to_v(context)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)
        c = self.controller
        if c.armed and encoder_hidden_states is not None and c.records(tokens):
            cond = probs[probs.size(0) // c.halves * (c.halves - 1) :]
            cond = cond.reshape(cond.shape[0] // attn.heads, attn.heads, *cond.shape[1:])
            c.record(self.layer, cond.mean(dim=1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


class SubjectSharedSelfAttnProcessor:
    r"""
    Self-attention (attn1) processor: subject-driven extended attention in the shared layers,
    vanilla-query caching/blending there, and DIFT injection of its output at latent/2.
    """

    def __init__(self, controller: ConsistoryController, layer: int):
        self.controller = controller
        self.layer = layer

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw
    ):
        c = self.controller
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        batch, tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        shared = c.armed and self.layer in c.shared
        extend = c.armed and c.extends(self.layer)
        query = attn.to_q(hidden_states)
        if shared and c.phase == "vanilla":
            c.queries[self.layer] = query
        elif extend and c.blends():
            s = c.strengths[c.step]
            query = s * c.queries[self.layer] + (1 - s) * query
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        query = attn.head_to_batch_dim(query).contiguous()
        cache = c.anchor_cache if extend else None
        if cache is not None and cache.mode == "cache":
            # the anchors' subject tokens (self-attention inputs) per CFG half, for extra images
            mask = c.last_mask_dropout[tokens]
            cache.inputs[(self.layer, c.step)] = torch.stack(
                [x[mask] for x in hidden_states.chunk(c.halves)]
            )
        select = [c.key_selection(tokens, i) for i in range(c.n)] if extend else None
        if cache is not None and cache.mode == "inject":
            # an extra image (batch of one): its own keys followed by the anchors' subject keys
            anchors = cache.inputs[(self.layer, c.step)]
            anchor_keys, anchor_values = attn.to_k(anchors), attn.to_v(anchors)
            key = torch.cat(
                [
                    torch.cat([k, anchor_keys[x][None]], dim=1)
                    for x, k in enumerate(key.chunk(c.halves))
                ]
            )
            value = torch.cat(
                [
                    torch.cat([v, anchor_values[x][None]], dim=1)
                    for x, v in enumerate(value.chunk(c.halves))
                ]
            )
            key = attn.head_to_batch_dim(key).contiguous()
            value = attn.head_to_batch_dim(value).contiguous()
            out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        elif extend and all(s is not None for s in select):
            out = torch.empty_like(query)
            half = batch // c.halves
            for b in range(batch):
                h0 = (b // half) * half
                keys = key[h0 : h0 + half].flatten(0, 1)[select[b % half]].unsqueeze(0)
                values = value[h0 : h0 + half].flatten(0, 1)[select[b % half]].unsqueeze(0)
                keys = attn.head_to_batch_dim(keys).contiguous()
                values = attn.head_to_batch_dim(values).contiguous()
                rows = slice(b * attn.heads, (b + 1) * attn.heads)
                out[rows] = F.scaled_dot_product_attention(
                    query[rows], keys, values, scale=attn.scale
                )
        else:
            key = attn.head_to_batch_dim(key).contiguous()
            value = attn.head_to_batch_dim(value).contiguous()
            out = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
        out = attn.batch_to_head_dim(out.to(query.dtype))
        out = attn.to_out[1](attn.to_out[0](out))
        injector = c.injector if c.armed and c.phase == "main" else None
        if (
            injector is not None
            and self.layer in c.inject_layers
            and tokens == c.inject_tokens
            and injector.active(c.step)
        ):
            cond = out[batch // c.halves * (c.halves - 1) :]
            anchors = c.anchor_cache
            if anchors is not None and anchors.mode == "inject":
                injector.inject_anchors(cond, anchors.outputs[(self.layer, c.step)])
            else:
                injector.inject(cond, c.mapping)
                if anchors is not None:
                    anchors.outputs[(self.layer, c.step)] = cond
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


# ---------------------------------------------------------------------------- generation
def _dift_step(scheduler, num_steps: int) -> int:
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(num_steps)
    target = DIFT_TIMESTEP * probe.config.num_train_timesteps / 1000
    ts = [float(t) for t in probe.timesteps]
    return min(range(len(ts)), key=lambda k: abs(ts[k] - target))


def run_consistory(pipe, prompts, start, params, control, subject_words, seed, common):
    """Both passes of ConsiStory on one set; returns (final latents, per-image masks)."""
    from engine.methods.masactrl import block_paths
    from engine.methods.running import (
        _cfg,
        block_tokens,
        installed,
        run_pipe,
        shared_layers,
        shared_steps,
    )
    from engine.sampling import block_hw as _block_hw

    p = ConsistoryParams.from_dict(params)
    words = list(subject_words or (control.mask.words if control is not None else ()))
    if not words:
        raise ValueError(
            "consistory needs subject words (subject_words, or the control's mask words)"
        )
    unet = pipe.unet
    n = len(prompts)
    num_steps = common["num_steps"]
    halves = 2 if _cfg(pipe, common["guidance"]) else 1
    blocks = block_paths(unet)
    latent_hw = (start.shape[2], start.shape[3])
    shared = shared_layers(blocks, control)
    steps = shared_steps(num_steps, control)
    tokens_of = {li: block_tokens(unet, b, latent_hw) for li, b in enumerate(blocks)}
    map_hw = (max(1, latent_hw[0] // 4), max(1, latent_hw[1] // 4))
    inject_hw = (max(1, latent_hw[0] // 2), max(1, latent_hw[1] // 2))
    res_hw = {tokens_of[li]: _block_hw(unet, blocks[li], latent_hw) for li in shared}
    inject_tokens = inject_hw[0] * inject_hw[1]
    res_hw.setdefault(inject_tokens, inject_hw)
    inject_layers = [
        li for li, b in enumerate(blocks) if b.startswith(("up_blocks.", "down_blocks."))
    ]
    subject_token_indices(pipe.tokenizer, prompts, words)  # every prompt names the subject
    controller = ConsistoryController(
        shared, tokens_of, map_hw, res_hw, inject_tokens, inject_layers
    )
    procs = {}
    for li, b in enumerate(blocks):
        procs[f"{b}.attn1.processor"] = SubjectSharedSelfAttnProcessor(controller, li)
        procs[f"{b}.attn2.processor"] = SubjectMapRecorder(controller, li)
    dift_step = _dift_step(pipe.scheduler, num_steps)
    features: dict[str, torch.Tensor] = {}
    original_forward = unet.forward

    def forward(*args, **kwargs):
        if controller.blends():
            controller.phase = "vanilla"
            original_forward(*args, **kwargs)
        controller.phase = "main"
        out = original_forward(*args, **kwargs)
        controller.aggregate()
        return out

    def dift_hook(_module, _args, output):
        if controller.armed and controller.phase == "main" and controller.step == dift_step:
            features["dift"] = output[output.shape[0] // halves * (halves - 1) :].detach().clone()

    def one_pass(indices, pass_no, injector, cache=None, mapping=None):
        batch = [prompts[i] for i in indices]
        features.clear()
        controller.arm(
            n=len(batch),
            halves=halves,
            params=p,
            token_indices=subject_token_indices(pipe.tokenizer, batch, words),
            steps=steps,
            num_steps=num_steps,
            seed=seed,
            pass_no=pass_no,
            device=unet.device,
            injector=injector,
            mapping=mapping,
            anchor_cache=cache,
            image_indices=indices,
        )
        return run_pipe(pipe, batch, start[list(indices)].clone(), **common)

    def smoothed_dift():
        if "dift" not in features:
            raise RuntimeError("the DIFT features were not recorded (no UNet call at their step)")
        return torch.stack([gaussian_smooth(x) for x in features["dift"]])

    def generate(indices, caches=(None, None), mapping=None, anchors=None):
        """Pass 1, then (with injection) pass 2; returns (latents, masks, pass-1 dift/masks)."""
        final = one_pass(indices, 1, None, caches[0], mapping)
        masks1 = controller.last_mask.get(inject_tokens)
        feats = smoothed_dift() if p.inject else None
        masks = masks1
        if p.inject:
            if anchors is None:
                nn_map, nn_dist = nn_maps(feats, masks1, inject_hw)
            else:
                nn_map, nn_dist = nn_to_anchors(feats, anchors[0], anchors[1], inject_hw)
            injector = FeatureInjector(
                nn_map, nn_dist, masks1, p.inject_alpha, num_steps // 10, num_steps // 3
            )
            final = one_pass(indices, 2, injector, caches[1], mapping)
            masks = controller.last_mask.get(inject_tokens)
        return final, masks, feats, masks1

    anchor_mode = p.anchor_mode and n > p.n_anchors
    hook = unet.up_blocks[0].register_forward_hook(dift_hook)
    unet.forward = forward
    out_masks: list = [None] * n
    finals: list = [None] * n
    try:
        with installed(unet, procs, controller):
            if not anchor_mode:
                final, masks, _, _ = generate(list(range(n)))
                finals = list(final)
                out_masks = [masks[i] if masks is not None else None for i in range(n)]
            else:
                # the anchors see each other (the authors' default all-ones mapping)
                caches = (AnchorCache(), AnchorCache())
                anchor_ids = list(range(p.n_anchors))
                every = torch.ones(p.n_anchors, p.n_anchors, dtype=torch.bool)
                final, masks, feats, masks1 = generate(anchor_ids, caches, every)
                for k, i in enumerate(anchor_ids):
                    finals[i] = final[k]
                    out_masks[i] = None if masks is None else masks[k]
                for cache in caches:
                    cache.mode = "inject"
                # extra images one at a time (the authors' batch of one) against the anchors
                for i in range(p.n_anchors, n):
                    final, masks, _, _ = generate([i], caches, None, anchors=(feats, masks1))
                    finals[i] = final[0]
                    out_masks[i] = None if masks is None else masks[0]
    finally:
        del unet.forward
        hook.remove()
    mask_arrays = [
        None if m is None else m.view(*inject_hw).float().cpu().numpy() for m in out_masks
    ]
    return torch.stack(finals), mask_arrays
