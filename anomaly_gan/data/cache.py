"""Cache of decoded-and-resized images: in memory per process, on disk shared by processes.

Decoding and shrinking a 1024 px PNG takes tens of milliseconds; normalising the resulting
64 px array takes microseconds. So each file is decoded and resized once, and the uint8
(or float32 for 16-bit sources) array *before* normalisation is kept:

- in memory, per dataset copy (each DataLoader worker has its own, filled as it goes);
- on disk under ``data.cache_dir``, shared by workers, runs and processes. The key hashes
  the absolute path, the file size and ``mtime_ns`` together with the resize settings, so
  an edited file or a new ``image_size``/``channels``/interpolation never reuses a stale
  array. Files are written to a temporary name and renamed, so a reader never sees half a
  file even with several workers writing at once.

The cache is an accelerator only: an unwritable cache directory or a damaged cache file
logs a warning and falls back to decoding, it never stops a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1


class Decoded(NamedTuple):
    """A decoded, resized array and the (height, width) of the file it came from.

    The source size lets a mask be checked against its image even when both come from
    the cache (the resized arrays always match).
    """

    array: np.ndarray
    source_size: tuple[int, int]


@dataclass
class CacheStats:
    """Counters for tests and the loading benchmark (per process)."""

    memory_hits: int = 0
    disk_hits: int = 0
    decodes: int = 0
    disk_writes: int = 0


class ImageCache:
    """Memory + disk cache of ``Decoded`` arrays; ``directory=None`` keeps memory only.

    ``memory=False`` keeps nothing in memory (only the disk cache), for datasets whose
    resized images do not fit in RAM once per worker.
    """

    def __init__(self, directory: str | Path | None = None, memory: bool = True) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.memory = memory
        self._entries: dict[Hashable, Decoded] = {}
        self._disk_writable = True
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def clear_memory(self) -> None:
        self._entries.clear()

    # ------------------------------------------------------------------ lookup
    def get(
        self,
        path: Path,
        kind: str,
        settings: tuple[Hashable, ...],
        build: Callable[[], Decoded],
    ) -> Decoded:
        """Return the cached entry for ``path`` or ``build()`` it and store it.

        ``kind`` ("image", "mask") and ``settings`` (size, channels, interpolation) are
        part of the key. ``build`` raises ``DatasetError`` for an unreadable file; nothing
        is cached then.
        """
        memory_key = (str(path), kind, settings)
        entry = self._entries.get(memory_key)
        if entry is not None:
            self.stats.memory_hits += 1
            return entry
        disk_path = self._disk_path(path, kind, settings)
        entry = self._load(disk_path) if disk_path is not None else None
        if entry is not None:
            self.stats.disk_hits += 1
        else:
            entry = build()
            self.stats.decodes += 1
            entry.array.setflags(write=False)  # shared by every later access: never mutate
            if disk_path is not None:
                self._store(disk_path, entry)
        if self.memory:
            self._entries[memory_key] = entry
        return entry

    def disk_key(self, path: Path, kind: str, settings: tuple[Hashable, ...]) -> str | None:
        """Hex key of ``path`` in its current state, or None if the file cannot be stat'ed."""
        try:
            stat = os.stat(path)
        except OSError:
            return None  # build() will raise the error that names the file
        text = repr(
            (
                CACHE_FORMAT_VERSION,
                kind,
                str(Path(path).absolute()),
                stat.st_size,
                stat.st_mtime_ns,
                settings,
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def _disk_path(self, path: Path, kind: str, settings: tuple[Hashable, ...]) -> Path | None:
        if self.directory is None:
            return None
        key = self.disk_key(path, kind, settings)
        if key is None:
            return None
        return self.directory / key[:2] / f"{key}.npy"

    # ------------------------------------------------------------------ disk
    def _load(self, disk_path: Path) -> Decoded | None:
        try:
            data = disk_path.read_bytes()
        except OSError:
            return None  # not cached yet (or the cache folder is unusable): decode
        try:
            stream = io.BytesIO(data)
            array = np.load(stream, allow_pickle=False)
            size = np.load(stream, allow_pickle=False)
        except (OSError, ValueError, EOFError) as error:
            log.warning("Ignoring damaged cache file %s (%s); decoding again.", disk_path, error)
            with contextlib.suppress(OSError):
                disk_path.unlink()
            return None
        array.setflags(write=False)
        return Decoded(array, (int(size[0]), int(size[1])))

    def _store(self, disk_path: Path, entry: Decoded) -> None:
        if not self._disk_writable:
            return
        temporary: str | None = None
        try:
            disk_path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=disk_path.parent, prefix=".tmp-")
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, entry.array, allow_pickle=False)
                np.save(stream, np.asarray(entry.source_size, dtype=np.int64))
            os.replace(temporary, disk_path)  # atomic: readers see all of it or nothing
            temporary = None
            self.stats.disk_writes += 1
        except OSError as error:
            self._disk_writable = False
            log.warning(
                "Cannot write the image cache under %s (%s); continuing without the disk "
                "cache. Set data.cache_dir to a writable folder, or data.cache=false.",
                self.directory,
                error,
            )
        finally:
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)
