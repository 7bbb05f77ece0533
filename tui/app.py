"""mtp-tui: the research workbench's terminal app. It talks to engines only through the
database and the artifact folder, so it never imports torch and can be closed and reopened
while engines keep running."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from textual.app import App

from store.safe_text import safe_text

from . import keymap
from .commands import MtpCommands
from .keymap import in_form

# Top-level screens reachable from anywhere; names are what `open(...)` actions take.
SCREENS = {
    "home": ("tui.screens.home", "HomeScreen"),
    "concept": ("tui.screens.concept", "ConceptScreen"),
    "sweep": ("tui.screens.sweep", "SweepScreen"),
    "runs": ("tui.screens.runs", "RunsScreen"),
    "results": ("tui.screens.results", "ResultsScreen"),
    "export": ("tui.screens.export", "ExportScreen"),
    "leaderboard": ("tui.screens.leaderboard", "LeaderboardScreen"),
}


# Seconds after a kept screen is first built before its objects are frozen (MtpApp._settle_heap):
# long enough for its first load to have landed.
SETTLE_AFTER_S = 2.0


class MtpApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "mtp"
    BINDINGS = keymap.bindings("app")
    COMMANDS = App.COMMANDS | {MtpCommands}

    def __init__(self, store, demo: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.store = store
        self.demo = demo
        # Which experiment the results/export/runs screens are about; Home's cursor sets it.
        self.experiment_id: int | None = None
        # The sweep builder's and the concept editor's unsaved forms, kept when the screen is
        # left (Esc, F-keys) and across restarts (<data folder>/drafts.json) so nothing typed is
        # thrown away; cleared once queued/saved or cleared by hand.
        from store.drafts import load_drafts

        self._drafts: dict = load_drafts(store.home.drafts_path)
        self._drafts_written: str | None = None
        self._drafts_warned = False
        concept = self._drafts.get("concept")
        if concept is not None:  # JSON holds paths as text
            concept["images"] = [Path(p) for p in concept.get("images", [])]

    @property
    def sweep_draft(self) -> dict | None:
        return self._drafts.get("sweep")

    @sweep_draft.setter
    def sweep_draft(self, draft: dict | None) -> None:
        self._set_draft("sweep", draft)

    @property
    def concept_draft(self) -> dict | None:
        return self._drafts.get("concept")

    @concept_draft.setter
    def concept_draft(self, draft: dict | None) -> None:
        self._set_draft("concept", draft)

    def _set_draft(self, kind: str, draft: dict | None) -> None:
        import json

        from store.drafts import save_drafts

        self._drafts[kind] = draft
        # Written on every change (a small file), so even a killed app keeps what was typed;
        # an unchanged form is not rewritten.
        text = json.dumps(self._drafts, default=str, sort_keys=True)
        if text == self._drafts_written:
            return
        try:
            save_drafts(self.store.home.drafts_path, self._drafts)
        except OSError as exc:
            if not self._drafts_warned:
                self._drafts_warned = True
                self.notify(
                    f"unsaved forms are not kept across restarts: {exc}",
                    severity="warning",
                    timeout=8,
                )
            return
        self._drafts_written = text

    def on_mount(self) -> None:
        # Textual, SQLAlchemy and pydantic leave ~1M long-lived objects; without freezing them
        # every full GC pass walks them all, which showed up as 100+ ms stalls on table paints.
        import gc

        gc.freeze()
        self.sub_title = self.store.where
        try:
            overrides = keymap.load_overrides(self.store.home.root)
            if overrides:
                self.set_keymap(overrides)
        except (ValueError, OSError) as exc:
            self.notify(f"keymap.json ignored: {exc}", severity="warning", timeout=8)
        try:
            # An SSH drop sends SIGHUP: leave cleanly (terminal restored, DB sessions closed).
            import asyncio

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.exit)
        except (NotImplementedError, RuntimeError, AttributeError):
            pass

    # ------------------------------------------------------------------ user text out
    # Titles and notifications echo names, paths and error texts; they are shown safe here, once
    # for every caller, and a notification is never read as markup.
    def validate_title(self, title) -> str:
        return safe_text(super().validate_title(title))

    def validate_sub_title(self, sub_title) -> str:
        return safe_text(super().validate_sub_title(sub_title))

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity="information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """App.notify with the message and title shown safe and taken literally: `markup` is
        accepted for Textual's signature and ignored, since messages carry user text."""
        super().notify(
            safe_text(message, multiline=True),
            title=safe_text(title),
            severity=severity,
            timeout=timeout,
            markup=False,
        )

    def get_default_screen(self):
        from .screens.home import HomeScreen

        return HomeScreen()

    # ------------------------------------------------------------------ keys
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A letter typed while a form control (checkbox, select, button, input) has focus
        # belongs to the form: "r" on the baseline checkbox must not throw a filled sweep away.
        # Only the letter bindings use `go`; the F-keys' `open` stays available everywhere.
        # Refusing the action (rather than swallowing the key) lets the control's own bindings,
        # such as space on a checkbox, still run.
        if action == "go" and in_form(self.focused):
            return None
        return True

    def action_go(self, name: str) -> None:
        """A screen letter (h c n r e x l, or ? for help): `open` where no form control has focus."""
        if name == "help":
            self.action_help()
        else:
            self.action_open(name)

    def confirm(self, question: str, on_yes, yes: str = "yes") -> None:
        """Ask before anything destructive; `on_yes()` runs only after y."""
        from .screens.confirm import ConfirmScreen

        def done(answer: bool | None) -> None:
            if answer:
                on_yes()

        self.push_screen(ConfirmScreen(question, yes=yes), done)

    # ------------------------------------------------------------------ navigation
    def make_screen(self, name: str, **kwargs):
        import importlib

        module, cls = SCREENS[name]
        screen_cls = getattr(importlib.import_module(module), cls)
        if not getattr(screen_cls, "KEPT", False):
            return screen_cls(**kwargs)
        # A KEPT screen is built once and reopened as it was left (filter, sort, page, grid
        # choices; its data re-checked on resume): building its widgets again was most of the
        # time it took to open. Opened with arguments (Home's enter on an experiment) it is
        # retargeted instead.
        if not self.is_screen_installed(name):
            self.install_screen(screen_cls(**kwargs), name)
            self.set_timer(SETTLE_AFTER_S, self._settle_heap)
            return self.get_screen(name)
        kept = self.get_screen(name)
        kept.reopened = True  # its next resume is a reopen, not the return from a dialog
        if kwargs:
            kept.retarget(**kwargs)
        return kept

    def _settle_heap(self) -> None:
        """A kept screen lives as long as the app: move it out of the garbage collector's way,
        as on_mount does for the start-up objects. Each kept screen adds ~20-50k objects that every
        full collection walked again (~100 ms each), and those landed inside later screen opens.
        Collected first, so only live objects are frozen; runs once per kept screen."""
        import gc

        gc.collect()
        gc.freeze()

    def action_open(self, name: str, **kwargs) -> None:
        from textual.screen import ModalScreen

        # F-keys reach here from dialogs too (they have priority): leaving a dialog that way is
        # answering it "no" / closing it.
        if name == "export" and type(self.screen).__name__ == SCREENS["export"][1]:
            return
        while isinstance(self.screen, ModalScreen) and len(self.screen_stack) > 1:
            self.pop_screen()
        if name == "export":
            self.push_screen(self.make_screen("export", experiment_id=self.experiment_id))
            return
        if name == "home":
            while len(self.screen_stack) > 1:
                self.pop_screen()
            return
        if type(self.screen).__name__ == SCREENS[name][1] and not kwargs:
            return
        screen = self.make_screen(name, **kwargs)
        if screen in self.screen_stack:  # a kept screen under a run detail, say: uncover it
            while self.screen is not screen:
                self.pop_screen()
            return
        # Keep the stack shallow: Home at the bottom and one screen above it, plus run details.
        if len(self.screen_stack) > 1:
            self.switch_screen(screen)
        else:
            self.push_screen(screen)

    def action_back(self) -> None:
        if len(self.screen_stack) > 1:
            self.pop_screen()

    def action_help(self) -> None:
        from .screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):  # F1 again closes it (F1 has priority)
            self.pop_screen()
        else:
            self.push_screen(HelpScreen(self.screen))

    # ------------------------------------------------------------------ queue and engine
    def toggle_pause(self) -> bool | None:
        from store import queue

        paused = not queue.is_paused(self.store)
        queue.set_paused(self.store, paused)
        self.notify(
            "queue paused: engines finish their current run, then wait"
            if paused
            else "queue resumed"
        )
        return paused

    def start_engine(self, device: str = "cpu") -> None:
        from engine import launch

        try:
            pid = launch.start_engine(self.store.home.root, device=device, demo=self.demo)
        except Exception as exc:  # a failed launch is reported, the app keeps going
            self.notify(f"engine did not start: {exc}", severity="error", timeout=10)
            return
        self.notify(f"engine started on {device} (pid {pid}); logs in {self.store.home.logs}")

    def score_experiment(self, experiment_id: int | None = None) -> None:
        """`mtp score` from the app: queue a score request for an engine (the app never imports
        torch); start a score-only engine when none runs here; show progress in the header."""
        from engine import launch
        from store.scoring import request_scoring

        exp_id = experiment_id if experiment_id is not None else self.experiment_id
        if exp_id is None:
            self.notify("select an experiment first", severity="warning")
            return
        from store.scoring import unscored_done_runs

        done, lacking = unscored_done_runs(self.store, exp_id)
        if not lacking:
            # Queueing a request that would score nothing only to report "scoring done" later
            # said work was happening when none was.
            self.notify(
                f"nothing to score in experiment {exp_id}: "
                + (
                    f"all {done} finished runs have their scores "
                    f"(`mtp score {exp_id} --rescore` scores them again)"
                    if done
                    else "no run has finished with an image yet"
                )
            )
            return
        req, created = request_scoring(self.store, exp_id)
        note = "" if created else " (already queued)"
        if not launch.engine_running(self.store.home.root):
            try:
                launch.start_engine(
                    self.store.home.root,
                    device="cpu",
                    demo=self.demo,
                    extra_args=["--score-only", "--once"],
                )
            except Exception as exc:
                self.notify(
                    f"scoring queued{note}, but the engine did not start: {exc}",
                    severity="error",
                    timeout=10,
                )
                return
        self.notify(f"scoring of experiment {exp_id} queued{note}")
        self._score_watch = getattr(self, "_score_watch", set()) | {req.id}
        if getattr(self, "_score_timer", None) is None:
            self._score_timer = self.set_interval(1.0, self._score_progress)

    def _score_progress(self) -> None:
        from store.models import ScoreRequestStatus
        from store.scoring import get_request

        lines = []
        for rid in sorted(self._score_watch):
            req = get_request(self.store, rid)
            if req is None or req.status in (ScoreRequestStatus.DONE, ScoreRequestStatus.FAILED):
                self._score_watch.discard(rid)
                if req is not None and req.status == ScoreRequestStatus.FAILED:
                    self.notify(f"scoring failed: {req.error}", severity="error", timeout=15)
                elif req is not None:
                    self.notify(
                        f"scoring done: {req.scored} run(s) scored"
                        + (f", {req.failed} not scorable" if req.failed else "")
                    )
                continue
            lines.append(
                "scoring: waiting for an engine"
                if req.status == ScoreRequestStatus.QUEUED
                else f"scoring {req.scored + req.failed}/{req.total}"
            )
        self.sub_title = str(self.store.home.root) + (f"  [{'; '.join(lines)}]" if lines else "")
        if not self._score_watch and self._score_timer is not None:
            self._score_timer.stop()
            self._score_timer = None

    def stop_engine(self) -> None:
        """Stop this host's engines and cancel the data folder's SLURM jobs (`mtp engine stop`)."""
        from engine import launch, slurm

        try:
            launch.stop_engine(self.store.home.root)
        except Exception as exc:
            self.notify(f"could not stop the engine: {exc}", severity="error", timeout=10)
            return
        self.notify("engine asked to stop after its current run")
        if slurm.available():
            # squeue/scancel wait on slurmctld: off the UI thread.
            self.run_worker(self._cancel_jobs, thread=True, group="slurm", exit_on_error=False)

    def _cancel_jobs(self) -> None:
        from engine import slurm
        from store.db import HOME_ID_KEY

        try:
            jobs = slurm.cancel_jobs(self.store.get_meta(HOME_ID_KEY))
        except slurm.SlurmError as exc:
            msg = f"could not cancel the SLURM jobs: {exc}"
            self.call_from_thread(self.notify, msg, severity="error", timeout=10)
            return
        if jobs:
            msg = f"cancelled SLURM job(s) {', '.join(jobs)}: their engines give their runs back"
            self.call_from_thread(self.notify, msg)


def build_parser() -> argparse.ArgumentParser:
    from store.entrypoint import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="mtp-tui",
        description="mtp research workbench: build sweeps, watch the queue, browse runs and results.",
    )
    add_common_arguments(parser)
    return parser


def open_store(where):
    """The store of `where` (store.entrypoint.Where); the demo folder is seeded on first open."""
    from store.db import Store

    store = Store(where.resolve_home())
    if where.demo:
        from store.demo import seed_demo_if_empty

        seed_demo_if_empty(store)
    return store


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from store.entrypoint import exit_code, start
    from store.errors import MtpError

    try:
        store = open_store(start("mtp-tui", args))
    except MtpError as exc:
        return exit_code("mtp-tui", exc)
    # textual-image must query the terminal before Textual takes it over (see artifact_image).
    from .widgets import artifact_image  # noqa: F401

    try:
        MtpApp(store, demo=args.demo).run()
    finally:
        store.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
