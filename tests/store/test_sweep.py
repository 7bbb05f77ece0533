import pytest

from store.sweep.grammar import SweepError
from store.sweep.spec import PRESETS, ExperimentSpec, expand, group_key, swept_axes


def spec(**kw):
    base = dict(
        target_prompts=["a dog on the beach", "a dog in the snow"], num_steps=50, seeds="0,1"
    )
    base.update(kw)
    return ExperimentSpec(**base)


def test_grid_is_cartesian_with_one_baseline_per_prompt_and_seed():
    s = spec(layers="encoder,decoder", final_step="20,25,end", skip_interval="1,2")
    rows = expand(s)
    controlled = [r for r in rows if not r["is_baseline"]]
    baselines = [r for r in rows if r["is_baseline"]]
    assert len(baselines) == 2 * 2
    assert len(controlled) == 2 * 2 * 2 * 3 * 2
    combos = {
        (r["target_prompt"], r["seed"], r["layers"], r["final_step"], r["skip_interval"])
        for r in controlled
    }
    assert len(combos) == len(controlled)  # no duplicates
    assert {r["final_step"] for r in controlled} == {20, 25, 50}  # 'end' is num_steps
    assert [r["grid_index"] for r in rows] == list(range(len(rows)))


def test_group_key_shares_source_across_control_and_prompt_but_not_seed():
    rows = expand(spec(final_step="20,end"))
    keys_by_seed = {}
    for r in rows:
        keys_by_seed.setdefault(r["seed"], set()).add(r["group_key"])
    assert all(len(k) == 1 for k in keys_by_seed.values())
    assert keys_by_seed[0] != keys_by_seed[1]
    assert group_key(dict(rows[0], guidance=3.0)) != rows[0]["group_key"]


def test_mask_axes_collapse_when_mask_is_off():
    rows = expand(
        spec(
            mask_mode="off,auto",
            mask_threshold="0.1,0.3,otsu",
            mask_words="dog",
            seeds="0",
            target_prompts=["a dog on the beach"],
            baseline=False,
        )
    )
    off = [r for r in rows if r["mask_mode"] == "off"]
    auto = [r for r in rows if r["mask_mode"] == "auto"]
    assert len(off) == 1 and len(auto) == 3
    assert {r["mask_threshold"] for r in auto} == {0.1, 0.3, None}  # None = Otsu


@pytest.mark.parametrize(
    "kw,field,fragment",
    [
        (dict(start_step="30", final_step="20"), "start_step", "not before final step 20"),
        (dict(final_step="60"), "final_step", "beyond the 50"),
        (dict(start_step="50"), "start_step", "not before the 50"),
        (dict(layers="decoder,16"), "layers", "beyond this model's 16"),
        (dict(target_prompts=["  "]), "target_prompts", "at least one"),
        (dict(width=500), "width", "multiple of 8"),
        (dict(mask_mode="auto", mask_words="cat"), "mask_words", "not in the prompt"),
        (dict(mask_mode="auto", mask_words="beach"), "mask_words", "not in the source prompt"),
        (dict(model="/no/such/model-folder"), "model", "does not exist"),
        (dict(skip_interval="0"), "skip_interval", "below the minimum"),
        (dict(seeds="a"), "seeds", "not a number"),
    ],
)
def test_bad_sweeps_name_the_field(kw, field, fragment):
    with pytest.raises(SweepError) as info:
        expand(spec(**kw))
    assert info.value.field == field
    assert fragment in str(info.value)


def test_presets_reproduce_the_four_seed_sweeps():
    assert len(PRESETS) == 4
    for axes in PRESETS.values():
        s = spec(**axes)
        assert expand(s)
        assert len(swept_axes(s)) >= 2  # the swept axis plus target_prompt


def test_spec_json_round_trip():
    s = spec(layers="{0,2},decoder", mask_mode="auto", mask_words="dog")
    assert ExperimentSpec.from_json(s.to_json()) == s
    # unknown keys from a newer version are ignored rather than crashing
    assert ExperimentSpec.from_json(dict(s.__dict__, future_field=1)) == s


def test_mask_words_match_like_the_engine_does():
    # "corgi," in the prompt is the word "corgi" for the sweep check and for the engine alike.
    rows = expand(
        spec(
            target_prompts=["a corgi, on the beach"],
            source_prompt="a photo of a corgi.",
            mask_mode="auto",
            mask_words="corgi",
            seeds="0",
            baseline=False,
        )
    )
    assert rows and rows[0]["mask_words"] == "corgi"


def test_mask_words_are_checked_against_source_and_target_by_one_rule():
    """The builder, the CLI and the engine's ControlSpec refuse the same prompt pairs."""
    from engine.control import ControlError, ControlSpec, MaskSpec
    from store.sweep.grammar import blocks_for_model
    from store.sweep.spec import mask_word_problem

    ok = spec(
        source_prompt="a photo of a dog",
        target_prompts=["a dog on the beach"],
        mask_mode="auto",
        mask_words="dog",
        seeds="0",
    )
    assert expand(ok)
    control = ControlSpec(mask=MaskSpec(mode="auto", words=("beach",)))
    blocks = blocks_for_model("")
    with pytest.raises(SweepError) as info:
        expand(
            spec(
                source_prompt="a photo of a dog",
                target_prompts=["a dog on the beach"],
                mask_mode="auto",
                mask_words="beach",
                seeds="0",
            )
        )
    with pytest.raises(ControlError) as cinfo:
        control.validate(50, blocks, "a dog on the beach", "a photo of a dog")
    assert info.value.message == cinfo.value.message
    assert "source prompt" in info.value.message
    assert mask_word_problem("dog", "a dog on the beach", "a photo of a dog") is None
