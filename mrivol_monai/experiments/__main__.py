"""``python -m mrivol_monai.experiments run|report|grid|list``: the study runner's command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrivol_monai.errors import InputError
from mrivol_monai.experiments import aggregate, grid_search, report, runner
from mrivol_monai.experiments.variants import EXPERIMENTS, PROFILES, get_profile, select_variants

DEFAULT_DISCUSSION = "bundle/docs/results_discussion.md"  # hand-written paragraphs, one '## E<k>' each


def _setting(text: str) -> tuple[str, Any]:
    """``key=value`` (value JSON if it parses, else a string) -> (config id, value)."""
    if "=" not in text:
        raise InputError(None, f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _progress(spec: runner.RunSpec, result: dict | None, ran: bool, error: str) -> None:
    where = f"{spec.experiment}/{spec.variant}/seed{spec.seed}"
    if error:
        print(f"FAILED {where}", file=sys.stderr, flush=True)
    elif not ran:
        print(f"done already {where}", flush=True)
    else:
        test = result.get("test_dice")
        print(f"finished {where}: val Dice {result['val_dice']:.3f}"
              + (f", test Dice {test:.3f}" if test is not None else "")
              + f", {result['epochs']} epochs, "
              + (f"{result['train_seconds']:.0f}s" if result.get("train_seconds") is not None
                 else f"time not measured (resumed from {result.get('resumed_from')})"), flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mrivol_monai.experiments", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="runs", help="study folder (default: runs/)")
    common.add_argument("--set", dest="settings", action="append", default=[], type=str, metavar="KEY=VALUE",
                        help="extra config override for every run, e.g. --set limit_subjects=10 (repeatable)")
    common.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    common.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default 1: on a shared 2-core machine 2 threads per process "
                             "ran a UNet training step ~9x slower than 1; use --jobs for parallelism)")
    run = sub.add_parser("run", parents=[common], help="run experiments (resumes: finished runs are kept)")
    run.add_argument("experiments", nargs="+", help="E1..E5 or 'all'")
    run.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    run.add_argument("--repeats", type=int, default=None, help="seeds per variant (default: the profile's)")
    run.add_argument("--first-seed", type=int, default=0)
    run.add_argument("--variants", default=None, help="comma-separated variant names (default: the profile's)")
    rep = sub.add_parser("report", help="tables of every experiment under --out into one Markdown file")
    rep.add_argument("--out", default="runs")
    rep.add_argument("--doc", default=None, help="Markdown file to write (default: <--out>/results.md; the "
                                                 "committed report is bundle/docs/results.md)")
    rep.add_argument("--title", default="Results")
    rep.add_argument("--intro", default="", help="paragraph under the title (what was run)")
    rep.add_argument("--discussion", default=None,
                     help="Markdown file with a '## E1' ... section per experiment, placed under its tables "
                          f"(default: {DEFAULT_DISCUSSION} when it exists)")
    grid = sub.add_parser("grid", parents=[common], help="grid search, selected by validation Dice")
    grid.add_argument("--space", required=True, help="space file (YAML/JSON)")
    lst = sub.add_parser("list", help="experiments, variants and their overlays under a profile")
    lst.add_argument("--profile", default="quick", choices=sorted(PROFILES))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            profile = get_profile(args.profile)
            for key, exp in EXPERIMENTS.items():
                print(f"{key}: {exp.title}")
                for v in select_variants(exp, profile):
                    print(f"  {v.name:18s} {' + '.join(v.overlays)}")
            return 0
        if args.command == "report":
            discussion = args.discussion or (DEFAULT_DISCUSSION if Path(DEFAULT_DISCUSSION).is_file() else None)
            doc = args.doc or str(Path(args.out) / "results.md")
            path = report.write_report(args.out, doc, title=args.title, intro=args.intro, discussion=discussion)
            print(f"wrote {path}")
            return 0
        settings = dict(_setting(s) for s in args.settings)
        if args.command == "grid":
            board, errors = grid_search.run_grid(args.space, args.out, settings, jobs=args.jobs,
                                                 threads=args.threads, progress=_progress)
            for row in board[:5]:
                print(f"#{row['rank']} {row['point']} val Dice {row['val_dice_mean']:.4f}")
        else:
            keys = list(EXPERIMENTS) if [e.lower() for e in args.experiments] == ["all"] else args.experiments
            profile = get_profile(args.profile)
            names = args.variants.split(",") if args.variants else None
            errors = []
            for key in keys:
                specs = runner.plan(key, profile, args.out, args.repeats, names, settings, args.first_seed)
                _, failed = runner.run_all(specs, jobs=args.jobs, threads=args.threads, on_done=_progress)
                errors += failed
                if aggregate.write_tables(key, args.out):
                    print(f"tables: {args.out}/{key.upper()}/results.md")
        for err in errors:
            print(f"error: {err}", file=sys.stderr)
        return 1 if errors else 0
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
