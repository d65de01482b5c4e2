"""Real inputs for verification and calibration, available offline on any machine.

- Text: docstrings of the Python standard library (real English prose about code),
  in a fixed order so every run sees the same sentences.
- Images: the two photographs scikit-learn ships (`load_sample_images`), cut into
  overlapping square crops at several scales, resized to the model's input size.
Random noise is never used for accuracy claims; `synthetic_feeds` exists only for
user models that come with no data, and reports say so when it was used.
"""

from __future__ import annotations

import importlib
import inspect
import re

import numpy as np

_DOC_MODULES = [
    "json",
    "os.path",
    "collections",
    "itertools",
    "functools",
    "pathlib",
    "textwrap",
    "string",
    "statistics",
    "heapq",
    "bisect",
    "fractions",
    "decimal",
    "datetime",
    "calendar",
    "shutil",
    "tempfile",
    "glob",
    "fnmatch",
    "csv",
    "argparse",
    "logging",
    "threading",
    "queue",
    "random",
]


def stdlib_sentences(count: int, min_words: int = 6) -> list[str]:
    """`count` distinct sentences from standard-library docstrings, deterministic order."""
    seen: set[str] = set()
    sentences: list[str] = []
    for module_name in _DOC_MODULES:
        module = importlib.import_module(module_name)
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr, None)) or ""
            paragraph = " ".join(doc.split("\n\n")[0].split())
            for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
                if len(sentence.split()) >= min_words and sentence not in seen:
                    seen.add(sentence)
                    sentences.append(sentence)
                    if len(sentences) == count:
                        return sentences
    if len(sentences) < count:
        raise RuntimeError(f"only {len(sentences)} docstring sentences found, {count} requested")
    return sentences


def sample_images(count: int, size: int = 224) -> np.ndarray:
    """`count` RGB crops (N, 3, size, size) in [0, 1] from scikit-learn's sample photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    crops: list[np.ndarray] = []
    scales = (1.0, 0.75, 0.5, 0.6, 0.9)
    positions = ((0.5, 0.5), (0.2, 0.3), (0.8, 0.7), (0.3, 0.8), (0.7, 0.2))
    index = 0
    while len(crops) < count:
        photo = photos[index % len(photos)]
        scale = scales[(index // len(photos)) % len(scales)]
        cx, cy = positions[(index // len(photos)) % len(positions)]
        h, w, _ = photo.shape
        side = int(min(h, w) * scale)
        top = int(np.clip(cy * h - side / 2, 0, h - side))
        left = int(np.clip(cx * w - side / 2, 0, w - side))
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size), Image.BILINEAR)
        crops.append(np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        index += 1
    return np.stack(crops)


def synthetic_feeds(
    shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random inputs for models with no real data (reported as synthetic)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        dtype = np.dtype(dtypes.get(name, np.float32))
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 100, shape).astype(dtype)
    return feeds


def fit_feeds(feeds: list[dict[str, np.ndarray]], shapes: dict[str, list[int]]) -> list[dict[str, np.ndarray]]:
    """Real sample batches reshaped to a graph's static dims (-1 = any), for static exports.

    Non-batch dims are zero-padded at the end or truncated (for token inputs: the [PAD]
    id 0 with attention mask 0, i.e. right padding); a static batch dim re-splits each
    batch into batches of that size (rows repeated when a batch has too few). The
    reference and the candidate both see the fitted arrays, so comparisons stay exact.
    """
    fitted = []
    for feed in feeds:
        resized = {name: _fit_dims(value, shapes.get(name)) for name, value in feed.items()}
        batches = {shape[0] for name, shape in shapes.items() if name in resized and shape and shape[0] > 0}
        if len(batches) != 1:
            fitted.append(resized)
            continue
        batch = batches.pop()
        rows = len(next(iter(resized.values())))
        if rows < batch:
            resized = {n: np.resize(v, (batch, *v.shape[1:])) for n, v in resized.items()}
            rows = batch
        fitted += [{n: v[s : s + batch] for n, v in resized.items()} for s in range(0, rows - batch + 1, batch)]
    return fitted


def _fit_dims(value: np.ndarray, shape: list[int] | None) -> np.ndarray:
    if shape is None or len(shape) != value.ndim:
        return value
    for axis, want in enumerate(shape[1:], start=1):
        if want <= 0 or value.shape[axis] == want:
            continue
        if value.shape[axis] > want:
            value = np.take(value, np.arange(want), axis=axis)
        else:
            pad = [(0, 0)] * value.ndim
            pad[axis] = (0, want - value.shape[axis])
            value = np.pad(value, pad)
    return value
