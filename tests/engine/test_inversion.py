"""DDIM inversion plumbing: exact round trip when the UNet's output is constant."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.inversion import ImageError, encode_image, invert  # noqa: E402
from engine.pipeline import Source, Target, generate  # noqa: E402
from engine.tiny import load_tiny_pipeline  # noqa: E402

STEPS = 6


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / "ref.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def const_pipe(tiny_model_dir):
    """A pipeline whose UNet predicts the same noise everywhere: inversion must then be exact."""
    pipe = load_tiny_pipeline(tiny_model_dir)
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def constant_forward(sample, *args, **kwargs):
        out = eps.expand(sample.shape[0], -1, -1, -1).clone()
        return (out,) if kwargs.get("return_dict") is False else type("O", (), {"sample": out})()

    pipe.unet.forward = constant_forward
    return pipe


def test_inversion_round_trip_is_exact_with_constant_unet(const_pipe, image):
    z0 = encode_image(const_pipe, image, 64, 64)
    inv = invert(const_pipe, image, "a photo of a corgi", STEPS, height=64, width=64)
    assert len(inv.trajectory) == STEPS + 1 and torch.equal(inv.trajectory[0], z0)
    assert torch.equal(inv.latent, inv.trajectory[-1]) and not torch.allclose(inv.latent, z0)
    res = generate(
        const_pipe,
        Source("a photo of a corgi", image=str(image), invert=True),
        [Target("a corgi on the beach", None)],
        seed=0,
        num_steps=STEPS,
        height=64,
        width=64,
        decode=False,
    )
    torch.testing.assert_close(res.latents[0], z0[0], rtol=1e-4, atol=1e-4)
    assert res.inversion is not None


def test_generation_starts_from_inverted_latent(const_pipe, image, monkeypatch):
    from diffusers import StableDiffusionPipeline

    inv = invert(const_pipe, image, "a photo of a corgi", STEPS, height=64, width=64)
    seen = {}
    original = StableDiffusionPipeline.__call__

    def spy(self, *args, **kwargs):
        seen["latents"] = kwargs["latents"].clone()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy)
    generate(
        const_pipe,
        Source("a photo of a corgi", image=str(image), invert=True),
        [Target("a cat", None), Target("a dog", None)],
        seed=0,
        num_steps=STEPS,
        height=64,
        width=64,
        decode=False,
    )
    assert seen["latents"].shape[0] == 3
    for row in seen["latents"]:
        assert torch.equal(row, inv.latent[0])


def test_pin_to_inversion_reconstructs_source(tiny_model_dir, image):
    pipe = load_tiny_pipeline(tiny_model_dir)
    z0 = encode_image(pipe, image, 64, 64)
    res = generate(
        pipe,
        Source("a photo of a corgi", image=image, invert=True, pin_to_inversion=True),
        [Target("a corgi on the beach", None)],
        seed=0,
        num_steps=STEPS,
        height=64,
        width=64,
    )
    assert torch.equal(res.latents[0], z0[0])
    assert res.source_image.size == (64, 64)


def test_unreadable_image_names_the_path(tiny_model_dir, tmp_path):
    pipe = load_tiny_pipeline(tiny_model_dir)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ImageError, match="broken.png"):
        generate(
            pipe,
            Source("a corgi", image=str(bad), invert=True),
            [],
            seed=0,
            num_steps=2,
            height=64,
            width=64,
        )
    with pytest.raises(ImageError, match="missing.png"):
        generate(
            pipe,
            Source("a corgi", image=str(tmp_path / "missing.png"), invert=True),
            [],
            seed=0,
            num_steps=2,
            height=64,
            width=64,
        )
