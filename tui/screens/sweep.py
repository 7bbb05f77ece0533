"""Sweep builder: base settings plus sweep axes in the sweep grammar, checked as you type.

Each axis parses on every keystroke (instant, pure Python); the whole grid is expanded in a
thread worker for the run count and cross-field checks, so a 10k-run sweep never stalls typing.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Checkbox, Header, Input, Label, Select, Static, TextArea

from .. import keymap
from ..safe import assemble, plain
from ..widgets.field import Field, fields_by_name
from ..widgets.footer import Footer
from ..widgets.quiet import FormButton, FormCheckbox, FormSelect
from ..widgets.safe_widgets import SafeTextArea
from ._common import StoreScreen, duration
from .sweep_form import (  # noqa: F401  (re-exported: callers import them from here)
    BASE_NUMBERS,
    PARAM_PREFIX,
    BaseFieldError,
    field_texts,
    read_spec,
)

# spec field -> (label, placeholder hint)
AXIS_LABELS = {
    "method": (
        "Method",
        "masactrl, consistent_sa, consistory (a comma list compares them; set methods "
        "generate the target prompts as one set)",
    ),
    "seeds": ("Seeds", "0,1,2 or 0-9"),
    "layers": ("Layers", "encoder, decoder, mid, all, 10-15, up_blocks.3, {0,2,4}"),
    "start_step": ("Start step", "first controlled step, e.g. 4 or 0,4,10"),
    "final_step": ("Final step", "exclusive; 'end' = through the last step, e.g. 20,25,end"),
    "skip_interval": ("Skip interval", "control every k-th step inside the window, e.g. 1,2,5"),
    "mask_mode": ("Mask mode", "off, auto"),
    "mask_timing": ("Mask timing", "current, previous"),
    "mask_layers": ("Mask map layers", "layers whose cross-attention builds the mask"),
    "mask_words": ("Mask words", "words of the target prompt; '-' = all prompt tokens"),
    "mask_threshold": ("Mask threshold", "0-1 or otsu"),
}

# Up to this many runs, the check as the builder opens expands the grid in place (~1 ms).
INSTANT_CHECK_RUNS = 500

# Messages each form control sends when its value changes; setting the whole form at once
# (a restored draft, a preset) holds them back and checks the form once.
FORM_CHANGES = (Input.Changed, TextArea.Changed, Checkbox.Changed)


def check_source_image(path: str) -> None:
    """The image to invert must be readable now, not when an engine reaches the run."""
    from store.images import InputError, check_image
    from store.sweep.grammar import SweepError

    try:
        check_image(path)
    except InputError as exc:
        raise SweepError("source_image", path, -1, str(exc)) from None


class SweepScreen(StoreScreen):
    BINDINGS = keymap.bindings("sweep")
    KEY_SCOPE = "sweep"
    # Textual's default would focus the first focusable widget, the form's scroll container, and
    # on_mount then moves focus to the name input: each of those focus changes restyles the whole
    # form (~130 widgets). on_mount alone focuses the name input, once it is mounted.
    AUTO_FOCUS = ""
    KEPT = True  # F4 brings the form back as it was left (MtpApp.make_screen); see retarget

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Checked(Message):
        count: int | None
        baselines: int
        error: Exception | None
        token: int
        estimate: Any = None  # store.queries.Estimate, or None: unknown

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Saved(Message):
        experiment: Any = None
        error: Exception | None = None
        queued: bool = False

    @dataclass(eq=False)  # a message is itself: identity, not field equality
    class Context(Message):
        concepts: list
        experiment: Any
        seconds_per_run: Any
        workers: int

    def __init__(self, experiment_id: int | None = None, concept_id: int | None = None):
        super().__init__(id="sweep")
        from store.sweep.spec import ExperimentSpec

        self.experiment_id = experiment_id
        self.concept_id = concept_id
        self.spec = ExperimentSpec()
        self._token = 0
        self._seconds_per_run: list = []  # recent runs' costs (store.queries.RunCost)
        self._workers = 1
        self._ready = False
        self.last_count: int | None = None
        self._concepts: dict = {}
        self._auto_source: str | None = None  # the source prompt a concept's class word put there
        self._auto_targets: str | None = None  # the target prompts it put there
        self._preset_value: str | None = None  # the preset last applied (to put the menu back)
        self._back_shown: dict | None = None  # the form when "your unsaved form is back" was said
        # The context _load_context's thread read, handed over through a Future (the thread never
        # writes this screen's attributes): on_mount applies it when it came before the mount.
        self._context_handover: Future[SweepScreen.Context] = Future()
        self._applied_context: SweepScreen.Context | None = None
        self._fields: dict[str, Field] = {}
        self._param_groups: dict[str, Vertical] = {}  # method -> its mounted parameter fields
        self._recheck_queued = False
        self._resumed = False
        self._resized = False

    # ------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        from store.sweep.spec import AXES, PRESETS

        s = self.spec
        # Size classes before any widget is mounted: set in on_mount (StoreScreen), a change
        # (narrow, short: 80x24) would restyle the whole form once more.
        self._apply_size(self.app.size)
        # The few reads the form needs start first: they finish while the form is being
        # mounted, so on_mount fills it in before the first paint (no second layout for them).
        self._load_context(self._context_handover)
        yield Header()
        with Horizontal(id="sweep-body"):
            with VerticalScroll(id="sweep-form"):
                yield Field("name", "Experiment name", "", placeholder="e.g. corgi final step")
                with Horizontal(classes="row"):
                    yield FormSelect(
                        [], prompt="Concept: (none)", id="concept", allow_blank=True, compact=True
                    )
                    yield FormSelect(
                        [(k, k) for k in PRESETS],
                        prompt="Preset: the seed's four sweeps",
                        id="preset",
                        allow_blank=True,
                        compact=True,
                    )
                yield Static("Base settings", classes="section")
                yield Field("source_prompt", "Source prompt", s.source_prompt)
                yield Field(
                    "source_image",
                    "...or image to invert",
                    "",
                    placeholder="path of a real source image (empty: generate from the prompt)",
                )
                yield Field(
                    "inversion_guidance",
                    "Inversion guidance",
                    s.inversion_guidance,
                    placeholder="1 = none, the better-behaved default; MasaCtrl's notebook: 7.5; 1,7.5 compares",
                    axis=AXES["inversion_guidance"],
                )
                yield Static(
                    "inversion guidance: 1 (no guidance while inverting) is the better-behaved default, "
                    "as inversion error grows with guidance; MasaCtrl's notebook uses 7.5",
                    classes="field-info",
                )
                yield Label(
                    "Target prompts, one per line (may use the concept's token)",
                    classes="field-label",
                )
                yield SafeTextArea("\n".join(s.target_prompts), id="target_prompts")
                yield Static("", id="error-target_prompts", classes="field-info")
                with Horizontal(classes="row"):
                    for name, (label, _) in BASE_NUMBERS.items():
                        yield Field(name, label, str(getattr(s, name)))
                yield Field(
                    "model", "Model", s.model, placeholder="hub id (org/name) or a local folder"
                )
                yield FormCheckbox(
                    "Add a no-control baseline per prompt and seed",
                    s.baseline,
                    id="baseline",
                    compact=True,
                )
                yield Static("Sweep axes", classes="section")
                yield Static(
                    "[dim]grammar: 20,25,50 | 4-50 (+5) | 0.1-0.5 [5] | encoder,decoder | {0,2,4}[/]"
                )
                for name, (label, hint) in AXIS_LABELS.items():
                    yield Field(name, label, getattr(s, name), placeholder=hint, axis=AXES[name])
                    if name == "method":
                        # The chosen methods' own parameter fields are mounted here when a
                        # method that has parameters is chosen (_sync_param_fields).
                        yield Vertical(id="method-params")
            with Vertical(id="sweep-side"):
                yield Static("", id="sweep-summary")
                yield Static("", id="sweep-status")
                yield FormButton("Save draft (ctrl+s)", id="save-draft")
                yield FormButton("Queue (ctrl+r)", id="queue", variant="primary")
        yield Footer(compact=True, show_command_palette=False)

    def on_screen_resume(self, event) -> None:
        # Every widget was styled as it was mounted, just now; Textual's restyle of the whole
        # screen on its first resume would repeat that for ~130 widgets. Later resumes (back
        # from a dialog, or F4 again: the screen is kept) restyle as usual.
        if not self._resumed:
            self._resumed = True
            event.refresh_styles = False
        elif self.reopened:  # F4 again, not back from a dialog
            self.reopened = False
            if (
                self._ready and self.app.sweep_draft is None
            ):  # queued since: the next F4 starts afresh
                self._reset_form()
                self._reload_form()
            elif (
                self._ready
            ):  # the form as it was left; concepts, timings and engines are read again
                self.query_one("#sweep-status", Static).update(
                    "your unsaved form is back (ctrl+n clears it)"
                )
                self._back_shown = self.snapshot()
                self._context_handover = Future()
                self._load_context(self._context_handover)

    def retarget(self, experiment_id: int | None = None, concept_id: int | None = None) -> None:
        """Open this experiment's draft in the kept builder (Home's E): its unsaved form if the
        kept one is that experiment's, else the saved draft."""
        if experiment_id == self.experiment_id and concept_id in (None, self.concept_id):
            return
        self._reset_form()
        self.experiment_id, self.concept_id = experiment_id, concept_id
        self._reload_form()

    def _reload_form(self) -> None:
        """Fill the form as a newly opened builder does: context read in a thread, then
        _apply_context restores the draft or loads the experiment."""
        self._ready = False
        self._context_handover = Future()
        self._load_context(self._context_handover)

    def on_resize(self, event) -> None:
        # Textual sends a screen a Resize right after laying it out for the first time, at the
        # size it was just laid out at, and answers it with a second full layout of this screen
        # and of Home beneath it. Nothing changed then: only the narrow/short classes are kept.
        first, self._resized = not self._resized, True
        if first and event.size == self.outer_size:
            event.prevent_default()  # Textual's own handler, the relayout
            self._apply_size(event.size)

    def on_mount(self) -> None:
        self._fields = fields_by_name(self)  # fixed once composed; looked up on every keystroke
        self._fields["name"].input.focus()
        if self._context_handover.done():
            self._apply_context(self._context_handover.result())

    # ------------------------------------------------------------------ the unsaved form
    def snapshot(self) -> dict:
        """Everything typed so far, to bring back when the builder is opened again."""
        return {
            "fields": {name: f.value for name, f in self._fields.items()},
            "targets": self.query_one("#target_prompts", TextArea).text,
            "baseline": self.query_one("#baseline", Checkbox).value,
            "concept": self.selected_concept,
            "experiment_id": self.experiment_id,
            "auto_source": self._auto_source,
            "auto_targets": self._auto_targets,
        }

    def restore(self, draft: dict) -> None:
        fields = self._fields
        with self.prevent(*FORM_CHANGES):  # one check for the whole form, by the caller
            if "method" in draft["fields"] and "method" in fields:
                fields["method"].value = draft["fields"]["method"]
                fields["method"].parse()
                self._sync_param_fields()
            for name, value in draft["fields"].items():
                if name in fields:
                    fields[name].value = value
            self.query_one("#target_prompts", TextArea).text = draft["targets"]
            self.query_one("#baseline", Checkbox).value = draft["baseline"]
        self._show_fields()
        self.experiment_id = draft.get("experiment_id")
        self.concept_id = draft.get("concept")
        self._auto_source = draft.get("auto_source")
        self._auto_targets = draft.get("auto_targets")
        if self.experiment_id:
            self.sub_title = f"editing draft #{self.experiment_id}"

    def _keep_draft(self) -> None:
        if self._ready:
            self.app.sweep_draft = self.snapshot()

    def action_clear_form(self) -> None:
        def clear() -> None:
            self.app.sweep_draft = None
            self._reset_form()
            self.query_one("#sweep-status", Static).update("form cleared")
            self.recheck()

        self.app.confirm(
            "Clear the sweep form? What is typed here is lost (saved drafts stay on Home).",
            clear,
            yes="clear",
        )

    def _reset_form(self) -> None:
        """The defaults, no experiment, no concept (nothing kept: the caller decides)."""
        from store.sweep.spec import ExperimentSpec

        self.experiment_id, self.concept_id, self._auto_source = None, None, None
        self._auto_targets = self._preset_value = self._back_shown = None
        self.sub_title = ""
        self.set_spec(ExperimentSpec())
        self._fields["name"].value = ""
        self.query_one("#concept", Select).clear()
        self.query_one("#sweep-status", Static).update("")

    @work(thread=True)
    def _load_context(self, handover: Future) -> None:
        from store.queries import get_experiment, list_concepts, recent_run_costs

        store = self.store
        spr = recent_run_costs(store)  # what finished runs cost, for the time estimate
        from store.queue import list_workers

        workers = max(1, len([w for w in list_workers(store) if w.status != "stopped"]))
        exp = get_experiment(store, self.experiment_id) if self.experiment_id else None
        context = self.Context(list_concepts(store), exp, spr, workers)
        handover.set_result(context)
        self.post_message(context)

    def on_sweep_screen_context(self, message: Context) -> None:
        if message is self._applied_context:  # on_mount filled the form in with it already
            return
        if not self._ready:
            self._apply_context(message)
        else:  # the kept form reopened: only what it is checked against
            self._refresh_context(message)

    def _refresh_context(self, message: Context) -> None:
        self._seconds_per_run, self._workers = message.seconds_per_run, message.workers
        select = self.query_one("#concept", Select)
        chosen = select.value
        self._concepts = {c.id: c for c in message.concepts}
        with select.prevent(Select.Changed):
            select.set_options([(c.name, c.id) for c in message.concepts])
            if chosen in self._concepts:
                select.value = chosen
        self.recheck()

    def _apply_context(self, message: Context) -> None:
        from store.sweep.spec import ExperimentSpec

        self._applied_context = message

        self._seconds_per_run, self._workers = message.seconds_per_run, message.workers
        select = self.query_one("#concept", Select)
        self._concepts = {c.id: c for c in message.concepts}
        select.set_options([(c.name, c.id) for c in message.concepts])
        exp = message.experiment
        draft = self.app.sweep_draft
        restored = draft is not None and (
            draft.get("experiment_id") == self.experiment_id
            or (self.experiment_id is None and self.concept_id is None)
        )
        if restored:
            self.restore(draft)
        elif exp is not None:
            self.set_spec(ExperimentSpec.from_json(exp.spec_json))
            self._fields["name"].value = exp.name
            self.concept_id = exp.concept_id
            self.sub_title = f"editing draft #{exp.id}"
        if self.concept_id is not None and self.concept_id in self._concepts:
            with select.prevent(Select.Changed):
                select.value = self.concept_id
        self._ready = True
        if restored:
            self.query_one("#sweep-status", Static).update(
                "your unsaved form is back (ctrl+n clears it)"
            )
            self._back_shown = self.snapshot()
        self.recheck(now=True)

    # ------------------------------------------------------------------ form <-> spec
    def set_spec(self, spec) -> None:
        with self.prevent(*FORM_CHANGES):  # one check for the whole form, by the caller
            for name, text in field_texts(spec, self._fields).items():
                self._fields[name].value = text
            self._fields["method"].parse()
            self._sync_param_fields()
            self._set_param_values(spec.method_params or {})
            self.query_one("#target_prompts", TextArea).text = "\n".join(spec.target_prompts)
            self.query_one("#baseline", Checkbox).value = spec.baseline
        self._show_fields()

    def _show_fields(self) -> None:
        """Bring every field's line under it up to date after values were set without messages."""
        for f in self._fields.values():
            f.checked_value = f.value
            f.parse() if f.axis else f.show_info("")

    def read_spec(self):
        """The form as an ExperimentSpec (sweep_form.read_spec); a non-number in a base field
        raises BaseFieldError. Parameters count only for the methods chosen and shown."""
        methods = [m for m in self._chosen_methods() if m in self._param_groups]
        return read_spec(
            {name: f.value for name, f in self._fields.items()},
            self.query_one("#target_prompts", TextArea).text,
            self.query_one("#baseline", Checkbox).value,
            methods,
        )

    # ------------------------------------------------------------------ method parameters
    def _chosen_methods(self) -> list[str]:
        field = self._fields.get("method")
        return list(field.values or []) if field is not None else []

    def _param_fields(self, method: str) -> list[Field]:
        head = f"{PARAM_PREFIX}{method}."
        return [f for name, f in self._fields.items() if name.startswith(head)]

    def _sync_param_fields(self) -> None:
        """Show the parameter fields of the chosen methods (built on first choice, with the
        authors' defaults), hide the others' (what was typed there stays for a later choice)."""
        from rich.text import Text

        from store.sweep.methods import AXIS_MEANING, METHODS, default_text, param_axis

        chosen = set(self._chosen_methods())
        for method, params in METHODS.items():
            group = self._param_groups.get(method)
            if not params or (group is None and method not in chosen):
                continue
            if group is None:
                fields = [
                    Field(
                        f"{PARAM_PREFIX}{method}.{p.name}",
                        f"  {p.name}",
                        default_text(p),
                        placeholder=p.help,
                        axis=param_axis(method, p),
                    )
                    for p in params
                ]
                meaning = "; ".join(
                    f"{axis}: {text or 'not used'}"
                    for axis, text in AXIS_MEANING.get(method, {}).items()
                )
                group = Vertical(
                    Static(
                        f"[b]{method}[/] parameters (defaults are the authors'; sweep grammar)",
                        classes="field-info",
                    ),
                    Static(Text(meaning, style="dim"), classes="field-info"),
                    *fields,
                    classes="method-params",
                )
                self._param_groups[method] = group
                self.query_one("#method-params", Vertical).mount(group)
                for f in fields:
                    self._fields[f.field_name] = f
            group.display = method in chosen

    def _set_param_values(self, given: dict) -> None:
        """Every parameter field to the spec's value, or its default when the spec has none."""
        from store.sweep.methods import METHODS, default_text
        from store.sweep.spec import _param_texts

        for method in self._param_groups:
            texts = _param_texts((given or {}).get(method, {}))
            for p in METHODS[method]:
                field = self._fields[f"{PARAM_PREFIX}{method}.{p.name}"]
                field.value = texts.get(p.name, default_text(p))

    @property
    def experiment_name(self) -> str:
        return self._fields["name"].value

    @property
    def selected_concept(self) -> int | None:
        value = self.query_one("#concept", Select).value
        return value if isinstance(value, int) else None

    # ------------------------------------------------------------------ live checking
    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        field = next((a for a in event.input.ancestors if isinstance(a, Field)), None)
        if field is not None:
            if event.value == field.checked_value:
                return  # an input reporting the value it was built with: nothing new to check
            field.checked_value = event.value
            field.parse() if field.axis else field.show_info("")
            if field.field_name == "method":
                self._sync_param_fields()
        self._request_recheck()

    @on(TextArea.Changed)
    @on(Checkbox.Changed)
    def _other_changed(self, _event) -> None:
        self._request_recheck()

    def _request_recheck(self) -> None:
        """One check for a burst of changes: a restored draft or a preset changes many fields at
        once, each with its own Changed message."""
        # "your unsaved form is back" is old news once the user edits; a Changed message the
        # restore itself sent late (a text area's) is not an edit.
        if self._back_shown and self._ready and self.snapshot() != self._back_shown:
            self._back_shown = None
            self.query_one("#sweep-status", Static).update("")
        if not self._recheck_queued:
            self._recheck_queued = True
            self.call_later(self._queued_recheck)

    def _queued_recheck(self) -> None:
        self._recheck_queued = False
        self.recheck()

    @on(Select.Changed, "#preset")
    def _preset(self, event: Select.Changed) -> None:
        """A preset fills four axes; values the user typed there are asked about first, and
        refusing puts the preset menu back as it was (nothing changed)."""
        from store.sweep.spec import PRESETS, ExperimentSpec

        if event.value not in PRESETS:
            self._preset_value = None
            return
        fields, chosen = self._fields, PRESETS[event.value]
        defaults = ExperimentSpec()
        # A value is "typed" unless it is the default or what some preset puts there.
        placed = {n: {str(getattr(defaults, n))} | {p[n] for p in PRESETS.values()} for n in chosen}
        typed = [
            n
            for n, text in chosen.items()
            if fields[n].value.strip() != text and fields[n].value.strip() not in placed[n]
        ]

        def apply() -> None:
            self._preset_value = event.value
            with self.prevent(Input.Changed):
                for n, text in chosen.items():
                    fields[n].value = text
            self._show_fields()
            self.recheck()

        def keep() -> None:
            select = self.query_one("#preset", Select)
            with select.prevent(Select.Changed):
                if self._preset_value in PRESETS:
                    select.value = self._preset_value
                else:
                    select.clear()

        if not typed:
            apply()
            return
        shown = ", ".join(f"{AXIS_LABELS[n][0]} {fields[n].value.strip()!r}" for n in typed)

        def answered(yes: bool | None) -> None:
            apply() if yes else keep()

        from .confirm import ConfirmScreen

        self.app.push_screen(
            ConfirmScreen(
                f"The preset {event.value!r} replaces what you typed: {shown}. Replace it?",
                yes="replace",
            ),
            answered,
        )

    @on(Select.Changed, "#concept")
    def _concept(self, event: Select.Changed) -> None:
        """A concept brings its base model unless the user already chose one, and its class
        word into the source prompt unless the user wrote their own (mask words must be in both)."""
        from store.sweep.spec import (
            DEFAULT_MODEL,
            ExperimentSpec,
            source_prompt_for,
            target_prompts_for,
        )

        concept = self._concepts.get(event.value)
        model = self._fields["model"]
        if concept is not None and model.value.strip() in ("", DEFAULT_MODEL):
            model.value = concept.base_model
        source = self._fields["source_prompt"]
        suggested = source_prompt_for(concept.class_word) if concept is not None else ""
        untouched = source.value.strip() in (
            "",
            ExperimentSpec().source_prompt,
            self._auto_source or "",
        )
        if suggested and untouched:
            source.value = self._auto_source = suggested
        # The default target prompt names the default subject (a dog); a concept's own class
        # word (and token) replaces it unless the user wrote their own prompts.
        targets = self.query_one("#target_prompts", TextArea)
        untouched_targets = targets.text.strip() in (
            "",
            "\n".join(ExperimentSpec().target_prompts),
            self._auto_targets or "",
        )
        if concept is not None and untouched_targets:
            text = "\n".join(target_prompts_for(concept.token, concept.class_word))
            if text:
                with self.prevent(TextArea.Changed):
                    targets.text = self._auto_targets = text
        self.recheck()

    def action_next_preset(self) -> None:
        from store.sweep.spec import PRESETS

        select = self.query_one("#preset", Select)
        names = list(PRESETS)
        current = names.index(select.value) if select.value in names else -1
        select.value = names[(current + 1) % len(names)]

    def recheck(self, now: bool = False) -> None:
        """Check the whole form; `now`: when the grid is small, in place rather than in a thread
        (the form as it opens then shows its run count in its first paint)."""
        if not self._ready:
            return
        self._keep_draft()
        self._token += 1
        try:
            spec = self.read_spec()
        except BaseFieldError as exc:
            self.on_sweep_screen_checked(self.Checked(None, 0, exc, self._token))
            return
        name, exp_id = self.experiment_name, self.experiment_id
        if now and not spec.source_image and self._grid_bound(spec) <= INSTANT_CHECK_RUNS:
            self.on_sweep_screen_checked(self._check(spec, self._token, name, exp_id))
        else:
            self._expand(spec, self._token, name, exp_id)

    def _grid_bound(self, spec) -> int:
        """At most how many runs the form expands to (baselines counted as one per grid point)."""
        bound = 2 * max(1, len(spec.target_prompts))
        chosen = self._chosen_methods()
        for f in self._fields.values():
            if f.field_name.startswith(PARAM_PREFIX) and f.field_name.split(".")[1] not in chosen:
                continue
            if f.axis is not None:
                bound *= max(1, len(f.values or ()))
        return bound

    def _check(self, spec, token: int, name: str = "", experiment_id: int | None = None) -> Checked:
        from store.queries import InputError, check_name_available
        from store.sweep.grammar import SweepError
        from store.sweep.spec import expand

        try:
            # A taken or id-like name is shown while typing, not only when saving.
            check_name_available(self.store, name, experiment_id)
        except InputError as exc:
            return self.Checked(None, 0, exc, token)
        try:
            if spec.source_image:
                check_source_image(spec.source_image)
            rows = expand(spec)
        except SweepError as exc:
            return self.Checked(None, 0, exc, token)
        from store.queries import estimate_seconds

        estimate = estimate_seconds(
            self._seconds_per_run or [],
            spec.model,
            len(rows),
            spec.num_steps,
            spec.width,
            spec.height,
            self._workers,
        )
        return self.Checked(
            len(rows), sum(1 for r in rows if r["is_baseline"]), None, token, estimate
        )

    @work(thread=True, exclusive=True, group="sweep-check")
    def _expand(self, spec, token: int, name: str, experiment_id: int | None) -> None:
        self.post_message(self._check(spec, token, name, experiment_id))

    def on_sweep_screen_checked(self, message: Checked) -> None:
        if message.token != self._token:
            return  # the form changed since this check started
        failed = self._field_for(message.error) if message.error is not None else None
        for f in self._fields.values():  # clear the last check's cross-field errors
            if f is not failed:  # (that one gets this check's error below)
                f.parse() if f.axis else f.show_info("")
        err_static = self.query_one("#error-target_prompts", Static)
        if str(err_static.content):
            err_static.update("")
        summary = self.query_one("#sweep-summary", Static)
        self.last_count = message.count
        if message.error is not None:
            self.show_field_error(message.error)
            summary.update(
                assemble(("Not queueable", "b red"), "\n", message.error, multiline=True)
            )
            return
        n = message.count
        lines = [f"[b]{n} runs[/] ({message.baselines} baselines)"]
        est = message.estimate
        if est is not None:
            lines.append(
                f"estimated {duration(est.seconds)} on {self._workers} worker(s), scaled by "
                f"steps and pixels from {est.samples} finished runs of this model"
                + (f" on {est.device}" if est.device else "")
            )
        else:
            lines.append("estimated time: unknown (fewer than 3 finished runs of this model)")
        summary.update("\n".join(lines))

    @staticmethod
    def _field_name(exc) -> str | None:
        name = getattr(exc, "field", None)
        if name is None and ":" in str(exc):
            name = str(exc).split(":", 1)[0].strip().replace(" ", "_")
        return name

    def _field_for(self, exc) -> Field | None:
        name = self._field_name(exc)
        return self._fields.get(name) if name else None

    def show_field_error(self, exc) -> None:
        """Put the error under the field it names; a base field gets it, axes already show theirs."""
        if self._field_name(exc) == "target_prompts":
            self.query_one("#error-target_prompts", Static).update(
                plain(f"✗ {getattr(exc, 'message', exc)}", "red")
            )
            return
        field = self._field_for(exc)
        if field is not None:
            field.show_error(exc)
        else:
            self.query_one("#sweep-status", Static).update(plain(exc, "red"))

    # ------------------------------------------------------------------ save / queue
    @on(Button.Pressed, "#save-draft")
    def action_save_draft(self) -> None:
        self._save(queue=False)

    @on(Button.Pressed, "#queue")
    def action_queue(self) -> None:
        self._save(queue=True)

    def _save(self, queue: bool) -> None:
        status = self.query_one("#sweep-status", Static)
        try:
            spec = self.read_spec()
        except BaseFieldError as exc:
            self.show_field_error(exc)
            status.update(plain(f"Nothing saved: {exc}", "red"))
            return
        status.update("queueing..." if queue else "saving...")
        self._save_worker(spec, self.experiment_name, self.selected_concept, queue)

    @work(thread=True, exclusive=True, group="sweep-save")
    def _save_worker(self, spec, name: str, concept_id, queue: bool) -> None:
        from store.queries import InputError, save_experiment
        from store.sweep.grammar import SweepError

        try:
            if spec.source_image:
                check_source_image(spec.source_image)
            exp = save_experiment(
                self.store, name, spec, concept_id, queue=queue, experiment_id=self.experiment_id
            )
        except (SweepError, InputError) as exc:
            self.post_message(self.Saved(error=exc, queued=queue))
            return
        self.post_message(self.Saved(exp, queued=queue))

    def on_sweep_screen_saved(self, message: Saved) -> None:
        status = self.query_one("#sweep-status", Static)
        if message.error is not None:
            self.show_field_error(message.error)
            status.update(
                plain(f"Nothing {'queued' if message.queued else 'saved'}: {message.error}", "red")
            )
            return
        exp = message.experiment
        self.app.experiment_id = exp.id
        if message.queued:
            self.app.sweep_draft = None  # it is in the queue now; the next F4 starts afresh
            self.notify(f"queued {exp.run_count} runs of {exp.name!r}")
            self.app.action_open("runs", experiment_id=exp.id)
        else:
            self.experiment_id = exp.id
            self.sub_title = f"editing draft #{exp.id}"
            self._keep_draft()
            status.update(plain(f"saved draft #{exp.id} ({exp.run_count} runs)", "green"))
