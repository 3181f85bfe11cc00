"""Where the bundle is, and what its ``train.json`` says, for configs that must not depend on the working directory.

MONAI resolves ``%path#id`` macros and relative paths against the working directory, so a config that names
``bundle/configs/train.json`` only works from the repository root. The bundle configs call these two functions
instead: ``bundle_root`` is found from the working directory (the bundle folder itself, as the Model Zoo runs
it, or the repository root above it), and ``inference.json`` reads the task and network of ``train.json``
through :func:`train_setting`, relative to that root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mrivol_monai.errors import InputError

__all__ = ["BUNDLE_DIR_NAME", "find_bundle_root", "is_bundle", "train_setting"]

BUNDLE_DIR_NAME = "bundle"  # the bundle's folder in this repository


def is_bundle(path: str | os.PathLike) -> bool:
    """True if ``path`` is a bundle folder (holds ``configs/metadata.json`` and ``configs/train.json``)."""
    configs = Path(path) / "configs"
    return (configs / "metadata.json").is_file() and (configs / "train.json").is_file()


def find_bundle_root(cwd: str | os.PathLike | None = None) -> str:
    """The bundle folder for a run started in ``cwd`` (default: the working directory): ``"."`` inside the
    bundle, ``"bundle"`` from the repository root. Anything else raises :class:`InputError` naming both ways
    out (``cd`` there, or pass ``--bundle_root``)."""
    here = Path(os.getcwd() if cwd is None else cwd)
    if is_bundle(here):
        return "."
    if is_bundle(here / BUNDLE_DIR_NAME):
        return BUNDLE_DIR_NAME
    raise InputError(here, "neither this folder nor its 'bundle/' sub-folder is a bundle (configs/metadata.json "
                           "and configs/train.json); run from the bundle or the repository root, or pass "
                           "--bundle_root /path/to/bundle")


def train_setting(bundle_root: str | os.PathLike, key: str, **overrides: Any) -> Any:
    """Parsed value of ``key`` in ``<bundle_root>/configs/train.json`` after setting ``overrides``
    (config ids -> values, e.g. ``num_classes=5`` so an overlay's class count reaches ``network_def``)."""
    from monai.bundle import ConfigParser

    path = Path(bundle_root) / "configs" / "train.json"
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except (OSError, ValueError) as err:
        raise InputError(path, f"cannot read the bundle's training config: {err}") from err
    parser.update({"bundle_root": str(bundle_root), **overrides})
    if key not in parser:
        raise InputError(path, f"has no {key!r}")
    return parser.get_parsed_content(key)
