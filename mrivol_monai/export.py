"""Export a slice network to TorchScript or ONNX, run ONNX models with onnxruntime, and turn a trained
bundle checkpoint into a shipped default (``mrivol_monai/weights/<task>_unet.pt`` + ``.json``).

Every exported file carries its :class:`~mrivol_monai.weights.ModelSpec` as JSON (TorchScript: extra file
``mrivol.json``; ONNX: metadata property ``mrivol``), so ``mrivol predict --model x.onnx`` knows the task,
classes and preprocessing grid without a side file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mrivol_monai.atomic_io import atomic_path
from mrivol_monai.errors import InputError
from mrivol_monai.weights import WEIGHTS_DIR, ModelSpec, default_checkpoint, spec_from_bundle_config

__all__ = [
    "BUNDLE_MODEL_PATHS",
    "FORMATS",
    "OnnxSegmenter",
    "bundle_model",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "export_weights",
    "load_onnx",
    "onnx_from_network",
]

FORMATS = ("torchscript", "onnx")
SPEC_KEY = "mrivol"


def _write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temp name next to ``path``, then rename it into place."""
    with atomic_path(path) as tmp:
        write(tmp)
    return path


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's notes on the networks' input-size checks (constant for a fixed slice size) and
    the legacy exporter's deprecation notices; real export failures still raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        yield


def _example(spec: ModelSpec, n: int = 2) -> torch.Tensor:
    """(n, 1, H, W) zeros of the spec's slice size."""
    return torch.zeros(n, 1, *spec.spatial_size[1:])


def export_torchscript(net: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> Path:
    """Trace ``net`` ((N, 1, H, W) -> (N, C, H, W)) to TorchScript at ``path`` with the spec embedded."""
    from monai.networks.utils import convert_to_torchscript

    extra = {f"{SPEC_KEY}.json": json.dumps(spec.to_dict())}
    with _quiet_tracing():
        return _write_atomic(Path(path), lambda tmp: convert_to_torchscript(
            net.eval(), str(tmp), extra_files=extra, use_trace=True, inputs=[_example(spec)], verify=True,
            device=torch.device("cpu"), rtol=1e-3, atol=1e-4))


def onnx_from_network(net: nn.Module, spec: ModelSpec):
    """ONNX ``ModelProto`` of ``net`` with a dynamic batch axis: input ``image`` (N, 1, H, W) ->
    output ``logits`` (N, C, H, W), spec in metadata property ``mrivol``."""
    from monai.networks.utils import convert_to_onnx

    # the TorchScript-based exporter (dynamo=False): the dynamo one needs onnxscript, which we do not ship
    with _quiet_tracing():
        model = convert_to_onnx(
            net.eval(), [_example(spec)], input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "slices"}, "logits": {0: "slices"}}, use_trace=True, dynamo=False,
            opset_version=17)
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_KEY, json.dumps(spec.to_dict())
    return model


