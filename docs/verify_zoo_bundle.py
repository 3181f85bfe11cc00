"""Run the MONAI Model Zoo's own bundle check (``ci/verify_bundle.py``, modes min, regular, full) on ``bundle/``,
offline, the way the zoo's CI would see it.

    python docs/verify_zoo_bundle.py --zoo PATH [--modes min regular full] [--bundle DIR] [--keep DIR]

``--zoo`` is a Project-MONAI/model-zoo checkout or its git directory (default: ``$MRIVOL_MODEL_ZOO``); only
its ``ci/`` folder is used. The script builds what the zoo's CI has before it verifies a bundle:

1. ``<tmp>/models/<metadata name>/``: a copy of ``bundle/`` without generated folders (data, logs, eval,
   models, runs, predictions), so nothing from a previous run can make it pass;
2. ``models/model.pt`` in that copy, made by the documented command
   ``mrivol bundle-model --bundle <copy>`` from the weights shipped in the package;
3. ``eval/schema.json``: the zoo's ``prepare_schema.py`` downloads the schema named in ``metadata.json``;
   offline, the bundle's faithful copy ``configs/metadata_schema.json`` stands in for it;
4. an empty ``models/model_info.json`` (no published versions, so any version number is new).

Then it runs ``python ci/verify_bundle.py -b <name> -p <tmp>/models -m <mode>`` per mode, with this
checkout first on ``PYTHONPATH``, and prints one line per mode. Exit status 0 only if every mode passed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
MODES = ("min", "regular", "full")
GENERATED = ("data", "logs", "eval", "models", "runs", "predictions", "new_scans", "__pycache__")


def extract_ci(zoo: Path, dest: Path) -> Path:
    """Copy the zoo's ``ci/`` folder into ``dest`` from a checkout (``zoo/ci``) or a git directory."""
    if (zoo / "ci" / "verify_bundle.py").is_file():
        shutil.copytree(zoo / "ci", dest / "ci")
    else:
        try:
            archive = subprocess.run(["git", "--git-dir", str(zoo), "archive", "HEAD", "ci"], check=True,
                                     capture_output=True).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            raise SystemExit(f"error: {zoo}: neither a model-zoo checkout (ci/verify_bundle.py) nor its git "
                             f"directory ({err})") from err
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
    return dest


def prepare(zoo: Path, work: Path, bundle: Path = BUNDLE) -> tuple[Path, str]:
    """Lay out ``work`` as the zoo's CI would (see the module docstring); returns (zoo root, bundle name)."""
    root = extract_ci(zoo, work / "zoo")
    name = json.loads((bundle / "configs" / "metadata.json").read_text())["name"]
    models = root / "models"
    copy = models / name
    shutil.copytree(bundle, copy, ignore=lambda d, names: [n for n in names if Path(d) == bundle and n in GENERATED])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "mrivol_monai.cli", "bundle-model", "--bundle", str(copy)], check=True,
                   env=env)
    (copy / "eval").mkdir()
    shutil.copyfile(bundle / "configs" / "metadata_schema.json", copy / "eval" / "schema.json")
    (models / "model_info.json").write_text("{}\n")
    return root, name


def verify(root: Path, name: str, mode: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python ci/verify_bundle.py -b name -p models -m mode`` in the prepared zoo root."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "ci/verify_bundle.py", "-b", name, "-p", "models", "-m", mode],
                          cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=os.environ.get("MRIVOL_MODEL_ZOO"),
                        help="model-zoo checkout or git directory (default: $MRIVOL_MODEL_ZOO)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--bundle", default=str(BUNDLE), help="bundle folder to verify (default: this checkout's)")
    parser.add_argument("--keep", default=None, help="build in this (new) folder and keep it, for inspection")
    args = parser.parse_args(argv)
    if not args.zoo:
        parser.error("--zoo is required (or set MRIVOL_MODEL_ZOO)")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="zoo_verify_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        root, name = prepare(Path(args.zoo), work, Path(args.bundle).resolve())
        failed = 0
        for mode in args.modes:
            proc = verify(root, name, mode)
            ok = proc.returncode == 0
            failed += not ok
            print(f"{mode:8s} {'passed' if ok else 'FAILED'}")
            if not ok:
                print((proc.stdout[-2000:] + proc.stderr[-4000:]).rstrip(), file=sys.stderr)
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
