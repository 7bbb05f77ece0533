"""A labelled input that shows, right under itself, what it parsed to or what is wrong with it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label

from .quiet import FormInput, FormStatic, StyledWhenMounted


def fields_by_name(root) -> dict[str, Field]:
    """The Fields under `root` by spec field name. Error texts name fields, and an error text
    (a file path, a prompt) must never reach a CSS query, so callers look names up here."""
    return {f.field_name: f for f in root.query(Field)}


def _preview(values: list, limit: int = 12) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    more = f", ... ({len(values)} values)" if len(values) > limit else ""
    return f"{len(values)} value{'s' if len(values) != 1 else ''}: {shown}{more}"


class Field(StyledWhenMounted, Vertical):
    """`name` is the spec field; errors arrive by that name (SweepError.field, InputError prefix).

    An axis field parses its first value as it is built, so it is mounted already showing the
    result (setting it after mounting would restyle and re-lay the form out once per field)."""

    def __init__(
        self, name: str, label: str, value: str = "", placeholder: str = "", axis=None, **kwargs
    ):
        # A method parameter's name has dots (method_params.consistory.n_anchors); ids cannot.
        safe = name.replace(".", "--")
        super().__init__(id=f"field-{safe}", classes="field", **kwargs)
        self.field_name = name
        self.label = label
        self.axis = axis
        self._input = FormInput(value, placeholder=placeholder, id=f"input-{safe}", compact=True)
        self._info = FormStatic("", classes="field-info empty")
        self._shown: tuple | None = (
            "info",
            "",
        )  # what the info line shows, to skip identical updates
        # The value the info line was last brought up to date with; the input's Changed message
        # for its first value (or for a value already handled) then needs no new check.
        self.checked_value = value
        self.values: list | None = None  # an axis field's values as last parsed (None: invalid)
        self.parse()

    def compose(self) -> ComposeResult:
        # Label and a one-line input side by side, the parse result under them: a sweep's
        # fourteen fields then fit a 40-line terminal with little scrolling.
        with Horizontal(classes="field-line"):
            yield Label(self.label, classes="field-label")
            yield self._input
        yield self._info

    @property
    def input(self) -> Input:
        return self._input

    @property
    def value(self) -> str:
        return self._input.value

    @value.setter
    def value(self, text: str) -> None:
        self._input.value = text

    @property
    def error(self) -> str:
        return self._info.content if self.has_class("invalid") else ""

    def parse(self) -> list | None:
        """Parse an axis field on its own (instant); cross-field checks come from the builder."""
        if self.axis is None:
            return None
        from store.sweep.grammar import SweepError, parse_values

        try:
            values = parse_values(self.axis, self.value)
        except SweepError as exc:
            self.values = None
            self.show_error(exc)
            return None
        self.values = values
        self.show_info(_preview(values))
        return values

    def show_info(self, text: str) -> None:
        from ..safe import plain

        if self._shown == ("info", text):
            return  # an update re-lays the form out: skip it when nothing changes
        self._shown = ("info", text)
        self.remove_class("invalid")
        self._info.update(plain(text))
        self._info.set_class(not text, "empty")

    def show_error(self, exc) -> None:
        """A SweepError points at the offending character; anything else shows its message.
        Both are user text: shown safe (an escape widens the text, so the caret moves with it)."""
        from rich.text import Text

        from store.safe_text import safe_text

        message = getattr(exc, "message", None) or str(exc)
        pos = getattr(exc, "pos", -1)
        text = Text("✗ " + safe_text(message), style="bold red")
        source = getattr(exc, "text", None)
        if source and 0 <= pos <= len(source):
            caret = len(safe_text(source[:pos]))
            text.append(f"\n  {safe_text(source)}\n  " + " " * caret + "^", style="red")
        if self._shown == ("error", text.plain):
            return
        self._shown = ("error", text.plain)
        self.add_class("invalid")
        self._info.remove_class("empty")
        self._info.update(text)
