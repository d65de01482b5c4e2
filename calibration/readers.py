"""Readers for text and image folders, and `load_calibration`, which picks a reader by content.

Text is tokenized batch by batch with the model's own tokenizer (padding to the
longest sentence of the batch, so a dynamic-shape model is calibrated over several
sequence lengths); images are decoded, center-cropped, resized and normalised batch by
batch. Nothing is decoded before the iteration reaches it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from calibration.data import (
    IMAGE_NORMS,
    IMAGE_SUFFIXES,
    CalibrationData,
    Feeds,
    _files,
    from_array_folder,
    input_specs,
)
from converter.core.errors import InvalidInputError
from converter.core.limits import LIMITS

TEXT_SUFFIXES = (".txt",)


def _text_lines(files: list[Path]) -> list[str]:
    lines = []
    for path in files:
        try:
            lines += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{path}: cannot read as UTF-8 text ({exc})") from exc
    return lines


def tokenize_batches(
    tokenizer, texts: list[str], batch_size: int, max_length: int, dtypes: dict[str, np.dtype]
) -> Iterator[tuple[int, Feeds]]:
    """(index of the first text, feeds) per batch: padded to the batch's longest text, truncated to
    `max_length`; only the tokenizer outputs named in `dtypes`, cast to those types."""
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        yield start, {n: enc[n].astype(dtype) for n, dtype in dtypes.items()}


def from_texts(
    texts: list[str],
    model: onnx.ModelProto,
    tokenizer_dir: str | Path | None,
    batch_size: int = 16,
    max_length: int = 128,
    source: str = "text",
) -> CalibrationData:
    """Sentences -> tokenized feeds (only the inputs the model has), one batch at a time."""
    if not texts:
        raise InvalidInputError(f"{source}: no text lines")
    if not tokenizer_dir:
        raise InvalidInputError(f"{source}: text calibration needs the model's tokenizer: give --tokenizer DIR")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidInputError(f"{tokenizer_dir}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from exc
    specs = input_specs(model)
    missing = [n for n in specs if n not in ("input_ids", "attention_mask", "token_type_ids")]
    if missing:
        raise InvalidInputError(f"{source}: the model's inputs {missing} are not tokenizer outputs")
    dtypes = {n: dtype for n, (dtype, _) in specs.items()}

    def batches() -> Iterator[tuple[str, Feeds]]:
        for start, feeds in tokenize_batches(tokenizer, texts, batch_size, max_length, dtypes):
            yield f"{source}[{start}:{start + batch_size}]", feeds

    return CalibrationData(batches, len(texts), -(-len(texts) // batch_size), source)


def _image_layout(model: onnx.ModelProto) -> tuple[str, list[int]]:
    specs = input_specs(model)
    if len(specs) != 1:
        raise InvalidInputError(f"image calibration needs a single-input model (inputs: {sorted(specs)})")
    ((name, (_, dims)),) = specs.items()
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise InvalidInputError(f"input '{name}' has dims {dims}: expected NCHW or NHWC with 3 channels")
    return name, dims


def load_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """RGB HxWx3 float32 in [0, 1]: center square crop, bilinear resize."""
    from PIL import Image, UnidentifiedImageError

    pixels = LIMITS["image-pixels"]
    try:
        with warnings.catch_warnings():  # Pillow warns of large images; the limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # our limit, checked from the header before decoding
            img = Image.open(path)
        with img:
            w, h = img.size
            if w * h > pixels.value():
                raise InvalidInputError(
                    f"{path}: {w}x{h} image ({w * h:,} pixels) over the limit of {pixels.value():,} "
                    f"({pixels.how_to_raise()})"
                )
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
            return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidInputError(f"{path}: not a readable image ({exc})") from exc


def from_image_folder(
    folder: str | Path, model: onnx.ModelProto, batch_size: int = 8, norm: str = "imagenet"
) -> CalibrationData:
    """Image files -> normalised NCHW/NHWC float batches sized to the model input."""
    if norm not in IMAGE_NORMS:
        raise InvalidInputError(f"--image-norm '{norm}' not in {sorted(IMAGE_NORMS)}")
    files = _files(Path(folder), IMAGE_SUFFIXES)
    name, dims = _image_layout(model)
    nchw = dims[1] == 3
    size = (dims[2], dims[3]) if nchw else (dims[1], dims[2])
    if min(size) <= 0:
        size = (224, 224)
    mean, std = (np.asarray(v, np.float32) for v in IMAGE_NORMS[norm])

    def batches() -> Iterator[tuple[str, Feeds]]:
        for start in range(0, len(files), batch_size):
            images = np.stack([(load_image(p, size) - mean) / std for p in files[start : start + batch_size]])
            yield str(files[start]), {name: images.transpose(0, 3, 1, 2).copy() if nchw else images}

    return CalibrationData(batches, len(files), -(-len(files) // batch_size), str(folder))


def is_tensorrt_calibration_cache(path: Path) -> bool:
    """TensorRT writes its calibration cache as text starting `TRT-<version>-<Calibrator>` (e.g.
    `TRT-8601-EntropyCalibration2`), one `tensor: hex scale` line per tensor after it."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    return head.startswith(b"TRT-") and b"Calibration" in head.split(b"\n", 1)[0]


