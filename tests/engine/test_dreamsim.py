"""DreamSim through the real `dreamsim` package: a random open_clip_vitb32 model written in the
package's checkpoint layout, loaded by `dreamsim.dreamsim(...)` itself."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from PIL import Image  # noqa: E402

from engine.dreamsim_metric import DEMO_TYPE, DreamSimSpec, build_random_dreamsim, load_dreamsim  # noqa: E402
from engine.scoring import Scorer, ScorerUnavailable  # noqa: E402


def _noise(seed: int, size=(80, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return build_random_dreamsim(tmp_path_factory.mktemp("dreamsim") / "cache")


def test_scores_equal_the_packages_own_distance(cache_dir, tmp_path):
    from dreamsim import dreamsim

    refs = []
    for i in range(2):
        refs.append(tmp_path / f"r{i}.png")
        _noise(50 + i).save(refs[-1])
    images, source = [_noise(1), _noise(2)], _noise(3)
    scorer = Scorer(clip_model=None, dino_model=None, dreamsim=DreamSimSpec(cache_dir, DEMO_TYPE))
    assert scorer.families == ("dreamsim",)
    out = scorer.score(images, ["ignored"] * 2, source, refs)

    model, preprocess = dreamsim(
        pretrained=True, device="cpu", cache_dir=str(cache_dir), dreamsim_type=DEMO_TYPE
    )
    # The LoRA adapter is loaded (peft wraps the package's PerceptualModel), not a bare backbone.
    assert (
        type(model).__name__ == "PeftModel"
        and type(model.base_model.model).__name__ == "PerceptualModel"
    )
    with torch.no_grad():
        for i, im in enumerate(images):
            m = {s["metric"]: s for s in out[i]}
            assert set(m) == {"dreamsim_ref", "dreamsim_src"}
            d_src = float(model(preprocess(im), preprocess(source)))
            d_ref = np.mean([float(model(preprocess(im), preprocess(Image.open(r)))) for r in refs])
            assert m["dreamsim_src"]["value"] == pytest.approx(d_src, abs=1e-5)
            assert m["dreamsim_ref"]["value"] == pytest.approx(d_ref, abs=1e-5)
            assert m["dreamsim_src"]["backbone"].startswith(
                f"dreamsim:{DEMO_TYPE}:{DEMO_TYPE}_single_lora#sha256:"
            )
    # Distances: an image against itself is 0, different noise images are not.
    same = scorer.score([source], [""], source, [])[0][0]["value"]
    assert same == pytest.approx(0.0, abs=1e-5) and out[0][0]["value"] > 1e-4


def test_missing_weights_are_named_with_the_fix(tmp_path):
    with pytest.raises(ScorerUnavailable) as err:
        load_dreamsim(DreamSimSpec(tmp_path / "empty", "ensemble"))
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg and "ensemble_lora" in msg and "MTP_DREAMSIM_DIR" in msg
    assert "https://" in msg  # where to download the checkpoint from
    assert not (tmp_path / "empty").exists()  # no download was attempted into it


def test_weights_folder_comes_from_the_environment_or_the_data_folder(tmp_path, monkeypatch):
    from store.paths import Home

    home = Home.resolve(tmp_path / "home")
    monkeypatch.delenv("MTP_DREAMSIM_DIR", raising=False)
    assert DreamSimSpec.for_home(home, demo=False) == DreamSimSpec(
        home.models / "dreamsim", "ensemble"
    )
    monkeypatch.setenv("MTP_DREAMSIM_DIR", str(tmp_path / "ds"))
    assert DreamSimSpec.for_home(home, demo=False).cache_dir == tmp_path / "ds"
    with pytest.raises(ScorerUnavailable, match=str(tmp_path / "ds")):
        Scorer.for_home(home, demo=False, families=("dreamsim",))
