"""`mtp suite import | list | show` and `mtp study create | list | show | leaderboard | export |
cancel | requeue | priority`: benchmark suites and the studies run over them."""

from __future__ import annotations

import argparse
import math

from .basic import add_sweep_arguments, apply_sweep_arguments
from .out import echo, one


def register(sub: argparse._SubParsersAction) -> None:
    suite = sub.add_parser(
        "suite", help="benchmark suites: ConsiStory+, DreamBench or mtp's own YAML"
    ).add_subparsers(dest="suite_cmd", metavar="ACTION")
    p = suite.add_parser(
        "import",
        help="read, check and store a suite (a ConsiStory+ YAML, a DreamBench dataset folder, "
        "an mtp suite YAML, or 'demo' for the two shipped demo suites)",
    )
    p.add_argument("path", help="file or folder; 'demo' imports both demo suites")
    p.add_argument("--name", help="the suite's name (default: the file or folder name)")
    p.add_argument(
        "--layout", choices=("consistory", "dreambench", "mtp"), help="default: detected"
    )
    p.add_argument(
        "--prompt-rule",
        help="ConsiStory+/mtp: how an image prompt is built, e.g. '{style} {subject} {setting}' "
        "(the authors' rule, the default)",
    )
    p.add_argument("--identifier", default="sks", help="DreamBench: the subject token (sks)")
    p.add_argument(
        "--live-classes",
        help="DreamBench: comma list of class words that get the live-subject prompts "
        "(default: cat,dog, as the dataset's authors)",
    )
    p.add_argument(
        "--model",
        default="runwayml/stable-diffusion-v1-5",
        help="base model recorded on the subjects' concepts",
    )
    p.set_defaults(func=cmd_suite_import, creates_home=True)
    p = suite.add_parser("list", help="suites with their units")
    p.set_defaults(func=cmd_suite_list)
    p = suite.add_parser("show", help="a suite's units and prompts")
    p.add_argument("suite")
    p.set_defaults(func=cmd_suite_show)

    study = sub.add_parser(
        "study", help="studies: a sweep over every unit of a suite, and its leaderboard"
    ).add_subparsers(dest="study_cmd", metavar="ACTION")
    p = study.add_parser(
        "create",
        help="one experiment per unit of --suite, the same grid and seeds for each "
        "(any sweep axis: --method, --layers, --final-step, --seeds, --param ...)",
    )
    p.add_argument("name")
    p.add_argument("--suite", required=True, help="suite name or id")
    add_sweep_arguments(p, prompts=False)
    p.add_argument(
        "--reference",
        default="",
        help="the configuration the leaderboard compares with (default: masactrl baseline)",
    )
    p.add_argument("--queue", action="store_true", help="queue the runs now")
    p.add_argument("--dry-run", action="store_true", help="print the run count and write nothing")
    p.add_argument("--priority", type=int, default=0)
    p.set_defaults(func=cmd_study_create, creates_home=True)
    p = study.add_parser("list", help="studies with progress")
    p.set_defaults(func=cmd_study_list)
    p = study.add_parser("show", help="a study's progress, ETA and configuration")
    p.add_argument("study")
    p.set_defaults(func=cmd_study_show)
    p = study.add_parser("queue", help="queue a draft study")
    p.add_argument("study")
    p.set_defaults(func=cmd_study_queue)
    p = study.add_parser(
        "leaderboard", help="per configuration: mean [95% interval] over units, paired tests"
    )
    p.add_argument("study")
    p.add_argument("--reference", help="configuration label or #row to compare with")
    p.add_argument("--sort", help="a metric to sort by (best first)")
    p.add_argument("--groups", action="store_true", help="also the per-group breakdown")
    p.set_defaults(func=cmd_study_leaderboard)
    p = study.add_parser(
        "export", help="the leaderboard as CSV, LaTeX and PNG, and the runs CSV behind it"
    )
    p.add_argument("study")
    p.add_argument("--reference", help="configuration label or #row to compare with")
    p.add_argument(
        "--to", help="export folder (default: <data folder>/exports); existing files are kept"
    )
    p.add_argument(
        "--grid", metavar="CONFIG", help="also a labelled image grid of this configuration"
    )
    p.set_defaults(func=cmd_study_export)
    p = study.add_parser("cancel", help="cancel a study's queued and running runs")
    p.add_argument("study")
    p.set_defaults(func=cmd_study_cancel)
    p = study.add_parser("requeue", help="requeue a study's failed and cancelled runs")
    p.add_argument("study")
    p.add_argument("--status", default="failed,cancelled")
    p.set_defaults(func=cmd_study_requeue)
    p = study.add_parser("priority", help="set a study's priority (higher runs first)")
    p.add_argument("study")
    p.add_argument("priority", type=int)
    p.set_defaults(func=cmd_study_priority)


