"""`mtp init | concept | experiment | runs | demo`: build and inspect sweeps without the app."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from store.models import WEIGHT_KINDS
from store.sweep.spec import AXES, PRESETS, ExperimentSpec

from .out import echo, one


def add_sweep_arguments(p: argparse.ArgumentParser, prompts: bool = True) -> None:
    """The sweep's options (base settings and every axis), shared by `experiment create` and
    `study create` (a study takes its prompts from the suite: ``prompts=False``)."""
    p.add_argument("--model")
    p.add_argument("--source-prompt")
    p.add_argument("--source-image", help="a real image to invert as the source (DDIM inversion)")
    p.add_argument(
        "--invert",
        action="store_true",
        default=None,
        help="invert --source-image (implied by it; stated for clarity)",
    )
    if prompts:
        p.add_argument("--prompt", action="append", help="target prompt (repeatable)")
    p.add_argument("--steps", type=int, dest="num_steps")
    p.add_argument("--guidance", type=float)
    p.add_argument("--size", type=int, help="width and height")
    p.add_argument("--no-baseline", action="store_true", help="do not add no-control baseline runs")
    helps = {
        "method": "consistency method(s), a comma list swept like the seeds: "
        "masactrl (default), consistent_sa, consistory",
        "inversion_guidance": "classifier-free guidance while inverting --source-image, sweep grammar "
        "(default 1 = none, the better-behaved choice; MasaCtrl's notebook: 7.5)",
    }
    for name in AXES:
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            help=helps.get(name, f"sweep grammar for {name}"),
        )
    p.add_argument(
        "--param",
        action="append",
        metavar="METHOD.NAME=VALUES",
        help="a method's own parameter in sweep grammar, e.g. consistory.mask_dropout=0,0.5 "
        "(repeatable; unset ones keep the authors' defaults)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create the data folder and database, print where they are")
    p.set_defaults(func=cmd_init, creates_home=True)

    p = sub.add_parser(
        "demo",
        help="add the demo concept and experiments (tiny random model) to the demo "
        "data folder, <data folder>/demo (address it with mtp --demo ...)",
    )
    p.set_defaults(func=cmd_demo, uses_demo_home=True, creates_home=True)

    concept = sub.add_parser(
        "concept", help="concepts: a subject with reference images"
    ).add_subparsers(dest="concept_cmd", metavar="ACTION")
    p = concept.add_parser(
        "add", help="add a concept (reference images are copied into the data folder)"
    )
    p.add_argument("name")
    p.add_argument(
        "--token", default="", help="the token written in prompts, e.g. '<new1>' or 'sks'"
    )
    p.add_argument("--class-word", default="", help="e.g. 'dog'; replaces the token for CLIP-T")
    p.add_argument("--image", action="append", default=[], help="reference image (repeatable)")
    p.add_argument("--weights", default=None, help="personalization weights file")
    p.add_argument("--weights-kind", default="none", choices=WEIGHT_KINDS)
    p.add_argument(
        "--model", default="runwayml/stable-diffusion-v1-5", help="hub id or local folder"
    )
    p.add_argument("--notes", default="")
    p.set_defaults(func=cmd_concept_add, creates_home=True)
    p = concept.add_parser("list", help="list concepts")
    p.set_defaults(func=cmd_concept_list)

    exp = sub.add_parser("experiment", help="experiments: sweep definitions").add_subparsers(
        dest="experiment_cmd", metavar="ACTION"
    )
    p = exp.add_parser("create", help="define a sweep; --queue to queue its runs")
    p.add_argument("name")
    p.add_argument("--concept", help="concept name or id")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="start from one of the seed's four sweeps"
    )
    p.add_argument("--spec", help="a JSON file with ExperimentSpec fields")
    add_sweep_arguments(p)
    p.add_argument("--queue", action="store_true", help="queue the runs now")
    p.add_argument("--dry-run", action="store_true", help="print the run count and write nothing")
    p.add_argument("--tags", default="")
    p.add_argument("--notes", default="")
    p.add_argument("--priority", type=int, default=0)
    p.set_defaults(func=cmd_experiment_create, creates_home=True)
    p = exp.add_parser("list", help="experiments with progress")
    p.add_argument("--archived", action="store_true", help="include archived experiments")
    p.set_defaults(func=cmd_experiment_list)
    p = exp.add_parser("show", help="an experiment's spec and counts")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_experiment_show)
    p = exp.add_parser("queue", help="queue a draft")
    p.add_argument("experiment")
    p.set_defaults(func=cmd_experiment_queue)
    p = exp.add_parser("duplicate", help="copy an experiment into a new draft")
    p.add_argument("experiment")
    p.add_argument("--name")
    p.set_defaults(func=cmd_experiment_duplicate)
    p = exp.add_parser(
        "delete", help="delete an experiment with its runs, scores and artifact folders"
    )
    p.add_argument("experiment")
    p.add_argument(
        "--yes", action="store_true", help="do not ask (needed when stdin is not a terminal)"
    )
    p.set_defaults(func=cmd_experiment_delete)
    p = exp.add_parser(
        "archive", help="hide an experiment from Home and the queue, keeping its runs and files"
    )
    p.add_argument("experiment")
    p.add_argument("--undo", action="store_true", help="bring an archived experiment back")
    p.set_defaults(func=cmd_experiment_archive)

    p = sub.add_parser("runs", help="list runs (paged, filtered, sorted in SQL)")
    p.add_argument("experiment", nargs="?")
    p.add_argument("--status", help="comma separated statuses")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        help="a filter term as in the runs browser: final_step>5, final=end, thr=otsu, "
        "clip_t>=0.3, status=failed,done (repeatable)",
    )
    p.add_argument("--search", help="text in prompt, layers, tags, notes or error")
    p.add_argument("--method", help="comma separated methods (masactrl, consistent_sa, consistory)")
    p.add_argument("--sort", default="id", help="a column or score:METRIC")
    p.add_argument("--desc", action="store_true")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_runs)


def cmd_init(args, store) -> int:
    echo(f"data folder: {store.home.root}")
    echo(f"database:    {store.display_url} (schema {store.schema_version()})")
    return 0


def cmd_demo(args, store) -> int:
    from store.demo import DEMO_BANNER, seed_demo

    concept, exp = seed_demo(store)
    echo(DEMO_BANNER)
    echo(f"demo data folder: {store.home.root}")
    echo(
        f"concept {one(concept.name)} (id {concept.id}); experiment {exp.name!r} (id {exp.id}, {exp.run_count} runs)"
    )
    home = f" --home {args.home}" if args.home else ""
    echo(f"browse it with: mtp --demo{home} runs   or   mtp-tui --demo{home}")
    echo(f"run it with:    mtp-engine --demo{home} --once")
    return 0


def cmd_concept_add(args, store) -> int:
    from store.queries import save_concept

    c = save_concept(
        store,
        args.name,
        token=args.token,
        class_word=args.class_word,
        ref_images=args.image,
        weights_path=args.weights,
        weights_kind=args.weights_kind,
        base_model=args.model,
        notes=args.notes,
    )
    echo(f"concept {c.id}: {one(c.name)} ({len(c.ref_images)} reference images)")
    return 0


def cmd_concept_list(args, store) -> int:
    from store.queries import list_concepts

    for c in list_concepts(store):
        echo(
            f"{c.id:>4}  {one(c.name):<24} token={c.token!r:<12} class={c.class_word!r:<10} "
            f"refs={len(c.ref_images)} weights={c.weights_kind} model={one(c.base_model)}"
        )
    return 0


def _concept_id(store, ref) -> int | None:
    from store.queries import InputError, concept_by_name, get_concept

    if ref is None:
        return None
    c = get_concept(store, int(ref)) if str(ref).isdigit() else concept_by_name(store, ref)
    if c is None:
        raise InputError(f"no concept {ref!r}")
    return c.id


def _experiment(store, ref):
    from store.queries import InputError, experiment_by_ref

    exp = experiment_by_ref(store, ref)
    if exp is None:
        raise InputError(f"no experiment {ref!r}")
    return exp


def read_spec_file(path: str) -> ExperimentSpec:
    """An ExperimentSpec from a JSON file; every problem is one InputError line (the file, and
    where the JSON breaks), and a field the spec does not have is refused, not ignored."""
    from dataclasses import fields

    from store.queries import InputError

    try:
        text = Path(path).expanduser().read_text()
    except FileNotFoundError:
        raise InputError(f"--spec: no such file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"--spec: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"--spec: {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise InputError(f"--spec: {path} must hold one JSON object of spec fields")
    known = {f.name for f in fields(ExperimentSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(
            f"--spec: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in {path} (spec fields: {', '.join(sorted(known))})"
        )
    try:
        return ExperimentSpec.from_json(data)
    except TypeError as exc:
        raise InputError(f"--spec: {path}: {exc}") from None


def apply_sweep_arguments(spec: ExperimentSpec, args) -> None:
    """Set what was given on the command line (see add_sweep_arguments) on ``spec``."""
    for name in (
        "model",
        "source_prompt",
        "source_image",
        "invert",
        "num_steps",
        "guidance",
        *AXES,
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(spec, name, value)
    if spec.source_image:
        from pathlib import Path

        from store.images import InputError, check_image

        # The engine reads it later, maybe from another folder: refuse a bad file now and keep
        # the path absolute (a relative one would be taken as relative to the data folder).
        try:
            check_image(spec.source_image)
        except InputError as exc:
            raise InputError(f"source image: {exc}") from None
        spec.source_image = str(Path(spec.source_image).expanduser().resolve())
    if getattr(args, "prompt", None):
        spec.target_prompts = args.prompt
    if args.size:
        spec.width = spec.height = args.size
    if args.no_baseline:
        spec.baseline = False
    if args.param:
        from store.sweep.methods import parse_param_option

        params = {m: dict(v) for m, v in (spec.method_params or {}).items()}
        for option in args.param:
            method, name, values = parse_param_option(option)
            params.setdefault(method, {})[name] = values
        spec.method_params = params


def cmd_experiment_create(args, store) -> int:
    from store.queries import get_concept, save_experiment
    from store.sweep.spec import expand, source_prompt_for

    concept_id = _concept_id(store, args.concept)
    spec = ExperimentSpec()
    if concept_id:
        concept = get_concept(store, concept_id)
        spec.model = concept.base_model
        # Like the sweep builder: the source shows the concept's class, so mask words match it.
        spec.source_prompt = source_prompt_for(concept.class_word) or spec.source_prompt
    if args.spec:
        spec = read_spec_file(args.spec)
    if args.preset:
        for k, v in PRESETS[args.preset].items():
            setattr(spec, k, v)
    apply_sweep_arguments(spec, args)
    if args.dry_run:
        concept = get_concept(store, concept_id) if concept_id else None
        echo(f"{len(expand(spec, concept))} runs")
        return 0
    exp = save_experiment(
        store,
        args.name,
        spec,
        concept_id,
        queue=args.queue,
        tags=args.tags,
        notes=args.notes,
        priority=args.priority,
    )
    echo(f"experiment {exp.id}: {one(exp.name)} ({exp.run_count} runs, {exp.status})")
    return 0


def cmd_experiment_list(args, store) -> int:
    from store.queries import list_experiments

    for row in list_experiments(store, include_archived=args.archived):
        e = row.experiment
        echo(
            f"{e.id:>4}  {one(e.name):<32} {row.state:<9} {row.done}/{e.run_count} done, {row.failed} failed"
            f"  prio={e.priority} tags={one(e.tags)}"
        )
    return 0


def cmd_experiment_show(args, store) -> int:
    from store.queries import counts_by_status

    exp = _experiment(store, args.experiment)
    echo(f"experiment {exp.id}: {one(exp.name)} [{exp.status}] {exp.run_count} runs")
    echo(json.dumps(json.loads(exp.spec_json), indent=2, sort_keys=True))
    echo("status counts:", counts_by_status(store, exp.id))
    return 0


def cmd_experiment_queue(args, store) -> int:
    from store.queries import queue_experiment

    exp = queue_experiment(store, _experiment(store, args.experiment).id)
    echo(f"experiment {exp.id}: {exp.run_count} runs queued")
    return 0


def cmd_experiment_duplicate(args, store) -> int:
    from store.queries import duplicate_experiment

    exp = duplicate_experiment(store, _experiment(store, args.experiment).id, args.name)
    echo(f"experiment {exp.id}: {one(exp.name)} (draft)")
    return 0


def cmd_experiment_delete(args, store) -> int:
    import sys

    from store.queries import counts_by_status, delete_experiment

    exp = _experiment(store, args.experiment)
    n = sum(counts_by_status(store, exp.id).values())
    if not args.yes:
        if not sys.stdin.isatty():
            echo(
                f"mtp: deleting {exp.name!r} removes {n} runs and their files; pass --yes to confirm",
                file=sys.stderr,
            )
            return 2
        answer = input(
            one(f"delete experiment {exp.id} {exp.name!r} with {n} runs, scores and images? [y/N] ")
        )
        if answer.strip().lower() not in ("y", "yes"):
            echo("nothing deleted")
            return 1
    removed = delete_experiment(store, exp.id)
    echo(f"deleted experiment {exp.id} {exp.name!r} ({removed} runs)")
    return 0


def cmd_experiment_archive(args, store) -> int:
    from store.queries import archive_experiment

    exp = archive_experiment(store, _experiment(store, args.experiment).id, archived=not args.undo)
    echo(f"experiment {exp.id} {exp.name!r}: {exp.status}")
    return 0


def cmd_runs(args, store) -> int:
    from store.queries import InputError, RunFilter, list_runs, run_scores
    from store.runfilter import parse_filter
    from store.sweep.spec import controlled_steps

    filt = RunFilter(
        experiment_id=_experiment(store, args.experiment).id if args.experiment else None,
        statuses=[s for s in (args.status or "").split(",") if s],
        text=args.search,
        methods=[m.strip() for m in (args.method or "").split(",") if m.strip()],
    )
    for item in args.where:
        # The runs browser's filter grammar, one term per --where (a value may hold spaces).
        key, sep, value = item.partition("=")
        quoted = item if not sep or " " not in value else f'{key}="{value}"'
        term = parse_filter(quoted)
        if term.text:
            raise InputError(
                f"--where needs a comparison such as final_step>5, got {item!r} "
                "(--search looks for text)"
            )
        filt.equals.update(term.equals)
        filt.compare.extend(term.compare)
        filt.statuses = term.statuses or filt.statuses
        for name in ("tag", "marked", "baseline"):
            if getattr(term, name) is not None:
                setattr(filt, name, getattr(term, name))
        if term.experiment_id is not None:
            filt.experiment_id = term.experiment_id
    rows, total = list_runs(
        store, filt, sort=args.sort, descending=args.desc, offset=args.offset, limit=args.limit
    )
    metric = args.sort.split(":", 1)[1] if args.sort.startswith("score:") else None
    scores = run_scores(store, [r.id for r in rows]) if metric else {}
    echo(f"{total} runs match; showing {args.offset + 1 if rows else 0}-{args.offset + len(rows)}")
    for r in rows:
        control = (
            "baseline"
            if r.is_baseline
            else (
                f"layers={r.layers} "
                + controlled_steps(r.start_step, r.final_step, r.skip_interval, r.num_steps)
                + f" mask={r.mask_mode}"
            )
        )
        if r.invert and r.inversion_guidance is not None:
            control += f" inversion_guidance={r.inversion_guidance:g}"
        err = f"  error: {one(r.error.splitlines()[-1])}" if r.error else ""
        if r.score_error:
            err += f"  not scored: {one(r.score_error.splitlines()[-1])}"
        method = r.method or "masactrl"
        if method != "masactrl":
            # A set method's run is one image of a set: which one, and the method's settings.
            control += f" set#{r.prompt_index} {_params_text(r.method_params)}".rstrip()
        # Sorted by a score: that score leads the line, so the order can be checked by eye.
        shown = ""
        if metric:
            value = scores.get(r.id, {}).get(metric)
            shown = f"{metric}={value:.4f} " if value is not None else f"{metric}=- "
        echo(
            f"{r.id:>6} {r.status:<9} {method:<13} {shown}seed={r.seed} {one(control)}  "
            f"{one(repr(r.target_prompt))}{err}"
        )
    return 0


def _params_text(canonical: str) -> str:
    """A run's method parameters as name=value words (canonical JSON in the store)."""
    if not canonical:
        return ""
    return " ".join(f"{k}={v}" for k, v in json.loads(canonical).items())
