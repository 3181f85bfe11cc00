"""One exception type for bad input, so entry points can print one clear line and exit non-zero."""

from __future__ import annotations

from os import PathLike


class InputError(ValueError):
    """Bad user input (file, manifest, option). ``str(err)`` is one line naming the file and the problem."""

    def __init__(self, path: str | PathLike | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