def export_onnx(net: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> Path:
    """Write ``net`` as ONNX to ``path`` (see :func:`onnx_from_network`)."""
    import onnx

    model = onnx_from_network(net, spec)
    return _write_atomic(Path(path), lambda tmp: onnx.save(model, str(tmp)))


def export_model(net: nn.Module, spec: ModelSpec, fmt: str, path: str | os.PathLike) -> Path:
    """Export to ``fmt`` (``torchscript`` or ``onnx``) at ``path``."""
    if fmt not in FORMATS:
        raise InputError(None, f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    return (export_torchscript if fmt == "torchscript" else export_onnx)(net, spec, path)


class OnnxSegmenter:
    """onnxruntime session behind the network call convention: (N, 1, H, W) tensor -> (N, C, H, W) logits.

    Callable like an ``nn.Module``, so MONAI's ``SliceInferer`` can use it as the network.
    """

    def __init__(self, model: bytes | str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # the memory arena keeps its high-water mark of activation buffers for the whole run: with 10 slices
        # per call that is +~45 MB RSS (it was +~200 MB with all 40), and it makes the network ~1.35x
        # faster than fresh allocations (0.16 s vs 0.22 s per IXI-size scan, benchmarks/inference_speed.py)
        options.enable_cpu_mem_arena = True
        # no busy-waiting of the thread pool after a call: it would take a core from the resampling
        # that follows the last slice batch
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = int(threads)
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) -> (N, C, H, W) float32 logits."""
        arr = np.ascontiguousarray(torch.as_tensor(x).detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


def load_onnx(path: str | os.PathLike, task: str | None = None, threads: int | None = None) -> tuple[OnnxSegmenter, ModelSpec]:
    """Session and spec of an ONNX file written by :func:`export_onnx` (spec from its metadata, else a
    ``<stem>.json`` next to it). A spec for another ``task`` raises :class:`InputError`."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "ONNX model not found")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf decode errors have no common public base class
        raise InputError(path, f"not an ONNX model ({type(err).__name__})") from err
    props = {p.key: p.value for p in model.metadata_props}
    sidecar = path.with_suffix(".json")
    if SPEC_KEY in props:
        spec = ModelSpec.from_dict(json.loads(props[SPEC_KEY]), path)
    elif sidecar.is_file():
        spec = ModelSpec.from_dict(json.loads(sidecar.read_text()), sidecar)
    else:
        raise InputError(path, "ONNX model has no 'mrivol' metadata and no .json next to it (export it with `mrivol export`)")
    if task is not None and spec.task != task:
        raise InputError(path, f"model is for task {spec.task!r} ({spec.num_classes} classes), not {task!r}")
    return OnnxSegmenter(model.SerializeToString(), threads), spec


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_weights(task: str, checkpoint: str | os.PathLike, config: str | os.PathLike = "bundle/configs/train.json",
                   out_dir: str | os.PathLike = WEIGHTS_DIR, note: str = "") -> tuple[Path, Path]:
    """Make a shipped default from a trained bundle checkpoint: ``<out_dir>/<task>_unet.pt``
    (``{"model": state_dict, "meta": spec}``) and ``<task>_unet.json`` (the spec).

    The spec (network, grid, depth axis) is read from ``config`` with ``task`` (and its ``num_classes``)
    overriding the config's; the weights must load strictly into that network. ``produced_by`` records the
    command line, the source checkpoint and its SHA-256, ``note``, and under ``training`` the provenance the
    training embedded in the checkpoint (commit, configs, overrides, command, seed: see
    :mod:`mrivol_monai.provenance`). A checkpoint that embeds its spec is described by that spec (the configs
    and overrides it was trained with), which must be for ``task``.
    """
    from mrivol_monai.provenance import provenance_of
    from mrivol_monai.weights import ModelSpec, build_network

    checkpoint = Path(checkpoint)
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # see weights.load_model
        raise InputError(checkpoint, f"not a loadable torch checkpoint ({type(err).__name__})") from err
    meta = raw.get("meta") if isinstance(raw, dict) and isinstance(raw.get("meta"), dict) else {}
    training = provenance_of(meta)
    if "network_def" in meta:
        spec = ModelSpec.from_dict(meta, checkpoint)
        if spec.task != task:
            raise InputError(checkpoint, f"checkpoint was trained for task {spec.task!r}, not {task!r}")
    else:
        spec = spec_from_bundle_config(config, task)
    state = raw.get("model", raw) if isinstance(raw, dict) else raw
    net = build_network(spec.network_def, str(checkpoint))
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise InputError(checkpoint, f"weights do not fit the {task} network of {config}: "
                                     f"{str(err).strip().splitlines()[-1][:200]}") from err
    spec.produced_by = {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": "(spec embedded in the checkpoint)" if "network_def" in meta else (
            str(config) if isinstance(config, (str, os.PathLike)) else " ".join(str(c) for c in config)),
        "source_checkpoint": str(checkpoint),
        "source_sha256": _sha256(checkpoint),
        "note": note,
        "training": training,
    }
    out_dir = Path(out_dir)
    pt_path = out_dir / default_checkpoint(task).name
    json_path = pt_path.with_suffix(".json")
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    _write_atomic(pt_path, lambda tmp: torch.save({"model": state, "meta": spec.to_dict()}, tmp))
    _write_atomic(json_path, lambda tmp: tmp.write_text(json.dumps(spec.to_dict(), indent=2) + "\n"))
    return pt_path, json_path


# where each task's bundle checkpoint lives (train.json's ckpt_dir, subcortical.json's for that task)
BUNDLE_MODEL_PATHS = {"brain": Path("models") / "model.pt", "subcortical": Path("models") / "subcortical" / "model.pt",
                      "subcortical_fine": Path("models") / "subcortical_fine" / "model.pt"}
# the bundle configs that define each task's network (the stage-2 model's is an overlay of train.json)
BUNDLE_MODEL_CONFIGS = {"subcortical_fine": ("train.json", "subcortical_fine.json")}


def bundle_model(task: str = "brain", bundle_root: str | os.PathLike = "bundle") -> Path:
    """Write the shipped default of ``task`` into the bundle as ``<bundle_root>/models/model.pt``
    (``models/subcortical/model.pt`` for subcortical, ``models/subcortical_fine/model.pt`` for the stage-2
    model of ``configs/inference_two_stage.json``): a bare state dict, the format MONAI's
    ``CheckpointSaver`` writes for the best model and ``ckpt_export`` / ``CheckpointLoader`` read.

    The weights must load strictly into the network of ``<bundle_root>/configs/train.json`` for ``task``,
    so a bundle whose ``network_def`` no longer matches the shipped model fails here, not at inference.
    The file is generated, not committed (``bundle/models/`` is git-ignored): one copy of the weights in git.
    """
    from mrivol_monai.weights import build_network, load_model

    if task not in BUNDLE_MODEL_PATHS:
        raise InputError(None, f"unknown task {task!r}; expected one of {', '.join(BUNDLE_MODEL_PATHS)}")
    shipped, _ = load_model(None, task)
    configs = [Path(bundle_root) / "configs" / name for name in BUNDLE_MODEL_CONFIGS.get(task, ("train.json",))]
    config = configs[-1]
    spec = spec_from_bundle_config(configs if len(configs) > 1 else configs[0], task)
    net = build_network(spec.network_def, config)
    try:
        net.load_state_dict(shipped.state_dict(), strict=True)
    except RuntimeError as err:
        raise InputError(config, f"the shipped {task} weights do not fit its network_def {spec.network_def}: "
                                 f"{str(err).strip().splitlines()[-1][:200]}") from err
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    out = Path(bundle_root) / BUNDLE_MODEL_PATHS[task]
    out.parent.mkdir(parents=True, exist_ok=True)
    if task in BUNDLE_MODEL_CONFIGS:  # its network is not train.json's: the spec goes beside the bare state dict
        _write_atomic(out.with_suffix(".json"),
                      lambda tmp: Path(tmp).write_text(json.dumps(shipped_spec_dict(task), indent=2) + "\n"))
    return _write_atomic(out, lambda tmp: torch.save(state, tmp))


def shipped_spec_dict(task: str) -> dict:
    """The spec (task, classes, network, grid) of the shipped ``task`` checkpoint, as its ``meta`` holds it."""
    from mrivol_monai.weights import default_checkpoint

    meta = torch.load(default_checkpoint(task), map_location="cpu", weights_only=True)["meta"]
    return {k: v for k, v in meta.items() if k != "produced_by"}