def load_calibration(
    path: str | Path,
    model: onnx.ModelProto,
    batch_size: int = 8,
    tokenizer_dir: str | Path | None = None,
    max_length: int = 128,
    image_norm: str = "imagenet",
) -> CalibrationData:
    """A calibration folder (or one .txt/.npz file) -> CalibrationData, reader chosen by file types."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such calibration data")
    if path.is_file():
        if path.suffix.lower() in TEXT_SUFFIXES:
            return from_texts(_text_lines([path]), model, tokenizer_dir, batch_size, max_length, str(path))
        if path.suffix.lower() in (".npz", ".npy"):
            return from_array_folder(path, model, batch_size)
        if is_tensorrt_calibration_cache(path):
            raise InvalidInputError(
                f"{path}: a TensorRT INT8 calibration cache (per-tensor scales from an earlier TensorRT build), "
                "not calibration data: trtforge calibrates from inputs; give the .npz/.npy/images/text they came from"
            )
        raise InvalidInputError(f"{path}: give a folder (.npz/.npy/images/.txt) or one .npz, .npy or .txt file")
    if _files(path, (".npz", ".npy")):
        return from_array_folder(path, model, batch_size)
    if _files(path, IMAGE_SUFFIXES):
        return from_image_folder(path, model, batch_size, image_norm)
    texts = _files(path, TEXT_SUFFIXES)
    if texts:
        return from_texts(_text_lines(texts), model, tokenizer_dir, batch_size, max_length, str(path))
    raise InvalidInputError(f"{path}: no .npz, .npy, image or .txt files")


def docstring_sentences(count: int, offset: int = 0, min_words: int = 6) -> list[str]:
    """Real English sentences from the docstrings of the whole standard library, deterministic.

    converter.demos.sample_data.stdlib_sentences covers a few modules' first paragraphs
    (about 300 sentences); calibration needs more, and a disjoint validation set.
    """
    seen: set[str] = set()
    out: list[str] = []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    for module_name in names:
        if module_name.startswith(("_", "antigravity", "this", "idlelib", "tkinter", "turtle")):
            continue
        try:
            module = importlib.import_module(module_name)
        except Exception:  # some stdlib modules need optional system libraries
            continue
        for attr in sorted(dir(module)):
            doc = inspect.getdoc(getattr(module, attr, None)) if not attr.startswith("_") else None
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                if len(sentence.split()) >= min_words and sentence not in seen and len(sentence) < 400:
                    seen.add(sentence)
                    out.append(sentence)
                    if len(out) == offset + count:
                        return out[offset:]
    raise InvalidInputError(f"only {len(out)} docstring sentences found, {offset + count} requested")
