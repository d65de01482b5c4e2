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
