"""Checkpoints for inference: the shipped defaults, what each one is for (its :class:`ModelSpec`), and
loading any checkpoint, bundle or shipped default into a network with ``torch.load(weights_only=True)``.

A checkpoint is the ``{"model": state_dict}`` dict MONAI's ``CheckpointSaver`` writes; training and the
shipped ones (``<task>_unet.pt``) add ``"meta"``: the :class:`ModelSpec` as plain JSON types, whose
``produced_by`` says how it was trained (:mod:`mrivol_monai.provenance`); the shipped spec is also written
next to them as ``<task>_unet.json``. A checkpoint without a spec is described by, in this order: a JSON file
with the same stem next to it, the ``configs/train.json`` of the bundle it sits in, or the shipped
default spec of the task (the network the bundle trains by default).

A bundle is code: its configs may hold ``$`` Python expressions. Reading a bundle's ``train.json`` to describe
a checkpoint takes only its literal values (and ``@`` references to literal values); a config that needs
its code run to say what the network is is refused unless the caller opts in with ``trust_bundle=True``
(``mrivol predict --trust-bundle``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mrivol_monai.data.manifests import TASK_LABELS
from mrivol_monai.errors import InputError
from mrivol_monai.native_grid import CROP_MARGIN, IMAGE_RESIZE_MODE
from mrivol_monai.transforms.intensity import HEAD_THRESHOLD_FRACTION

__all__ = [
    "DEFAULT_NETWORK_DEF",
    "ModelSpec",
    "PREPROCESSING_DEFAULTS",
    "WEIGHTS_DIR",
    "build_network",
    "checkpoint_path",
    "default_checkpoint",
    "load_model",
    "read_spec",
    "spec_from_bundle_config",
    "task_spec",
]

WEIGHTS_DIR = Path(__file__).resolve().parent

# What bundle/configs/train.json trains by default; used when a bare checkpoint comes with no description.
DEFAULT_NETWORK_DEF: dict[str, Any] = {
    "_target_": "mrivol_monai.networks.UNet2d", "in_channels": 1, "ed_blocks": 4, "width": 16,
}
DEFAULT_SPATIAL_SIZE = [40, 128, 128]
DEFAULT_DEPTH_AXIS = "axial"
# train.json's preprocessing parameters a spec carries besides spatial_size and depth_axis, with the values
# of checkpoints written before specs carried them (the shipped models were trained with these)
PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "crop_margin": CROP_MARGIN, "head_threshold_fraction": HEAD_THRESHOLD_FRACTION,
    "image_resize_mode": IMAGE_RESIZE_MODE,
}


@dataclass
class ModelSpec:
    """What a checkpoint segments and how its inputs were prepared.

    ``class_names`` has ``num_classes`` entries, index = label value (0 = background). ``network_def`` is
    a bundle-style ``{"_target_": "mrivol_monai.networks.<Net>", **kwargs}`` with ``out_channels`` set.
    ``spatial_size`` is the preprocessed (D, H, W) grid; D is cut along ``depth_axis``. ``crop_margin``
    (voxels around the head box), ``head_threshold_fraction`` (head mask for the crop and the z-score) and
    ``image_resize_mode`` are the rest of ``train.json``'s preprocessing, so serving can prepare scans alike.
    """

    task: str
    num_classes: int
    class_names: list[str]
    network_def: dict[str, Any]
    spatial_size: list[int] = field(default_factory=lambda: list(DEFAULT_SPATIAL_SIZE))
    depth_axis: str = DEFAULT_DEPTH_AXIS
    produced_by: dict[str, Any] = field(default_factory=dict)
    crop_margin: int = PREPROCESSING_DEFAULTS["crop_margin"]
    head_threshold_fraction: float = PREPROCESSING_DEFAULTS["head_threshold_fraction"]
    image_resize_mode: str = PREPROCESSING_DEFAULTS["image_resize_mode"]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (safe inside a ``weights_only`` checkpoint)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, source: str | os.PathLike) -> "ModelSpec":
        """Validate a spec read from ``source`` (JSON or checkpoint ``meta``); :class:`InputError` if malformed."""
        if not isinstance(raw, dict):
            raise InputError(source, "model description must be a JSON object")
        missing = [k for k in ("task", "num_classes", "network_def") if k not in raw]
        if missing:
            raise InputError(source, f"model description lacks {', '.join(missing)}")
        task, num_classes = str(raw["task"]), int(raw["num_classes"])
        names = raw.get("class_names") or list(TASK_LABELS.get(task, {}).values()) or \
            ["background"] + [f"class{i}" for i in range(1, num_classes)]
        if len(names) != num_classes:
            raise InputError(source, f"{len(names)} class_names for {num_classes} classes")
        net = dict(raw["network_def"])
        net["out_channels"] = num_classes
        size = [int(s) for s in raw.get("spatial_size", DEFAULT_SPATIAL_SIZE)]
        if len(size) != 3:
            raise InputError(source, f"spatial_size must be (D, H, W), got {size}")
        try:
            margin = int(raw.get("crop_margin", PREPROCESSING_DEFAULTS["crop_margin"]))
            fraction = float(raw.get("head_threshold_fraction", PREPROCESSING_DEFAULTS["head_threshold_fraction"]))
        except (TypeError, ValueError) as err:
            raise InputError(source, f"crop_margin must be an integer and head_threshold_fraction a number: {err}") from None
        if margin < 0 or not 0 < fraction < 1:
            raise InputError(source, f"crop_margin must be >= 0 and head_threshold_fraction in (0, 1), got "
                                     f"{margin} and {fraction}")
        return cls(task, num_classes, [str(n) for n in names], net, size,
                   str(raw.get("depth_axis", DEFAULT_DEPTH_AXIS)), dict(raw.get("produced_by") or {}),
                   margin, fraction, str(raw.get("image_resize_mode", PREPROCESSING_DEFAULTS["image_resize_mode"])))


def task_spec(task: str, network_def: dict[str, Any] | None = None, **kwargs: Any) -> ModelSpec:
    """Spec of ``task`` (``brain``, ``subcortical``) with the default network unless ``network_def`` is given."""
    if task not in TASK_LABELS:
        raise InputError(None, f"unknown task {task!r}; expected one of {', '.join(TASK_LABELS)}")
    names = list(TASK_LABELS[task].values())
    net = dict(DEFAULT_NETWORK_DEF if network_def is None else network_def)
    return ModelSpec.from_dict({"task": task, "num_classes": len(names), "class_names": names,
                                "network_def": net, **kwargs}, "<defaults>")


def default_checkpoint(task: str) -> Path:
    """Path of the shipped checkpoint of ``task`` (may not exist before ``mrivol export-weights`` ran)."""
    return WEIGHTS_DIR / f"{task}_unet.pt"


def build_network(network_def: dict[str, Any], source: str | os.PathLike = "network_def") -> nn.Module:
    """Instantiate ``{"_target_": ..., **kwargs}``, accepting only the networks of ``mrivol_monai.networks``.

    Not MONAI's ``ConfigParser``: a spec travels inside checkpoints, and a ``_target_`` there must not be
    able to call arbitrary code (which would undo ``weights_only=True``).
    """
    from mrivol_monai import networks

    kwargs = dict(network_def)
    target = str(kwargs.pop("_target_", kwargs.pop("name", "")))
    name = target.rsplit(".", 1)[-1]
    allowed = {cls.__name__: cls for cls in networks.NETWORKS.values()}
    if not (target in (name, f"mrivol_monai.networks.{name}") and name in allowed):
        raise InputError(source, f"network_def _target_ {target!r} is not one of mrivol_monai.networks."
                                 f"{{{', '.join(sorted(allowed))}}}")
    try:
        return allowed[name](**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(source, f"cannot build {name}({kwargs}): {err}") from err


class _NeedsCode(Exception):
    """A config value that only running the bundle's code could give."""


