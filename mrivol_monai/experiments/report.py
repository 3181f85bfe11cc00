"""Assemble every experiment's tables and plots under ``runs/`` into one Markdown report with the hardware,
the settings actually run, the rules for which runs count (:mod:`.convergence`) and how findings are judged
(:mod:`.verdicts`), a per-experiment check of the paper's numbers, a verdict table per experiment and
(optionally) a hand-written paragraph per experiment read from a discussion file (``## E1`` ... sections),
placed after the verdicts it has to follow."""

from __future__ import annotations

import os
import platform
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mrivol_monai.errors import InputError
from mrivol_monai.experiments import convergence, verdicts
from mrivol_monai.experiments.aggregate import load_results, results_markdown, write_tables
from mrivol_monai.experiments.variants import EXPERIMENTS, MARGINS_DECLARED, Experiment
from mrivol_monai.atomic_io import write_atomic

__all__ = ["hardware", "findings", "build_report", "load_discussion", "write_report"]


def hardware() -> str:
    """One line: CPU model, logical cores, RAM, torch and MONAI versions."""
    import monai
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        ram = f"{mem_kb / 2**20:.0f} GB RAM"
    except (OSError, StopIteration, ValueError):
        ram = "RAM unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} logical cores, {ram}, {gpu}; torch {torch.__version__}, MONAI {monai.__version__}"


def _mean(row: Mapping[str, Any], metric: str) -> float:
    return row["metrics"][metric]["mean"]


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any], metric: str = "test_dice") -> bool | None:
    x, y = a["metrics"][metric], b["metrics"][metric]
    if any(v != v for v in (x["ci95_low"], y["ci95_low"])):
        return None
    return not (x["ci95_high"] < y["ci95_low"] or y["ci95_high"] < x["ci95_low"])


