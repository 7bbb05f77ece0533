"""The sweep grammar: what a researcher types into an axis field.

Pure Python (no torch, no Textual): the TUI validates while the user types, the store expands
grids with it, and the engine resolves layer sets with it.

Value lists (comma separated; every item may be a range):
    20,25,50            values
    4-20                inclusive integer range
    4-50 (+5)  4:50:5   stepped range (the end is included when the step lands on it)
    0.1-0.5 [5]         count range: 5 evenly spaced values, both ends included
    encoder,decoder     enum values
Layer sets (one value of a layer axis; commas separate values, so a set of several items goes
in braces or is joined with '+'):
    encoder decoder mid all     named groups of transformer blocks
    10-15  7                    execution-order indices (SD1.x: 0-5 encoder, 6 mid, 7-15 decoder)
    up_blocks.3                 every block under a module path
    {0,2,4}  up_blocks.2+14     unions
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from ..errors import InputError


class SweepError(InputError):
    """A parse or validation error that names the field, the offending text and its position."""

    def __init__(self, field: str, text: str, pos: int, message: str):
        self.field = field
        self.text = text
        self.pos = pos
        self.message = message
        pointer = f" at position {pos}" if pos >= 0 else ""
        super().__init__(f"{field}: {message}{pointer} in {text!r}")


# --------------------------------------------------------------------------- topologies
def _sd15_blocks() -> list[str]:
    out = []
    for block in range(3):
        for att in range(2):
            out.append(f"down_blocks.{block}.attentions.{att}.transformer_blocks.0")
    out.append("mid_block.attentions.0.transformer_blocks.0")
    for block in range(1, 4):
        for att in range(3):
            out.append(f"up_blocks.{block}.attentions.{att}.transformer_blocks.0")
    return out


def _sdxl_blocks() -> list[str]:
    out = []
    for block, depth in ((1, 2), (2, 10)):
        for att in range(2):
            out += [
                f"down_blocks.{block}.attentions.{att}.transformer_blocks.{t}" for t in range(depth)
            ]
    out += [f"mid_block.attentions.0.transformer_blocks.{t}" for t in range(10)]
    for block, depth in ((0, 10), (1, 2)):
        for att in range(3):
            out += [
                f"up_blocks.{block}.attentions.{att}.transformer_blocks.{t}" for t in range(depth)
            ]
    return out


SD15_BLOCKS: list[str] = _sd15_blocks()
SDXL_BLOCKS: list[str] = _sdxl_blocks()
LAYER_GROUPS = {
    "encoder": "down_blocks",
    "decoder": "up_blocks",
    "mid": "mid_block",
}


def blocks_for_model(model: str) -> list[str]:
    """Best guess of a model's block list before it is loaded (the engine uses the real one)."""
    return SDXL_BLOCKS if "xl" in (model or "").lower() else SD15_BLOCKS


# --------------------------------------------------------------------------- value lists
_NUM = r"[+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE = re.compile(
    rf"^(?P<a>{_NUM})\s*-\s*(?P<b>{_NUM})\s*(?:\(\s*(?P<step>[+-]\s*{_NUM})\s*\)|\[\s*(?P<count>\d+)\s*\])?$"
)
_COLON = re.compile(rf"^(?P<a>{_NUM})\s*:\s*(?P<b>{_NUM})\s*:\s*(?P<step>[+-]?\s*{_NUM})$")
_MAX_VALUES = 10_000


def split_items(text: str, field: str) -> list[tuple[str, int]]:
    """Split on top-level commas (commas inside {} () [] stay), keeping each item's position."""
    items: list[tuple[str, int]] = []
    depth = 0
    start = 0
    openers, closers = "{([", "})]"
    for i, ch in enumerate(text):
        if ch in openers:
            depth += 1
        elif ch in closers:
            depth -= 1
            if depth < 0:
                raise SweepError(field, text, i, f"unmatched {ch!r}")
        elif ch == "," and depth == 0:
            items.append((text[start:i], start))
            start = i + 1
    if depth != 0:
        raise SweepError(field, text, len(text), "unclosed bracket")
    items.append((text[start:], start))
    out = []
    for item, pos in items:
        stripped = item.strip()
        lead = len(item) - len(item.lstrip())
        if not stripped:
            raise SweepError(
                field, text, pos + lead, "empty value (two commas in a row, or a trailing comma?)"
            )
        out.append((stripped, pos + lead))
    return out


