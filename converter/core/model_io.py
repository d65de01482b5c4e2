"""Load, validate and save ONNX models; atomic file writes; content hashes.

Why this module exists: every stage reads and writes ONNX, and each one must
(a) fail with one line naming the file when the input is broken, (b) handle models
over protobuf's 2 GB limit through external data, and (c) never leave a
half-written output behind. Writes go to a temporary name in the destination folder
and are renamed into place, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from converter.core import external_data
from converter.core.errors import InvalidInputError, ModelLoadError
from converter.core.model_checks import check_untrusted, tensor_nbytes
from converter.core.onnx_write import write_model

# protobuf cannot serialise a message of 2 GiB or more; stay clearly below it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # below protobuf's 2 GB limit, with room for the graph
EXTERNAL_DATA_ENV = "TRTFORGE_EXTERNAL_DATA_BYTES"


def external_data_bytes() -> int:
    """Weight bytes above which models are saved with external data: $TRTFORGE_EXTERNAL_DATA_BYTES
    when set (so tests and users can send a small model down the external-data path), else 1.8 GB."""
    text = os.environ.get(EXTERNAL_DATA_ENV, "")
    return min(int(text), EXTERNAL_DATA_THRESHOLD) if text.isdigit() else EXTERNAL_DATA_THRESHOLD


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (engines and weights can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _Digest:
    """A write-only sink that hashes what is written to it."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def flush(self) -> None:
        pass


def sha256_model(model: onnx.ModelProto) -> str:
    """Hash of the model as one self-contained file: its graph and its weights, whether they
    are loaded or mapped (the same bytes either way), independent of where a file keeps them.
    Streamed, one weight at a time."""
    sink = _Digest()
    write_model(model, sink)  # type: ignore[arg-type]
    return sink.digest.hexdigest()


def file_mode() -> int:
    """The mode a new file gets under the process's umask (mkstemp's 0600 is not it)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it into place only on success."""
    final = Path(path)
    if final.is_dir():
        raise InvalidInputError(f"{final}: is a folder; give a file path for this output")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"{final}: cannot create its folder ({exc.strerror})") from exc
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Relative locations of the external-data files a loaded-without-data model refers to."""
    files: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            for entry in init.external_data:
                if entry.key == "location":
                    files.add(entry.value)
    return sorted(files)


def load_model(path: str | os.PathLike, load_weights: bool = True, lazy: bool = True) -> onnx.ModelProto:
    """Read an ONNX file, with its external data, or raise ModelLoadError naming the file.

    Checks: the file exists, parses as ONNX, the graph has outputs, and everything
    converter/core/model_checks.py checks before any runtime or parser reads the file
    (external data inside the model's folder, sizes, versions, graph structure).
    External data stays where it is (`lazy`, the default): the stubs point at their
    files' absolute paths and are read in place (converter/core/external_data.py), so a
    multi-GB model costs no weight memory until a pass reads a weight. `lazy=False`
    reads every weight into the ModelProto, as onnx.load does.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, expected an .onnx file")
    if not path.is_file():  # a device (/dev/zero), FIFO or socket: reading it may never end
        raise ModelLoadError(f"{path}: not a regular file, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX file ({type(exc).__name__}: {exc})") from exc
    if not model.graph.output:
        raise ModelLoadError(f"{path}: not a valid ONNX model (the graph has no outputs)")
    check_untrusted(model, path)
    if lazy and load_weights:
        external_data.resolve_locations(model, path.parent)
    elif load_weights and external_data_files(model):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (ValueError, OSError, RuntimeError) as exc:
            raise ModelLoadError(
                f"{path}: external data is unreadable or truncated ({str(exc).splitlines()[0]})"
            ) from exc
    return model


def weights_nbytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers, from their dims and dtypes: without serialising the
    model, and without reading `raw_data` (each read copies the whole buffer)."""
    return sum(tensor_nbytes(init) or 0 for init in model.graph.initializer)


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    external_data_threshold: int | None = None,
) -> Path:
    """Save atomically; weights go to '<name>.data' beside it when they exceed the threshold.

    With external data two files must appear together, so both are written into a
    temporary folder beside the destination and renamed into place, data file first.
    Either way tensors are written one at a time (converter/core/onnx_write.py): no
    second copy of the weights. The model passed in is not modified.
    """
    threshold = external_data_bytes() if external_data_threshold is None else external_data_threshold
    final = Path(path)
    if final.is_dir():
        raise InvalidInputError(f"{final}: is a folder; give a file path for this output")
    if weights_nbytes(model) < threshold:
        with atomic_path(final) as tmp, open(tmp, "wb") as handle:
            write_model(model, handle)
        return final  # an older '<name>.data' beside it is left alone: it may be someone else's

    data_name = final.name + ".data"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"{final}: cannot create its folder ({exc.strerror})") from exc
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name[:64]}.", dir=final.parent))
    try:
        with open(staging / final.name, "wb") as handle, open(staging / data_name, "wb") as data:
            write_model(model, handle, data, data_name, inline_below=min(1024, threshold))
        for written in (staging / data_name, staging / final.name):
            if written.exists():  # the umask's mode, whatever created them
                os.chmod(written, file_mode())
        if (staging / data_name).exists():
            os.replace(staging / data_name, final.parent / data_name)
        os.replace(staging / final.name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


_FLOAT_NAMES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}


def weights_precision(model: onnx.ModelProto) -> str:
    """The float type most of the model's float weight bytes are in ("fp32", "fp16", "bf16"):
    what a strongly typed build computes in (int4/int8 weights behind fp16 scales count as the scales)."""
    totals: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.data_type in _FLOAT_NAMES:
            name = _FLOAT_NAMES[init.data_type]
            totals[name] = totals.get(name, 0) + (tensor_nbytes(init) or 0)
    return max(totals, key=totals.get) if totals else "fp32"


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    """Return `path` as a Path or raise InvalidInputError when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such {what}")
    return path


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset a model imports (0 when it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