def _ci_note(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    o = _overlap(a, b)
    return (" (one repeat: no CI)" if o is None else " (95% CIs overlap: not distinguishable at these repeats)"
            if o else " (95% CIs do not overlap)")


def findings(exp: Experiment, rows: Sequence[Mapping[str, Any]]) -> str:
    """Sentences comparing this run's numbers with the paper's claim for ``exp`` (only rows that ran)."""
    by = {r["variant"]: r for r in rows}
    if not rows:
        return "Not run."
    if exp.key == "E1":
        best = max(rows, key=lambda r: _mean(r, "test_dice"))
        text = f"Paper: 'mix' is best (0.959) and every augmentation but equalize beats none. Here the best is " \
               f"'{best['label']}' ({_mean(best, 'test_dice'):.3f})."
        if "mix" in by and "none" in by:
            d = _mean(by["mix"], "test_dice") - _mean(by["none"], "test_dice")
            text += f" Mix - none = {d:+.3f} Dice{_ci_note(by['mix'], by['none'])}."
        return text
    if exp.key == "E2":
        parts = ["Paper: UNet Dice plateaus from 4 ED blocks (0.939) while time grows; FCN keeps improving to 7."]
        for prefix, name in (("unet_ed", "UNet"), ("fcn_ed", "FCN")):
            group = [r for r in rows if r["variant"].startswith(prefix)]
            if len(group) > 1:
                seq = ", ".join(f"{r['label']}: {_mean(r, 'test_dice'):.3f}" for r in group)
                ratio = _mean(group[-1], "train_seconds") / max(_mean(group[0], "train_seconds"), 1e-9)
                parts.append(f"{name} test Dice by ED blocks: {seq}; training time x{ratio:.1f} from "
                             f"{group[0]['label']} to {group[-1]['label']} blocks.")
        return " ".join(parts)
    if exp.key == "E3":
        ordered = sorted(rows, key=lambda r: int(r["label"]))
        first, last = ordered[0], ordered[-1]
        gain = 100 * (_mean(last, "test_dice") / _mean(first, "test_dice") - 1)
        ratio = _mean(last, "train_seconds") / max(_mean(first, "train_seconds"), 1e-9)
        return (f"Paper: 1 -> 20 slices gives +1.8% Dice for x17 training time. Here {first['label']} -> "
                f"{last['label']} slices: {gain:+.1f}% Dice{_ci_note(last, first)}, training time x{ratio:.1f}.")
    if exp.key == "E4":
        ranking = " > ".join(f"{r['label']} ({_mean(r, 'test_dice'):.3f})"
                             for r in sorted(rows, key=lambda r: -_mean(r, "test_dice")))
        return f"Paper ranking: UNet (0.939) > SegNet (0.934) > FCN (0.890). Here: {ranking}."
    if exp.key == "E5":
        text = "Paper: the subcortical task is harder (Dice 0.924 with 7 ED blocks vs 0.939 brain) with much " \
               "larger, mixed-sign region volume errors."
        brain = by.get("brain")
        for name in ("subcortical", "subcortical_ed7"):
            if brain and name in by:
                text += (f" {by[name]['label']}: Dice {_mean(by[name], 'test_dice'):.3f} vs brain "
                         f"{_mean(brain, 'test_dice'):.3f}; mean |region error| "
                         f"{_mean(by[name], 'vol_abs_pct_mean'):.1f}% vs brain "
                         f"{_mean(brain, 'vol_abs_pct_mean'):.1f}%.")
        return text
    return ""


def _settings_line(results: Sequence[Mapping[str, Any]]) -> str:
    seen: dict[str, set] = {}
    for r in results:
        for k, v in {**r.get("settings", {}), "spatial_size": r.get("spatial_size"),
                     "train subjects": r.get("n_train_subjects"), "test subjects": r.get("n_test_subjects")}.items():
            seen.setdefault(k, set()).add(str(v))
    return "; ".join(f"`{k}` = {', '.join(sorted(v))}" for k, v in seen.items())


def load_discussion(path: str | os.PathLike) -> dict[str, str]:
    """``{"E1": text, ...}`` from a Markdown file with one ``## E<k>`` heading per experiment (text up to the
    next such heading). Unknown experiment keys or a file without any raise :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "discussion file not found")
    parts = re.split(r"^##\s+(E\d+)\b[^\n]*$", path.read_text(), flags=re.MULTILINE)
    found = {key: text.strip() for key, text in zip(parts[1::2], parts[2::2])}
    if not found:
        raise InputError(path, "no '## E1'-style experiment sections")
    unknown = sorted(set(found) - set(EXPERIMENTS))
    if unknown:
        raise InputError(path, f"sections for unknown experiments {unknown}; known: {sorted(EXPERIMENTS)}")
    return found


def build_report(out: str | os.PathLike, img_dir: str | os.PathLike | None = None, title: str = "Results",
                 intro: str = "", discussion: Mapping[str, str] | None = None) -> str:
    """Markdown for every experiment with results under ``out`` (re-aggregating them): the rules, a verdict per
    finding (all experiments; 'not tested' where nothing ran), then per experiment its tables, computed check,
    verdict table and ``discussion[key]`` after the verdicts; plots are copied to ``img_dir`` (linked relative to
    it) when given."""
    lines = [f"# {title}", "", intro, "", f"Hardware: {hardware()}.", ""] if intro else \
        [f"# {title}", "", f"Hardware: {hardware()}.", ""]
    lines += ["## How runs count and how findings are judged", "",
              f"Convergence ({convergence.__name__}.RULE): {convergence.RULE.text()}", "",
              f"Verdicts ({verdicts.__name__}; vocabulary: {', '.join(verdicts.VOCABULARY)}; margins declared "
              f"{MARGINS_DECLARED}): {verdicts.RULE_TEXT}", ""]
    results = {key: load_results(Path(out) / key) for key in EXPERIMENTS}
    judged = {key: verdicts.verdicts(exp, results[key]) for key, exp in EXPERIMENTS.items()}
    lines += ["## Verdicts", "", "| Finding | Paper's claim | Verdict |", "| --- | --- | --- |"]
    lines += [f"| {row['finding'].key} | {row['finding'].claim} | {row['verdict']} |"
              for rows in judged.values() for row in rows] + ["", "Tests, effects and reasons: each experiment's "
                                                              "verdict table below.", ""]
    for key, exp in EXPERIMENTS.items():
        if not results[key]:
            lines += [f"### {key}: {exp.title}", "", "Not run yet.", ""]
            lines += [f"**Verdicts ({key})**", ""] + verdicts.verdicts_markdown(judged[key]) if judged[key] else []
            continue
        rows = write_tables(key, out)
        seeds = sorted({r["seed"] for r in results[key]})
        lines += [results_markdown(exp, rows).rstrip(), "",
                  f"Runs: {len(results[key])} ({len(rows)} variants, seeds {seeds}). "
                  f"Settings: {_settings_line(results[key])}.",
                  "", f"Check against the paper (computed): {findings(exp, rows)}", ""]
        if judged[key]:
            lines += [f"**Verdicts ({key})**", ""] + verdicts.verdicts_markdown(judged[key])
        if discussion and discussion.get(key):
            lines += [f"**Does the paper's finding hold here?** {discussion[key]}", ""]
        png = Path(out) / key / "results.png"
        if img_dir is not None and png.is_file():
            Path(img_dir).mkdir(parents=True, exist_ok=True)
            target = Path(img_dir) / f"results_{key}.png"
            shutil.copyfile(png, target)
            lines += [f"![{key}](img/{target.name})", ""]
    return "\n".join(lines)


def write_report(out: str | os.PathLike, doc: str | os.PathLike, title: str = "Results", intro: str = "",
                 discussion: str | os.PathLike | None = None) -> Path:
    """Write :func:`build_report` to ``doc`` atomically (plots into ``<doc dir>/img``), with the paragraphs of
    the ``discussion`` file (:func:`load_discussion`) when given. A report without any results is not written
    over a non-empty ``doc`` (:class:`InputError`): an empty or mistyped runs folder must not erase results."""
    doc = Path(doc)
    if not any(load_results(Path(out) / key) for key in EXPERIMENTS) and doc.is_file() and doc.read_text().strip():
        raise InputError(doc, f"no experiment results under {out}; not overwriting this non-empty report with an "
                              "empty one (pass --out with the runs, or another --doc)")
    notes = load_discussion(discussion) if discussion else None
    text = build_report(out, doc.parent / "img", title=title, intro=intro, discussion=notes)
    return write_atomic(doc, text)
