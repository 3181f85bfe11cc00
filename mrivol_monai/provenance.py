"""Where a trained checkpoint came from: git commit, config files and overrides, command line, seed, versions.

Training embeds a :class:`TrainingRecord` in every checkpoint it writes (``"meta"``: the :class:`ModelSpec`
whose ``produced_by`` is the provenance), ``mrivol export-weights`` carries it into the shipped weights, and
:func:`check_provenance` (``python docs/check_provenance.py CHECKPOINT``) checks it against the repository.
MONAI's ``CheckpointSaver`` saves any object with ``state_dict()``, so the record rides along with the model
without a checkpoint format of our own.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_RUNNER_ARGS",
    "TrainingRecord",
    "bundle_invocation",
    "check_provenance",
    "describe",
    "format_override",
    "git_state",
    "provenance_of",
    "training_provenance",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
# arguments of `python -m monai.bundle run` that are not config overrides
BUNDLE_RUNNER_ARGS = ("config_file", "meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking",
                      "args_file", "workflow_name", "workflow_type")


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(repo: str | os.PathLike = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git work tree at ``repo`` (tracked files only)."""
    commit = _git(Path(repo), "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git(Path(repo), "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


def _parse_value(text: str) -> Any:
    """A command-line value as ``python -m monai.bundle`` (python-fire) reads it: literals, else the string."""
    try:
        from fire.parser import DefaultParseValue
    except ImportError:  # fire comes with MONAI's bundle CLI; without it keep the text
        return text
    return DefaultParseValue(text)


def bundle_invocation(argv: Sequence[str]) -> dict[str, Any] | None:
    """``python -m monai.bundle run ...`` arguments (``argv[1:]`` of that process) -> ``{"run_id",
    "config_files", "overrides", "runner_args"}``; None when ``argv`` is not a ``run`` command."""
    args = list(argv)
    if not args or args[0] != "run":
        return None
    args = args[1:]
    named: dict[str, Any] = {}
    if args and not args[0].startswith("--"):
        named["run_id"] = args.pop(0)
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            i += 1
            continue
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 2
        else:
            value, i = "True", i + 1
        named[key] = _parse_value(value)
    files = named.pop("config_file", None)
    files = [files] if isinstance(files, str) else list(files or [])
    runner = {k: named.pop(k) for k in BUNDLE_RUNNER_ARGS if k in named}
    return {"run_id": runner.pop("run_id", None), "config_files": [str(f) for f in files], "overrides": named,
            "runner_args": runner}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _repo_path(path: Path, repo: Path) -> str | None:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return None


def _command_line(argv: Sequence[str]) -> str:
    if argv and Path(argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py"):
        return shlex.join(["python", "-m", "monai.bundle", *argv[1:]])
    return shlex.join(["python", *argv])


def training_provenance(seed: int, config_files: Sequence[str] | None = None,
                        overrides: Mapping[str, Any] | None = None, argv: Sequence[str] | None = None,
                        repo: str | os.PathLike = REPO_ROOT) -> dict[str, Any]:
    """The provenance of the running training: git state of ``repo``, each config file (as given, repository
    path, SHA-256), overrides, command line, working directory, ``seed``, package/torch/MONAI versions, date.

    ``config_files``/``overrides`` None: read from ``argv`` (default ``sys.argv``) when it is a
    ``python -m monai.bundle run`` command.
    """
    import monai
    import torch

    import mrivol_monai

    argv = list(sys.argv if argv is None else argv)
    invocation = bundle_invocation(argv[1:]) or {}
    if config_files is None:
        config_files = invocation.get("config_files", [])
    if overrides is None:
        overrides = invocation.get("overrides", {})
    repo = Path(repo)
    files = []
    for name in config_files:
        path = Path(name)
        files.append({"path": str(name), "repo_path": _repo_path(path, repo),
                      "sha256": _sha256(path) if path.is_file() else None})
    record = {
        "kind": "training",
        **git_state(repo),
        "config_files": files,
        "overrides": {str(k): v for k, v in dict(overrides).items()},
        "command": _command_line(argv),
        "cwd": os.getcwd(),
        "seed": int(seed),
        "package_version": mrivol_monai.__version__,
        "torch_version": torch.__version__,
        "monai_version": monai.__version__,
        "python_version": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # plain JSON types only (torch.__version__ is a str subclass that weights_only loading refuses)
    return json.loads(json.dumps(record, default=str))


class TrainingRecord:
    """The ``"meta"`` entry of checkpoints written by training: the model spec (task, classes, network, grid)
    read from the config files + overrides, with ``produced_by`` = :func:`training_provenance`.

    Built once when the workflow is parsed; ``state_dict()`` is what ``CheckpointSaver`` stores (plain JSON
    types, so ``torch.load(weights_only=True)`` reads it). ``load_state_dict`` keeps what a resumed checkpoint
    held in ``loaded`` and does not change the record of this run.
    """

    def __init__(self, seed: int, config_files: Sequence[str] | None = None,
                 overrides: Mapping[str, Any] | None = None) -> None:
        from mrivol_monai.weights import spec_from_bundle_config

        self.provenance = training_provenance(seed, config_files, overrides)
        self.loaded: dict[str, Any] | None = None
        files = [f["path"] for f in self.provenance["config_files"]]
        spec: dict[str, Any] = {}
        if files and all(Path(f).is_file() for f in files):
            spec = spec_from_bundle_config(files, overrides=self.provenance["overrides"]).to_dict()
        self.meta = {**spec, "produced_by": self.provenance}

    def state_dict(self) -> dict[str, Any]:
        """``{task, num_classes, class_names, network_def, spatial_size, depth_axis, crop_margin,
        head_threshold_fraction, image_resize_mode, produced_by}``."""
        return self.meta

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Keep a loaded checkpoint's record (``loaded``); this run's own record stays as it is."""
        self.loaded = dict(state)

    def describe(self, overrides: bool = True) -> str:
        """One line, as :func:`describe`."""
        return describe(self.provenance, overrides)


def provenance_of(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The training provenance inside a checkpoint's ``meta`` (spec): its ``produced_by`` for a training
    checkpoint, ``produced_by["training"]`` for shipped weights made by ``mrivol export-weights``."""
    produced = dict((meta or {}).get("produced_by") or {})
    if produced.get("kind") == "training":
        return produced
    inner = produced.get("training")
    return dict(inner) if isinstance(inner, Mapping) and inner.get("kind") == "training" else None


def format_override(key: str, value: Any) -> str:
    """``--key value`` as the bundle command line takes it (lists compact JSON, shell-quoted)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return f"--{key} {shlex.quote(text)}"


def describe(provenance: Mapping[str, Any] | None, overrides: bool = True) -> str:
    """One line: ``trained at commit abc1234567 (uncommitted changes), seed 0, configs train.json +
    subcortical.json, overrides --epochs 3, mrivol_monai 0.1.0, 2026-12-04`` (``overrides`` False: only their
    number); ``no training provenance recorded`` when there is none."""
    if not provenance:
        return "no training provenance recorded"
    commit = provenance.get("commit")
    where = f"commit {commit[:10]}" if commit else "no git commit"
    if provenance.get("dirty"):
        where += " (uncommitted changes)"
    configs = " + ".join(Path(f["path"]).name for f in provenance.get("config_files", [])) or "?"
    given = dict(provenance.get("overrides") or {})
    listed = (f"overrides {' '.join(format_override(k, v) for k, v in given.items())}" if overrides
              else f"{len(given)} overrides")
    return (f"trained at {where}, seed {provenance.get('seed')}, configs {configs}"
            + (f", {listed}" if given else "")
            + f", mrivol_monai {provenance.get('package_version')}, {str(provenance.get('date', ''))[:10]}")


def check_provenance(checkpoint: str | os.PathLike, repo: str | os.PathLike = REPO_ROOT,
                     command: str | None = None) -> list[tuple[bool, str]]:
    """Check the provenance embedded in ``checkpoint`` (training checkpoint or shipped weights) against the git
    repository at ``repo``; returns ``[(passed, one-line message), ...]``.

    Checks: a record is there; its commit exists in ``repo``; each config file has the recorded SHA-256 (at
    that commit when the tree was clean, else in the work tree); the package version at that commit; the
    config files + overrides, parsed again, give the recorded seed and the network that the weights load into
    strictly; and, when ``command`` (a ``python -m monai.bundle run ...`` line) is given, that its config
    files and overrides are the recorded ones.
    """
    import torch

    from mrivol_monai.weights import build_network, spec_from_bundle_config

    repo, checkpoint = Path(repo), Path(checkpoint)
    raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    meta = raw.get("meta") if isinstance(raw, dict) else None
    record = provenance_of(meta)
    if record is None:
        return [(False, f"{checkpoint}: no training provenance in its 'meta'")]
    results: list[tuple[bool, str]] = [(True, f"record: {describe(record)}")]
    commit, dirty = record.get("commit"), record.get("dirty")
    known = bool(commit) and _git(repo, "cat-file", "-e", f"{commit}^{{commit}}") is not None
    results.append((known, f"commit {commit} {'exists' if known else 'is not'} in {repo}"))
    if dirty:
        results.append((True, "note: the tree had uncommitted changes; config files are compared with the "
                              "work tree, not the commit"))
    cwd = Path(record.get("cwd") or ".")
    for entry in record.get("config_files", []):
        name, repo_path, want = entry["path"], entry.get("repo_path"), entry.get("sha256")
        if known and not dirty and repo_path:
            text = _git_bytes(repo, f"{commit}:{repo_path}")
            got, where = (hashlib.sha256(text).hexdigest() if text is not None else None), f"{repo_path} at {commit[:10]}"
        else:
            path = repo / repo_path if repo_path else (cwd / name if not Path(name).is_absolute() else Path(name))
            got, where = (_sha256(path) if path.is_file() else None), str(path)
        results.append((got is not None and got == want,
                        f"config {where}: sha256 {'matches' if got == want else 'differs (or file missing)'}"))
    if known:
        init = _git_bytes(repo, f"{commit}:mrivol_monai/__init__.py") or b""
        ok = f'__version__ = "{record.get("package_version")}"'.encode() in init
        results.append((ok, f"package version {record.get('package_version')} "
                            f"{'is' if ok else 'is not'} the version at {commit[:10]}"))
    files = []
    for entry in record.get("config_files", []):
        path = repo / entry["repo_path"] if entry.get("repo_path") else Path(entry["path"])
        files.append(str(path if path.is_absolute() else cwd / path))
    if files and all(Path(f).is_file() for f in files):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(files)
        parser.update(dict(record.get("overrides") or {}))
        seed = parser.get_parsed_content("seed")
        results.append((seed == record.get("seed"), f"seed: configs + overrides give {seed}, recorded "
                                                    f"{record.get('seed')}"))
        spec = spec_from_bundle_config(files, overrides=record.get("overrides"))
        net = build_network(spec.network_def, checkpoint)
        state = raw.get("model", raw)
        try:
            net.load_state_dict(state, strict=True)
            results.append((True, f"weights load strictly into {spec.network_def} from the configs"))
        except RuntimeError as err:
            results.append((False, f"weights do not fit {spec.network_def}: {str(err).splitlines()[0][:160]}"))
    else:
        results.append((False, f"config files not found to re-check seed and network: {files}"))
    if command is not None:
        parts = shlex.split(command)
        start = parts.index("monai.bundle") + 1 if "monai.bundle" in parts else 0
        given = bundle_invocation(parts[start:])
        if given is None:
            results.append((False, f"--command is not a 'python -m monai.bundle run ...' line: {command!r}"))
        else:
            recorded_files = [Path(f["path"]).as_posix() for f in record.get("config_files", [])]
            same_files = [Path(f).as_posix() for f in given["config_files"]] == recorded_files
            same_overrides = given["overrides"] == dict(record.get("overrides") or {})
            results.append((same_files, f"command's config files {given['config_files']} "
                                        f"{'are' if same_files else 'are not'} the recorded {recorded_files}"))
            results.append((same_overrides, f"command's overrides {given['overrides']} "
                                            f"{'are' if same_overrides else 'are not'} the recorded ones"))
    return results


def _git_bytes(repo: Path, spec: str) -> bytes | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), "show", spec], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
