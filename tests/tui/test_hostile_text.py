"""Hostile user text (names, prompts, tags, notes, concept names, file names, error texts) never
reaches the terminal raw, and is never read as markup: through every `mtp` command's output, the
CSV exports and every screen of the app.

The corpus: an OSC 0 window title, a CSI 2J screen clear, an OSC 8 hyperlink to /etc/passwd,
BEL, a C1 CSI (U+009B), a right-to-left override, a zero-width space, and Rich/Textual markup
(`[bold red]x[/] [link=file:///etc/passwd]click[/link]`) that must show literally.
"""

from __future__ import annotations

import csv
import unicodedata

import pytest

from store.models import Run, Worker
from tests.tui import SIZE, wait_for, write_png
from tui.cli.main import main

# Each test using `store` runs on SQLite and on PostgreSQL (the CSV export takes a different
# path on each: raw rows with one scan per chunk, or cell by cell).
DB_BACKENDS = ("sqlite", "postgresql")

EVIL = (
    "\x1b]0;pwned\x07"  # window title
    "\x1b[2J"  # clear the screen
    "\x1b]8;;file:///etc/passwd\x1b\\here\x1b]8;;\x1b\\"  # hyperlink
    "\x07\x9b31m"  # BEL, C1 CSI
    "\u202eevil\u200b"  # bidi override, zero-width space
)
MARKUP = "[bold red]x[/] [link=file:///etc/passwd]click[/link]"


def hostile(label: str) -> str:
    return f"{label} {MARKUP} {EVIL}"


def unsafe(text: str) -> list[str]:
    """Characters a terminal would act on, or that hide or reorder text (tab/newline allowed)."""
    return sorted(
        {
            f"U+{ord(ch):04X}"
            for ch in text
            if ch not in "\t\n"
            and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")
            or ch in "\x9b\u202e\u200b"
        }
    )


def assert_clean(text: str, where: str) -> None:
    assert not unsafe(text), f"{where}: {unsafe(text)} in {text!r}"


def seed_hostile(store, tmp_path):
    """A concept, a queued experiment with done/failed runs, a draft and a paused worker, every
    text field hostile; a reference image whose file name is hostile too."""
    from store.queries import save_concept, save_experiment, update_runs
    from store.sweep.spec import ExperimentSpec
    from tests.tui import add_scores

    model = store.home.models / "fake-sd"
    model.mkdir(parents=True, exist_ok=True)
    ref = write_png(tmp_path / "refs" / f"ref {EVIL.replace('/', '_')}.png")
    concept = save_concept(
        store,
        hostile("concept"),
        token="sks",
        class_word="dog",
        ref_images=[ref],
        base_model=str(model),
        notes=hostile("concept notes"),
    )
    spec = ExperimentSpec(
        model=str(model),
        num_steps=20,
        target_prompts=[f"a sks dog {MARKUP} {EVIL}", "a sks dog in snow"],
        seeds="0",
        layers="decoder",
        start_step="4",
        final_step="10,end",
    )
    exp = save_experiment(
        store,
        hostile("exp"),
        spec,
        concept.id,
        queue=True,
        tags=hostile("tag"),
        notes=hostile("note"),
    )
    draft = save_experiment(store, hostile("draft"), spec, concept.id, queue=False)
    runs = add_scores(store, exp.id)
    ids = [r.id for r in runs]
    update_runs(store, ids, tags=hostile("runtag"), notes=hostile("runnote") + "\nline two")
    with store.write() as s:
        failed = s.get(Run, ids[-1])
        failed.status = "failed"
        failed.error = "Traceback (most recent call last):\n  boom\nValueError: " + hostile("err")
        s.add(failed)
        scored = s.get(Run, ids[0])
        scored.score_error = "RuntimeError: " + hostile("scoring")
        s.add(scored)
        s.add(
            Worker(
                id="host:1:cpu",
                host="host",
                pid=1,
                device="cpu",
                status="paused",
                message=hostile("disk full"),
            )
        )
    return concept, exp, draft, ids, ref


