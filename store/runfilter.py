"""The runs filter grammar, shared by the runs browser (`/`) and `mtp runs --where`.

    status=failed,done  seed=1  final_step>5  final=end  thr=otsu  clip_t>=0.3  tag=good  beach

A term with an operator (= != > >= < <=) compares a field; the field is a run column or the
header the runs browser shows for it (final, start, skip, mask, thr, time, exp), a score
(clip_t, dino_ref, ...), or status / tag / marked / baseline. `=` and `!=` take a comma list.
`end` is the run's number of steps (final_step=end: controlled through the last step); `otsu`
is a mask threshold chosen by Otsu's method (stored as no threshold, with the mask on).
Words without an operator search prompts, layers, tags, notes and errors. Anything else is an
error pointing at the character where reading stopped: a filter is never silently a search.
Pure Python: `store.queries` turns the parsed terms into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .models import RUN_SORT_COLUMNS, Run
from .queries import InputError, RunFilter
from .scoring import FAMILY_METRICS

SCORE_METRICS = tuple(m for metrics in FAMILY_METRICS.values() for m in metrics)
# The runs browser's column headers (and a few spellings) -> the field they show.
ALIASES = {
    "exp": "experiment_id",
    "experiment": "experiment_id",
    "final": "final_step",
    "start": "start_step",
    "skip": "skip_interval",
    "mask": "mask_mode",
    "thr": "mask_threshold",
    "threshold": "mask_threshold",
    "time": "duration_s",
    "prompt": "target_prompt",
    "steps": "num_steps",
    "tags": "tag",
    "*": "marked",
}
SPECIAL = ("status", "tag", "marked", "baseline", "experiment_id")
OPERATORS = ("!=", ">=", "<=", "=", ">", "<")
TERM = re.compile(r"([A-Za-z_*][A-Za-z0-9_:]*)\s*(!=|>=|<=|=|>|<)")
ORDERED = (">", ">=", "<", "<=")


class FilterError(InputError):
    """A filter that cannot be read; `pos` is the character where reading stopped."""

    def __init__(self, text: str, pos: int, message: str):
        self.text, self.pos, self.message, self.field = text, pos, message, "filter"
        super().__init__(f"filter: {message}\n  {text}\n  {' ' * pos}^")


@dataclass(frozen=True)
class Compare:
    """`field op value`; value is a number, text, a tuple (for = and != lists), or END / OTSU."""

    field: str
    op: str
    value: object


END, OTSU = "end", "otsu"  # markers for the run's step count and Otsu's threshold


def _tokens(text: str) -> list[tuple[int, str]]:
    """(start, token) pairs split on spaces; quotes group words and are dropped."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start, buf = i, []
        while i < n and not text[i].isspace():
            if text[i] in "\"'":
                quote, j = text[i], text.find(text[i], i + 1)
                if j < 0:
                    raise FilterError(text, i, f"the quote {quote} is never closed")
                buf.append(text[i + 1 : j])
                i = j + 1
            else:
                buf.append(text[i])
                i += 1
        out.append((start, "".join(buf)))
    return out


def _number(kind, value: str, text: str, pos: int, field: str):
    try:
        return kind(value)
    except ValueError:
        name = "whole number" if kind is int else "number"
        raise FilterError(text, pos, f"{field} needs a {name}, not {value!r}") from None


def parse_filter(text: str, experiment_id: int | None = None) -> RunFilter:
    """The filter text -> RunFilter; raises FilterError with the position of the problem."""
    f = RunFilter(experiment_id=experiment_id)
    words: list[str] = []
    text = text or ""
    for start, tok in _tokens(text):
        m = TERM.match(tok)
        if not m:
            bad = next((i for i, ch in enumerate(tok) if ch in "=<>!"), None)
            if bad is not None:
                raise FilterError(
                    text,
                    start + bad,
                    "a comparison is FIELD=VALUE (or != > >= < <=), e.g. final_step>5",
                )
            words.append(tok)
            continue
        key, op = m.group(1), m.group(2)
        vpos = start + m.end()
        value = tok[m.end() :].strip()
        if value[:1] in ("=", "<", ">", "!"):
            raise FilterError(text, vpos, f"{op}{value[0]} is not an operator")
        field = ALIASES.get(key.lower(), key.lower())
        if field.startswith("score:"):
            field = field.split(":", 1)[1]
        known = field in RUN_SORT_COLUMNS or field in SPECIAL or field in SCORE_METRICS
        if not known:
            raise FilterError(
                text,
                start,
                f"unknown field {key!r}: a run column, a column header (final, thr, ...), "
                "a score (clip_t, ...), status, tag, marked or baseline",
            )
        if value == "":
            raise FilterError(text, vpos, f"{key}{op} needs a value")
        _term(f, field, op, value, text, vpos, key)
    f.text = " ".join(words) or None
    return f


def _term(f: RunFilter, field: str, op: str, value: str, text: str, pos: int, key: str) -> None:
    listed = [v.strip() for v in value.split(",")] if op in ("=", "!=") else [value]
    if any(v == "" for v in listed):
        raise FilterError(text, pos, f"an empty value in {key}{op}{value}")
    if field == "status" or field == "tag":
        if op not in ("=", "!="):
            raise FilterError(text, pos - len(op), f"{key} takes = or !=")
        if field == "tag" and op == "=" and len(listed) == 1:
            f.tag = listed[0]
        elif field == "tag":
            f.compare.append(Compare("tag", op, tuple(listed)))
        elif op == "=":
            f.statuses = listed
        else:
            f.compare.append(Compare("status", "!=", tuple(listed)))
        return
    if field in ("marked", "baseline"):
        if op not in ("=", "!=") or len(listed) != 1:
            raise FilterError(text, pos - len(op), f"{key} takes =1 or =0")
        yes = listed[0].lower() in ("1", "true", "yes", "y")
        if not yes and listed[0].lower() not in ("0", "false", "no", "n"):
            raise FilterError(text, pos, f"{key} is 1 or 0, not {listed[0]!r}")
        setattr(f, field, yes if op == "=" else not yes)
        return
    if field == "experiment_id":
        if op == "=" and listed[0].lower() in ("all", "*"):
            f.experiment_id = None
            return
        ids = tuple(_number(int, v.lstrip("#"), text, pos, key) for v in listed)
        if op == "=" and len(ids) == 1:
            f.experiment_id = ids[0]
        else:
            f.compare.append(Compare("experiment_id", op, ids if op in ("=", "!=") else ids[0]))
        return
    if field in SCORE_METRICS:
        if op in ("=", "!=") and len(listed) > 1:
            raise FilterError(text, pos, f"{key} compares with one number")
        f.compare.append(Compare(field, op, _number(float, listed[0], text, pos, key)))
        return
    kind = Run.__table__.c[field].type.python_type  # type: ignore[attr-defined]
    values: list[Any] = []
    for v in listed:
        low = v.lower()
        if field == "final_step" and low == END:
            values.append(END)
        elif field == "mask_threshold" and low == OTSU:
            if op not in ("=", "!="):
                raise FilterError(text, pos, "otsu is compared with = or != only")
            values.append(OTSU)
        elif kind is bool:
            values.append(low in ("1", "true", "yes", "y"))
        elif kind in (int, float):
            values.append(_number(kind, v, text, pos, key))
        else:
            if op in ORDERED:
                raise FilterError(text, pos - len(op), f"{key} is text: use = or !=")
            values.append(v)
    if op == "=" and len(values) == 1 and values[0] not in (END, OTSU):
        f.equals[field] = values[0]
        return
    f.compare.append(Compare(field, op, tuple(values) if op in ("=", "!=") else values[0]))
