"""Check the provenance a checkpoint embeds against the repository that should have produced it.

    python docs/check_provenance.py bundle/models/model.pt
    python docs/check_provenance.py mrivol_monai/weights/brain_unet.pt --command "python -m monai.bundle run training --config_file bundle/configs/train.json"

Works on training checkpoints (``model.pt``, ``latest_*.pt``) and on shipped weights made by
``mrivol export-weights``. Prints one line per check (commit known, config files' SHA-256, package version,
seed and network re-derived from the configs + overrides, and with ``--command`` that the command's configs
and overrides are the recorded ones); exit status 0 if every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mrivol_monai.provenance import check_provenance  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a .pt written by training or by mrivol export-weights")
    p.add_argument("--repo", default=str(REPO), help="git repository to check against (default: this one)")
    p.add_argument("--command", default=None, help="the 'python -m monai.bundle run training ...' line that "
                                                    "should have produced it")
    args = p.parse_args(argv)
    results = check_provenance(args.checkpoint, args.repo, args.command)
    for passed, message in results:
        print(f"{'ok  ' if passed else 'FAIL'}  {message}")
    failed = sum(not ok for ok, _ in results)
    print(f"{args.checkpoint}: {'provenance checks out' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
