"""The command palette (ctrl+p): the main actions by name, for users who forget the keys."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

# (title, help, app method name, args)
COMMANDS: list[tuple[str, str, str, tuple]] = [
    ("Home", "Concepts, experiments, queue and workers", "action_open", ("home",)),
    ("New concept", "Reference images, token, weights, base model", "action_open", ("concept",)),
    (
        "New sweep",
        "Build an experiment from base settings and sweep axes",
        "action_open",
        ("sweep",),
    ),
    ("Runs browser", "Filter, sort, tag and re-queue runs", "action_open", ("runs",)),
    ("Results", "Aggregate table, trade-off plot and image grid", "action_open", ("results",)),
    ("Export", "CSV of runs or summary, PNG plot or grid", "action_open", ("export",)),
    (
        "Leaderboard",
        "A study's configurations over a suite's units, paired intervals",
        "action_open",
        ("leaderboard",),
    ),
    ("Pause / resume queue", "Engines finish their current run, then wait", "toggle_pause", ()),
    ("Start engine (cpu)", "Start a detached engine on this machine", "start_engine", ("cpu",)),
    ("Start engine (cuda)", "Start a detached engine on the GPU", "start_engine", ("cuda",)),
    (
        "Score experiment",
        "Score the current experiment's images without regenerating (mtp score)",
        "score_experiment",
        (),
    ),
    ("Stop engine", "Ask running engines to stop after their current run", "stop_engine", ()),
    ("Help", "Every key binding on this screen and globally", "action_help", ()),
]


class MtpCommands(Provider):
    def _call(self, method: str, args: tuple) -> None:
        getattr(self.app, method)(*args)

    async def discover(self) -> Hits:
        for title, help_text, method, args in COMMANDS:
            yield DiscoveryHit(title, partial(self._call, method, args), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, method, args in COMMANDS:
            score = matcher.match(title)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(title),
                    partial(self._call, method, args),
                    help=help_text,
                )
