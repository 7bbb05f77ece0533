"""CLIP-T / CLIP-I / DINO scores against direct computations on the tiny offline backbones."""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from PIL import Image  # noqa: E402

from engine.scoring import Scorer, ScorerUnavailable, scored_text  # noqa: E402
from engine.tiny_clip import TINY_CLIP_DIRNAME, TINY_DINO_DIRNAME  # noqa: E402
from store.paths import Home  # noqa: E402


@pytest.fixture(scope="module")
def scoring_home(tmp_path_factory):
    return Home.resolve(tmp_path_factory.mktemp("scoring-home"))


@pytest.fixture(scope="module")
def scorer(scoring_home):
    return Scorer.for_home(scoring_home, demo=True)


def _noise(seed: int, size=(80, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refs")
    paths = []
    for i in range(3):
        p = folder / f"ref{i}.png"
        _noise(100 + i, (96, 64)).save(p)
        paths.append(p)
    return paths


def _direct_clip(scoring_home):
    import open_clip

    from engine.tiny_clip import TINY_CLIP_NAME, TINY_CLIP_WEIGHTS

    weights = scoring_home.models / TINY_CLIP_DIRNAME / TINY_CLIP_WEIGHTS
    model, _, preprocess = open_clip.create_model_and_transforms(
        TINY_CLIP_NAME, pretrained=str(weights)
    )
    return model.eval(), preprocess, open_clip.get_tokenizer(TINY_CLIP_NAME)


def _by_metric(scores: list[dict]) -> dict[str, dict]:
    return {s["metric"]: s for s in scores}


def test_scored_text():
    assert (
        scored_text("a photo of <new1> dog on the beach", "<new1>", "dog")
        == "a photo of dog on the beach"
    )
    assert (
        scored_text("a photo of a <new1> on the beach", "<new1>", "dog")
        == "a photo of a dog on the beach"
    )
    assert scored_text("a <new1> in snow", "<new1>", "") == "a in snow"
    assert scored_text("a sks dog", "sks", "dog") == "a dog"
    assert scored_text("a dog", "", "dog") == "a dog"


def test_clip_and_dino_equal_direct_computation(scorer, scoring_home, refs):
    images = [_noise(1), _noise(2)]
    source = _noise(3)
    texts = ["a photo of a dog on the beach", "a dog in the snow"]
    out = scorer.score(images, texts, source, refs)
    assert len(out) == 2

    model, preprocess, tokenizer = _direct_clip(scoring_home)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(im) for im in images]))
        txt = model.encode_text(tokenizer(texts))
        ref = model.encode_image(
            torch.stack([preprocess(Image.open(p).convert("RGB")) for p in refs])
        )
        src = model.encode_image(preprocess(source)[None])
    img, txt, ref, src = (torch.nn.functional.normalize(t, dim=-1) for t in (img, txt, ref, src))

    from torchvision import transforms
    from transformers import ViTModel

    dino = ViTModel.from_pretrained(
        scoring_home.models / TINY_DINO_DIRNAME, add_pooling_layer=False
    ).eval()
    tf = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    with torch.no_grad():

        def cls(ims):
            feats = dino(pixel_values=torch.stack([tf(im) for im in ims])).last_hidden_state[:, 0]
            return torch.nn.functional.normalize(feats, dim=-1)

        d_img, d_ref, d_src = (
            cls(images),
            cls([Image.open(p).convert("RGB") for p in refs]),
            cls([source]),
        )

    for i, scores in enumerate(out):
        m = _by_metric(scores)
        assert set(m) == {"clip_t", "clip_i_ref", "clip_i_src", "dino_ref", "dino_src"}
        assert m["clip_t"]["value"] == pytest.approx(float(img[i] @ txt[i]), abs=1e-5)
        assert m["clip_t"]["scored_text"] == texts[i]
        assert m["clip_i_ref"]["value"] == pytest.approx(float((ref @ img[i]).mean()), abs=1e-5)
        assert m["clip_i_src"]["value"] == pytest.approx(float(src[0] @ img[i]), abs=1e-5)
        assert m["dino_ref"]["value"] == pytest.approx(float((d_ref @ d_img[i]).mean()), abs=1e-5)
        assert m["dino_src"]["value"] == pytest.approx(float(d_src[0] @ d_img[i]), abs=1e-5)
        assert m["clip_t"]["backbone"] == scorer.clip_backbone
        assert m["dino_ref"]["backbone"] == scorer.dino_backbone
        assert "224" in m["dino_src"]["preprocess"] and "bicubic" in m["clip_i_ref"]["preprocess"]
        assert m["clip_i_ref"]["scored_text"] is None
        assert all(isinstance(s["value"], float) for s in scores)


