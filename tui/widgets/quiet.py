"""Form controls that skip Textual's restyles while they are not yet in the DOM.

Constructing a Textual control restyles it on the spot, more than once: `compact=True` toggles a
class, an Input validating its first value adds `-valid`, a Checkbox's value adds `-on`, and
each class change re-applies the whole stylesheet to the widget and to every one of its
component classes (a Button's variant too; a Static given its first text and classes before
mounting, likewise). Mounting then styles the widget in full anyway, so those restyles are
wasted: for the sweep builder's ~20 controls they were ~15% of opening it. These subclasses
look and behave exactly like Textual's (CSS rules for `Input`, `Select`, `Checkbox`, `Button` match them);
FormInput and FormSelect show user text safe (widgets/safe_widgets.py).
"""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Button, Checkbox, Static

from .safe_widgets import SafeInput, SafeSelect


class StyledWhenMounted:
    """Mix in before a Textual widget class (also for containers: mounting styles the subtree)."""

    def update_node_styles(self, animate: bool = True) -> None:
        if self.is_attached:  # mounting applies the stylesheet to it in full
            super().update_node_styles(animate)


class FormInput(StyledWhenMounted, SafeInput):
    pass


class FormSelect(StyledWhenMounted, SafeSelect):
    pass


class FormCheckbox(StyledWhenMounted, Checkbox):
    pass


class FormButton(StyledWhenMounted, Button):
    # Space presses a button as it ticks a checkbox and opens a select (Textual binds enter only).
    BINDINGS = [Binding("enter,space", "press", "Press button", show=False)]


class FormStatic(StyledWhenMounted, Static):
    pass
