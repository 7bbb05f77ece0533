"""Which table columns fit a width, by priority: a column is shown whole or not at all (a number
is never cut), and the one free-text column (a prompt, a name) takes what is left, cut with an
ellipsis. Narrow terminals then show the most useful columns instead of the first ones."""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len

PAD = 2  # DataTable's cell padding, both sides together


@dataclass(frozen=True)
class Col:
    key: str
    label: str
    priority: int  # lower: kept first
    flex: bool = False  # free text: shortened to fit instead of dropped
    min_width: int = 10  # a flex column narrower than this is dropped


def fit_columns(cols, rows, available: int) -> list[tuple[Col, int]]:
    """(column, width) to show, in the columns' own order. `rows`: dicts key -> cell text."""
    need = {
        c.key: max([cell_len(c.label)] + [cell_len(str(r.get(c.key, ""))) for r in rows])
        for c in cols
    }
    chosen, used = set(), 0
    for c in sorted(cols, key=lambda c: c.priority):
        w = min(need[c.key], c.min_width) if c.flex else need[c.key]
        if used + w + PAD > available:
            break  # strictly by priority: a narrow column never jumps ahead of a wide one
        chosen.add(c.key)
        used += w + PAD
    width = {c.key: need[c.key] for c in cols if c.key in chosen and not c.flex}
    spare = available - used
    for c in sorted(cols, key=lambda c: c.priority):
        if c.key in chosen and c.flex:
            base = min(need[c.key], c.min_width)
            extra = max(0, min(need[c.key] - base, spare))
            width[c.key] = base + extra
            spare -= extra
    return [(c, width[c.key]) for c in cols if c.key in chosen]
