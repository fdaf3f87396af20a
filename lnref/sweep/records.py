"""The run records: a JSON-lines file, one record per finished task, that a crash cannot spoil.

A record is one JSON object on one line:

    key, kind, index, config     the task (``lnref.sweep.task``)
    status                       "ok", or "error" with ``error`` (one line) and ``traceback``
    result                       the kind's result (null on error)
    lnref, numpy, numba, python  the versions the worker ran
    kernels                      the kernel backend ("numba" or "numpy")
    host, pid, seconds           where it ran and its wall time

Only the driver writes, and only by appending. Each record goes to the file in one write of
the whole line, newline last, then ``fsync``: a driver killed at any moment leaves complete
lines, plus at most a torn last line without its newline. A reader ignores that torn line
(its task runs again); the next writer cuts it off before appending. A complete line that
is not a record is not a crash's doing, and is reported rather than skipped.

One writer at a time: the writer holds an exclusive lock on the file (``flock``), so a
second sweep on the same file stops with one line instead of interleaving records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from lnref.files import PathLike, check_output_path

try:
    import fcntl
except ImportError:  # not on Windows: the lock is then advisory nowhere
    fcntl = None  # type: ignore[assignment]

STATUSES = ("ok", "error")
TASK_FIELDS = ("key", "kind", "index", "config")
REQUIRED_FIELDS = (*TASK_FIELDS, "status", "result", "lnref")


class RecordsError(ValueError):
    """A records file that cannot be used as asked; the message is one line naming it."""


def read_records(path: PathLike) -> list[dict[str, Any]]:
    """Every complete record of ``path``, in file order (a torn last line is left out)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as err:
        raise RecordsError(f"cannot read {path}: {err.strerror or err}") from None
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), start=1):
        records.append(_parse(line, path, number))
    return records


def latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """key -> the record that stands for it: its last ok record, else its last record."""
    chosen: dict[str, dict[str, Any]] = {}
    for record in records:
        current = chosen.get(record["key"])
        if current is None or record["status"] == "ok" or current["status"] != "ok":
            chosen[record["key"]] = record
    return chosen


class RecordWriter:
    """Appends records to ``path`` (created if missing), each one whole and on disk before
    :meth:`append` returns. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: PathLike, option: str | None = "--out") -> None:
        self.path = os.fspath(path)
        directory = check_output_path(self.path, option)
        existed = os.path.exists(self.path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as err:
            raise RecordsError(f"cannot write {self.path}: {err.strerror or err}") from None
        try:
            self._lock()
            self._cut_torn_tail()
            if not existed:
                _fsync_directory(directory)  # the file's name survives a crash too
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` as one line; returns it as a reader of the file will see it."""
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        data = line.encode()
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        os.fsync(self._fd)
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self) -> None:
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RecordsError(f"{self.path} is being written by another lnref sweep") from None

    def _cut_torn_tail(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        # The last newline ends the last complete record; reading backwards finds it without
        # reading a large file whole.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            chunk = os.pread(self._fd, end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep < size:
            os.ftruncate(self._fd, keep)
            os.fsync(self._fd)


def _parse(line: bytes, path: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict) or any(field not in record for field in REQUIRED_FIELDS):
        raise RecordsError(f"{path}, line {number}: not a run record")
    if record["status"] not in STATUSES:
        raise RecordsError(f"{path}, line {number}: unknown status {record['status']!r}")
    return record


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the record itself is on disk
    finally:
        os.close(fd)
