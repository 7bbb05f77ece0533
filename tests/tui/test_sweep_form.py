"""The sweep builder's form model without its widgets: texts -> spec -> texts."""

from __future__ import annotations

import pytest

from store.sweep.spec import ExperimentSpec
from tui.screens.sweep_form import (
    BaseFieldError,
    field_texts,
    param_field_name,
    read_spec,
)

NAMES = [
    "name",
    "model",
    "source_prompt",
    "source_image",
    "inversion_guidance",
    "num_steps",
    "guidance",
    "width",
    "height",
    "method",
    "seeds",
    "layers",
    "start_step",
    "final_step",
    "skip_interval",
    "mask_mode",
    "mask_layers",
    "mask_words",
    "mask_threshold",
    "mask_timing",
]


def test_a_spec_shown_in_the_form_reads_back_as_the_same_spec():
    spec = ExperimentSpec(
        model="tiny",
        source_prompt="a photo of a corgi",
        target_prompts=["a corgi on the beach", "a corgi in the snow"],
        num_steps=10,
        guidance=5.0,
        width=64,
        height=64,
        seeds="0-3",
        layers="encoder,decoder",
        final_step="4,end",
        method="masactrl,consistory",
        method_params={"consistory": {"mask_dropout": "0,0.5"}},
    )
    texts = field_texts(spec, NAMES)
    assert "name" not in texts and texts["num_steps"] == "10" and texts["source_image"] == ""
    texts["name"] = "fs"
    texts[param_field_name("consistory", "mask_dropout")] = "0,0.5"
    back = read_spec(texts, "a corgi on the beach\n\n a corgi in the snow ", True, ["consistory"])
    assert back.to_json() == spec.to_json()


def test_a_base_field_that_is_no_number_names_its_field():
    texts = field_texts(ExperimentSpec(), NAMES)
    texts["num_steps"] = "ten"
    with pytest.raises(BaseFieldError) as err:
        read_spec(texts, "a dog", True)
    assert err.value.field == "num_steps" and "'ten' is not a whole number" in str(err.value)


def test_parameters_count_only_for_the_methods_chosen():
    texts = field_texts(ExperimentSpec(), NAMES)
    texts[param_field_name("consistory", "n_anchors")] = "3"
    texts[param_field_name("consistent_sa", "sa_rate_low")] = "1"
    spec = read_spec(texts, "a dog", True, ["consistent_sa"])
    assert spec.method_params == {"consistent_sa": {"sa_rate_low": "1"}}