def _literal(parser: Any, key: str, seen: tuple[str, ...] = ()) -> Any:
    """Value of config ``key`` without running any code: literals, and ``@id`` references to literals."""
    if key in seen:
        raise _NeedsCode(key)
    value = parser.get(key)
    if isinstance(value, str) and value.startswith("@"):
        return _literal(parser, value[1:], seen + (key,))
    if isinstance(value, str) and value.startswith(("$", "%")):
        raise _NeedsCode(key)
    if isinstance(value, dict):
        return {k: _literal(parser, f"{key}#{k}", seen + (key,)) for k in value}
    if isinstance(value, list):
        return [_literal(parser, f"{key}#{i}", seen + (key,)) for i in range(len(value))]
    return value


def spec_from_bundle_config(config: str | os.PathLike | Sequence[str | os.PathLike], task: str | None = None,
                            overrides: Mapping[str, Any] | None = None, trust_bundle: bool = True) -> ModelSpec:
    """Spec from a bundle's ``train.json`` (or a list of config files merged in order, then ``overrides`` as
    on the bundle command line): its ``task``, ``num_classes``, ``network_def``, ``spatial_size``,
    ``depth_axis`` and the other preprocessing parameters (:data:`PREPROCESSING_DEFAULTS`); ``task`` overrides the config's task and sets ``num_classes`` to match it.

    ``trust_bundle`` False reads literal values only (no ``$`` expression is run) and raises
    :class:`InputError` when the config needs its code run to describe the network."""
    from monai.bundle import ConfigParser

    files = [str(config)] if isinstance(config, (str, os.PathLike)) else [str(c) for c in config]
    parser = ConfigParser()
    try:
        parser.read_config(files if len(files) > 1 else files[0])
    except (OSError, ValueError) as err:
        raise InputError(config, f"cannot read bundle config: {err}") from err
    if overrides:
        parser.update(dict(overrides))
    if task is not None:
        parser["task"] = task
        parser["num_classes"] = len(TASK_LABELS.get(task, {})) or parser["num_classes"]
    keys = [k for k in ("task", "num_classes", "spatial_size", "depth_axis", *PREPROCESSING_DEFAULTS) if k in parser]
    if trust_bundle:
        raw = {key: parser.get_parsed_content(key) for key in keys}
        raw["network_def"] = {k: parser.get_parsed_content(f"network_def#{k}") for k in parser["network_def"]}
    else:
        try:
            raw = {key: _literal(parser, key) for key in keys + ["network_def"]}
        except _NeedsCode as err:
            raise InputError(config, f"describes the model with code ({err.args[0]} is a $ expression or a "
                                     "macro); a bundle is code: pass --trust-bundle to run it, or give the "
                                     "checkpoint a <stem>.json spec") from None
    raw["produced_by"] = {"config": files[0] if len(files) == 1 else files}
    return ModelSpec.from_dict(raw, files[-1])