# ---------------------------------------------------------------------------- suites
def cmd_suite_import(args, store) -> int:
    from store.studies.suites import import_suite, suite_units
    from store.suites import DEMO_SUITES

    live = (
        {c.strip() for c in args.live_classes.split(",") if c.strip()}
        if args.live_classes
        else None
    )
    paths = list(DEMO_SUITES.values()) if args.path == "demo" else [args.path]
    model = "tiny" if args.path == "demo" and args.model.startswith("runwayml/") else args.model
    for path in paths:
        suite = import_suite(
            store,
            path,
            name=None if args.path == "demo" else args.name,
            layout=None if args.path == "demo" else args.layout,
            prompt_rule=args.prompt_rule,
            identifier=args.identifier,
            live_classes=live,
            base_model=model,
        )
        assert suite.id is not None
        units = suite_units(store, suite.id)
        images = sum(len(u.prompts) for u in units)
        echo(
            f"suite {suite.id}: {one(suite.name)} ({suite.layout}, {len(units)} units, "
            f"{images} prompts; prompt rule: {one(suite.prompt_rule)})"
        )
    return 0


def cmd_suite_list(args, store) -> int:
    from store.studies.suites import list_suites

    rows = list_suites(store)
    if not rows:
        echo("no suites yet: mtp suite import FILE|FOLDER (or 'demo')")
    for suite, n in rows:
        echo(f"{suite.id:>4}  {one(suite.name):<28} {suite.layout:<11} {n} units")
    return 0


def cmd_suite_show(args, store) -> int:
    from store.studies.suites import suite_by_ref, suite_units

    suite = suite_by_ref(store, args.suite)
    assert suite.id is not None
    echo(f"suite {suite.id}: {one(suite.name)} ({suite.layout}) from {one(suite.source)}")
    echo(f"prompt rule: {one(suite.prompt_rule)}")
    for u in suite_units(store, suite.id):
        extra = " live" if u.live else ""
        echo(f"  {one(u.name)} [{one(u.group_name)}{extra}] subject: {one(u.subject_prompt)}")
        for prompt in u.prompts:
            echo(f"      {one(prompt)}")
    return 0


# ---------------------------------------------------------------------------- studies
def cmd_study_create(args, store) -> int:
    from store.studies.create import create_study, plan_study, with_method_defaults
    from store.studies.suites import suite_by_ref
    from store.sweep.spec import ExperimentSpec

    template = ExperimentSpec()
    apply_sweep_arguments(template, args)
    if args.dry_run:
        suite = suite_by_ref(store, args.suite)
        planned = plan_study(store, args.name, suite, with_method_defaults(template))
        echo(f"{sum(len(p.rows) for p in planned)} runs over {len(planned)} units")
        return 0
    study, total = create_study(
        store,
        args.name,
        args.suite,
        template,
        queue=args.queue,
        priority=args.priority,
        reference=args.reference,
    )
    state = "queued" if args.queue else "draft: mtp study queue " + one(study.name)
    echo(f"study {study.id}: {one(study.name)} ({total} runs, {state})")
    return 0


def cmd_study_list(args, store) -> int:
    from store.studies.create import list_studies
    from store.studies.progress import study_progress

    studies = list_studies(store)
    if not studies:
        echo("no studies yet: mtp study create NAME --suite S ... --queue")
    for st in studies:
        assert st.id is not None
        echo(f"{st.id:>4}  {one(st.name):<24} {study_progress(store, st.id).line()}")
    return 0


def cmd_study_show(args, store) -> int:
    from store.studies.create import study_by_ref, study_experiments, study_template
    from store.studies.progress import study_progress
    from store.studies.suites import suite_by_ref

    st = study_by_ref(store, args.study)
    assert st.id is not None
    suite = suite_by_ref(store, st.suite_id)
    exps = study_experiments(store, st.id)
    spec = study_template(st)
    echo(f"study {st.id}: {one(st.name)} on suite {one(suite.name)} ({suite.layout})")
    echo(f"{len(exps)} units (one experiment each), priority {st.priority}")
    echo(
        f"methods {one(spec.method)}; layers {one(spec.layers)}; steps {one(spec.start_step)}"
        f"..{one(spec.final_step)} of {spec.num_steps}; skip {one(spec.skip_interval)}; "
        f"seeds {one(spec.seeds)}; model {one(spec.model)}"
    )
    echo(study_progress(store, st.id).line())
    return 0


