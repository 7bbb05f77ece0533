"""What mtp accepts as an image (store.images): shapes, paths that are not files, and the bounded
reading every engine read goes through."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from PIL import Image

from store import images
from store.images import (
    MAX_ASPECT,
    MAX_WORK_SIDE,
    MIN_SIDE,
    InputError,
    bounded,
    check_image,
    crop_aspect,
    image_problem,
    open_bounded,
)
from store.queries import save_concept, save_experiment
from store.sweep.spec import ExperimentSpec


def noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert(mode)


# ------------------------------------------------------------------ shapes
@pytest.mark.parametrize(
    "size, ok",
    [
        ((MIN_SIDE, MIN_SIDE), True),
        ((MIN_SIDE * MAX_ASPECT, MIN_SIDE), True),  # the narrowest sliver accepted
        ((MIN_SIDE, MIN_SIDE * MAX_ASPECT), True),
        ((MIN_SIDE - 1, 64), False),
        ((MIN_SIDE * MAX_ASPECT + 1, MIN_SIDE), False),
        ((400, 50), True),
        ((401, 50), False),
        ((30000, 1), False),  # passed the pixel cap alone, then took an engine to 8.5 GB
        ((1, 30000), False),
    ],
)
def test_degenerate_shapes_are_refused_with_the_shape_and_the_rule(tmp_path, size, ok):
    path = tmp_path / "img.png"
    Image.new("RGB", size).save(path)
    if ok:
        check_image(path)
        return
    with pytest.raises(InputError) as err:
        check_image(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a usable image shape ({size[0]}x{size[1]} pixels)"), msg
    assert f"at least {MIN_SIDE} pixels" in msg and f"at most {MAX_ASPECT} times" in msg


def test_generated_images_skip_the_shape_rule_but_not_the_pixel_cap(tmp_path):
    path = tmp_path / "gen.png"
    Image.new("RGB", (8, 512)).save(path)  # a size a sweep may ask for
    assert "not a usable image shape" in image_problem(path)
    assert image_problem(path, shape=False) is None


def test_concepts_and_sources_refuse_an_extreme_image(store, tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (30000, 1)).save(thin)
    with pytest.raises(InputError, match=r"thin.png: not a usable image shape \(30000x1"):
        save_concept(store, "c", ref_images=[thin], base_model="org/model")
    spec = ExperimentSpec(model="org/model", source_image=str(thin), target_prompts=["a dog"])
    with pytest.raises(InputError, match=r"source image: .*thin.png: not a usable image shape"):
        save_experiment(store, "e", spec)


# ------------------------------------------------------------------ not a file
def _no_hang(fn, *args):
    """fn(*args) in a thread, failing (not hanging) the test if it blocks, as opening a FIFO does."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), f"{fn.__name__} blocked on {args}"
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_paths_that_are_not_files_say_what_they_are(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    expected = {
        "pipe.png": "is a FIFO (named pipe), not an image file",
        "zero.png": "is a symbolic link to /dev/zero, a character device, not an image file",
        "folder.png": "is a folder, not an image file",
        "dangling.png": f"is a symbolic link to {tmp_path / 'gone.png'}, which does not exist",
        "missing.png": "no such file",
    }
    for name, says in expected.items():
        path = tmp_path / name
        assert _no_hang(image_problem, path) == f"{path}: {says}"
        with pytest.raises(InputError, match="not an image file|does not exist|no such file"):
            _no_hang(open_bounded, path)
    assert (
        _no_hang(image_problem, "/dev/null")
        == "/dev/null: is a character device, not an image file"
    )
    assert image_problem("") == "no image file given"


def test_concept_and_source_refuse_a_fifo_without_opening_it(store, tmp_path):
    os.mkfifo(tmp_path / "ref.png")
    with pytest.raises(InputError, match="ref.png: is a FIFO"):
        _no_hang(save_concept, store, "c", "", "", [tmp_path / "ref.png"], None, "none", "org/m")
    spec = ExperimentSpec(
        model="org/model", source_image=str(tmp_path / "ref.png"), target_prompts=["a dog"]
    )
    with pytest.raises(InputError, match="source image: .*ref.png: is a FIFO"):
        _no_hang(save_experiment, store, "e", spec)


# ------------------------------------------------------------------ bounded reading
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "CMYK"])
def test_images_within_the_bound_read_exactly_as_before(tmp_path, mode):
    path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.png")
    noise(640, 480, mode).save(path)
    with Image.open(path) as im:
        before = im.convert("RGB")
    got = open_bounded(path)
    assert got.size == before.size and got.tobytes() == before.tobytes()


def test_a_large_image_is_read_averaged_down_within_the_bound(tmp_path):
    path = tmp_path / "big.png"
    big = noise(MAX_WORK_SIDE * 2 + 8, 520, "RGBA")
    big.save(path, compress_level=1)
    got = open_bounded(path)
    assert max(got.size) <= MAX_WORK_SIDE and got.mode == "RGB"
    # the same pixels as a box average of the whole image (3x3 blocks, rounded up at the edge)
    assert got.tobytes() == big.convert("RGB").reduce(3).tobytes()


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    path = tmp_path / "big.jpg"
    noise(MAX_WORK_SIDE * 4, 1000).save(path, quality=90)
    from PIL import ImageFile

    loaded = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    got = open_bounded(path)
    assert max(got.size) <= MAX_WORK_SIDE
    assert loaded and max(loaded[0]) <= MAX_WORK_SIDE * 2  # never decoded at full size
    # close to an exact resize of the full image (a thumbnail, not a crop or a shift)
    with Image.open(path) as im:
        exact = im.convert("RGB").resize(got.size, Image.Resampling.BOX)
    diff = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(exact, dtype=np.int16))
    assert diff.mean() < 4, diff.mean()


def test_strips_add_up_to_the_whole_image(monkeypatch):
    monkeypatch.setattr(images, "_STRIP_BYTES", 4096)  # many strips, one partial at the bottom
    im = noise(1000, 307, "RGBA", seed=3)
    got = images._reduce_in_strips(im, "RGB", 100)
    assert got.tobytes() == im.convert("RGB").reduce(10).tobytes()


def test_bounded_and_crop_leave_normal_images_alone():
    im = noise(512, 64)
    assert bounded(im) is im and crop_aspect(im) is im
    tall = noise(16, 4096)
    cropped = crop_aspect(tall)
    assert cropped.size == (16, 16 * MAX_ASPECT)
    assert cropped.tobytes() == tall.crop((0, 2048 - 64, 16, 2048 + 64)).tobytes()


def test_mtp_says_what_a_bad_reference_is(capsys, home, tmp_path):
    from tui.cli.main import main

    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    thin = tmp_path / "thin.png"
    Image.new("RGB", (30000, 1)).save(thin)
    for image, says in (
        (tmp_path / "pipe.png", "is a FIFO (named pipe), not an image file"),
        (tmp_path / "zero.png", "is a symbolic link to /dev/zero, a character device"),
        (thin, "not a usable image shape (30000x1 pixels)"),
    ):
        argv = ["--home", str(home.root), "concept", "add", "c", "--image", str(image)]
        code = _no_hang(main, argv + ["--model", "org/model"])
        err = capsys.readouterr().err
        assert code != 0 and says in err and "no such file" not in err, err