def test_reference_and_prompt_embeddings_are_cached(scoring_home, refs):
    scorer = Scorer.for_home(scoring_home, demo=True)
    images = [_noise(7), _noise(8), _noise(9)]
    scorer.score(images, ["a dog"] * 3, _noise(3), refs)
    first = scorer.encode_counts
    assert first == {"clip_image": 3 + 3 + 1, "clip_text": 1, "dino_image": 3 + 3 + 1}
    again = scorer.score(images[:2], ["a dog", "a cat"], _noise(3), refs)
    # Only the two new targets and the one new prompt were encoded.
    assert scorer.encode_counts == {"clip_image": 7 + 2, "clip_text": 2, "dino_image": 7 + 2}
    assert {s["metric"] for s in again[0]} == {
        "clip_t",
        "clip_i_ref",
        "clip_i_src",
        "dino_ref",
        "dino_src",
    }


def test_optional_inputs(scorer):
    out = scorer.score([_noise(1)], [""], None, [])
    assert out == [[]]
    out = scorer.score([_noise(1), _noise(2)], ["a dog"], None, [])
    assert [[s["metric"] for s in per] for per in out] == [["clip_t"], ["clip_t"]]
    assert scorer.score([], [], None, []) == []
    with pytest.raises(ValueError):
        scorer.score([_noise(1), _noise(2), _noise(3)], ["a", "b"], None, [])


def test_tiny_backbones_are_built_once(scoring_home, scorer):
    weights = scoring_home.models / TINY_CLIP_DIRNAME / "tiny-random.safetensors"
    before = weights.stat().st_mtime_ns
    Scorer.for_home(scoring_home, demo=True)
    assert weights.stat().st_mtime_ns == before
    assert sorted(p.name for p in scoring_home.models.iterdir() if p.name.startswith(".")) == []


