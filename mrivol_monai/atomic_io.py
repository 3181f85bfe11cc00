"""Write files so that readers (and a crash) never see half of one: write a temp file beside the target,
then rename it into place. Every results, mask, manifest and plot writer in the package goes through here.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "json_safe", "make_writable_dir", "plain_name", "write_atomic"]


def _usual_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp path in ``path``'s folder, ending in the same suffixes (``.nii.gz``, ``.png``: writers
    that pick the format from the name still work). If the block finishes, the temp file is renamed over
    ``path`` with the usual permissions; if it raises, the temp file is removed and ``path`` is untouched.
    The folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes))
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _usual_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text or bytes) to ``path`` through :func:`atomic_path`, flushed to disk first."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def make_writable_dir(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove a file can be written in it (an empty probe file, removed again);
    ``OSError`` otherwise, for the caller to turn into a one-line error naming its setting."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".mrivol-write-test.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder


def plain_name(name: str) -> str:
    """``name`` made a plain file name for use inside an output folder: path separators and NUL become ``_``,
    leading dots are dropped (no ``..``, no hidden files), an empty result becomes ``_``. Ids from manifests
    (``../../x``, ``/etc/x``) must never choose where a file is written."""
    out = str(name).replace("\0", "_").replace("/", "_")
    if os.sep != "/":
        out = out.replace(os.sep, "_")
    if os.altsep:
        out = out.replace(os.altsep, "_")
    return out.lstrip(". ") or "_"


def json_safe(x: object) -> object:
    """NaN/inf -> None, through nested dicts and lists, so results files stay strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x