# ---------------------------------------------------------------- the mtp CLI
@pytest.fixture
def cli(store, capsys):
    home = str(store.home.root)

    def run(*argv, code=0):
        got = main(["--home", home, *argv])
        out = capsys.readouterr()
        assert got == code, (argv, out.out, out.err)
        assert_clean(out.out, f"mtp {argv!r} (stdout)")
        assert_clean(out.err, f"mtp {argv!r} (stderr)")
        return out.out + out.err

    return run


def test_every_command_prints_hostile_text_safe_and_literal(store, tmp_path, cli, monkeypatch):
    concept, exp, draft, ids, ref = seed_hostile(store, tmp_path)
    monkeypatch.chdir(tmp_path)
    model = str(store.home.models / "fake-sd")
    out = cli(
        "concept", "add", hostile("c2"), "--image", str(ref), "--model", model,
        "--notes", hostile("n"),
    )  # fmt: skip
    assert MARKUP in out and "\\x1b]0;pwned\\x07" in out
    assert MARKUP in cli("concept", "list")
    out = cli(
        "experiment", "create", hostile("e2"), "--model", model, "--prompt", hostile("prompt"),
        "--tags", hostile("t"), "--notes", hostile("n"), "--steps", "10", "--final-step", "5",
    )  # fmt: skip
    assert MARKUP in out and "\\u202e" in out and "\\x9b" in out
    out = cli("experiment", "list")
    assert out.count(MARKUP) >= 2  # names and tags, literally
    cli("experiment", "show", str(exp.id))
    cli("experiment", "duplicate", str(exp.id), "--name", hostile("dup"))
    cli("experiment", "archive", str(draft.id))
    cli("experiment", "archive", str(draft.id), "--undo")
    out = cli("runs", str(exp.id))
    assert "ValueError" in out and "\\x1b[2J" in out
    cli("runs", "--search", "sks")
    for rid in (ids[0], ids[-1]):
        out = cli("show", str(rid))
        assert "not drawn: the output is not a terminal" in out or "no image recorded" in out
        assert MARKUP in out
    cli("queue")
    out = cli("workers")
    assert "disk full" in out and MARKUP in out
    cli("priority", str(exp.id), "3")
    cli("cancel", "--run", str(ids[1]))
    cli("requeue", str(exp.id))
    # Errors that echo what was typed
    out = cli("experiment", "show", hostile("missing"), code=2)
    assert "missing" in out
    cli("runs", "--where", hostile("w"), code=2)
    cli("concept", "add", hostile("concept"), "--model", model, code=2)  # the name is taken
    # Exports: stdout is the file's path; stderr the grid caption (pins name prompts)
    cli("export", "runs", str(exp.id), "--csv", "runs.csv")
    cli("export", "summary", str(exp.id), "--by", "target_prompt", "--csv", "summary.csv")
    cli("export", "grid", str(exp.id), "--by", "final_step", "--x", "target_prompt")
    cli("export", "plot", str(exp.id), "--by", "target_prompt", "--text")
    for name in ("runs.csv", "summary.csv"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert_clean(text.replace("\r\n", "\n"), name)
    with open(tmp_path / "runs.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert any(MARKUP in r["tags"] and "\\x1b]0;pwned\\x07" in r["tags"] for r in rows)
    assert any(r["notes"].endswith("\nline two") for r in rows)  # newlines in notes kept


def test_csv_cell_by_cell_path_is_safe_too(store, tmp_path):
    """The non-SQLite export formats cell by cell: the same sanitising applies (forced here
    on SQLite by taking that path)."""
    from store.report import export as ex

    _concept, exp, *_ = seed_hostile(store, tmp_path)
    rows = [
        row for chunk in ex.iter_rows(store, ex.runs_query(store, exp.id)[0], 100) for row in chunk
    ]
    cells = [ex._csv_value(v) for row in rows for v in row]
    assert all(not unsafe(c) for c in cells if isinstance(c, str))
    assert ex._csv_text("=cmd\x1b[2J") == "'=cmd\\x1b[2J"  # formula-quoted and shown safe


# ---------------------------------------------------------------- the app
def rendered(app) -> str:
    """The current screen as the terminal would get it: every segment's text, and no segment
    styled as a hyperlink (markup in user text would make one)."""
    update = app.screen._compositor.render_full_update()
    lines = []
    for line in update.strips:
        segments = [seg for strip in line for seg in strip]
        for seg in segments:
            assert not (seg.style and seg.style.link), f"a hyperlink was drawn: {seg!r}"
        lines.append("".join(seg.text for seg in segments))
    # The bytes written to the terminal: styles and cursor moves only (CSI ... m / H), no OSC
    # (title, hyperlink), no BEL, no C1, no screen clear.
    raw = update.render_segments(app.console)
    for bad in ("\x1b]", "\x07", "\x9b", "\x1b[2J", "\u202e", "\u200b"):
        assert bad not in raw, f"{bad!r} written to the terminal"
    return "\n".join(lines)


def check_screen(app, where: str, literal: str | None = "[bold red]") -> str:
    text = rendered(app)
    assert_clean(text, where)
    if literal is not None:
        assert literal in text, f"{where}: {literal!r} not shown literally:\n{text}"
    for value in (app.title, app.sub_title, app.screen.title, app.screen.sub_title):
        assert_clean(value or "", f"{where}: title")
    return text


async def check(pilot, app, where: str, literal: str = "[bold red]") -> str:
    """check_screen once `literal` is on screen (a loaded machine paints late)."""
    await wait_for(pilot, lambda: literal in rendered(app), what=f"{where}: {literal!r} shown")
    return check_screen(app, where, literal)


async def test_every_screen_shows_hostile_text_safe_and_literal(store, tmp_path):
    from tui.app import MtpApp

    concept, exp, draft, ids, ref = seed_hostile(store, tmp_path)
    app = MtpApp(store)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        # Home: concepts, experiments (names, tags), workers (a paused engine's reason)
        await wait_for(
            pilot, lambda: app.screen.query_one("#experiments").row_count == 2, what="home"
        )
        text = await check(pilot, app, "home")
        assert "\\x1b]0;pwned" in text and "disk full" in text

        # Titles: whatever is set shows safe
        app.sub_title = hostile("sub")
        app.title = hostile("title")
        assert "\x1b" not in app.title and "\\x1b" in app.sub_title
        await check(pilot, app, "home, hostile titles")
        app.title, app.sub_title = "mtp", "data"

        # A notification echoing a name (queueing the draft) and one given raw
        home = app.screen
        table = home.query_one("#experiments")
        table.move_cursor(row=table.get_row_index(str(draft.id)))
        app.notify(hostile("raw notify"), title=hostile("t"))
        await wait_for(pilot, lambda: list(app.screen.query("Toast")), what="the toast")
        toasts = list(app.screen.query("Toast"))
        for toast in toasts:
            shown = str(toast.render())
            assert_clean(shown, "toast")
        assert any("[bold red]x[/]" in str(t.render()) for t in toasts)
        await check(pilot, app, "home with toasts")

        # The confirm dialog names the experiment
        await pilot.press("D")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen", what="confirm")
        await check(pilot, app, "confirm")
        await pilot.press("n")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "HomeScreen", what="back")

        # The sweep builder on the draft: name, prompts, concept select
        await pilot.press("E")
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "SweepScreen" and app.screen._ready,
            what="sweep builder",
        )
        sweep = app.screen
        await pilot.pause(0.2)
        await check(pilot, app, "sweep builder")
        assert "\x1b" not in sweep.query_one("#input-name").value
        assert "\x1b" not in sweep.query_one("#target_prompts").text
        # Pasted (bracketed paste, as a terminal sends it) and set text is held safe too
        from textual import events

        prompts, model = sweep.query_one("#target_prompts"), sweep.query_one("#input-model")
        prompts.focus()
        prompts.post_message(events.Paste("pasted \x1b[2J"))
        await wait_for(pilot, lambda: "pasted" in prompts.text, what="the paste")
        model.focus()
        model.post_message(events.Paste("pasted \x1b]0;x\x07"))
        await wait_for(pilot, lambda: "pasted" in model.value, what="the paste")
        await check(pilot, app, "sweep builder after paste")
        assert "\x1b" not in prompts.text and "\\x1b[2J" in prompts.text
        assert "pasted \\x1b]0;x\\x07" in model.value and "\x1b" not in model.value
        app.sweep_draft = None

        # Runs: prompts, tags, the status line
        app.action_open("runs", experiment_id=exp.id)
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "RunsScreen" and app.screen.loaded,
            what="runs",
        )
        runs = app.screen
        await pilot.pause(0.2)
        await check(pilot, app, "runs")
        # The tag prompt and the sort picker
        await pilot.press("t")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PromptScreen", what="prompt")
        check_screen(app, "tag prompt", literal=None)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is runs, what="back to runs")

        # Run detail of the failed run: error, notes, prompt in the title
        runs.query_one("#runs-table").move_cursor(row=len(ids) - 1)
        runs.action_open_run()
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "RunDetailScreen" and app.screen.bundle,
            what="run detail",
        )
        await pilot.pause(0.2)
        check_screen(app, "run detail", literal=None)  # its prompt is the harmless one
        detail = app.screen
        error = str(detail.query_one("#detail-error").content)
        assert "ValueError" in error and "[bold red]x[/]" in error and not unsafe(error)
        detail.query_one("#detail-info").scroll_visible(animate=False)  # params: tags, notes
        await wait_for(pilot, lambda: "runnote" in rendered(app), what="the parameters")
        text = await check(pilot, app, "run detail, parameters")
        assert "runnote" in text and "\\x1b[2J" in text
        await pilot.press("escape")

        # Results: the title names the experiment; the table's labels are prompts
        app.experiment_id = exp.id
        app.action_open("results", experiment_id=exp.id)
        await wait_for(
            pilot,
            lambda: type(app.screen).__name__ == "ResultsScreen" and app.screen.rows,
            what="results",
        )
        results = app.screen
        results.by = "target_prompt"
        results.reload()
        await wait_for(
            pilot, lambda: results.by == "target_prompt" and results.rows, what="regroup"
        )
        await pilot.pause(0.5)
        await check(pilot, app, "results")
        # The experiment picker lists names
        await pilot.press("o")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PickScreen", what="picker")
        await check(pilot, app, "experiment picker")
        await pilot.press("escape")

        # The concept editor: name, notes, the reference image's file name, the file tree
        app.action_open("concept", concept_id=concept.id)
        await wait_for(
            pilot,
            lambda: (
                type(app.screen).__name__ == "ConceptScreen"
                and app.screen.concept_id == concept.id
                and app.screen.images
            ),
            what="concept editor",
        )
        screen = app.screen
        screen.browse(ref.parent)
        await wait_for(
            pilot, lambda: len(screen.query_one("#tree").root.children) >= 1, what="file tree"
        )
        await pilot.pause(0.3)
        text = check_screen(app, "concept editor", literal=None)
        assert "\\x1b]0;pwned" in text  # the file name, escaped in the tree and the caption
        assert "\x1b" not in screen.query_one("#input-name").value


def test_safe_rich_escapes_and_keeps_styles():
    """The backstop for Text cells handed to FastTable: controls escaped, styles kept."""
    from rich.text import Text

    from tui.safe import assemble, safe_rich

    out = safe_rich(Text.assemble(("a\x1bb", "red"), "c\u202e"))
    assert out.plain == "a\\x1bbc\\u202e"
    red = set()
    for span in out.spans:
        if span.style == "red":
            red.update(range(span.start, span.end))
    assert red == set(range(len("a\\x1bb")))
    content = assemble(("[b]x[/b]\x07", "bold"), " ", MARKUP)
    assert content.plain == "[b]x[/b]\\x07 " + MARKUP  # markup taken literally
