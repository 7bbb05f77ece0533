"""CLIP-T, CLIP-I and DINO scores of generated images, stored as raw cosines.

Protocols followed:
- CLIP-T: cosine of the image and prompt embeddings, with the concept's modifier token
  replaced by its class word (the token means nothing to CLIP).
- CLIP-I / DINO to the references: the mean of the cosines with every reference image
  (DreamBench / Custom Diffusion all-pairs mean); ``*_src`` is the cosine with the source.
- DINO ViT-S/16 uses its CLS token with Resize 256 bicubic, CenterCrop 224, ImageNet mean/std.
Scalings such as 100*cos or 2.5*max(cos, 0) are applied on export, never stored.

A sweep scores many targets against the same references and prompts, so their embeddings
are cached per backbone (references by file content, prompts by text, the source by pixels).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from store.images import bounded, crop_aspect, open_bounded

from .backbones import backbone_id, hub_revision, weights_digest  # noqa: F401  (re-exported)
from .errors import EngineError, ScorerUnavailable  # noqa: F401  (re-exported)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_PREPROCESS = "resize 256 bicubic, center-crop 224, imagenet mean/std, CLS token"
BATCH = 32


# CLIP's tokenizer lowercases the text and splits letters from punctuation, so "SKS", "sks-dog"
# and "sks_dog" all contain the token "sks"; a word is a run of letters and digits ("_" is not
# part of a word for it, unlike Python's \w).
_ALNUM = r"[^\W_]"
_HEAD = rf"(?<!{_ALNUM})"
_TAIL = rf"(?!{_ALNUM})"
_JOINER = r"\s*[-_]\s*"


def _is_alnum(ch: str) -> bool:
    return bool(re.match(_ALNUM, ch))


def _token_pattern(token: str) -> str:
    """``token`` as a whole token, in any case: a side that is a letter or digit must not touch
    another one ("tasks", "sksdog" and "sks1" are other words; "sks-dog" and "sks_dog" are not).

    ``\b`` cannot be used: tokens such as ``<new1>`` start and end with non-word characters,
    where ``\b`` would demand a word character next to them."""
    head = _HEAD if _is_alnum(token[0]) else ""
    tail = _TAIL if _is_alnum(token[-1]) else ""
    return "(?i:" + head + re.escape(token) + tail + ")"


def _class_forms(class_word: str) -> str:
    """The class word as written, plural or possessive ("dog", "dogs", "dog's", "dogs'", "puppies")."""
    words = class_word.split()
    stem = r"\s+".join(re.escape(w) for w in words)
    forms = [stem + r"(?:s|es)?(?:['\u2019]s?)?"]
    if words[-1][-1:].lower() == "y" and len(words[-1]) > 1:
        forms.append(
            r"\s+".join([*map(re.escape, words[:-1]), re.escape(words[-1][:-1]) + "ies"])
            + r"(?:['\u2019])?"
        )
    return "(?i:" + "|".join(forms) + ")" + _TAIL


def scored_text(prompt: str, token: str, class_word: str) -> str:
    """The prompt CLIP-T scores: the modifier token replaced by the class word, or dropped.

    The token is matched as CLIP's tokenizer sees it: in any case ("SKS", "<NEW1>"), as a whole
    token, also when joined to a neighbour by "-" or "_" ("sks-dog", "sks_dog"); words that only
    contain it ("tasks", "asks", "sksdog") are left alone. Repeats collapse ("<new1> <new1>",
    "sks sks" are one token). A token next to its class word, before it or joined after it, is
    dropped so the class word stays once and keeps its form and case: "<new1> dogs" -> "dogs",
    "sks dog's" -> "dog's", "a sks-dog" -> "a dog", "a dog-sks" -> "a dog".
    """
    text = prompt or ""
    token = (token or "").strip()
    if token:
        replacement = " ".join((class_word or "").split())
        tok = _token_pattern(token)
        # "<new1>dog" is two tokens to CLIP's tokenizer too, so no space is needed there.
        space = r"\s+" if _is_alnum(token[-1]) else r"\s*"
        gap = rf"(?:{_JOINER}|{space})"
        text = re.sub(rf"{tok}(?:{gap}{tok})+", lambda _m: token, text)
        if replacement:
            forms = _class_forms(replacement)
            text = re.sub(tok + gap + "(?=" + forms + ")", "", text)
            text = re.sub(rf"({_HEAD}{forms}){_JOINER}{tok}", lambda m: m.group(1), text)
            text = re.sub(tok, lambda _m: replacement, text)
        else:
            text = re.sub(rf"{tok}(?:{_JOINER})?", "", text)
            text = re.sub(rf"{_JOINER}{tok}", "", text)
    return " ".join(text.split())


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """Content hash of a reference image, re-read only when its size or mtime changes."""
    st = os.stat(path)
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return _DIGESTS[key]


def _image_digest(image) -> str:
    h = hashlib.sha1(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _describe_clip_preprocess(cfg: dict[str, Any]) -> str:
    size = cfg.get("size")
    size = size[0] if isinstance(size, (tuple, list)) and len(set(size)) == 1 else size
    mean = (
        "openai"
        if tuple(round(m, 4) for m in cfg.get("mean", ())) == (0.4815, 0.4578, 0.4082)
        else cfg.get("mean")
    )
    return (
        f"resize {size} {cfg.get('interpolation', 'bicubic')} ({cfg.get('resize_mode', 'shortest')}), "
        f"center-crop {size}, {mean} mean/std"
    )


def _square_ready(image):
    """``image`` in RGB, bounded, for a preprocess that resizes the shorter side and center-crops a
    square (CLIP, DINO). Unchanged for any image within the input limits (pixels equal to
    ``convert("RGB")``); an extreme shape keeps its central part (all the crop looks at),
    so the resize never makes a giant image."""
    return crop_aspect(bounded(image.convert("RGB")))


class _Cache:
    """Embeddings by key, least recently used dropped past ``limit`` (a worker lives through many
    sweeps, each with new sources); ``misses`` counts the items that had to be encoded."""

    def __init__(self, encode: Callable[[Any], Any], limit: int = 4096):
        self._encode = encode
        self._store: OrderedDict[str, Any] = OrderedDict()
        self._limit = limit
        self.misses = 0

    def get(self, keys: Sequence[str], load: Callable[[int], Any]):
        import torch

        # One encoder call per batch of new items; duplicates inside a call are encoded once.
        unique: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in self._store:
                unique.setdefault(k, i)
        items = list(unique.items())
        fresh: dict[str, Any] = {}
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            # A generator: encoders preprocess each item as it is loaded, so only one decoded
            # reference image is alive at a time, not a batch of them.
            feats = self._encode(load(i) for _, i in chunk)
            fresh.update((key, f) for (key, _), f in zip(chunk, feats))
            self.misses += len(chunk)
        out = torch.stack([fresh[k] if k in fresh else self._store[k] for k in keys])
        for k in keys:
            if k in fresh:
                self._store[k] = fresh[k]
            self._store.move_to_end(k)
        while len(self._store) > self._limit:
            self._store.popitem(last=False)
        return out


DEFAULT_CLIP_MODEL = "ViT-B-32-quickgelu"  # OpenAI's ViT-B/32 as clip.load("ViT-B/32") builds it
DEFAULT_CLIP_PRETRAINED = "openai"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"

# Metric families a scorer can compute and the Score metrics each writes (one list for the
# engine and the torch-free `mtp score`).
from store.scoring import DEFAULT_FAMILIES, FAMILY_METRICS  # noqa: E402

FAMILIES = tuple(FAMILY_METRICS)


class Scorer:
    """Loads the backbones once; ``score`` returns Score-row dicts per image.

    ``clip_model=None`` / ``dino_model=None`` leave that family out; ``dreamsim`` is an
    ``engine.dreamsim_metric.DreamSimSpec`` (or None)."""

    def __init__(
        self,
        device: str = "cpu",
        clip_model: str | None = DEFAULT_CLIP_MODEL,
        clip_pretrained: str = DEFAULT_CLIP_PRETRAINED,
        dino_model: str | None = DEFAULT_DINO_MODEL,
        dreamsim=None,
    ):
        import torch

        self.device = device
        self.torch = torch
        # Loaded below, one per family asked for; None where not (models are duck-typed).
        self.clip: Any = None
        self.dino: Any = None
        self.dreamsim: Any = None
        self.clip_backbone: str | None = None
        self.dino_backbone: str | None = None
        self.dreamsim_backbone: str | None = None
        if clip_model:
            self._load_clip(clip_model, clip_pretrained)
        if dino_model:
            self._load_dino(dino_model)
        if dreamsim is not None:
            from .dreamsim_metric import load_dreamsim

            self.dreamsim = load_dreamsim(dreamsim, device)
            self.dreamsim_backbone = self.dreamsim.backbone
        self._clip_images = _Cache(self._encode_clip_images)
        self._clip_texts = _Cache(self._encode_clip_texts)
        self._dino_images = _Cache(self._encode_dino_images)
        self._dreamsim_images = _Cache(self._encode_dreamsim_images)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in FAMILIES if getattr(self, f) is not None)

    @property
    def backbones(self) -> dict[str, str]:
        """Family -> backbone string of what is loaded."""
        return {f: getattr(self, f"{f}_backbone") for f in self.families}

    # ------------------------------------------------------------------ loading
    def _load_clip(self, name: str, pretrained: str) -> None:
        import open_clip

        from .tiny_clip import register_clip_config

        weights = Path(pretrained) if pretrained else None
        local = weights if weights is not None and weights.is_file() else None
        if local is not None and (local.parent / f"{name}.json").is_file():
            # A local architecture travels next to its weights (the tiny CLIP does).
            register_clip_config(local.parent / f"{name}.json")
        # A pretrained tag names one file per open_clip version (open_clip pins its URL or hub
        # file per tag), so tag + version is exact; a local file is named by its content.
        checkpoint = f"{local.stem}#sha256:{weights_digest(local)}" if local else pretrained
        self.clip_backbone = backbone_id("open_clip", name, checkpoint)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=self.device
            )
            self.tokenizer = open_clip.get_tokenizer(name)
        except (
            Exception
        ) as exc:  # open_clip raises RuntimeError/OSError/ValueError depending on the cause
            where = (
                f"the file {pretrained}"
                if weights is not None and (local is not None or weights.suffix)
                else f"open_clip's cache ($HF_HOME, default ~/.cache/huggingface/hub) for {name}/{pretrained}"
            )
            raise ScorerUnavailable(
                f"CLIP backbone {name}/{pretrained} could not be loaded ({type(exc).__name__}: {exc}). "
                f"Its weights must be in {where} when offline: load it once on a machine with network "
                f"(python -c \"import open_clip; open_clip.create_model_and_transforms('{name}', "
                f"pretrained='{pretrained}')\") and copy the cache, or start the engine with --no-score"
            ) from exc
        self.clip = model.eval()
        self.clip_preprocess = preprocess
        self.clip_preprocess_text = _describe_clip_preprocess(dict(model.visual.preprocess_cfg))

    def _load_dino(self, name: str) -> None:
        from torchvision import transforms
        from transformers import ViTModel

        folder = Path(name)
        try:
            model = ViTModel.from_pretrained(name, add_pooling_layer=False)
        except Exception as exc:
            raise ScorerUnavailable(
                f"DINO backbone {name} could not be loaded ({type(exc).__name__}: {exc}). Its weights must be "
                f"in the Hugging Face cache ($HF_HOME, default ~/.cache/huggingface/hub) when offline: run "
                f"`huggingface-cli download {name}` on a machine with network and copy the cache, or start "
                f"the engine with --no-score"
            ) from exc
        if folder.is_dir():
            files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
            checkpoint = folder.name + (f"#sha256:{weights_digest(files[0])}" if files else "")
        else:
            # Looked up after loading, so the snapshot just loaded (or downloaded) is the one named.
            rev = hub_revision(name, "config.json")
            checkpoint = name + (f"#rev:{rev}" if rev else "")
        self.dino_backbone = backbone_id("transformers", "ViTModel-cls", checkpoint)
        self.dino = model.to(self.device).eval()  # type: ignore[arg-type]
        self.dino_preprocess = transforms.Compose(
            [
                transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    @classmethod
    def for_home(
        cls, home, demo: bool, device: str = "cpu", families: Sequence[str] = DEFAULT_FAMILIES
    ) -> Scorer:
        """The real backbones, or for ``demo`` the tiny offline ones kept under ``home.models``."""
        from .dreamsim_metric import DreamSimSpec

        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ValueError(
                f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(FAMILIES)}"
            )
        dreamsim = DreamSimSpec.for_home(home, demo) if "dreamsim" in families else None
        if not demo:
            return cls(
                device=device,
                clip_model=DEFAULT_CLIP_MODEL if "clip" in families else None,
                dino_model=DEFAULT_DINO_MODEL if "dino" in families else None,
                dreamsim=dreamsim,
            )
        from .tiny_clip import ensure_tiny_clip, ensure_tiny_dino

        name, weights = ensure_tiny_clip(home.models) if "clip" in families else (None, "")
        return cls(
            device=device,
            clip_model=name,
            clip_pretrained=str(weights),
            dino_model=str(ensure_tiny_dino(home.models)) if "dino" in families else None,
            dreamsim=dreamsim,
        )

    def describe(self) -> dict[str, Any]:
        """Who scores, for the engine session every score row links to: device, the dtype of
        the loaded backbones, each family's backbone (its weights are named in it: tag, hub
        revision or sha256) and preprocessing."""
        models = [self.clip, self.dino, getattr(self.dreamsim, "model", None)]
        dtypes = []
        for m in models:
            try:
                dtype = str(next(m.parameters()).dtype) if m is not None else None
            except (AttributeError, StopIteration, TypeError):
                dtype = None
            if dtype and dtype not in dtypes:
                dtypes.append(dtype)
        preprocess = {
            "clip": getattr(self, "clip_preprocess_text", ""),
            "dino": DINO_PREPROCESS,
            "dreamsim": getattr(self.dreamsim, "preprocess_text", ""),
        }
        return {
            "device": str(self.device),
            "dtype": ",".join(dtypes),
            "backbones": dict(self.backbones),
            "preprocess": {f: preprocess[f] for f in self.families},
        }

    # ------------------------------------------------------------------ encoders (normalised)
    def _normalise(self, x):
        return self.torch.nn.functional.normalize(x.float(), dim=-1).cpu()

    def _encode_clip_images(self, images: Iterable) -> Any:
        with self.torch.no_grad():
            batch = self.torch.stack([self.clip_preprocess(_square_ready(im)) for im in images]).to(
                self.device
            )
            return self._normalise(self.clip.encode_image(batch))

    def _encode_clip_texts(self, texts: list[str]) -> Any:
        with self.torch.no_grad():
            return self._normalise(self.clip.encode_text(self.tokenizer(texts).to(self.device)))

    def _encode_dino_images(self, images: Iterable) -> Any:
        with self.torch.no_grad():
            batch = self.torch.stack([self.dino_preprocess(_square_ready(im)) for im in images]).to(
                self.device
            )
            return self._normalise(self.dino(pixel_values=batch).last_hidden_state[:, 0])

    def _encode_dreamsim_images(self, images: Iterable) -> Any:
        # DreamSim squashes the whole image to 224x224 (no aspect-keeping resize to blow up).
        return self._normalise(self.dreamsim.embed(bounded(im) for im in images))

    @property
    def encode_counts(self) -> dict[str, int]:
        """Items encoded so far per cache (tests and logs use it to see the cache working)."""
        return {
            "clip_image": self._clip_images.misses,
            "clip_text": self._clip_texts.misses,
            "dino_image": self._dino_images.misses,
        }

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        images: list,
        texts: list[str],
        source=None,
        refs: Sequence[str | Path] = (),
        families: Sequence[str] | None = None,
    ) -> list[list[dict]]:
        """Per image, a list of {metric, backbone, value, preprocess, scored_text} dicts.

        ``texts`` holds the already-substituted text for each image (see ``scored_text``);
        an empty text skips CLIP-T for that image. ``families`` limits the work to those of the
        loaded families (default: all loaded). DreamSim values are distances (1 - cosine of
        its embeddings, lower = more alike), the others cosines.
        """
        if len(texts) not in (len(images), 1) and images:
            raise ValueError(f"{len(texts)} texts for {len(images)} images")
        if len(texts) == 1:
            texts = list(texts) * len(images)
        if not images:
            return []
        refs = [Path(r) for r in refs]
        ref_keys = [f"ref:{_file_digest(Path(r))}" for r in refs]

        def load_ref(i: int):
            return open_bounded(refs[i])

        out: list[list[dict]] = [[] for _ in images]

        def add(metric, backbone, values, preprocess, text=None):
            for i, v in enumerate(values):
                if v is None:
                    continue
                out[i].append(
                    {
                        "metric": metric,
                        "backbone": backbone,
                        "value": float(v),
                        "preprocess": preprocess,
                        "scored_text": text[i] if text else None,
                    }
                )

        wanted_families = set(self.families if families is None else families)
        towers = []
        if self.clip is not None and "clip" in wanted_families:
            towers.append(
                (
                    "clip",
                    self.clip_backbone,
                    self.clip_preprocess_text,
                    self._encode_clip_images,
                    self._clip_images,
                )
            )
        if self.dino is not None and "dino" in wanted_families:
            towers.append(
                (
                    "dino",
                    self.dino_backbone,
                    DINO_PREPROCESS,
                    self._encode_dino_images,
                    self._dino_images,
                )
            )
        if self.dreamsim is not None and "dreamsim" in wanted_families:
            towers.append(
                (
                    "dreamsim",
                    self.dreamsim_backbone,
                    self.dreamsim.preprocess_text,
                    self._encode_dreamsim_images,
                    self._dreamsim_images,
                )
            )
        for prefix, backbone, pre, encode, cache in towers:
            # Generated images are new every call, so they bypass the cache (but are counted).
            gen = self.torch.cat(
                [encode(list(images[k : k + BATCH])) for k in range(0, len(images), BATCH)]
            )
            cache.misses += len(images)
            if prefix == "clip":
                wanted = [i for i, t in enumerate(texts) if t and t.strip()]
                if wanted:

                    def text_of(i: int, wanted: list[int] = wanted) -> str:
                        return texts[wanted[i]]

                    tfeat = self._clip_texts.get([f"text:{texts[i]}" for i in wanted], text_of)
                    sims: list[float | None] = [None] * len(images)
                    for j, i in enumerate(wanted):
                        sims[i] = float(gen[i] @ tfeat[j])
                    add("clip_t", backbone, sims, pre, texts)
            i_metric = {"clip": "clip_i", "dino": "dino", "dreamsim": "dreamsim"}[prefix]
            # DreamSim is reported as its distance, as the package's model(a, b) returns it.
            as_value = (lambda cos: 1.0 - cos) if prefix == "dreamsim" else (lambda cos: cos)
            if refs:
                rfeat = cache.get(ref_keys, load_ref)
                add(f"{i_metric}_ref", backbone, as_value(gen @ rfeat.T).mean(dim=1).tolist(), pre)
            if source is not None:
                sfeat = cache.get([f"src:{_image_digest(source)}"], lambda i: source)
                add(f"{i_metric}_src", backbone, as_value(gen @ sfeat[0]).tolist(), pre)
        return out

    def set_scores(self, images: list, families: Sequence[str] | None = None) -> list[list[dict]]:
        """Set consistency, per image of one set: the mean over its pairs with the set's other
        images of CLIP-I / DINO cosine and DreamSim distance (``clip_i_set``, ``dino_set``,
        ``dreamsim_set``), as ConsiStory and 1Prompt1Story report it. [] per image when the set
        has fewer than 2 images (no pair)."""
        out: list[list[dict]] = [[] for _ in images]
        if len(images) < 2:
            return out
        wanted = set(self.families if families is None else families)
        for family, encode, backbone, pre in (
            ("clip", self._encode_clip_images, self.clip_backbone, None),
            ("dino", self._encode_dino_images, self.dino_backbone, DINO_PREPROCESS),
            ("dreamsim", self._encode_dreamsim_images, self.dreamsim_backbone, None),
        ):
            if getattr(self, family) is None or family not in wanted:
                continue
            if pre is None:
                pre = (
                    self.clip_preprocess_text if family == "clip" else self.dreamsim.preprocess_text
                )
            feats = self.torch.cat(
                [encode(list(images[k : k + BATCH])) for k in range(0, len(images), BATCH)]
            )
            values = pairwise_means(feats, distance=family == "dreamsim")
            for i, v in enumerate(values):
                out[i].append(
                    {
                        "metric": SET_METRICS[family],
                        "backbone": backbone,
                        "value": float(v),
                        "preprocess": pre,
                        "scored_text": None,
                    }
                )
        return out


SET_METRICS = {"clip": "clip_i_set", "dino": "dino_set", "dreamsim": "dreamsim_set"}


def pairwise_means(feats, distance: bool = False) -> list[float]:
    """Per row of L2-normalised ``feats`` (n, d), the mean over the other rows of the cosine
    (or, with ``distance``, of 1 - cosine, DreamSim's distance)."""
    sims = feats @ feats.T
    if distance:
        sims = 1.0 - sims
    n = sims.shape[0]
    off_diagonal = sims.sum(dim=1) - sims.diagonal()
    return (off_diagonal / (n - 1)).tolist()
