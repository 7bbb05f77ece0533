"""Concept editor: name, token, class word, reference images from a file browser (checked and
shown as thumbnails, rejected with the reason), personalization weights and base model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DirectoryTree, Header, Input, Label, Select, Static

from .. import keymap
from ..safe import assemble, plain
from ..widgets.artifact_image import ArtifactImage
from ..widgets.field import Field, fields_by_name
from ..widgets.find import FindTree
from ..widgets.footer import Footer
from ..widgets.quiet import FormButton
from ..widgets.safe_widgets import SafeInput
from ._common import StoreScreen
from .confirm import ConfirmScreen

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class ConceptScreen(StoreScreen):
    BINDINGS = keymap.bindings("concept")
    KEY_SCOPE = "concept"

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Checked(Message):
        path: Path
        error: str | None

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Saved(Message):
        concept: Any = None
        error: Exception | None = None
        loaded: bool = False

    def __init__(self, concept_id: int | None = None, start_dir: str | Path | None = None):
        super().__init__(id="concept")
        self.concept_id = concept_id
        self.start_dir = Path(start_dir or Path.cwd())
        self.images: list[Path] = []

    def compose(self) -> ComposeResult:
        from store.models import WEIGHT_KINDS
        from store.sweep.spec import DEFAULT_MODEL

        yield Header()
        with Horizontal(id="concept-body"):
            # The form on the left, the file tree on the right: Textual's Tab order follows
            # screen position, so Tab starts at Name and walks the fields before the tree.
            with VerticalScroll(id="concept-form", can_focus=False):
                yield Field("name", "Name", placeholder="e.g. corgi")
                yield Field("token", "Token", placeholder="written in prompts, e.g. <new1> or sks")
                yield Field(
                    "class_word",
                    "Class word",
                    placeholder="replaces the token when CLIP-T is scored, e.g. dog",
                )
                yield Field(
                    "base_model",
                    "Base model",
                    DEFAULT_MODEL,
                    placeholder="hub id (org/name) or a local folder",
                )
                yield Field(
                    "weights", "Weights file", placeholder="personalization weights, e.g. delta.bin"
                )
                with Horizontal(classes="field-line"):
                    yield Label("Weights kind", classes="field-label")
                    yield Select(
                        [(k, k) for k in WEIGHT_KINDS],
                        value="none",
                        allow_blank=False,
                        id="weights_kind",
                        compact=True,
                    )
                yield Label(
                    "Reference images (delete removes the focused one)", classes="field-label"
                )
                yield Horizontal(id="ref-images")
                yield Static("", id="concept-status")
                yield FormButton("Save concept (ctrl+s)", id="save", variant="primary")
            with Vertical(id="concept-tree"):
                yield Label(
                    "Files (enter adds an image; ctrl+g: folder up; ctrl+l: type a path)",
                    classes="field-label",
                )
                yield SafeInput(
                    str(self.start_dir),
                    placeholder="a folder to browse or an image to add",
                    id="tree-path",
                    compact=True,
                )
                yield FindTree(str(self.start_dir), id="tree")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#input-name", Input).focus()
        draft = self.app.concept_draft
        if draft is not None and self.concept_id in (None, draft["concept_id"]):
            # F3 brings back the unsaved form, whether it is a new concept or edits of a saved one.
            self._restore(draft)
        elif draft is not None:
            # Another concept's edits are unsaved: opening this one must not silently drop them.
            self.app.push_screen(
                ConfirmScreen(
                    f"Concept #{draft['concept_id'] or 'new'} has unsaved edits. "
                    f"Discard them and open concept #{self.concept_id}?",
                    yes="discard them",
                ),
                self._other_draft_answered,
            )
            return
        elif self.concept_id is not None:
            self._load(self.concept_id)
        self._ready = True

    def _other_draft_answered(self, discard: bool | None) -> None:
        if discard:
            self.app.concept_draft = None
            self._load(self.concept_id)
        else:
            self._restore(self.app.concept_draft)
        self._ready = True

    # ------------------------------------------------------------------ the unsaved form
    def _snapshot(self) -> dict:
        return {
            "concept_id": self.concept_id,
            "fields": {f.field_name: f.value for f in self.query(Field)},
            "weights_kind": self.query_one("#weights_kind", Select).value,
            "images": list(self.images),
        }

    def _restore(self, draft: dict) -> None:
        self.concept_id = draft["concept_id"]
        if self.concept_id is not None:
            self.sub_title = f"editing concept #{self.concept_id}"
            # What the database holds, to tell a draft from the saved concept (read in a thread).
            self._load_saved(self.concept_id)
        fields = fields_by_name(self)
        for name, value in draft["fields"].items():
            if name in fields:
                fields[name].value = value
        self.query_one("#weights_kind", Select).value = draft["weights_kind"]
        for path in draft["images"]:
            self._add_thumb(path)
        self.query_one("#concept-status", Static).update(
            "your unsaved concept is back (ctrl+s saves it, ctrl+n starts a new one)"
        )
        self._status_saved = True  # replaced by "unsaved changes" at the next edit

    def _keep_draft(self) -> None:
        # Kept until saved, so leaving the editor (Esc, F-keys, quitting) never throws typing away.
        if getattr(self, "_ready", False):
            snap = self._snapshot()
            unsaved = snap != getattr(self, "_saved", None)
            self.app.concept_draft = snap if unsaved else None
            if unsaved and getattr(self, "_status_saved", False):
                # The "saved" line is no longer true once the form differs from what was saved.
                self._status_saved = False
                self.query_one("#concept-status", Static).update(
                    "unsaved changes (kept when you leave; ctrl+s saves)"
                )

    @on(Input.Changed)
    @on(Select.Changed)
    def _form_changed(self, _event) -> None:
        self._keep_draft()

    @work(thread=True)
    def _load_saved(self, concept_id: int) -> None:
        from store.queries import get_concept

        self.post_message(self.Stored(get_concept(self.store, concept_id)))

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Stored(Message):
        concept: Any

    def on_concept_screen_stored(self, message: Stored) -> None:
        """The saved concept a restored draft edits: a form edited back to it is no draft."""
        c = message.concept
        if c is None:
            return
        self._saved = {
            "concept_id": c.id,
            "fields": {
                "name": c.name,
                "token": c.token,
                "class_word": c.class_word,
                "base_model": c.base_model,
                "weights": c.weights_path or "",
            },
            "weights_kind": c.weights_kind,
            "images": [self.store.home.resolve_artifact(r) for r in c.ref_images],
        }

    @work(thread=True)
    def _load(self, concept_id: int) -> None:
        from store.queries import get_concept

        self.post_message(self.Saved(get_concept(self.store, concept_id), loaded=True))

    def _fill(self, concept) -> None:
        values = {
            "name": concept.name,
            "token": concept.token,
            "class_word": concept.class_word,
            "base_model": concept.base_model,
            "weights": concept.weights_path or "",
        }
        fields = fields_by_name(self)
        for name, value in values.items():
            fields[name].value = value
        self.query_one("#weights_kind", Select).value = concept.weights_kind
        self.images = []
        self.query_one("#ref-images").remove_children()
        for rel in concept.ref_images:
            self._add_thumb(self.store.home.resolve_artifact(rel))
        self.sub_title = f"editing concept #{concept.id}"

    # ------------------------------------------------------------------ browsing
    def browse(self, folder: Path) -> None:
        """Re-root the file tree (any folder, not only below the working directory)."""
        folder = folder.expanduser().resolve()
        self.start_dir = folder
        self.query_one("#tree", DirectoryTree).path = folder
        self.query_one("#tree-path", Input).value = str(folder)

    def action_tree_up(self) -> None:
        self.browse(self.start_dir.parent)

    def action_type_path(self) -> None:
        self.query_one("#tree-path", Input).focus()

    @on(Input.Submitted, "#tree-path")
    def _path_typed(self, event: Input.Submitted) -> None:
        path = Path(event.value.strip()).expanduser()
        status = self.query_one("#concept-status", Static)
        if path.is_dir():
            self.browse(path)
            self.query_one("#tree", DirectoryTree).focus()
        elif path.is_file():
            self.add_image(path)
        else:
            status.update(plain(f"no such file or folder: {path}", "red"))

    @on(DirectoryTree.DirectorySelected)
    def _dir_selected(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#tree-path", Input).value = str(event.path)

    # ------------------------------------------------------------------ images
    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        self.add_image(Path(event.path))

    def add_image(self, path: Path) -> None:
        self.query_one("#concept-status", Static).update(plain(f"checking {path.name}..."))
        self._check(path)

    @work(thread=True, group="concept-check")
    def _check(self, path: Path) -> None:
        from store.images import InputError, check_image

        try:
            check_image(path)
        except InputError as exc:
            self.post_message(self.Checked(path, str(exc)))
            return
        self.post_message(self.Checked(path, None))

    def on_concept_screen_checked(self, message: Checked) -> None:
        status = self.query_one("#concept-status", Static)
        if message.error:
            status.update(plain(f"rejected: {message.error}", "red"))
            return
        if message.path in self.images:
            status.update(plain(f"{message.path.name} is already in the list"))
            return
        self._add_thumb(message.path)
        self._keep_draft()
        status.update(
            assemble((f"added {message.path.name}", "green"), f" ({len(self.images)} images)")
        )

    def _add_thumb(self, path: Path) -> None:
        self.images.append(path)
        thumb = ArtifactImage(path.name, classes="thumb")
        thumb.can_focus = True
        self.query_one("#ref-images").mount(thumb)
        thumb.show_path(path)

    def action_remove_image(self) -> None:
        focused = self.focused
        thumbs = list(self.query(".thumb"))
        if focused in thumbs:
            index = thumbs.index(focused)
        elif thumbs and not isinstance(focused, Input):
            index = len(thumbs) - 1
        else:
            return
        self.images.pop(index)
        thumbs[index].remove()
        self._keep_draft()

    # ------------------------------------------------------------------ model check and save
    @on(Input.Changed, "#input-base_model")
    def _model_changed(self, event: Input.Changed) -> None:
        from store.queries import InputError, check_model_ref

        field = self.query_one("#field-base_model", Field)
        try:
            check_model_ref(event.value)
        except InputError as exc:
            field.show_error(exc)
            return
        local = Path(event.value).expanduser().is_dir()
        field.show_info(
            "local folder found" if local else "hub id: checked when an engine loads it"
        )

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        v = {f.field_name: f.value for f in self.query(Field)}
        kind = self.query_one("#weights_kind", Select).value
        self.query_one("#concept-status", Static).update("saving...")
        self._save(v, str(kind), list(self.images))

    @work(thread=True, exclusive=True, group="concept-save")
    def _save(self, v: dict, kind: str, images: list[Path]) -> None:
        from store.queries import InputError, save_concept

        try:
            concept = save_concept(
                self.store,
                v["name"],
                token=v["token"],
                class_word=v["class_word"],
                ref_images=images,
                weights_path=v["weights"].strip() or None,
                weights_kind=kind,
                base_model=v["base_model"],
                concept_id=self.concept_id,
            )
        except InputError as exc:
            self.post_message(self.Saved(error=exc))
            return
        self.post_message(self.Saved(concept))

    def on_concept_screen_saved(self, message: Saved) -> None:
        status = self.query_one("#concept-status", Static)
        if message.error is not None:
            text = str(message.error)
            prefix = text.split(":", 1)[0].strip()
            name = {"weights kind": "weights", "base model": "base_model"}.get(prefix, prefix)
            field = fields_by_name(self).get(name)
            if field is not None:
                field.show_error(message.error)
            status.update(plain(f"not saved: {text}", "red"))
            return
        concept = message.concept
        if concept is None:
            status.update(plain("that concept no longer exists", "red"))
            return
        self.concept_id = concept.id
        if not message.loaded:
            self.app.concept_draft = None  # saved: nothing left to keep
        self._fill(concept)
        self._saved = self._snapshot()  # what the database holds: not a draft
        verb = ("editing", "") if message.loaded else ("saved", "green")
        status.update(assemble(verb, f" concept #{concept.id} {concept.name!r}"))
        self._status_saved = True

    def action_next_concept(self) -> None:
        """Start a fresh concept (the saved one stays in the list on Home)."""

        def fresh() -> None:
            self.app.concept_draft = None
            self.app.switch_screen(ConceptScreen(start_dir=self.start_dir))

        if self.app.concept_draft is None:
            fresh()
        else:
            self.app.confirm(
                "Start a new concept? The unsaved changes in this form are lost.", fresh, yes="new"
            )
