"""A content-addressed cache of build outputs (engines, whole conversions), safe to share.

A deployment build step re-runs with unchanged inputs far more often than with new
ones; rebuilding an engine then costs minutes for nothing. Entries are folders named
by a key the caller derives from everything that decides the result (the ONNX bytes,
the recipe, backend and version, targets, profiles); each holds the files and an
`entry.json` with every file's size and sha256.

- **Lookup** verifies every file against `entry.json`: a truncated or edited entry is
  discarded (the caller rebuilds and stores it again), never served. A hit refreshes the
  entry's time, which is what eviction orders by (least recently used first). Readers
  take no lock: an entry evicted by another process between lookup and copy makes the
  copy fail, which callers treat as a miss (they build).
- **Store** copies into a scratch folder inside the cache and renames it into place, so
  a reader never sees half an entry; two writers of one key race harmlessly (the first
  rename wins, the second drops its copy). Renames and evictions hold an exclusive
  `flock` on `<cache>/.lock`, so concurrent processes (a process pool, Ray workers on one
  host) never evict what another is publishing.
- **Bounded**: after a store, the least recently used entries go until the cache is at
  most `max_bytes` (default 20 GiB, `TRTFORGE_CACHE_MAX_BYTES`); an entry larger than the
  bound is not stored at all.

Default folder: `$TRTFORGE_CACHE_DIR`, else `$XDG_CACHE_HOME/trtforge/artifacts`, else
`~/.cache/trtforge/artifacts`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.core.errors import InvalidInputError
from converter.core.model_io import sha256_file

ENTRY = "entry.json"
ENTRY_FORMAT = "trtforge-cache-entry/1"
DEFAULT_MAX_BYTES = 20 << 30


def default_cache_dir() -> Path:
    if os.environ.get("TRTFORGE_CACHE_DIR"):
        return Path(os.environ["TRTFORGE_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trtforge" / "artifacts"


def cache_key(*parts: Any) -> str:
    """sha256 of the JSON of `parts` (sorted keys): the same inputs give the same key on any machine."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def files_digest(paths: list[Path]) -> str:
    """One sha256 over the contents of files (an ONNX file and its external data)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def data_digest(path: str | Path) -> str | None:
    """A digest of a data file or of every file under a data folder (names and contents); None when
    there is nothing to read (the run itself then says what is wrong with the path)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    if not files or not all(p.is_file() for p in files):
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


@dataclass
class Lookup:
    """What a lookup found: the entry folder on a hit, else why there was none."""

    path: Path | None
    status: str  # "hit" | "miss" | "corrupt" (an entry that failed verification was discarded)


class ArtifactCache:
    """Folders of build outputs by key (see module docstring)."""

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.folder = Path(folder) if folder else default_cache_dir()
        self.max_bytes = max_bytes or int(os.environ.get("TRTFORGE_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"--cache-dir {self.folder}: cannot create it ({exc.strerror or exc})") from exc
        if not os.access(self.folder, os.W_OK):
            raise InvalidInputError(f"--cache-dir {self.folder}: not writable")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def lookup(self, key: str) -> Lookup:
        entry = self.folder / key
        if not (entry / ENTRY).is_file():
            return Lookup(None, "miss")
        try:
            record = json.loads((entry / ENTRY).read_text())
            files = record["files"]
            intact = record.get("format") == ENTRY_FORMAT and all(
                (entry / name).is_file()
                and (entry / name).stat().st_size == info["bytes"]
                and sha256_file(entry / name) == info["sha256"]
                for name, info in files.items()
            )
        except (OSError, ValueError, KeyError, TypeError):
            intact = False  # evicted while we read, or not a file we wrote: a miss either way
        if not intact:
            with self._locked():
                shutil.rmtree(entry, ignore_errors=True)
            return Lookup(None, "corrupt")
        with contextlib.suppress(OSError):
            os.utime(entry)
        return Lookup(entry, "hit")

    def store(self, key: str, files: dict[str, Path], meta: dict[str, Any] | None = None) -> bool:
        """Copy `files` (name in the entry -> source path) in as entry `key`; False when too large, or
        when the cache cannot take it (a full disk): a cache never fails the build it serves."""
        total = sum(path.stat().st_size for path in files.values())
        if total > self.max_bytes:
            return False
        scratch = self.folder / f".tmp-{uuid.uuid4().hex}"
        try:
            return self._store(key, files, meta or {}, scratch)
        except OSError:
            return False
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _store(self, key: str, files: dict[str, Path], meta: dict[str, Any], scratch: Path) -> bool:
        """Copy into `scratch`, then publish it under the lock (the first writer of a key wins)."""
        scratch.mkdir()
        record = {"format": ENTRY_FORMAT, "created": time.time(), "meta": meta, "files": {}}
        for name, source in files.items():
            shutil.copyfile(source, scratch / name)
            record["files"][name] = {"bytes": source.stat().st_size, "sha256": sha256_file(scratch / name)}
        (scratch / ENTRY).write_text(json.dumps(record, indent=1))
        with self._locked():
            if (self.folder / key).exists():
                return True  # another writer published the same key first
            os.rename(scratch, self.folder / key)
            self._evict(keep=key)
        return True

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        for entry in self.folder.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            found.append((entry.stat().st_mtime, size, entry))
        return sorted(found)

    def _evict(self, keep: str) -> None:
        """Least recently used entries out until the cache fits (called with the lock held)."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _, size, entry in entries:
            if total <= self.max_bytes:
                break
            if entry.name != keep:
                shutil.rmtree(entry, ignore_errors=True)
                total -= size