def cmd_study_queue(args, store) -> int:
    from store.studies.create import queue_study, study_by_ref

    st = study_by_ref(store, args.study)
    assert st.id is not None
    echo(f"queued {queue_study(store, st.id)} run(s) of study {one(st.name)}")
    return 0


def _fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return "<.001" if v < 0.001 else f"{v:.3f}"


def cmd_study_leaderboard(args, store) -> int:
    from store.report.leaderboard import build_leaderboard, sort_rows
    from store.studies.create import study_by_ref
    from store.studies.progress import study_progress

    st = study_by_ref(store, args.study)
    assert st.id is not None
    board = build_leaderboard(store, st.id, reference=args.reference)
    if args.sort:
        if args.sort not in board.metrics:
            from store.errors import InputError

            raise InputError(
                f"--sort: {args.sort!r} is not a metric here ({', '.join(board.metrics)})"
            )
        sort_rows(board, args.sort)
    echo(
        f"study {one(board.study)} on {one(board.suite)}: {len(board.units)} {board.unit_word}s "
        f"(the unit); {study_progress(store, st.id).line()}"
    )
    echo(f"interval: {board.interval_text}; test: {board.test_text}")
    echo(f"reference: {one(board.reference)}")
    if not board.metrics:
        echo("no scores yet")
        return 0
    for i, row in enumerate(board.rows):
        mark = ("R" if row.is_reference else " ") + ("P" if row.pareto else " ")
        echo(f"#{i + 1:<3}{mark} {one(row.label)}  ({row.runs} runs)")
        for m in board.metrics:
            s = row.stats.get(m)
            if s is None:
                continue
            line = f"      {m:<13} {_fmt(s.mean)} [{_fmt(s.low)}, {_fmt(s.high)}] n={s.n}"
            pr = row.paired.get(m)
            if pr is not None:
                line += (
                    f"   diff {pr.mean_diff:+.3g} [{pr.low:+.3g}, {pr.high:+.3g}]"
                    f" p={_p(pr.p)} p_holm={_p(row.p_holm.get(m))} (n={pr.n})"
                )
            echo(line)
        if args.groups:
            for g, by_m in sorted(row.groups.items()):
                cells = "  ".join(f"{m}={_fmt(v)} (n={n})" for m, (v, n) in by_m.items())
                echo(f"      [{one(g)}] {cells}")
    echo("R: reference, P: on the Pareto front of clip_t vs " + str(board.consistency_metric))
    return 0


def cmd_study_export(args, store) -> int:
    from store.report.leaderboard import build_leaderboard
    from store.report.leaderboard_export import export_study
    from store.studies.create import study_by_ref

    st = study_by_ref(store, args.study)
    assert st.id is not None
    board = build_leaderboard(store, st.id, reference=args.reference)
    grid = board.row(args.grid) if args.grid else None
    for path in export_study(store, st.id, board, args.to, grid):
        echo(f"wrote {one(str(path))}")
    return 0


def cmd_study_cancel(args, store) -> int:
    from store.studies.create import cancel_study, study_by_ref

    st = study_by_ref(store, args.study)
    assert st.id is not None
    res = cancel_study(store, st.id)
    echo(
        f"cancelled {res['cancelled']} queued run(s); {res['requested']} running run(s) will stop "
        "at their next step"
    )
    return 0


def cmd_study_requeue(args, store) -> int:
    from store.errors import InputError
    from store.models import RunStatus
    from store.studies.create import requeue_study, study_by_ref

    statuses = [s.strip() for s in args.status.split(",") if s.strip()]
    bad = [s for s in statuses if s not in RunStatus.FINISHED]
    if bad:
        raise InputError(
            f"--status: {', '.join(bad)} cannot be requeued (use failed, cancelled or done)"
        )
    st = study_by_ref(store, args.study)
    assert st.id is not None
    echo(f"requeued {requeue_study(store, st.id, statuses)} run(s)")
    return 0


def cmd_study_priority(args, store) -> int:
    from store.studies.create import set_study_priority, study_by_ref

    st = study_by_ref(store, args.study)
    assert st.id is not None
    n = set_study_priority(store, st.id, args.priority)
    echo(f"study {one(st.name)}: priority {args.priority}, {n} queued run(s) moved")
    return 0