def _number(raw: str, kind: str, field: str, text: str, pos: int) -> float | int:
    raw = raw.replace(" ", "").lstrip("+")
    if kind == "int":
        # Decimal, never float: seeds are 64-bit and a float keeps only 53 bits of them.
        try:
            exact = Decimal(raw)
        except InvalidOperation:
            raise SweepError(field, text, pos, f"{raw!r} is not a number") from None
        if not exact.is_finite():
            raise SweepError(field, text, pos, f"{raw!r} is not a finite number")
        if exact.adjusted() > 40:  # '1e999999' would build a huge int before any bound check
            raise SweepError(field, text, pos, f"{raw!r} is far too large")
        if exact != exact.to_integral_value():
            raise SweepError(field, text, pos, f"{raw!r} is not a whole number")
        return int(exact)
    try:
        value = float(raw)
    except ValueError:
        raise SweepError(field, text, pos, f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise SweepError(field, text, pos, f"{raw!r} is not a finite number")
    return value


def _expand_range(m: re.Match, kind: str, field: str, text: str, pos: int) -> list:
    a = _number(m["a"], kind, field, text, pos)
    b = _number(m["b"], kind, field, text, pos)
    if m.groupdict().get("count"):
        count = int(m["count"])
        if count < 1:
            raise SweepError(field, text, pos, "a count range needs at least 1 value")
        if kind == "int":
            # Exact fractions: large whole numbers stay exact.
            ints = (
                [a]
                if count == 1
                else [int(round(a + Fraction(b - a) * i / (count - 1))) for i in range(count)]
            )
            if len(set(ints)) != len(ints):
                raise SweepError(
                    field, text, pos, f"{count} whole numbers do not fit between {a} and {b}"
                )
            return ints
        values = [a] if count == 1 else [a + (b - a) * i / (count - 1) for i in range(count)]
        return [round(v, 10) for v in values]
    step_raw = m["step"]
    if step_raw is None:
        if kind != "int":
            raise SweepError(
                field, text, pos, "a decimal range needs a step '(+0.1)' or a count '[5]'"
            )
        step: float | int = 1 if b >= a else -1
    else:
        step = _number(step_raw.replace("-", ""), kind, field, text, pos)
        if step_raw.replace(" ", "").startswith("-"):
            step = -step
    if step == 0:
        raise SweepError(field, text, pos, "the step of a range cannot be 0")
    if (b - a) * step < 0:
        raise SweepError(field, text, pos, f"a step of {step} never goes from {a} to {b}")
    n = int((b - a) // step) + 1 if kind == "int" else int(math.floor((b - a) / step + 1e-9)) + 1
    if n > _MAX_VALUES:
        raise SweepError(field, text, pos, f"range has {n} values (more than {_MAX_VALUES})")
    values = [a + i * step for i in range(n)]
    return values if kind == "int" else [round(v, 10) for v in values]


def _show(bound: float | int) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


@dataclass(frozen=True)
class Axis:
    """How one field's text is read: kind is int, float, enum, layers or text."""

    name: str
    kind: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    specials: tuple[str, ...] = ()  # words accepted as-is in a numeric field ("end", "otsu")


def parse_values(axis: Axis, text: str) -> list:
    """Parse one axis field into its list of values (duplicates removed, order kept)."""
    field = axis.name
    if text is None or not str(text).strip():
        raise SweepError(field, text or "", 0, "needs at least one value")
    text = str(text)
    values: list = []
    positions: list[int] = []
    for item, pos in split_items(text, field):
        lowered = item.lower()
        before = len(values)
        if lowered in axis.specials:
            values.append(lowered)
        elif axis.kind == "enum":
            if lowered not in axis.choices:
                raise SweepError(
                    field, text, pos, f"{item!r} is not one of {', '.join(axis.choices)}"
                )
            values.append(lowered)
        elif axis.kind == "layers":
            values.append(parse_layer_set(item, field=field, text=text, offset=pos))
        elif axis.kind == "text":
            values.append(" ".join(item.split()))
        elif axis.kind in ("int", "float"):
            m = _RANGE.match(item) or _COLON.match(item)
            if m:
                values.extend(_expand_range(m, axis.kind, field, text, pos))
            else:
                values.append(_number(item, axis.kind, field, text, pos))
        else:  # pragma: no cover - a programming error, not user input
            raise ValueError(f"unknown axis kind {axis.kind}")
        positions.extend([pos] * (len(values) - before))
    for v, pos in zip(values, positions):
        if isinstance(v, str):
            continue
        if axis.minimum is not None and v < axis.minimum:
            raise SweepError(field, text, pos, f"{v} is below the minimum {_show(axis.minimum)}")
        if axis.maximum is not None and v > axis.maximum:
            raise SweepError(field, text, pos, f"{v} is above the maximum {_show(axis.maximum)}")
    # dict keeps first-seen order; a list scan here was quadratic (1 s for seeds 0-9999).
    seen = list(dict.fromkeys(values))
    if len(seen) > _MAX_VALUES:
        raise SweepError(field, text, 0, f"{len(seen)} values (more than {_MAX_VALUES})")
    return seen


# --------------------------------------------------------------------------- layer sets
_LAYER_TERM = re.compile(
    r"^(?:(?P<a>\d+)(?:\s*-\s*(?P<b>\d+))?|(?P<name>[a-z]+)|(?P<path>[a-z_]+(?:\.[a-z_0-9]+)+))$"
)


def parse_layer_set(
    item: str, field: str = "layers", text: str | None = None, offset: int = 0
) -> str:
    """Check one layer-set expression's syntax and return its canonical text."""
    text = item if text is None else text
    item = item.strip()
    if item.startswith("{"):
        if not item.endswith("}"):
            raise SweepError(
                field, text, offset + len(item), "a layer set opened with '{' must end with '}'"
            )
        inner = item[1:-1]
        if not inner.strip():
            raise SweepError(field, text, offset, "empty layer set '{}'")
        parts = [
            parse_layer_set(p, field, text, offset + 1 + pos)
            for p, pos in split_items(inner, field)
        ]
        return "{" + ",".join(parts) + "}"
    terms = []
    pos = offset
    for raw in item.split("+"):
        term = raw.strip().lower()
        m = _LAYER_TERM.match(term)
        if not term or not m:
            raise SweepError(
                field,
                text,
                pos,
                f"{raw.strip()!r} is not a layer set (use encoder, decoder, mid, all, 10-15, up_blocks.3 or {{0,2,4}})",
            )
        if m["name"] and m["name"] not in LAYER_GROUPS and m["name"] != "all":
            raise SweepError(
                field, text, pos, f"unknown layer group {m['name']!r} (encoder, decoder, mid, all)"
            )
        if m["a"] and m["b"] and int(m["b"]) < int(m["a"]):
            raise SweepError(field, text, pos, f"layer range {term} runs backwards")
        terms.append(term.replace(" ", ""))
        pos += len(raw) + 1
    return "+".join(terms)


def resolve_layer_set(expr: str, blocks: Sequence[str], field: str = "layers") -> tuple[int, ...]:
    """Turn a layer-set expression into sorted execution-order block indices."""
    canon = parse_layer_set(expr, field=field)
    found: set[int] = set()
    body = canon[1:-1] if canon.startswith("{") else canon
    for part, _ in split_items(body, field):
        if part.startswith("{"):
            found.update(resolve_layer_set(part, blocks, field))
            continue
        for term in part.split("+"):
            m = _LAYER_TERM.match(term)
            assert m is not None  # parse_layer_set accepted every term
            if m["a"]:
                a = int(m["a"])
                b = int(m["b"]) if m["b"] else a
                if b >= len(blocks):
                    raise SweepError(
                        field,
                        expr,
                        expr.find(term),
                        f"layer {b} is beyond this model's {len(blocks)} transformer blocks (0-{len(blocks) - 1})",
                    )
                found.update(range(a, b + 1))
            elif m["name"] == "all":
                found.update(range(len(blocks)))
            elif m["name"]:
                prefix = LAYER_GROUPS[m["name"]]
                found.update(i for i, p in enumerate(blocks) if p.startswith(prefix + "."))
            else:
                path = m["path"]
                hits = [i for i, p in enumerate(blocks) if p == path or p.startswith(path + ".")]
                if not hits:
                    raise SweepError(
                        field,
                        expr,
                        expr.find(term),
                        f"no transformer block under {path!r} in this model",
                    )
                found.update(hits)
    return tuple(sorted(found))


def prompt_words(prompt: str) -> list[str]:
    """Words a mask word may name: each whitespace word lowercased, as written and without
    surrounding punctuation ("corgi," matches "corgi"; "<sks>" matches itself)."""
    out: list[str] = []
    for raw in prompt.split():
        for w in (raw.lower(), raw.strip(string.punctuation).lower()):
            if w and w not in out:
                out.append(w)
    return out
