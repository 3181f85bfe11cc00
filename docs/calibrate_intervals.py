"""Calibrate the 95 % volume intervals (:mod:`mrivol_monai.intervals`) and measure their coverage on the test site.

Calibration scans: ``--subjects`` SynthIXI subjects rendered from the *validation* label maps only (never a
training or test anatomy), at the training sites (Guys, HH), numbered from 1001 so that their random draws
(pose, warp, age, contrast, skull) differ from the cohort's own validation subjects; each scanned with its
own random T1 contrast (``--scanners random``, default: the intervals are meant for scans from any scanner)
or by the training sites' protocols (``--scanners sites``); written once into ``--calibration-dir`` with a
``cohort.csv``. Each is segmented as ``mrivol predict`` does (``--task brain``:
the grid model; ``--task subcortical``: both stages), and its predicted volume, difficulty and true volume
(``cohort.csv``) make one calibration row. The fitted calibration is written to ``--out`` (shipped with the
package: ``mrivol_monai/weights/<task>_intervals.json``). Then the same is done on the cohort's test split
(IOP, held-out anatomy): empirical coverage and mean width per structure, printed and written as Markdown
and CSV into ``--report-dir``.

    python docs/calibrate_intervals.py --task brain [--scanners sites]
    python docs/calibrate_intervals.py --task subcortical --subjects 60
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

from mrivol_monai import intervals
from mrivol_monai.atomic_io import write_atomic
from mrivol_monai.data import label_maps, synthetic
from mrivol_monai.deep_grey_box import REPORTED_STRUCTURES
from mrivol_monai.errors import InputError
from mrivol_monai.two_stage import predictor_for
from mrivol_monai.two_stage_evaluation import cohort_subjects
from mrivol_monai.weights import WEIGHTS_DIR

FIRST_NUMBER = 1001
CALIBRATION_SITES = ("Guys", "HH")


def ensure_calibration_scans(folder: Path, n: int, seed: int, scanners: str = "random") -> list[dict]:
    """Render (once) ``n`` subjects from the validation maps into ``folder``; return their cohort.csv rows.

    ``scanners``: ``random``, each subject scanned with its own random T1 contrast, noise, bias, blur and
    orientation (``synthetic_acquisition.unseen_scanner``: a calibration set for scans "from any scanner"), on
    IXI's grid; ``sites``, alternately by the two training sites' protocols."""
    import numpy as np

    from mrivol_monai.data import synthetic_acquisition as acq
    from mrivol_monai.data import synthetic_anatomy as anat

    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "cohort.csv"
    rows = list(csv.DictReader(open(table))) if table.is_file() else []
    maps = label_maps.MAPS_OF_SPLIT["validation"]
    for k in range(len(rows), n):
        site, number = CALIBRATION_SITES[k % len(CALIBRATION_SITES)], FIRST_NUMBER + k
        if scanners == "sites":
            subject = synthetic.generate_subject(number, site, seed, "ixi", k // len(CALIBRATION_SITES) + 1,
                                                 "validation", maps[k % len(maps)])
            scanner = acq.SITE_PROTOCOLS[site].scanner
        else:
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(number,)))
            anatomy = anat.sample_anatomy(rng, maps[k % len(maps)])
            protocol = acq.unseen_scanner(rng)
            shape, spacing = acq.GEOMETRIES["ixi"]
            affine = acq.grid_affine(protocol.axcodes, shape, spacing)
            stripped = bool(rng.random() < synthetic.SKULL_STRIPPED_FRACTION)
            image, aseg = acq.acquire(anat.aged_labels(anatomy), anat.map_coordinates_for_grid(anatomy, shape, affine),
                                      protocol, spacing, rng, skull_stripped=stripped)
            subject = synthetic.SyntheticSubject(f"SYN{number:04d}-CAL-{k + 1:04d}", "CAL", "validation",
                                                 label_maps.map_name(anatomy.map_index), stripped, anatomy.age,
                                                 anatomy.sex, image, aseg, affine)
            scanner = protocol.scanner
        rows.append(synthetic.write_subject(subject, folder, scanner))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(table, text.getvalue())  # after every subject: an interrupted run resumes
        print(f"calibration scan {k + 1}/{n}: {subject.name} ({subject.anatomy})", file=sys.stderr, flush=True)
    return rows[:n]


def measured_rows(predictor, folder: Path, subjects: list[dict], structures: list[str], what: str) -> list[dict]:
    """Segment each subject; one row per subject with ``<name>_pred``, ``_true``, ``_difficulty``."""
    out = []
    for number, subject in enumerate(subjects, 1):
        start = time.perf_counter()
        seg = predictor.segment(folder / subject["image"])
        row = {"subject": subject["subject"]}
        for name in structures:
            row.update({f"{name}_pred": seg.volumes[name], f"{name}_true": float(subject[f"{name}_ml"]),
                        f"{name}_difficulty": seg.difficulty[name]})
        out.append(row)
        print(f"{what} {number}/{len(subjects)}: {subject['subject']} {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("brain", "subcortical"), default="brain")
    parser.add_argument("--cohort", default="bundle/data/synthixi", help="cohort whose test split is scored")
    parser.add_argument("--scanners", choices=("random", "sites"), default="random",
                        help="calibration scans with random T1 contrasts (default) or the training sites' protocols")
    parser.add_argument("--calibration-dir", default=None,
                        help="default: bundle/data/synthixi_calibration_<scanners>")
    parser.add_argument("--subjects", type=int, default=60, help="calibration scans (>= 39 for finite 95 %% bounds)")
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED)
    parser.add_argument("--model", default=None, help="(stage-1) grid checkpoint (default: shipped)")
    parser.add_argument("--fine-model", default=None, help="stage-2 checkpoint (default: shipped)")
    parser.add_argument("--out", default=None, help="calibration JSON (default: the package's weights folder)")
    parser.add_argument("--report-dir", default="bundle/eval/intervals")
    args = parser.parse_args(argv)
    if args.subjects < 1:
        parser.error("--subjects must be >= 1")
    try:
        predictor = predictor_for(args.model, args.task, "torch", args.fine_model)
        structures = list(predictor.spec.class_names[1:])  # brain; for two stages: each side ...
        if args.task == "subcortical":  # ... and the left + right totals
            structures = list(REPORTED_STRUCTURES) + structures
        cohort = Path(args.cohort)
        test = cohort_subjects(cohort, "test")  # a bad cohort fails before any calibration scan is made
        folder = Path(args.calibration_dir or f"bundle/data/synthixi_calibration_{args.scanners}")
        calibration_rows = measured_rows(predictor, folder,
                                         ensure_calibration_scans(folder, args.subjects, args.seed, args.scanners),
                                         structures, "calibration")
        test_rows = measured_rows(predictor, cohort, test, structures, "test")
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    calibration = intervals.fit(calibration_rows, structures)
    task_name = "subcortical_fine" if args.task == "subcortical" else args.task
    out = Path(args.out) if args.out else WEIGHTS_DIR / f"{task_name}_intervals.json"
    intervals.save(calibration, out, note=f"split conformal, {len(calibration_rows)} calibration scans from the "
                                          f"validation label maps ({folder}, {args.scanners} scanners, seed "
                                          f"{args.seed}); python docs/calibrate_intervals.py --task {args.task} "
                                          f"--scanners {args.scanners}")
    scored = intervals.coverage(test_rows, calibration)
    lines = [f"| structure | calibration scans | test coverage (n={len(test_rows)}) | mean width (% of volume) |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {calibration[name].n} | {100 * s['coverage']:.0f} % | {s['mean_width_pct']:.1f} % |"
              for name, s in scored.items()]
    table = "\n".join(lines) + "\n"
    report = Path(args.report_dir)
    write_atomic(report / f"intervals_{args.task}.md", table)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(test_rows[0]))
    writer.writeheader()
    writer.writerows(test_rows)
    write_atomic(report / f"intervals_{args.task}_test_rows.csv", text.getvalue())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(calibration_rows[0]))
    writer.writeheader()
    writer.writerows(calibration_rows)
    write_atomic(report / f"intervals_{args.task}_calibration_rows.csv", text.getvalue())
    print(f"wrote {out}\n{table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
