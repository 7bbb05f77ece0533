"""The demo data set: a concept and experiments on the offline tiny model, so a newcomer with
no GPU and no weights can click through every screen. Images from it are noise by design."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import select

from store.sweep.spec import TINY_MODEL_NAMES, TINY_SDXL_MODEL_NAMES, ExperimentSpec

from .db import Store
from .models import Concept, Experiment
from .queries import save_concept, save_experiment

# A name, not a path: any engine resolves it to <its home>/models/tiny-sd and builds it there on
# first use, with or without --demo (README's headless block relies on that).
DEMO_MODEL = TINY_MODEL_NAMES[0]
DEMO_SDXL_MODEL = TINY_SDXL_MODEL_NAMES[0]

DEMO_CONCEPT = "demo-corgi"
SDXL_DEMO = "demo: SDXL real-image inversion"
DEMO_BANNER = (
    "DEMO MODE: images come from a randomly initialised tiny model, so they are noise. "
    "Everything else (sweeps, queue, masks, scores, plots, export) is real."
)


def _reference_images(folder: Path, count: int = 3, size: int = 64) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        # A warm blob on a cool background: something a mask could find, not just flat noise.
        yy, xx = np.mgrid[0:size, 0:size]
        blob = ((yy - size * (0.4 + 0.1 * i)) ** 2 + (xx - size / 2) ** 2) < (size * 0.28) ** 2
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        img[..., 2] += 120
        img[blob] = (np.array([220, 150, 60]) + rng.integers(-20, 20, (blob.sum(), 3))).clip(0, 255)
        path = folder / f"corgi-{i}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def demo_spec(model: str = DEMO_MODEL, **axes: str) -> ExperimentSpec:
    spec = ExperimentSpec(
        model=str(model),
        source_prompt="a photo of a corgi",
        target_prompts=[
            "a photo of a corgi on the beach",
            "a photo of a corgi jumping in the snow",
        ],
        num_steps=10,
        guidance=7.5,
        width=64,
        height=64,
        seeds="0,1",
        layers="decoder",
        start_step="2",
        final_step="4,6,8,end",
        skip_interval="1",
    )
    for k, v in axes.items():
        setattr(spec, k, v)
    return spec


def sdxl_demo_spec(source_image: Path) -> ExperimentSpec:
    """A real-image source on SDXL topology: the reference is DDIM-inverted at guidance 1 and 7.5."""
    return ExperimentSpec(
        model=DEMO_SDXL_MODEL,
        source_prompt="a photo of a corgi",
        source_image=str(source_image),
        invert=True,
        inversion_guidance="1,7.5",
        target_prompts=["a photo of a corgi on the beach"],
        num_steps=10,
        guidance=7.5,
        width=64,
        height=64,
        seeds="0",
        layers="decoder",
        start_step="2",
        final_step="6,end",
        skip_interval="1",
    )


def _ensure_sdxl_demo(store: Store, concept: Concept) -> None:
    # Added to older demo folders too, as long as their reference images are still there.
    with store.session() as s:
        if s.exec(select(Experiment).where(Experiment.name == SDXL_DEMO)).first() is not None:
            return
    source = store.home.root / "demo-refs" / "corgi-0.png"
    if not source.is_file():
        return
    save_experiment(
        store,
        SDXL_DEMO,
        sdxl_demo_spec(source),
        concept.id,
        queue=False,
        tags="demo",
        notes="Tiny SDXL-topology model (70 blocks, two text encoders); the source is the "
        "first reference image inverted at inversion guidance 1 and 7.5 (draft).",
    )


def seed_demo(store: Store) -> tuple[Concept, Experiment]:
    """Create the demo concept and experiments once; later calls return the existing ones."""
    with store.session() as s:
        concept = s.exec(select(Concept).where(Concept.name == DEMO_CONCEPT)).first()
        if concept is not None:
            exp = s.exec(
                select(Experiment)
                .where(Experiment.concept_id == concept.id)
                .order_by(Experiment.id)
            ).first()
            if exp is not None:
                _ensure_sdxl_demo(store, concept)
                return concept, exp
    model = DEMO_MODEL
    if concept is None:
        refs = _reference_images(store.home.root / "demo-refs")
        concept = save_concept(
            store,
            DEMO_CONCEPT,
            token="corgi",
            class_word="dog",
            ref_images=refs,
            base_model=model,
            notes="Demo concept on the random tiny model.",
        )
    exp = save_experiment(
        store,
        "demo: final step",
        demo_spec(model),
        concept.id,
        queue=True,
        tags="demo",
        notes="The seed's final-step sweep, on the tiny model.",
    )
    save_experiment(
        store,
        "demo: layer type",
        demo_spec(model, layers="encoder,decoder", final_step="end"),
        concept.id,
        queue=False,
        tags="demo",
        notes="Encoder vs decoder control (draft).",
    )
    _ensure_sdxl_demo(store, concept)
    return concept, exp


def seed_demo_if_empty(store: Store) -> None:
    """Seed a demo folder the app opens for the first time (one with no concept at all)."""
    with store.session() as s:
        empty = s.exec(select(Concept.id).limit(1)).first() is None
    if empty:
        seed_demo(store)
