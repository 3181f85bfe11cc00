"""``volumes.csv`` shared by any number of processes: exactly one row per scan.

Several ``mrivol predict`` processes (torchrun ranks, ``--shard`` array jobs, or two people's commands) may
write one output folder. Every change to the CSV happens under an exclusive lock on ``.volumes.csv.lock``
beside it (``flock``: also honoured across NFS clients on Linux). A new scan's row is appended with one
``write`` and flushed to disk (no rewrite: a cohort of 100,000 scans would otherwise rewrite the file
100,000 times); replacing a scan's row (``--overwrite``, or a row whose mask went missing) rewrites the file
through a temp file and a rename. Each process remembers how far it has read and reads only what others
appended since, so checking "is this scan done?" does not re-read the whole file.

A file left by a crash, an older version or an editor is repaired under the lock before use
(:meth:`VolumesTable.repair`): a last line without its newline is completed if it is a whole row and dropped
if it is not (its scan then counts as not done), duplicate rows of a scan keep the last one, and a file whose
header is the first part of today's (written before columns were added at the end) gets the new columns, empty.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from mrivol_monai.atomic_io import write_atomic
from mrivol_monai.errors import InputError

__all__ = ["VolumesTable", "file_lock"]


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, never deleted: deleting a lock file while another
    process waits on it would let two in) for the duration of the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if sys.platform == "win32":  # pragma: no cover - msvcrt has no blocking lock: retry
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    time.sleep(0.05)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class VolumesTable:
    """The rows of one ``volumes.csv`` keyed by their first column (``scan``), safe to use from many processes.

    ``columns``: the header; a file with another header raises :class:`InputError` (another task's CSV).
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.header = ",".join(self.columns)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._rows: dict[str, dict[str, str]] = {}
        self._offset = 0  # bytes of the file already parsed into _rows (whole lines only)
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file read: a rename changes it

    # -- reading ------------------------------------------------------------------------------------------
    def _parse(self, text: str, strict: bool = False, first_line: int = 2) -> list[dict[str, str]]:
        """CSV text -> rows; a line with the wrong number of fields is skipped, or with ``strict`` raises."""
        rows = []
        for n, fields in enumerate(csv.reader(io.StringIO(text)), start=first_line):
            if len(fields) == len(self.columns):
                rows.append(dict(zip(self.columns, fields)))
            elif strict and fields:
                raise InputError(self.path, f"line {n} has {len(fields)} fields, expected {len(self.columns)} "
                                            f"({self.header}); fix or remove that line")
        return rows

    def _check_header(self, first_line: str) -> None:
        if first_line.rstrip("\r\n") != self.header:
            raise InputError(self.path, f"has columns {first_line.rstrip()!r}, expected {self.header!r} "
                                        "(another task? use another --out)")

    def _older_columns(self, first_line: str) -> list[str] | None:
        """The header's columns if they are the first, but not all, of ``columns`` (a ``volumes.csv`` written by an
        earlier version, before columns such as subject, session and qc were added at the end), else None."""
        old = first_line.rstrip("\r\n").split(",")
        return old if len(old) < len(self.columns) and old == self.columns[: len(old)] else None

    def _refresh(self) -> None:
        """Parse what was appended since the last call (everything, if the file was replaced). Under the lock."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._rows, self._offset, self._identity = {}, 0, None
            return
        if (stat.st_dev, stat.st_ino) != self._identity or stat.st_size < self._offset:
            self._rows, self._offset, self._identity = {}, 0, (stat.st_dev, stat.st_ino)
        if stat.st_size == self._offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still without its newline is left for repair()
        text = complete.decode("utf-8")
        if self._offset == 0 and text:
            first, _, text = text.partition("\n")
            self._check_header(first)
        for row in self._parse(text):
            self._rows[row[self.columns[0]]] = row
        self._offset += len(complete)

    def repair(self) -> None:
        """Check the header and make the file well-formed: a final line without a newline becomes a whole row
        (newline added) or, if it is not one, is dropped; duplicate rows of a scan keep the last; an earlier
        version's header (the first of ``columns``) gets the missing columns, empty. Rewrites the file (temp +
        rename) only if something changed."""
        with file_lock(self.lock_path):
            self._repair_locked()

    def _repair_locked(self) -> None:
        if not self.path.exists():
            self._refresh()
            return
        raw = self.path.read_bytes()
        if not raw:
            self._refresh()
            return
        text = raw.decode("utf-8")
        first, _, body = text.partition("\n")
        older = self._older_columns(first)
        if older is not None:  # an earlier version's file: widen its whole rows, new columns empty
            rows_before = [dict(zip(older, f)) for f in csv.reader(io.StringIO(body[: body.rfind("\n") + 1]))
                           if len(f) == len(older)]
            first, _, body = self._render(rows_before).partition("\n")
        self._check_header(first)
        lines = body.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            torn = lines.pop()
            if self._parse(torn):
                lines.append(torn + "\n")
        rows: dict[str, dict[str, str]] = {}
        for row in self._parse("".join(lines), strict=True):
            rows.pop(row[self.columns[0]], None)  # keep the last row of a scan, in its place
            rows[row[self.columns[0]]] = row
        fixed = self._render(rows.values())
        if fixed != text:
            write_atomic(self.path, fixed)
        self._rows, self._offset, self._identity = {}, 0, None
        self._refresh()

    def _render(self, rows: Sequence[dict[str, str]] | object) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)  # type: ignore[arg-type]
        return buffer.getvalue()

    def get(self, scan: str) -> dict[str, str] | None:
        """The current row of ``scan`` (written by any process), or None."""
        with file_lock(self.lock_path):
            self._refresh()
            return self._rows.get(scan)

    def rows(self) -> list[dict[str, str]]:
        """All current rows, in file order."""
        with file_lock(self.lock_path):
            self._refresh()
            return list(self._rows.values())

    # -- writing ------------------------------------------------------------------------------------------
    def put(self, row: dict[str, object]) -> None:
        """Make ``row`` the one row of its scan: appended if the scan has none, else replacing it."""
        row = {c: "" if row.get(c) is None else str(row.get(c)) for c in self.columns}
        with file_lock(self.lock_path):
            self._refresh()
            size = self.path.stat().st_size if self.path.exists() else 0
            if size > self._offset:  # a torn last line (crash mid-write, or an editor): fix it first
                self._repair_locked()
                size = self.path.stat().st_size
            key = row[self.columns[0]]
            if key in self._rows:
                rows = dict(self._rows)
                rows[key] = row
                write_atomic(self.path, self._render(rows.values()))
                self._rows, self._offset, self._identity = {}, 0, None
                self._refresh()
                return
            line = io.StringIO()
            writer = csv.DictWriter(line, fieldnames=self.columns, lineterminator="\n")
            if size == 0:
                writer.writeheader()
            writer.writerow(row)
            self._append(line.getvalue().encode("utf-8"), size)
            self._refresh()

    def _append(self, data: bytes, size: int) -> None:
        """Append ``data`` in one write, flushed to disk; if that fails half-way, cut the file back to ``size``."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
        finally:
            os.close(fd)
