import pytest

from store.sweep.grammar import (
    SD15_BLOCKS,
    SDXL_BLOCKS,
    Axis,
    SweepError,
    blocks_for_model,
    parse_layer_set,
    parse_values,
    resolve_layer_set,
)

INT = Axis("final_step", "int", minimum=1, specials=("end",))
FLOAT = Axis("mask_threshold", "float", minimum=0, maximum=1, specials=("otsu",))
ENUM = Axis("mask_mode", "enum", choices=("off", "auto", "image"))
LAYERS = Axis("layers", "layers")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("20,25,50", [20, 25, 50]),
        ("4-20", list(range(4, 21))),
        ("4-50 (+5)", list(range(4, 51, 5))),
        ("4:50:5", list(range(4, 51, 5))),
        ("50-10 (-20)", [50, 30, 10]),
        ("4-8, 20, 30-50 (+10)", [4, 5, 6, 7, 8, 20, 30, 40, 50]),
        ("10, end", [10, "end"]),
        ("5,5,6", [5, 6]),
        (" 7 ", [7]),
    ],
)
def test_int_forms(text, expected):
    assert parse_values(INT, text) == expected


def test_count_range_and_float_forms():
    assert parse_values(FLOAT, "0.1-0.5 [5]") == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert parse_values(FLOAT, "0.1-0.3 (+0.1)") == [0.1, 0.2, 0.3]
    assert parse_values(FLOAT, "0.2, otsu") == [0.2, "otsu"]
    assert parse_values(Axis("n", "int"), "0-100 [3]") == [0, 50, 100]


def test_enum_and_layers():
    assert parse_values(ENUM, "off,AUTO") == ["off", "auto"]
    assert parse_values(LAYERS, "encoder,decoder") == ["encoder", "decoder"]
    assert parse_values(LAYERS, "{0,2,4}, 10-15, up_blocks.3, mid+2, all") == [
        "{0,2,4}",
        "10-15",
        "up_blocks.3",
        "mid+2",
        "all",
    ]


@pytest.mark.parametrize(
    "expr,expected",
    [
        ("encoder", tuple(range(0, 6))),
        ("decoder", tuple(range(7, 16))),
        ("mid", (6,)),
        ("all", tuple(range(16))),
        ("10-15", tuple(range(10, 16))),
        ("7", (7,)),
        ("up_blocks.3", (13, 14, 15)),
        ("up_blocks.1.attentions.2", (9,)),
        ("{0,2,4}", (0, 2, 4)),
        ("mid+2", (2, 6)),
        ("{encoder,14}", (0, 1, 2, 3, 4, 5, 14)),
    ],
)
def test_layer_sets_resolve_on_sd15(expr, expected):
    assert resolve_layer_set(expr, SD15_BLOCKS) == expected


def test_sd15_and_sdxl_topologies():
    assert len(SD15_BLOCKS) == 16 and len(SDXL_BLOCKS) == 70
    assert SD15_BLOCKS[6].startswith("mid_block") and SD15_BLOCKS[7].startswith("up_blocks.1")
    assert resolve_layer_set("mid", SDXL_BLOCKS) == tuple(range(24, 34))
    assert resolve_layer_set("decoder", SDXL_BLOCKS) == tuple(range(34, 70))
    assert blocks_for_model("stabilityai/stable-diffusion-xl-base-1.0") is SDXL_BLOCKS
    assert blocks_for_model("runwayml/stable-diffusion-v1-5") is SD15_BLOCKS


@pytest.mark.parametrize(
    "axis,text,pos,fragment",
    [
        (INT, "", 0, "at least one value"),
        (INT, "4-", 0, "not a number"),
        (INT, "1,,2", 2, "empty value"),
        (INT, "10, abc", 4, "'abc' is not a number"),
        (INT, "2.5", 0, "not a whole number"),
        (INT, "5-1 (+1)", 0, "never goes"),
        (INT, "4:50:0", 0, "cannot be 0"),
        (INT, "0", 0, "below the minimum"),
        (FLOAT, "0.1-0.5", 0, "needs a step"),
        (FLOAT, "0.5, 2", 5, "above the maximum"),
        (ENUM, "off,sometimes", 4, "not one of"),
        (LAYERS, "decoder, banana", 9, "unknown layer group"),
        (LAYERS, "{1,2", 4, "unclosed"),
        (LAYERS, "9-3", 0, "runs backwards"),
        (INT, "1-100000", 0, "more than"),
    ],
)
def test_errors_name_field_text_and_position(axis, text, pos, fragment):
    with pytest.raises(SweepError) as info:
        parse_values(axis, text)
    err = info.value
    assert err.field == axis.name
    assert err.text == text
    assert err.pos == pos
    assert fragment in str(err)


def test_layer_resolution_errors():
    with pytest.raises(SweepError, match="beyond this model's 16"):
        resolve_layer_set("12-16", SD15_BLOCKS)
    with pytest.raises(SweepError, match="no transformer block under 'up_blocks.0'"):
        resolve_layer_set("up_blocks.0", SD15_BLOCKS)  # SD1.5's first up block has no attention
    with pytest.raises(SweepError):
        parse_layer_set("{}")
