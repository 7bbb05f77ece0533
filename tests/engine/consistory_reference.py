"""ConsiStory's batch generation driven by the authors' own processors, stores and helpers.

The authors' classes (``AttentionStore``, ``QueryStore``, ``FeatureInjector``, their attention
processors, ``gaussian_smooth``, ``cyclic_nn_map``) come from their repository via
``tests.engine.oracles``; this module only replays their pipeline's denoising loop
(``consistory_pipeline.py``: a vanilla call then the main call in steps 0..n//10, CFG, DDIM step,
``aggregate_last_steps_attention``) and ``run_batch_generation``'s two passes on a stock UNet,
with their 1024 px constants (map sizes 32/64, ``inject_res``) set to the latent's /4 and /2.
"""

from __future__ import annotations

import torch

from tests.engine import oracles


@torch.no_grad()
def run_authors_batch(
    pipe,
    prompts,
    concept,
    latents,
    *,
    n_steps,
    guidance,
    mask_dropout,
    perform_injection,
    n_anchors=2,
    threshold_otsu=None,
    mode="batch",
    caches=None,
):
    """mode "batch": run_batch_generation; "anchors": run_anchor_generation (returns its two
    AnchorCaches in ``store.caches``); "extra": run_extra_generation against ``caches``."""
    cs = oracles.consistory(threshold_otsu)
    ptp, utils, procs, general = cs.ptp, cs.utils, cs.procs, cs.general
    unet = pipe.unet
    device = unet.device
    n = len(prompts)
    lh, lw = latents.shape[2], latents.shape[3]
    low, high = lh // 4, lh // 2
    store_cls = ptp["AttentionStore"]
    original_init = store_cls.__init__

    def init(self, kwargs):
        original_init(self, kwargs)
        self.ALL_RES = [low, high]
        self.attn_masks = {r: None for r in self.ALL_RES}
        self.last_mask = {r: None for r in self.ALL_RES}
        self.last_mask_dropout = {r: None for r in self.ALL_RES}

    store_cls.__init__ = init

    tok = pipe.tokenizer
    concept_ids = [tok.encode(concept, add_special_tokens=False)[0]]
    ids = tok(prompts, padding=True, return_tensors="pt")["input_ids"]  # batch_encode_plus, renamed
    token_indices = torch.full((1, n), -1, dtype=torch.int64)
    for i, token_id in enumerate(concept_ids):
        rows, cols = torch.where(ids == token_id)
        token_indices[i, rows] = cols
    store_kwargs = {
        "token_indices": token_indices,
        "mask_dropout": mask_dropout,
        "attn_res": (low, low),
    }
    if mode == "batch":
        mapping = torch.eye(n, dtype=torch.bool)
        mapping[:, :n_anchors] = True
        store_kwargs["extended_mapping"] = mapping
    if mode == "anchors":
        caches = (utils["AnchorCache"](), utils["AnchorCache"]())
    elif mode == "extra":
        for cache in caches:
            cache.set_mode_inject()
    else:
        caches = (None, None)
    qs_kwargs = {"t_range": [0, n_steps // 10], "strength_start": 0.9, "strength_end": 0.81836735}
    ext_kwargs = {"extend_kv_unet_parts": ["up"], "t_range": [(1, n_steps)]}

    pe, npe, ppe, nppe = pipe.encode_prompt(
        prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True
    )
    H, W = lh * pipe.vae_scale_factor, lw * pipe.vae_scale_factor
    time_ids = pipe._get_add_time_ids(
        (H, W),
        (0, 0),
        (H, W),
        dtype=pe.dtype,
        text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim,
    )
    prompt_embeds = torch.cat([npe, pe])
    text_embeds = torch.cat([nppe, ppe])
    time_ids = torch.cat([time_ids, time_ids]).to(device).repeat(n, 1)
    saved = dict(unet.attn_processors)
    dift: dict = {}
    current_t = [None]

    def hook(_m, _a, out):
        if current_t[0] is not None and int(current_t[0]) == 261:
            dift["261_0"] = out.detach()

    handle = unet.up_blocks[0].register_forward_hook(hook)

    def one_pass(injector, cache):
        sched = pipe.scheduler
        sched.set_timesteps(n_steps, device=device)
        store = store_cls(store_kwargs)
        procs["register_extended_self_attn"](unet, store, ext_kwargs)
        qs = utils["QueryStore"](**qs_kwargs)
        lat = latents.clone() * sched.init_noise_sigma
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        for i, t in enumerate(sched.timesteps):
            store.curr_iter = i
            inp = sched.scale_model_input(torch.cat([lat] * 2), t)
            current_t[0] = t
            if qs_kwargs["t_range"][0] <= i <= qs_kwargs["t_range"][1]:
                qs.set_mode("cache")
                unet(
                    inp,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    added_cond_kwargs=added,
                    cross_attention_kwargs={
                        "query_store": qs,
                        "perform_extend_attn": False,
                        "record_attention": False,
                    },
                    return_dict=False,
                )
                qs.set_mode("inject")
            noise = unet(
                inp,
                t,
                encoder_hidden_states=prompt_embeds,
                added_cond_kwargs=added,
                cross_attention_kwargs={
                    "query_store": qs,
                    "perform_extend_attn": True,
                    "record_attention": True,
                    "feature_injector": injector,
                    "anchors_cache": cache,
                },
                return_dict=False,
            )[0]
            u, c = noise.chunk(2)
            noise = u + guidance * (c - u)
            lat = sched.step(noise, t, lat, return_dict=False)[0]
            store.aggregate_last_steps_attention()
        current_t[0] = None
        return lat, store

    try:
        final, store = one_pass(None, caches[0])
        last_masks = store.last_mask
        feats = dift["261_0"][n:]
        feats = torch.stack([general["gaussian_smooth"](x, kernel_size=3, sigma=1) for x in feats])
        if mode == "anchors":
            caches[0].dift_cache, caches[0].anchors_last_mask = feats, last_masks
        if perform_injection:
            if mode == "extra":
                nn_map, nn_dist = general["anchor_nn_map"](
                    feats,
                    caches[0].dift_cache,
                    last_masks,
                    caches[0].anchors_last_mask,
                    [low, high],
                    device,
                )
            else:
                nn_map, nn_dist = general["cyclic_nn_map"](feats, last_masks, [low, high], device)
            injector = utils["FeatureInjector"](
                nn_map,
                nn_dist,
                last_masks,
                inject_range_alpha=[(n_steps // 10, n_steps // 3, 0.8)],
                swap_strategy="min",
                inject_unet_parts=["up", "down"],
                dist_thr="dynamic",
            )
            injector.inject_res = [high]
            final, store = one_pass(injector, caches[1])
    finally:
        handle.remove()
        store_cls.__init__ = original_init
        unet.set_attn_processor(saved)
    store.caches = caches
    return final, store
