"""Every key binding as data, each with an id, so a user can remap any of them.

Overrides live in `<home>/keymap.json` as {"binding id": "keys"}, e.g. {"runs.filter": "f"};
Textual's `App.set_keymap` applies them to the matching Binding ids everywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from textual.binding import Binding


@dataclass(frozen=True)
class Key:
    id: str
    keys: str
    action: str
    description: str
    show: bool = True
    priority: bool = False


KEYMAP: dict[str, list[Key]] = {
    "app": [
        # Function keys win everywhere (priority: checked before the focused widget, so a text
        # area's own F6/F7 selections never take them); letters only where no form control has
        # focus (MtpApp.check_action refuses the `go` action there).
        Key("app.help", "f1", "help", "Help", priority=True),
        Key("app.help_letter", "question_mark", "go('help')", "Help", show=False),
        # Hidden from the footer (F1 lists them) so each screen's own keys fit 80 columns.
        Key("app.home", "f2", "open('home')", "Home", show=False, priority=True),
        Key("app.concept", "f3", "open('concept')", "Concept", show=False, priority=True),
        Key("app.sweep", "f4", "open('sweep')", "Sweep", show=False, priority=True),
        Key("app.runs", "f6", "open('runs')", "Runs", show=False, priority=True),
        Key("app.results", "f7", "open('results')", "Results", show=False, priority=True),
        Key("app.export", "f8", "open('export')", "Export", show=False, priority=True),
        Key(
            "app.leaderboard", "f9", "open('leaderboard')", "Leaderboard", show=False, priority=True
        ),
        Key("app.home_letter", "h", "go('home')", "Home", show=False),
        Key("app.concept_letter", "c", "go('concept')", "Concept", show=False),
        Key("app.sweep_letter", "n", "go('sweep')", "Sweep", show=False),
        Key("app.runs_letter", "r", "go('runs')", "Runs", show=False),
        Key("app.results_letter", "e", "go('results')", "Results", show=False),
        Key("app.export_letter", "x", "go('export')", "Export", show=False),
        Key("app.leaderboard_letter", "l", "go('leaderboard')", "Leaderboard", show=False),
        Key("app.back", "escape", "back", "Back", show=False),
        Key("app.quit", "ctrl+q", "quit", "Quit", show=False, priority=True),
    ],
    "home": [
        # One key, and the footer names what it does now (Resume while paused).
        Key("home.pause", "p", "pause_queue", "Pause"),
        Key("home.resume", "p", "resume_queue", "Resume"),
        Key("home.start_engine", "S", "start_engine", "Engine+"),
        Key("home.stop_engine", "T", "stop_engine", "Engine-", show=False),
        Key("home.open", "enter", "open_experiment", "Open runs", show=False),
        Key("home.edit", "E", "edit_experiment", "Edit"),
        Key("home.queue", "Q", "queue_experiment", "Queue"),
        Key("home.requeue", "R", "requeue_experiment", "Requeue", show=False),
        # Destructive keys are control keys, never a shift away from a common letter (x exports).
        Key("home.cancel", "ctrl+x", "cancel_experiment", "Cancel"),
        Key("home.delete", "D", "delete_experiment", "Delete"),
        Key("home.archive", "A", "archive_experiment", "Archive", show=False),
        Key("home.refresh", "f5", "refresh", "Refresh", show=False),
        Key("home.down", "j", "cursor_down", "Down", show=False),
        Key("home.up", "k", "cursor_up", "Up", show=False),
        Key("home.top", "g", "top", "Top", show=False),
        Key("home.bottom", "G", "bottom", "Bottom", show=False),
    ],
    "concept": [
        Key("concept.save", "ctrl+s", "save", "Save"),
        Key("concept.remove", "delete", "remove_image", "Remove"),
        Key("concept.next", "ctrl+n", "next_concept", "New"),
        Key("concept.up", "ctrl+g", "tree_up", "Dir up"),
        Key("concept.path", "ctrl+l", "type_path", "Path"),
    ],
    "sweep": [
        Key("sweep.save", "ctrl+s", "save_draft", "Save"),
        Key("sweep.queue", "ctrl+r", "queue", "Queue"),
        Key("sweep.preset", "ctrl+t", "next_preset", "Preset"),
        Key("sweep.clear", "ctrl+n", "clear_form", "Clear"),
    ],
    "runs": [
        Key("runs.filter", "slash", "filter", "Filter"),
        Key("runs.open", "enter", "open_run", "Detail", show=False),
        Key("runs.sort", "s", "sort", "Sort"),
        Key("runs.mark", "m", "mark", "Mark"),
        Key("runs.tag", "t", "tag", "Tag"),
        # Listed in F1 only: with every key shown the footer overflowed 80 columns (cut "Help").
        Key("runs.note", "N", "note", "Note", show=False),
        Key("runs.requeue", "R", "requeue", "Requeue"),
        Key("runs.cancel", "ctrl+x", "cancel", "Cancel"),
        Key("runs.unmark", "U", "unmark_all", "Unmark", show=False),
        Key("runs.compare", "v", "compare", "Compare"),
        Key("runs.score", "S", "score", "Score"),
        Key("runs.results", "e", "results", "Results", show=False),
        Key("runs.next_page", "greater_than_sign,pagedown", "page(1)", "Page>", show=False),
        Key("runs.prev_page", "less_than_sign,pageup", "page(-1)", "<Page", show=False),
        Key("runs.refresh", "f5", "refresh", "Refresh", show=False),
        Key("runs.down", "j", "cursor_down", "Down", show=False),
        Key("runs.up", "k", "cursor_up", "Up", show=False),
        Key("runs.top", "g", "top", "Top", show=False),
        Key("runs.bottom", "G", "bottom", "Bottom", show=False),
    ],
    "detail": [
        Key("detail.prev", "left_square_bracket", "step(-1)", "Prev"),
        Key("detail.next", "right_square_bracket", "step(1)", "Next"),
        Key("detail.word", "w", "next_word", "Word"),
        Key("detail.baseline", "b", "compare_baseline", "vs baseline"),
        Key("detail.refresh", "f5", "refresh", "Refresh", show=False),
    ],
    "results": [
        Key("results.axis", "a", "next_axis", "Axis"),
        Key("results.experiment", "o", "pick_experiment", "Experiment"),
        Key("results.refresh", "f5", "refresh", "Refresh"),
        Key("results.score", "S", "score", "Score"),
        Key("results.down", "j", "cursor_down", "Down", show=False),
        Key("results.up", "k", "cursor_up", "Up", show=False),
        Key("results.top", "g", "top", "Top", show=False),
        Key("results.bottom", "G", "bottom", "Bottom", show=False),
    ],
    "export": [
        Key("export.go", "ctrl+s", "export", "Export"),
    ],
    "leaderboard": [
        Key("leaderboard.grid", "enter", "open_grid", "Grid"),
        Key("leaderboard.sort", "s", "next_sort", "Sort"),
        Key("leaderboard.group", "g", "next_group", "Group"),
        Key("leaderboard.reference", "b", "set_reference", "Reference"),
        Key("leaderboard.study", "o", "pick_study", "Study"),
        Key("leaderboard.export", "ctrl+s", "export", "Export"),
        Key("leaderboard.cancel", "ctrl+x", "cancel_study", "Cancel", show=False),
        Key("leaderboard.requeue", "R", "requeue_study", "Requeue", show=False),
        Key("leaderboard.refresh", "f5", "refresh", "Refresh", show=False),
    ],
}


# Keys that type a character: in a form they belong to the field, never to navigation.
CHARACTER_KEYS = {
    "question_mark",
    "left_square_bracket",
    "right_square_bracket",
    "slash",
    "greater_than_sign",
    "less_than_sign",
    "space",
}


def is_character_key(key: str) -> bool:
    return len(key) == 1 or key in CHARACTER_KEYS


@cache
def character_actions(scope: str) -> frozenset[str]:
    """Action names of `scope` that only character keys trigger (a letter, `?`, `[`): a
    screen refuses them while a form control has focus, where the key belongs to the form.
    An action that also has a function or control key stays available."""
    out = set()
    for k in KEYMAP[scope]:
        if all(is_character_key(key.strip()) for key in k.keys.split(",")):
            out.add(k.action.split("(", 1)[0])
    return frozenset(out)


def in_form(widget) -> bool:
    """Is `widget` a form control (or inside one, like a Select's list)?"""
    if widget is None:
        return False
    from textual.widgets import (
        Button,
        Checkbox,
        Input,
        RadioButton,
        RadioSet,
        Select,
        Switch,
        TextArea,
    )

    kinds = (Input, TextArea, Checkbox, Select, Button, RadioButton, RadioSet, Switch)
    return isinstance(widget, kinds) or any(isinstance(a, kinds) for a in widget.ancestors)


def bindings(scope: str) -> list[Binding]:
    return [
        Binding(k.keys, k.action, k.description, show=k.show, priority=k.priority, id=k.id)
        for k in KEYMAP[scope]
    ]


def load_overrides(root: Path) -> dict[str, str]:
    """{"binding id": "keys"} from <home>/keymap.json; a broken file is reported, not fatal."""
    path = Path(root) / "keymap.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    known = {k.id for keys in KEYMAP.values() for k in keys}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown binding ids {', '.join(unknown)}")
    # A priority key is taken before any field sees it: a character there could never be typed.
    priority = {k.id for keys in KEYMAP.values() for k in keys if k.priority}
    typed = sorted(
        bid
        for bid, keys in data.items()
        if bid in priority and any(is_character_key(x.strip()) for x in str(keys).split(","))
    )
    if typed:
        raise ValueError(
            f"{path}: {', '.join(typed)} must not be a character key "
            "(it would be taken from every text field)"
        )
    return {str(k): str(v) for k, v in data.items()}


def describe(scope: str) -> list[tuple[str, str, str]]:
    """(keys, description, id) rows for the help screen."""
    return [(k.keys, k.description, k.id) for k in KEYMAP[scope]]
