"""One exception type for bad input, so entry points can print one clear line and exit non-zero."""

from __future__ import annotations

import sys
from os import PathLike


class InputError(ValueError):
    """Bad user input (file, manifest, option). ``str(err)`` is one line naming the file and the problem."""

    def __init__(self, path: str | PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


def find_input_error(exc: BaseException | None) -> InputError | None:
    """The first :class:`InputError` in ``exc``'s cause/context chain (MONAI wraps errors raised in configs)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_excepthook() -> None:
    """Make an uncaught :class:`InputError` (even wrapped by MONAI's config parser or transforms) print one line,
    ``error: <file>: <problem>``, instead of a traceback; every other exception keeps Python's default report.

    The bundle configs call this in ``initialize`` so ``python -m monai.bundle run ...`` fails on bad data
    with a line a person can act on. The process still exits with status 1.
    """
    previous = sys.excepthook

    def hook(exc_type, exc, tb):  # noqa: ANN001 (sys.excepthook signature)
        found = find_input_error(exc)
        if found is None:
            previous(exc_type, exc, tb)
        else:
            print(f"error: {found}", file=sys.stderr)

    sys.excepthook = hook
