""".npy / .npz files from users, read only after their headers were checked against their bytes.

An .npy header states a shape and a dtype; numpy allocates what it states before reading
a byte of data, so a 100-byte file claiming 2**40 elements exhausts memory. Every array is
checked first: a numeric dtype (object arrays would need pickle), a size within
the tensor-bytes limit (converter/core/limits.py), and exactly as many data bytes as the header states (in the
file, or in the .npz member). A file of the wrong kind (.npy named .npz) is named as such.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from converter.core.errors import InvalidInputError
from converter.core.model_checks import TENSOR_BYTES


def _check_header(handle: IO[bytes], available: int, where: str) -> None:
    """Read the header at the start of `handle`; refuse a header its `available` bytes cannot back."""
    try:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(handle)
    except (ValueError, OSError, SyntaxError) as exc:
        raise InvalidInputError(f"{where}: not a readable .npy array ({exc})") from exc
    if dtype.hasobject:
        raise InvalidInputError(f"{where}: holds Python objects (would need pickle); give numeric arrays")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > TENSOR_BYTES.value():
        raise InvalidInputError(
            f"{where}: header claims shape {list(shape)} ({nbytes:,} bytes), over the limit of "
            f"{TENSOR_BYTES.value():,} ({TENSOR_BYTES.how_to_raise()})"
        )
    if nbytes != available - handle.tell():
        raise InvalidInputError(
            f"{where}: header claims shape {list(shape)} {dtype} ({nbytes:,} bytes) but the data is "
            f"{available - handle.tell():,} bytes"
        )


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz archive by name, each checked before it is read."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            kind = "a single .npy array" if handle.read(6) == b"\x93NUMPY" else "not a zip archive"
        raise InvalidInputError(f"{path}: expected an .npz archive (one array per input name), got {kind}")
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                with archive.open(member) as handle:
                    _check_header(handle, member.file_size, f"{path}: array '{member.filename.removesuffix('.npy')}'")
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npz file ({exc})") from exc


def read_npy(path: str | Path) -> np.ndarray:
    """One .npy array, checked before it is read."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            _check_header(handle, path.stat().st_size, str(path))
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npy file ({exc})") from exc
