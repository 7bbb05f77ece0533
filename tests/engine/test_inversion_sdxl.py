"""SDXL DDIM inversion on the tiny SDXL-topology model, and the inversion guidance setting.

The reference loop below is written from the DDIM equations and the UNet/text-encoder calls
directly (no pipeline or inversion helper), so it checks the recipe and SDXL's added
conditioning independently of engine.inversion.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.inversion import encode_image, invert  # noqa: E402
from engine.pipeline import Source, Target, generate, load_pipeline  # noqa: E402
from engine.processors import block_paths  # noqa: E402
from engine.tiny_sdxl import load_tiny_sdxl_pipeline  # noqa: E402
from store.sweep.grammar import SDXL_BLOCKS  # noqa: E402

STEPS = 4
PROMPT = "a photo of a corgi"
H, W = 64, 96  # not square, so swapped height/width in the size ids would show


@pytest.fixture(scope="module")
def pipe(tiny_sdxl_dir):
    return load_tiny_sdxl_pipeline(tiny_sdxl_dir)


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
    return path


@torch.no_grad()
def reference_inversion(pipe, image_path, prompt, n, guidance, height, width):
    from PIL import Image

    pixels = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32) / 255.0 * 2 - 1
    z = pipe.vae.encode(torch.from_numpy(pixels).permute(2, 0, 1)[None]).latent_dist.mean
    z = z * pipe.vae.config.scaling_factor

    states = []
    for tok, enc in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tok(
            prompt,
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        out = enc(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])  # SDXL reads the penultimate layer of both encoders
    embeds, pooled = (
        torch.cat(states, dim=-1),
        out.text_embeds,
    )  # pooled: the projected second encoder
    # original size, crop top-left, target size
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype)
    cfg = guidance > 1
    if cfg:  # force_zeros_for_empty_prompt: the unconditional rows are zeros
        embeds = torch.cat([torch.zeros_like(embeds), embeds])
        pooled = torch.cat([torch.zeros_like(pooled), pooled])
        time_ids = time_ids.repeat(2, 1)

    acp = pipe.scheduler.alphas_cumprod
    stride = pipe.scheduler.config.num_train_timesteps // n
    trajectory = [z]
    for k in range(n):  # "leading" spacing, ascending
        t = k * stride + pipe.scheduler.config.steps_offset
        a_from = acp[t - stride] if t - stride >= 0 else acp[0]  # set_alpha_to_one=False
        a_to = acp[t]
        eps = pipe.unet(
            torch.cat([z] * 2) if cfg else z,
            t,
            encoder_hidden_states=embeds,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
        ).sample
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        x0 = (z - (1 - a_from).sqrt() * eps) / a_from.sqrt()
        z = a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps
        trajectory.append(z)
    return trajectory


class InputRecorder:
    """The latent rows the UNet receives, one entry per UNet call."""

    def __init__(self, unet):
        self.inputs: list[torch.Tensor] = []
        self.handle = unet.register_forward_pre_hook(
            lambda _m, args: self.inputs.append(args[0].detach().clone())
        )

    def close(self):
        self.handle.remove()


def test_tiny_sdxl_has_sdxl_topology_and_loads_through_the_engine(pipe, tiny_sdxl_dir):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    assert (
        type(pipe.text_encoder) is CLIPTextModel
        and type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    )
    cfg = pipe.unet.config
    assert cfg.addition_embed_type == "text_time"
    assert (
        cfg.projection_class_embeddings_input_dim
        == 6 * cfg.addition_time_embed_dim + pipe.text_encoder_2.config.projection_dim
    )
    assert (
        cfg.cross_attention_dim
        == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert block_paths(pipe.unet) == SDXL_BLOCKS and len(SDXL_BLOCKS) == 70
    attn1 = [n for n in pipe.unet.attn_processors if n.endswith(".attn1.processor")]
    assert sorted(n[: -len(".attn1.processor")] for n in attn1) == sorted(SDXL_BLOCKS)
    assert pipe.vae.config.force_upcast and pipe.config.force_zeros_for_empty_prompt
    engine_pipe = load_pipeline(str(tiny_sdxl_dir))
    assert isinstance(engine_pipe, StableDiffusionXLPipeline) and isinstance(
        engine_pipe.scheduler, DDIMScheduler
    )
    assert (
        engine_pipe.scheduler.config.clip_sample is False
        and engine_pipe.scheduler.config.set_alpha_to_one is False
    )


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_inversion_matches_an_independent_ddim_loop(pipe, wide_image, guidance):
    expected = reference_inversion(pipe, wide_image, PROMPT, STEPS, guidance, H, W)
    inv = invert(pipe, wide_image, PROMPT, STEPS, guidance=guidance, height=H, width=W)
    assert len(inv.trajectory) == STEPS + 1
    # Float rounding differs by ~1e-7 at the first step and is amplified along the trajectory to
    # ~1e-4; a wrong size id (height/width swapped) already differs by ~3e-3 after one step.
    for got, want in zip(inv.trajectory, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-4)
    assert torch.equal(inv.latent, inv.trajectory[-1])


def test_inversion_guidance_changes_the_start_latent(pipe, wide_image):
    plain = invert(pipe, wide_image, PROMPT, STEPS, guidance=1.0, height=H, width=W)
    guided = invert(pipe, wide_image, PROMPT, STEPS, guidance=7.5, height=H, width=W)
    assert torch.equal(plain.trajectory[0], guided.trajectory[0])  # same encoded image
    assert (plain.latent - guided.latent).abs().max() > 1e-3
    with pytest.raises(ValueError, match="at least 1"):
        invert(pipe, wide_image, PROMPT, STEPS, guidance=0.5, height=H, width=W)


def test_pinned_source_row_equals_the_inversion_trajectory_at_every_step(pipe, reference_image):
    rec = InputRecorder(pipe.unet)
    try:
        res = generate(
            pipe,
            Source(PROMPT, image=reference_image, invert=True, pin_to_inversion=True),
            [Target("a corgi on the beach", None)],
            seed=0,
            num_steps=STEPS,
            guidance=7.5,
            height=64,
            width=64,
            decode=False,
        )
    finally:
        rec.close()
    traj = res.inversion.trajectory
    denoising = rec.inputs[-STEPS:]  # after the STEPS inversion calls
    assert len(rec.inputs) == 2 * STEPS
    for i, batch in enumerate(denoising):
        assert batch.shape[0] == 4  # [uncond: src, tgt, cond: src, tgt]
        assert torch.equal(batch[0], traj[STEPS - i][0]) and torch.equal(
            batch[2], traj[STEPS - i][0]
        )
        if i:
            assert not torch.equal(batch[1], traj[STEPS - i][0])  # the target row is not pinned
    assert torch.equal(res.latents[0], traj[0][0])


@pytest.fixture
def latent_blind_pipe(tiny_sdxl_dir):
    """The real UNet fed zeros instead of the latent: its noise prediction then depends only on the
    timestep and the conditioning, so DDIM inversion followed by generation is exact exactly when
    both condition the UNet identically (prompt embeddings, pooled embeddings, size ids, CFG)."""
    pipe = load_tiny_sdxl_pipeline(tiny_sdxl_dir)
    real_forward = pipe.unet.forward

    def blind(sample, *args, **kwargs):
        return real_forward(torch.zeros_like(sample), *args, **kwargs)

    pipe.unet.forward = blind
    return pipe


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_generation_retraces_the_inversion_when_conditioning_matches(
    latent_blind_pipe, wide_image, guidance
):
    pipe = latent_blind_pipe
    rec = InputRecorder(pipe.unet)
    try:
        res = generate(
            pipe,
            Source(PROMPT, image=wide_image, invert=True, inversion_guidance=guidance),
            [Target("a corgi on the beach", None)],
            seed=0,
            num_steps=STEPS,
            guidance=guidance,
            height=H,
            width=W,
            decode=False,
        )
    finally:
        rec.close()
    traj = res.inversion.trajectory
    for i, batch in enumerate(rec.inputs[-STEPS:]):
        torch.testing.assert_close(batch[0], traj[STEPS - i][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.latents[0], traj[0][0], rtol=1e-4, atol=1e-4)


def test_mismatched_inversion_guidance_does_not_retrace(latent_blind_pipe, wide_image):
    res = generate(
        latent_blind_pipe,
        Source(PROMPT, image=wide_image, invert=True, inversion_guidance=1.0),
        [],
        seed=0,
        num_steps=STEPS,
        guidance=7.5,
        height=H,
        width=W,
        decode=False,
    )
    assert (res.latents[0] - res.inversion.trajectory[0][0]).abs().max() > 1e-2


def test_fp16_vae_that_asks_for_it_encodes_in_fp32(tiny_sdxl_dir, reference_image):
    pipe = load_tiny_sdxl_pipeline(tiny_sdxl_dir)
    pipe.vae.to(torch.float16)
    seen = []
    real_encode = pipe.vae.encode

    def spy(pixels, *args, **kwargs):
        seen.append((pixels.dtype, next(pipe.vae.parameters()).dtype))
        return real_encode(pixels, *args, **kwargs)

    pipe.vae.encode = spy
    latent = encode_image(pipe, reference_image, 64, 64)
    assert seen == [(torch.float32, torch.float32)]
    assert pipe.vae.dtype == torch.float16  # put back afterwards
    pipe.vae.encode = real_encode
    pipe.vae.to(torch.float32)  # the fp16-rounded weights, run in fp32
    torch.testing.assert_close(latent, encode_image(pipe, reference_image, 64, 64), rtol=0, atol=0)


def test_inversion_guidance_without_inversion_is_refused(pipe):
    with pytest.raises(ValueError, match="only used with invert=True"):
        generate(
            pipe,
            Source(PROMPT, inversion_guidance=7.5),
            [],
            seed=0,
            num_steps=2,
            height=64,
            width=64,
        )


def test_inversion_guidance_one_vs_seven_and_a_half_through_the_worker(
    store, tiny_sdxl_dir, reference_image
):
    """Two values of the setting: two source passes, recorded per run, exported, and each source
    is what generate() makes at that inversion guidance."""
    from PIL import Image
    from sqlmodel import select

    from engine.backends.diffusion import PipelineBackend
    from engine.worker import Worker, WorkerConfig
    from store.models import Run
    from store.queries import save_experiment
    from store.report.export import export_runs_csv
    from store.sweep.spec import ExperimentSpec

    spec = ExperimentSpec(
        model=str(tiny_sdxl_dir),
        source_prompt=PROMPT,
        source_image=str(reference_image),
        inversion_guidance="1,7.5",
        target_prompts=["a corgi on the beach"],
        num_steps=3,
        guidance=7.5,
        width=64,
        height=64,
        seeds="0",
        layers="decoder",
        start_step="1",
        final_step="end",
    )
    exp = save_experiment(store, "inv", spec, queue=True)
    worker = Worker(
        store,
        PipelineBackend("cpu", home=store.home),
        WorkerConfig(once=True, heartbeat_s=0.2),
        worker_id="sdxl",
    )
    worker.run()
    with store.session() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id).order_by(Run.id)))
    assert len(runs) == 4 and {r.status for r in runs} == {"done"}, [r.error for r in runs]
    assert worker.stats["generate_calls"] == 2  # one source pass per inversion guidance
    by_value = {g: [r for r in runs if r.inversion_guidance == g] for g in (1.0, 7.5)}
    assert [len(v) for v in by_value.values()] == [2, 2]
    assert all(r.invert for r in runs) and len({r.group_key for r in runs}) == 2

    def pixels(run):
        with Image.open(store.home.root / run.source_image_path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.int16)

    sources = {g: pixels(v[0]) for g, v in by_value.items()}
    assert np.abs(sources[1.0] - sources[7.5]).max() > 0
    direct = generate(
        load_pipeline(str(tiny_sdxl_dir)),
        Source(PROMPT, image=reference_image, invert=True, inversion_guidance=7.5),
        [Target("a corgi on the beach", None)] * 2,
        seed=0,
        num_steps=3,
        guidance=7.5,
        height=64,
        width=64,
    )  # the worker's batch size: batched kernels round differently
    assert np.array_equal(np.asarray(direct.source_image, dtype=np.int16), sources[7.5])

    import csv

    path = export_runs_csv(store, exp.id, store.home.exports / "inv.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(float(r["inversion_guidance"]) for r in rows) == [1.0, 1.0, 7.5, 7.5]


def test_demo_has_an_sdxl_inversion_experiment_that_runs(store, tiny_sdxl_dir):
    import shutil

    from sqlmodel import select

    from engine.backends.diffusion import PipelineBackend
    from engine.worker import Worker, WorkerConfig
    from store.demo import SDXL_DEMO, seed_demo
    from store.models import Experiment, Run
    from store.queries import queue_experiment

    seed_demo(store)
    with store.session() as s:
        exp = s.exec(select(Experiment).where(Experiment.name == SDXL_DEMO)).one()
    assert exp.status == "draft"
    # The engine builds home/models/tiny-sdxl on first use; a copy of the session's build stands in.
    shutil.copytree(tiny_sdxl_dir, store.home.demo_sdxl_model)
    backend = PipelineBackend("cpu", home=store.home)
    assert backend._resolve_model("tiny-sdxl") == str(store.home.demo_sdxl_model)
    queue_experiment(store, exp.id)
    Worker(store, backend, WorkerConfig(once=True, heartbeat_s=0.2), worker_id="demo").run()
    with store.session() as s:
        runs = list(s.exec(select(Run).where(Run.experiment_id == exp.id)))
    assert runs and {r.status for r in runs} == {"done"}, {r.error for r in runs}
    assert {r.inversion_guidance for r in runs} == {1.0, 7.5}
    assert block_paths(backend.pipe.unet) == SDXL_BLOCKS


def test_sd_inversion_guidance_reaches_the_inversion_too(tiny_model_dir, reference_image):
    from engine.tiny import load_tiny_pipeline

    sd = load_tiny_pipeline(tiny_model_dir)
    kw = dict(seed=0, num_steps=STEPS, height=64, width=64, decode=False)
    res = generate(
        sd, Source(PROMPT, image=reference_image, invert=True, inversion_guidance=7.5), [], **kw
    )
    guided = invert(sd, reference_image, PROMPT, STEPS, guidance=7.5, height=64, width=64)
    plain = invert(sd, reference_image, PROMPT, STEPS, guidance=1.0, height=64, width=64)
    assert torch.equal(res.inversion.latent, guided.latent)
    assert (guided.latent - plain.latent).abs().max() > 1e-3
