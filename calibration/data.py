"""CalibrationData: an iterable of feed dicts with a known sample count, and its readers.

Readers never hold the whole data set: each batch is read (or tokenized, or decoded)
when the iteration reaches it, so statistics over thousands of samples need the
memory of one batch. Sources:

- a folder of `.npz` files (one array per input name; a file holds one sample or a
  batch with a leading batch axis) or of `.npy` files (single-input models);
- text: `.txt` files (one sample per non-empty line) + the model's tokenizer;
- images: `.png/.jpg/.jpeg/.bmp` files, resized to the model's input size;
- feed dicts already in memory (the demos' real sample data).

`check_batch` turns wrong shapes, dtypes and NaN/Inf into one-line InvalidInputErrors
naming the file and the input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from converter.core.arrays import read_npy, read_npz
from converter.core.errors import InvalidInputError

Feeds = dict[str, np.ndarray]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_NORMS = {  # name -> (mean, std) applied to pixels in [0, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # (x - 0.5) / 0.5, EfficientNet-Lite
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


@dataclass
class CalibrationData:
    """Re-iterable batches of feeds. `count` samples in `num_batches` batches; `source` says where from."""

    make_batches: Callable[[], Iterator[tuple[str, Feeds]]]  # yields (where, feeds) lazily
    count: int
    num_batches: int
    source: str
    _fingerprint: str | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[Feeds]:
        for _where, feeds in self.make_batches():
            yield feeds

    def __len__(self) -> int:
        return self.count

    def labelled(self) -> Iterator[tuple[str, Feeds]]:
        """Batches with the file (or batch index) they came from, for error messages."""
        return self.make_batches()

    def fingerprint(self) -> str:
        """Hash of every batch's names, shapes, dtypes and bytes (one streaming pass; cached)."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for feeds in self:
                for name in sorted(feeds):
                    value = np.ascontiguousarray(feeds[name])
                    digest.update(f"{name}:{value.dtype}:{value.shape};".encode())
                    digest.update(memoryview(value).cast("B"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def shapes(self) -> list[dict[str, list[int]]]:
        """The distinct input shapes of the batches (dynamic-shape models see several)."""
        seen: list[dict[str, list[int]]] = []
        for feeds in self:
            shape = {k: list(v.shape) for k, v in sorted(feeds.items())}
            if shape not in seen:
                seen.append(shape)
        return seen

    def check(self, model: onnx.ModelProto) -> CalibrationData:
        """Validate every batch against the model's inputs (see check_batch); returns self."""
        for where, feeds in self.labelled():
            check_batch(feeds, model, where)
        return self


def _rows(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


def first_samples(batches: Iterable[Feeds], count: int) -> list[Feeds]:
    """The first batches holding at least `count` samples (all of them when there are fewer): a subset
    to score on, e.g. a search's candidates."""
    feeds, rows = [], 0
    for batch in batches:
        feeds.append(batch)
        rows += _rows(batch)
        if rows >= count:
            break
    return feeds


def from_feeds(feeds_list: Iterable[Feeds], source: str = "memory") -> CalibrationData:
    """Batches already in memory (e.g. a demo's `sample_feeds`)."""
    batches = list(feeds_list)
    if not batches:
        raise InvalidInputError(f"{source}: no calibration batches")
    return CalibrationData(
        lambda: ((f"{source}[{i}]", b) for i, b in enumerate(batches)),
        sum(_rows(b) for b in batches),
        len(batches),
        source,
    )


def rebatch(parts: Iterator[tuple[str, Feeds]], batch_size: int) -> Iterator[tuple[str, Feeds]]:
    """Concatenate consecutive parts along axis 0 into batches of `batch_size` rows.

    Parts whose trailing shapes differ from the batch being built start a new batch
    (variable-length data keeps its own shapes rather than being padded here).
    """
    pending: list[Feeds] = []
    where = ""
    rows = 0
    for label, feeds in parts:
        if pending and any(feeds[k].shape[1:] != pending[0][k].shape[1:] for k in feeds if k in pending[0]):
            yield where, _concat(pending)
            pending, rows = [], 0
        if not pending:
            where = label
        pending.append(feeds)
        rows += _rows(feeds)
        while rows >= batch_size:
            merged = _concat(pending)
            yield where, {k: v[:batch_size] for k, v in merged.items()}
            rest = {k: v[batch_size:] for k, v in merged.items()}
            rows -= batch_size
            pending = [rest] if rows else []
            where = label
    if pending and rows:
        yield where, _concat(pending)


def _concat(parts: list[Feeds]) -> Feeds:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def _with_batch_axis(value: np.ndarray, rank: int | None) -> np.ndarray:
    """A single sample (rank one less than the model input) gets a leading batch axis."""
    return value[None] if rank is not None and value.ndim == rank - 1 else value


def _read_npz(path: Path) -> Feeds:
    return read_npz(path)  # headers checked against their bytes first (converter/core/arrays.py)


def _read_npy(path: Path) -> np.ndarray:
    return read_npy(path)


def input_specs(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list[int]]]:
    """Graph inputs (initializers excluded) -> (numpy dtype, dims with -1 for dynamic)."""
    inits = {i.name for i in model.graph.initializer}
    specs = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim]
        specs[vi.name] = (np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims)
    return specs


def from_array_folder(folder: str | Path, model: onnx.ModelProto, batch_size: int = 8) -> CalibrationData:
    """A folder of .npz files (any model) or .npy files (single-input models), or one such file
    (its arrays' first axis is the samples: the form `--load-inputs` and ModelOpt take)."""
    folder = Path(folder)
    single = folder.is_file() and folder.suffix.lower() in (".npz", ".npy")
    if not folder.is_dir() and not single:
        raise InvalidInputError(f"{folder}: no such calibration folder")
    specs = input_specs(model)
    if single:
        npz, npy = ([folder], []) if folder.suffix.lower() == ".npz" else ([], [folder])
    else:
        npz, npy = _files(folder, (".npz",)), _files(folder, (".npy",))
    if npz:

        def parts() -> Iterator[tuple[str, Feeds]]:
            for path in npz:
                feeds = _read_npz(path)
                feeds = {k: _with_batch_axis(v, len(specs[k][1]) if k in specs else None) for k, v in feeds.items()}
                check_batch(feeds, model, str(path))
                yield str(path), feeds

    elif npy:
        if len(specs) != 1:
            raise InvalidInputError(
                f"{folder}: .npy files feed single-input models; this model has inputs {sorted(specs)}: use .npz"
            )
        ((name, (_, dims)),) = specs.items()

        def parts() -> Iterator[tuple[str, Feeds]]:
            for path in npy:
                feeds = {name: _with_batch_axis(_read_npy(path), len(dims))}
                check_batch(feeds, model, str(path))
                yield str(path), feeds

    else:
        raise InvalidInputError(f"{folder}: no .npz or .npy files")
    counted = _count_rows(parts())
    return CalibrationData(lambda: rebatch(parts(), batch_size), counted, -(-counted // batch_size), str(folder))


def _count_rows(parts: Iterator[tuple[str, Feeds]]) -> int:
    """Rows over all parts; checks each part's arrays agree on the batch size."""
    total = 0
    for where, feeds in parts:
        sizes = {k: v.shape[0] if v.ndim else 0 for k, v in feeds.items()}
        if len(set(sizes.values())) > 1:
            raise InvalidInputError(f"{where}: arrays disagree on the batch size {sizes}")
        total += _rows(feeds)
    return total


def check_batch(feeds: Feeds, model: onnx.ModelProto, where: str) -> None:
    """Names, dtype kinds, ranks, static dims and finiteness of one batch, one line per problem."""
    for name, (dtype, dims) in input_specs(model).items():
        if name not in feeds:
            raise InvalidInputError(f"{where}: no array for model input '{name}' (has {sorted(feeds)})")
        value = feeds[name]
        if value.dtype.kind not in "biuf":
            raise InvalidInputError(f"{where}: input '{name}' has non-numeric dtype {value.dtype}")
        if (dtype.kind == "f") != (value.dtype.kind == "f"):
            raise InvalidInputError(f"{where}: input '{name}' is {value.dtype}, the model expects {dtype}")
        if value.ndim != len(dims) or any(d > 0 and d != s for d, s in zip(dims, value.shape, strict=False)):
            raise InvalidInputError(
                f"{where}: input '{name}' has shape {list(value.shape)}, the model expects {dims} (-1 = any)"
            )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise InvalidInputError(f"{where}: input '{name}' contains NaN or Inf")
