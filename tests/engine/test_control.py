"""ControlSpec / MaskSpec: schedules, validation messages, Run columns, no torch import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.control import ControlError, ControlSpec, MaskSpec
from store.sweep.grammar import SD15_BLOCKS


def test_defaults_are_masactrl():
    spec = ControlSpec()
    assert spec.steps(50) == frozenset(range(4, 50))
    assert spec.layer_indices(SD15_BLOCKS) == frozenset(range(10, 16))
    assert spec.mask.mode == "off" and spec.mask.threshold == 0.1


@pytest.mark.parametrize(
    "kwargs, n, expected",
    [
        (dict(start_step=4, final_step=8), 10, {4, 5, 6, 7}),
        (dict(start_step=0, skip_interval=2), 7, {0, 2, 4, 6}),
        (dict(start_step=3, final_step=10, skip_interval=3), 10, {3, 6, 9}),
        (dict(start_step=0), 3, {0, 1, 2}),
    ],
)
def test_steps(kwargs, n, expected):
    assert ControlSpec(**kwargs).steps(n) == frozenset(expected)


def test_layer_sets():
    assert ControlSpec(layers="encoder").layer_indices(SD15_BLOCKS) == frozenset(range(6))
    assert ControlSpec(layers="decoder").layer_indices(SD15_BLOCKS) == frozenset(range(7, 16))
    assert ControlSpec(layers="up_blocks.3").layer_indices(SD15_BLOCKS) == frozenset({13, 14, 15})
    assert ControlSpec(layers="{0,2}").layer_indices(SD15_BLOCKS) == frozenset({0, 2})
    assert ControlSpec(layers="mid+0+2").layer_indices(SD15_BLOCKS) == frozenset({0, 2, 6})


@pytest.mark.parametrize(
    "spec, field, fragment",
    [
        (ControlSpec(start_step=5, final_step=5), "final_step", "greater than the start step"),
        (ControlSpec(start_step=6, final_step=3), "final_step", "greater than the start step"),
        (ControlSpec(start_step=10), "start_step", "beyond the run's 10 steps"),
        (ControlSpec(start_step=2, final_step=11), "final_step", "beyond the run's 10 steps"),
        (ControlSpec(start_step=-1), "start_step", "negative"),
        (ControlSpec(skip_interval=0), "skip_interval", "at least 1"),
        (ControlSpec(layers="12-16"), "layers", "beyond this model's 16"),
        (ControlSpec(layers="sideways"), "layers", "unknown layer group"),
        (
            ControlSpec(mask=MaskSpec(mode="auto", threshold=1.0)),
            "mask_threshold",
            "between 0 and 1",
        ),
        (
            ControlSpec(mask=MaskSpec(mode="auto", threshold=0.0)),
            "mask_threshold",
            "between 0 and 1",
        ),
        (
            ControlSpec(mask=MaskSpec(mode="auto", words=("cat",))),
            "mask_words",
            "'cat' not in the prompt",
        ),
        (ControlSpec(mask=MaskSpec(mode="auto", layers="40")), "mask_layers", "beyond"),
        (ControlSpec(mask=MaskSpec(mode="sometimes")), "mask_mode", "not one of"),
        (ControlSpec(mask=MaskSpec(mode="auto", timing="later")), "mask_timing", "not one of"),
        (ControlSpec(mask=MaskSpec(mode="image")), "mask_image", "needs a mask image"),
    ],
)
def test_validation_messages(spec, field, fragment):
    with pytest.raises(ControlError) as info:
        spec.validate(10, SD15_BLOCKS, prompt="a corgi, on the beach")
    assert info.value.field == field
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_valid_specs_pass():
    ControlSpec().validate(50, SD15_BLOCKS)
    ControlSpec(start_step=0, final_step=1).validate(1, SD15_BLOCKS)
    mask = MaskSpec(mode="auto", words=("Corgi", "beach"), threshold=None, timing="previous")
    ControlSpec(mask=mask).validate(50, SD15_BLOCKS, prompt="a corgi, on the beach")


def test_from_fields_reads_run_columns():
    spec = ControlSpec.from_fields(
        layers="decoder",
        start_step=2,
        final_step=20,
        skip_interval=3,
        mask_mode="auto",
        mask_layers="up_blocks.1",
        mask_words="corgi hat",
        mask_threshold=None,
        mask_timing="previous",
        target_prompt="ignored column",
        seed=7,
    )
    assert spec == ControlSpec(
        layers="decoder",
        start_step=2,
        final_step=20,
        skip_interval=3,
        mask=MaskSpec(
            mode="auto",
            layers="up_blocks.1",
            words=("corgi", "hat"),
            threshold=None,
            timing="previous",
        ),
    )
    blank = ControlSpec.from_fields(
        layers="",
        start_step=4,
        final_step=50,
        skip_interval=1,
        mask_mode="off",
        mask_layers="",
        mask_words="",
        mask_threshold=0.2,
        mask_timing="",
    )
    assert blank.layers == "10-15" and blank.mask.layers == "all" and blank.mask.threshold == 0.2
    assert blank.mask.words == () and blank.mask.timing == "current"


def test_specs_are_frozen_and_hashable():
    spec = ControlSpec()
    with pytest.raises(AttributeError):
        spec.start_step = 3  # type: ignore[misc]
    assert hash(spec) == hash(ControlSpec())


def test_control_module_imports_no_torch():
    code = "import engine.control, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