def read_spec(path: str | os.PathLike, checkpoint: dict | None = None, task: str | None = None,
              num_classes: int | None = None, trust_bundle: bool = False) -> ModelSpec:
    """Spec of the checkpoint at ``path``: its embedded ``meta``, else ``<stem>.json`` next to it, else the
    ``configs/train.json`` of the bundle it is in (``<bundle>/models/<file>``; its code runs only with
    ``trust_bundle``, see :func:`spec_from_bundle_config`), else the default network of the task that has
    ``num_classes`` classes (``task`` if none has)."""
    path = Path(path)
    if checkpoint is not None and isinstance(checkpoint.get("meta"), dict) and "network_def" in checkpoint["meta"]:
        return ModelSpec.from_dict(checkpoint["meta"], path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            return ModelSpec.from_dict(json.loads(sidecar.read_text()), sidecar)
        except json.JSONDecodeError as err:
            raise InputError(sidecar, f"not valid JSON: {err}") from err
    bundle_config = path.parent.parent / "configs" / "train.json"
    if path.parent.name == "models" and bundle_config.is_file():
        return spec_from_bundle_config(bundle_config, task, trust_bundle=trust_bundle)
    by_classes = [t for t, labels in TASK_LABELS.items() if len(labels) == num_classes]
    return task_spec(by_classes[0] if by_classes else task or "brain")


def _state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    sd = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(path, "checkpoint holds no state dict (expected {'model': state_dict} or a state dict)")
    return sd


def _output_classes(sd: dict[str, torch.Tensor]) -> int:
    """Out channels of the last conv in the state dict (the segmentation head)."""
    return int([v for v in sd.values() if v.ndim >= 4][-1].shape[0])


def checkpoint_path(model: str | os.PathLike | None = None, task: str | None = None) -> Path:
    """The ``.pt`` file :func:`load_model` reads for ``model``: the file itself, ``<bundle>/models/model.pt`` for
    a bundle folder, the shipped default of ``task`` (brain) for None; :class:`InputError` if it is missing."""
    if model is None:
        path = default_checkpoint(task or "brain")
        if not path.is_file():
            raise InputError(path, f"no default {task or 'brain'} checkpoint is shipped in this install; pass "
                                   "--model, or create it with `mrivol export-weights`")
        return path
    path = Path(model)
    if path.is_dir():
        path = path / "models" / "model.pt"
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    return path


def load_model(model: str | os.PathLike | None = None, task: str | None = None,
               trust_bundle: bool = False) -> tuple[nn.Module, ModelSpec]:
    """Network in eval mode plus its spec, from ``model`` (a ``.pt`` checkpoint, or a bundle folder with
    ``models/model.pt``), or the shipped default of ``task`` when ``model`` is None. The weights are read with
    ``torch.load(weights_only=True)``; a bundle's ``$`` code runs only with ``trust_bundle`` (:func:`read_spec`).

    ``task`` None means: the checkpoint's own task (``brain`` for the shipped default). A checkpoint whose
    task or number of classes differs from ``task`` raises :class:`InputError`.
    """
    path = checkpoint_path(model, task)
    if path.stat().st_size == 0:
        raise InputError(path, "checkpoint is empty (0 bytes: its save was interrupted); use another checkpoint "
                               "or retrain")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean "not a checkpoint we can read safely"
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
        raise InputError(path, f"not a loadable torch checkpoint ({type(err).__name__}{': ' + first[:160] if first else ''})") from err
    sd = _state_dict(checkpoint, path)
    classes = _output_classes(sd)
    spec = read_spec(path, checkpoint if isinstance(checkpoint, dict) else None, task, classes, trust_bundle)
    wanted = task or spec.task
    if wanted not in TASK_LABELS:
        raise InputError(None, f"unknown task {wanted!r}; expected one of {', '.join(TASK_LABELS)}")
    if spec.task != wanted or classes != len(TASK_LABELS[wanted]) or spec.num_classes != classes:
        raise InputError(path, f"checkpoint is for task {spec.task!r} ({classes} output classes), not "
                               f"{wanted!r} ({len(TASK_LABELS[wanted])} classes)")
    net = build_network(spec.network_def, path)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        detail = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise InputError(path, f"weights do not fit {spec.network_def}: {detail[-1][:200]}") from err
    return net.eval(), spec
