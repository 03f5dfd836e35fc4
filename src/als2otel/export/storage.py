"""The sending queue on disk (``exporters.otlp.sending_queue.storage``): export requests kept
as files until the backend has accepted them, so that what was queued survives a restart or a
crash of the bridge (at least once), as the Collector's ``file_storage`` does for its queue.

One file a request, named by a sequence number (oldest first) and its signal, holding a
16-byte header (magic, items, length, CRC-32 of the payload) and the serialized request.
A file is written under ``tmp/``, flushed to disk if ``fsync`` is set, then renamed into
place, so it is either whole or absent; what ``tmp/`` holds at start (writes a crash cut
short) is removed. A file that is torn or corrupt anyway (a disk error) is counted, logged,
moved under ``corrupt/`` and skipped. One process per directory: a lock on ``lock`` refuses
a second one with a clear error.

This module only keeps files; :mod:`.otlp` decides what to keep and what to drop.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..stats import Stats

log = logging.getLogger("als2otel.export")

MAGIC = b"A2OQ"
HEADER = struct.Struct("<4sIII")  # magic, items, payload length, CRC-32 of the payload
SIGNALS = ("traces", "metrics")

MAX_SET_ASIDE = 64
"""Corrupt files kept under ``corrupt/`` for a look; older ones are removed."""


class StorageLocked(OSError):
    """Another process holds the directory."""


@dataclass(slots=True)
class Stored:
    """One request on disk."""

    sequence: int
    signal: str
    items: int
    size: int  # bytes on disk, header included
    path: Path


class DiskQueue:
    """A directory of export requests, oldest first; see the module's docstring."""

    def __init__(self, directory: str | Path, stats: Stats, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self._fsync = fsync
        self._stats = stats
        self._lock: IO[bytes] | None = None
        self._next = 0
        self.bytes = 0
        self.requests = 0

    def open(self) -> list[Stored]:
        """Lock the directory (creating it) and return the requests an earlier run left, oldest
        first. Raises :class:`StorageLocked` if another process holds it, OSError if unusable."""
        for folder in (self.directory / "tmp", self.directory / "corrupt"):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = lock_directory(self.directory)
        for torn in (self.directory / "tmp").iterdir():
            torn.unlink(missing_ok=True)  # a write a crash cut short: never renamed, never queued
        found = []
        for path in sorted(self.directory.iterdir()):
            if path.is_file() and path.name != "lock":
                stored = self._check(path)
                if stored is not None:
                    found.append(stored)
        found.sort(key=lambda s: s.sequence)
        self._next = found[-1].sequence + 1 if found else 0
        self.bytes = sum(s.size for s in found)
        self.requests = len(found)
        self._publish()
        return found

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def write(self, signal: str, payload: bytes, items: int) -> Stored:
        """Keep one request; whole or not at all (a temporary file renamed into place)."""
        sequence = self._next
        self._next += 1
        name = f"{sequence:016d}.{signal}"
        temporary, final = self.directory / "tmp" / name, self.directory / name
        header = HEADER.pack(MAGIC, items, len(payload), zlib.crc32(payload))
        with open(temporary, "wb") as file:
            file.write(header)
            file.write(payload)
            if self._fsync:
                file.flush()
                os.fsync(file.fileno())
        os.rename(temporary, final)
        if self._fsync:
            _fsync_directory(self.directory)
        stored = Stored(sequence, signal, items, HEADER.size + len(payload), final)
        self.bytes += stored.size
        self.requests += 1
        self._publish()
        return stored

    def read(self, stored: Stored) -> bytes:
        """A request's payload (checked when the directory was opened, or written by this process)."""
        with open(stored.path, "rb") as file:
            return file.read()[HEADER.size :]

    def remove(self, stored: Stored) -> None:
        """Forget a request: sent, refused for good, or dropped."""
        with contextlib.suppress(FileNotFoundError):
            stored.path.unlink()
            self.bytes -= stored.size
            self.requests -= 1
            self._publish()

    def _publish(self) -> None:
        self._stats.queue_storage_bytes.value = self.bytes
        self._stats.queue_storage_requests.value = self.requests

    def _check(self, path: Path) -> Stored | None:
        """The request a file holds, or None (it was set aside) if it is not a whole one."""
        number, _, signal = path.name.partition(".")
        try:
            data = path.read_bytes()
        except OSError as error:
            self._set_aside(path, signal, f"cannot be read: {error}")
            return None
        if not (number.isdigit() and signal in SIGNALS) or len(data) < HEADER.size:
            self._set_aside(path, signal, "is not a request file")
            return None
        magic, items, length, crc = HEADER.unpack_from(data)
        payload = memoryview(data)[HEADER.size :]
        if magic != MAGIC or length != len(payload) or crc != zlib.crc32(payload):
            self._set_aside(path, signal, "is torn or corrupt (its length or checksum is wrong)")
            return None
        return Stored(int(number), signal, items, len(data), path)

    def _set_aside(self, path: Path, signal: str, why: str) -> None:
        self._stats.queue_corrupt_files.inc(signal if signal in SIGNALS else "unknown")
        log.warning("sending queue file %s %s; moved to %s/corrupt and skipped", path, why, self.directory)
        aside = self.directory / "corrupt"
        with contextlib.suppress(OSError):
            os.replace(path, aside / path.name)
            kept = sorted(aside.iterdir())
            for old in kept[: max(len(kept) - MAX_SET_ASIDE, 0)]:
                old.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.unlink()


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def lock_directory(directory: str | Path) -> IO[bytes]:
    """Take ``directory``'s lock (creating the directory) for as long as the returned file is
    open. Also for a process that keeps no queue there itself: the parent of workers, whose
    workers queue in subdirectories. Raises :class:`StorageLocked` if another process holds it."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    lock = open(Path(directory) / "lock", "ab")  # noqa: SIM115 (held for the process's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise StorageLocked(
            f"sending_queue.storage {directory} is in use by another als2otel process "
            "(each process, and each worker, needs a directory of its own)"
        ) from None
    return lock