def test_unavailable_weights_raise_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ScorerUnavailable, match="ViT-B-32"):
        Scorer(
            clip_model="ViT-B-32",
            clip_pretrained=str(tmp_path / "missing.safetensors"),
            dino_model=None,
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        # The default scorer, offline without its weights: the message names it, where the
        # weights are looked for, and how to go on without them.
        with pytest.raises(ScorerUnavailable, match="ViT-B-32-quickgelu/openai") as err:
            Scorer(dino_model=None)
        assert "--no-score" in str(err.value) and "cache" in str(err.value)


def test_unavailable_dino_names_it(scoring_home, monkeypatch):
    from engine.tiny_clip import ensure_tiny_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name, weights = ensure_tiny_clip(scoring_home.models)
    with pytest.raises(ScorerUnavailable, match="facebook/dino-vits16") as err:
        Scorer(clip_model=name, clip_pretrained=str(weights), dino_model="facebook/dino-vits16")
    assert "--no-score" in str(err.value)


def test_embedding_cache_is_bounded_and_batched():
    from engine.scoring import _Cache

    calls = []

    def encode(items):  # items come as a one-pass iterable (loaded one at a time)
        items = list(items)
        calls.append(items)
        return torch.tensor([[float(x)] for x in items])

    cache = _Cache(encode, limit=2)
    names = ["a", "b", "a"]
    out = cache.get(names, lambda i: ord(names[i]))
    assert out.flatten().tolist() == [97.0, 98.0, 97.0] and calls == [[97, 98]]  # "a" encoded once
    cache.get(["c"], lambda i: 99)  # evicts "b": "a" was used after it
    cache.get(["a"], lambda i: 0)
    assert cache.misses == 3
    cache.get(["b"], lambda i: 98)
    assert cache.misses == 4 and calls[-1] == [98]


# ---------------------------------------------------------------- backbone identity
def _activations(model) -> set[str]:
    return {type(blk.mlp.gelu).__name__ for blk in model.visual.transformer.resblocks}


def test_default_clip_is_openai_clip_with_quickgelu():
    import open_clip

    from engine.scoring import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED

    # The architecture open_clip builds for the default name (random weights: none can be
    # downloaded here) uses QuickGELU in every block, as OpenAI's weights were trained with.
    model = open_clip.create_model(DEFAULT_CLIP_MODEL, pretrained=None)
    assert _activations(model) == {"QuickGELU"}
    assert (
        open_clip.get_pretrained_cfg(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED)["quick_gelu"]
        is True
    )
    assert DEFAULT_CLIP_PRETRAINED == "openai"


def test_tiny_clip_takes_the_quickgelu_path_and_records_it(scorer, scoring_home):
    import open_clip

    from engine.tiny_clip import TINY_CLIP_WEIGHTS

    assert _activations(scorer.clip) == {"QuickGELU"}
    weights = scoring_home.models / TINY_CLIP_DIRNAME / TINY_CLIP_WEIGHTS
    from engine.scoring import weights_digest

    assert scorer.clip_backbone == (
        f"open_clip:mtp-tiny-clip:tiny-random#sha256:{weights_digest(weights)}"
        f"@open_clip_torch-{open_clip.__version__}"
    )
    import transformers

    assert scorer.dino_backbone.startswith("transformers:ViTModel-cls:tiny-dino#sha256:")
    assert scorer.dino_backbone.endswith(f"@transformers-{transformers.__version__}")


def test_backbone_changes_with_the_weights(tmp_path):
    from engine.tiny_clip import build_tiny_clip

    a = build_tiny_clip(tmp_path / "a", seed=0)
    b = build_tiny_clip(tmp_path / "b", seed=1)
    from engine.tiny_clip import TINY_CLIP_NAME

    sa = Scorer(clip_model=TINY_CLIP_NAME, clip_pretrained=str(a), dino_model=None)
    sb = Scorer(clip_model=TINY_CLIP_NAME, clip_pretrained=str(b), dino_model=None)
    assert sa.clip_backbone != sb.clip_backbone
    assert sa.score([_noise(1)], ["a dog"])[0][0]["backbone"] == sa.clip_backbone


def test_old_demo_clip_config_gains_quickgelu(tmp_path):
    import json

    from engine.tiny_clip import clip_config_path, ensure_tiny_clip

    ensure_tiny_clip(tmp_path)
    cfg = clip_config_path(tmp_path / TINY_CLIP_DIRNAME)
    old = json.loads(cfg.read_text())
    del old["quick_gelu"]
    cfg.write_text(json.dumps(old))
    ensure_tiny_clip(tmp_path)
    assert json.loads(cfg.read_text())["quick_gelu"] is True


# ---------------------------------------------------------------- bounded image reading
@pytest.mark.parametrize(
    "name, size, mode",
    [
        ("photo.jpg", (1000, 750), "RGB"),
        ("alpha.png", (640, 480), "RGBA"),
        ("palette.png", (300, 400), "P"),
        ("widest.png", (4096, 512), "RGB"),  # 8:1 at the largest side read untouched
    ],
)
def test_references_within_the_bound_embed_bit_identically(scorer, tmp_path, name, size, mode):
    """Reading references through store.images changes no score: the same tensors as before."""
    from store.images import open_bounded

    path = tmp_path / name
    _noise(5, size).convert(mode).save(path)
    with Image.open(path) as im:
        before = im.convert("RGB")
    for encode in (scorer._encode_clip_images, scorer._encode_dino_images):
        assert torch.equal(encode([open_bounded(path)]), encode([before]))


def test_an_extreme_generated_image_is_scored_on_its_central_part(scorer):
    from store.images import MAX_ASPECT

    tall = _noise(9, (16, 4096))  # a size a sweep may ask for (multiples of 8)
    centre = tall.crop((0, 2048 - 8 * MAX_ASPECT, 16, 2048 + 8 * MAX_ASPECT))
    (got,), (want,) = scorer.score([tall], ["a dog"]), scorer.score([centre], ["a dog"])
    assert [s["value"] for s in got] == [s["value"] for s in want]
