"""`mtp show RUN`: a run's images and scores printed straight to the terminal (no app needed).

term-image picks kitty/iTerm2 graphics where the terminal has them and coloured blocks
elsewhere (inside tmux, and when the output is not a terminal, blocks are always used).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

SHOWN = ("experiment_id", "status", "target_prompt", "source_prompt", "seed", "num_steps", "guidance",
         "width", "height", "layers", "start_step", "final_step", "skip_interval", "mask_mode", "mask_layers",
         "mask_words", "mask_threshold", "mask_timing", "model", "is_baseline", "duration_s", "tags", "notes")
IMAGES = {"target": "image_path", "source": "source_image_path", "mask": "mask_path",
          "source-mask": "source_mask_path"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="print a run's image(s), scores and parameters to the terminal")
    p.add_argument("run", type=int, help="run id")
    p.add_argument("--image", action="append", choices=sorted(IMAGES), dest="images",
                   help="which image(s) to draw (repeatable; default: source and target)")
    p.add_argument("--width", type=int, default=40, help="image width in terminal columns (default 40)")
    p.add_argument("--no-image", action="store_true", help="scores and parameters only")
    p.set_defaults(func=cmd_show)


def _image_class():
    # term-image warns once when stdout is not a terminal; that is an expected case here.
    warnings.filterwarnings("ignore", message="It seems this process is not running within a terminal")
    from term_image.image import AutoImage, BlockImage

    if os.environ.get("TMUX") or not sys.stdout.isatty():
        return BlockImage
    return AutoImage


def draw(path, width: int) -> str:
    """The picture as terminal text, or a one-line reason it cannot be drawn."""
    from PIL import Image

    if path is None:
        return "(no image recorded)"
    if not path.is_file():
        return f"(missing: {path})"
    try:
        with Image.open(path) as im:
            im.load()
            pic = im.convert("RGB")
    except Exception as exc:
        return f"(unreadable {path}: {exc})"
    cls = _image_class()
    if cls.__name__ == "BlockImage":
        image = cls(pic)
        image.set_size(width=width)
        return str(image)
    image = cls(pic)
    image.set_size(width=width)
    return format(image)


def cmd_show(args, store) -> int:
    from store.queries import get_run, run_scores

    run = get_run(store, args.run)
    if run is None:
        print(f"mtp: run {args.run} does not exist", file=sys.stderr)
        return 1
    print(f"run {run.id} [{run.status}]")
    if not args.no_image:
        for which in args.images or ["source", "target"]:
            print(f"--- {which}")
            print(draw(store.home.resolve_artifact(getattr(run, IMAGES[which])), args.width))
    scores = run_scores(store, [run.id]).get(run.id, {})
    print("--- scores")
    if not scores:
        print("(none yet)")
    for metric, value in sorted(scores.items()):
        print(f"{metric:12s} {value:.4f}")
    print("--- parameters")
    for name in SHOWN:
        print(f"{name:14s} {getattr(run, name)}")
    if run.error:
        print("--- error")
        print(run.error)
    return 0
