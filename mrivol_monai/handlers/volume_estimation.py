"""Volume estimation: turn the evaluator's stacked slice predictions into structure volumes and compare them
with the ground truth, per subject and over the test set (the paper's Tables 5 and 6).

The paper's number is a voxel count in the resampled 40x128x128 grid: ``SliceInferer`` predicts all 40 slices,
they are stacked, and the voxels of each structure are counted. We report that count for prediction and
truth, and the same volumes in mL:

- ``pred_ml`` = predicted grid voxels x grid voxel volume. The grid voxel volume is ``|det(affine[:3, :3])|``
  of the preprocessed tensor, i.e. the native voxel volume times the resampling factors of the head crop
  (``Orientationd`` keeps it, ``CropForegroundd`` keeps it, ``Resized`` scales it by crop shape / grid shape).
  Inverting the mask into native space with nearest-neighbour resampling (MONAI ``Invertd``) gives the same
  volume up to aliasing of the native grid, because each grid voxel maps onto the native voxels it covers;
  the product is exact arithmetic and costs nothing, so we use it.
- ``true_ml`` = label voxels counted in the native label file x native voxel volume, the same definition as
  the cohort's ``cohort.csv``.
- background is the exception: the grid covers only the head crop, so its ``true_ml`` is the crop box's
  volume (grid voxels x grid voxel volume) minus the native foreground volume.
- ``true_grid_ml`` = true grid voxels x grid voxel volume. ``resampling_pct_error`` (true_grid_ml vs true_ml)
  is the error a perfect grid segmentation would still make: the floor set by resampling the label to the
  grid with nearest-neighbour interpolation. It is large for small structures on coarse slice spacing.

Percent errors are signed, ``100 * (pred - true) / true`` (NaN when the structure is absent in the truth).
Dice is the 3D Dice over the whole grid volume (MONAI ``compute_dice``; 1 when both masks are empty).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.data.utils import orientation_ras_lps
from monai.metrics import compute_dice

from mrivol_monai.atomic_io import atomic_path, json_safe, plain_name, write_atomic
from mrivol_monai.data.nifti_files import voxel_mm3
from mrivol_monai.data.synthetic import label_volumes_ml
from mrivol_monai.errors import InputError

logger = logging.getLogger(__name__)

COLUMNS = (
    "subject", "site", "class_index", "structure", "pred_voxels", "true_voxels", "grid_voxel_mm3", "pred_ml",
    "true_ml", "true_grid_ml", "pct_error_voxels", "pct_error_ml", "resampling_pct_error", "estimate", "dice",
)
ERROR_STATS = ("signed_pct_mean", "signed_pct_std", "abs_pct_mean", "abs_pct_std", "share_over", "share_under")


def normalise_class_names(class_names: Mapping[Any, str] | Sequence[str]) -> list[str]:
    """``{"0": "background", "1": "brain"}`` or ``["background", "brain"]`` -> names indexed by class id."""
    if isinstance(class_names, Mapping):
        by_id = {int(k): str(v) for k, v in class_names.items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise InputError(None, f"class ids must be 0..N-1, got {sorted(by_id)}")
        return [by_id[i] for i in range(len(by_id))]
    return [str(n) for n in class_names]


def percent_error(pred: float, true: float) -> float:
    """Signed ``100 * (pred - true) / true``; NaN when ``true`` is 0."""
    return 100.0 * (pred - true) / true if true else math.nan


def _estimate(pred: float, true: float) -> str:
    return "over" if pred > true else "under" if pred < true else "exact"


def subject_rows(pred: torch.Tensor, label: torch.Tensor, class_names: Sequence[str], subject: str,
                 site: str = "", native_label: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows of ``volumes.csv`` for one subject: one per class.

    ``pred``, ``label``: (C, D, H, W) one-hot masks on the resampled grid; ``label`` must be a MetaTensor
    whose ``affine`` is the grid's (``pred``'s is used otherwise). ``native_label``: the subject's label file
    in native space (default: ``label.meta["filename_or_obj"]``); its values are class ids.
    """
    n = len(class_names)
    if pred.shape != label.shape or pred.ndim != 4 or pred.shape[0] != n:
        raise ValueError(f"{subject}: expected one-hot (C={n}, D, H, W) pred and label, got {tuple(pred.shape)} "
                         f"and {tuple(label.shape)}")
    ref = label if isinstance(label, MetaTensor) else pred
    if not isinstance(ref, MetaTensor):
        raise ValueError(f"{subject}: label or pred must be a MetaTensor carrying the grid affine")
    grid_mm3 = voxel_mm3(ref.affine)
    if native_label is None:
        native_label = ref.meta.get("filename_or_obj")
    if not native_label:
        raise ValueError(f"{subject}: no native label file (meta 'filename_or_obj') to take true mL from")
    try:
        true_ml = label_volumes_ml(native_label, tuple(range(n)))
    except (OSError, nib.filebasedimages.ImageFileError) as err:
        raise InputError(native_label, f"cannot read the native label file: {err}") from err
    p = torch.as_tensor(pred).float()
    t = torch.as_tensor(label).float()
    pred_vox = p.flatten(1).sum(1).tolist()
    true_vox = t.flatten(1).sum(1).tolist()
    # background in native space is the whole field of view, but the grid only covers the head crop: compare
    # like with like, the crop box's volume minus the native foreground volume
    true_ml[0] = p[0].numel() * grid_mm3 / 1000.0 - sum(true_ml[c] for c in range(1, n))
    dice = compute_dice(p[None], t[None], include_background=True, ignore_empty=False)[0].tolist()
    rows = []
    for c, name in enumerate(class_names):
        pv, tv = int(round(pred_vox[c])), int(round(true_vox[c]))
        pml, tgml, tml = pv * grid_mm3 / 1000.0, tv * grid_mm3 / 1000.0, true_ml[c]
        rows.append({
            "subject": subject, "site": site, "class_index": c, "structure": name,
            "pred_voxels": pv, "true_voxels": tv, "grid_voxel_mm3": grid_mm3,
            "pred_ml": pml, "true_ml": tml, "true_grid_ml": tgml,
            "pct_error_voxels": percent_error(pv, tv), "pct_error_ml": percent_error(pml, tml),
            "resampling_pct_error": percent_error(tgml, tml), "estimate": _estimate(pv, tv), "dice": float(dice[c]),
        })
    return rows


def _finite(values: Sequence[float]) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return a[np.isfinite(a)]


def _std(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if a.size > 1 else math.nan


def error_stats(errors: Sequence[float]) -> dict[str, float]:
    """Signed percent errors of N subjects -> mean/std (sample std, ddof 1) of signed and absolute error and
    the share of over- and under-estimates. NaN errors (structure absent in the truth) are left out."""
    e = _finite(errors)
    if e.size == 0:
        return dict.fromkeys(ERROR_STATS, math.nan)
    return {
        "signed_pct_mean": float(e.mean()), "signed_pct_std": _std(e),
        "abs_pct_mean": float(np.abs(e).mean()), "abs_pct_std": _std(np.abs(e)),
        "share_over": float((e > 0).mean()), "share_under": float((e < 0).mean()),
    }


def summarise(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str], complete: bool = True) -> dict[str, Any]:
    """``volumes.csv`` rows -> per-structure aggregates (Tables 5 and 6) and the foreground mean Dice."""
    structures = []
    for c, name in enumerate(class_names):
        mine = [r for r in rows if r["class_index"] == c]
        dice = _finite([r["dice"] for r in mine])
        grid = error_stats([r["pct_error_voxels"] for r in mine])
        structures.append({
            "class_index": c, "structure": name, "n_subjects": len(mine),
            "dice_mean": float(dice.mean()) if dice.size else math.nan, "dice_std": _std(dice),
            "voxels": grid,
            "ml": error_stats([r["pct_error_ml"] for r in mine]),
            "resampling_abs_pct_mean": float(np.abs(e).mean()) if (e := _finite(
                [r["resampling_pct_error"] for r in mine])).size else math.nan,
            "estimate": ("over" if grid["signed_pct_mean"] > 0 else "under" if grid["signed_pct_mean"] < 0
                         else "exact" if grid["signed_pct_mean"] == 0 else ""),
        })
    foreground = _finite([s["dice_mean"] for s in structures[1:]])
    return {
        "complete": complete,
        "n_subjects": len({r["subject"] for r in rows}),
        "mean_dice_foreground": float(foreground.mean()) if foreground.size else math.nan,
        "error_definition": "signed percent error 100*(pred-true)/true; 'voxels': counts in the resampled grid "
                            "(the paper's); 'ml': predicted grid mL vs native-label mL",
        "structures": structures,
    }


def _pm(mean: float, std: float, unit: str = "%") -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:+.2f}{unit}" + (f" ± {std:.2f}{unit}" if math.isfinite(std) else "")


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table shaped like the paper's Tables 5 and 6 (one row per structure)."""
    lines = [
        f"Test subjects: {summary['n_subjects']}" + ("" if summary["complete"] else " (run incomplete)")
        + f"; mean foreground Dice {summary['mean_dice_foreground']:.3f}", "",
        "| structure | Dice | signed error (grid voxels) | abs. error (grid voxels) | signed error (mL) "
        "| abs. error (mL) | over / under | estimate | resampling floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summary["structures"]:
        v, m = s["voxels"], s["ml"]
        share = (f"{v['share_over']:.0%} / {v['share_under']:.0%}" if math.isfinite(v["share_over"]) else "n/a")
        floor = s["resampling_abs_pct_mean"]
        lines.append(
            f"| {s['structure']} | {s['dice_mean']:.3f} | {_pm(v['signed_pct_mean'], v['signed_pct_std'])} "
            f"| {_pm(v['abs_pct_mean'], v['abs_pct_std']).lstrip('+')} | {_pm(m['signed_pct_mean'], m['signed_pct_std'])} "
            f"| {_pm(m['abs_pct_mean'], m['abs_pct_std']).lstrip('+')} | {share} | {s['estimate']} "
            f"| {'n/a' if not math.isfinite(floor) else f'{floor:.2f}%'} |")
    lines += ["", "Errors are mean ± sample std over subjects of 100·(pred − true)/true. Grid voxels: the paper's "
              "count in the resampled grid. mL: predicted grid voxels × grid voxel volume vs the native label "
              "file. Resampling floor: mean |error| of the true grid mask against the native label (what a "
              "perfect grid segmentation would still miss).", ""]
    return "\n".join(lines)


def _cell(v: Any) -> Any:
    """Floats with 10 significant digits; NaN (undefined error) as an empty cell."""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.10g}"
    return v


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    return buf.getvalue()


def read_volumes_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """``volumes.csv`` back into rows with numbers (NaN for empty errors)."""
    ints = {"class_index", "pred_voxels", "true_voxels"}
    strs = {"subject", "site", "structure", "estimate"}
    with open(path, newline="") as handle:
        return [{k: (v if k in strs else int(v) if k in ints else float(v) if v else math.nan) for k, v in r.items()}
                for r in csv.DictReader(handle)]


def _save_mask(mask: torch.Tensor, ref: MetaTensor, path: Path) -> None:
    """(C, D, H, W) one-hot -> uint8 class map NIfTI with the grid affine (RAS, as nibabel wants)."""
    affine = np.asarray(ref.affine, dtype=np.float64)
    if str(ref.meta.get("space", "RAS")).upper() == "LPS":
        affine = orientation_ras_lps(affine)
    image = nib.Nifti1Image(torch.as_tensor(mask).argmax(0).cpu().numpy().astype(np.uint8), affine)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


class VolumeEstimationHandler:
    """Ignite handler for the evaluator: per subject and structure volumes, errors and Dice, written to
    ``output_dir`` as ``volumes.csv``, ``summary.json``, ``summary.md`` (and PNG plots at the end).

    Reads the decollated ``engine.state.output`` (a list of dicts with ``pred`` and ``label``, each a
    (C, D, H, W) one-hot MetaTensor after the bundle's postprocessing) and ``engine.state.batch`` (``subject``,
    ``site`` from the datalist). The files are rewritten (temp file + rename) after every iteration with
    ``"complete": false`` in the summary, so a crash or kill keeps every finished subject and never leaves
    a half-written file; at ``COMPLETED`` the summary is marked complete, plots are drawn and the aggregates
    are logged to ``summary_writer`` (TensorBoard) as ``volume/<structure>/<statistic>``.

    Under torch.distributed (``multi_gpu_evaluate.json``) every rank measures its share of the subjects; at the
    end of the epoch rank 0 gathers all ranks' rows (back in datalist order) and alone writes the files.

    Args:
        output_dir: where results go (created).
        class_names: class id -> name, e.g. ``{"0": "background", "1": "brain"}``.
        summary_writer: a ``SummaryWriter`` or None.
        plots: draw Bland-Altman, predicted-vs-true and example-segmentation PNGs at the end.
        examples: how many subjects the example figure shows (the first ones seen).
        save_masks: also write each subject's predicted and true grid masks as ``masks/<subject>_{pred,label}.nii.gz``
            (the subject id made a plain file name: ``../x`` writes ``masks/x_pred.nii.gz``, never outside).
        global_epoch_transform: engine -> step for TensorBoard (e.g. the trainer's epoch).
    """

    def __init__(self, output_dir: str | os.PathLike, class_names: Mapping[Any, str] | Sequence[str],
                 summary_writer: Any = None, plots: bool = True, examples: int = 4, save_masks: bool = False,
                 global_epoch_transform: Callable[[Engine], int] | None = None,
                 pred_key: str = "pred", label_key: str = "label", image_key: str = "image") -> None:
        self.output_dir = Path(output_dir)
        self.class_names = normalise_class_names(class_names)
        self.summary_writer = summary_writer
        self.plots = plots
        self.n_examples = int(examples)
        self.save_masks = save_masks
        self.global_epoch_transform = global_epoch_transform or (lambda engine: engine.state.epoch)
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.rows: list[dict[str, Any]] = []
        self.examples: list[dict[str, Any]] = []
        self._subjects: list[list[dict[str, Any]]] = []  # rows per subject, in the order this rank saw them

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self.examples, self._subjects = [], [], []

    def add_subject(self, pred: torch.Tensor, label: torch.Tensor, subject: str | None = None, site: str = "",
                    image: torch.Tensor | None = None, native_label: str | os.PathLike | None = None) -> list[dict]:
        """Add one subject ((C, D, H, W) one-hot ``pred`` and ``label``; optional (1, D, H, W) ``image`` for the
        example figure) and rewrite the result files. Returns the subject's rows."""
        meta = label.meta if isinstance(label, MetaTensor) else {}
        if subject is None:
            subject = Path(str(meta.get("filename_or_obj", f"subject{len(self.rows) // len(self.class_names)}"))).name
            subject = subject.split(".nii")[0]
        rows = subject_rows(pred, label, self.class_names, str(subject), str(site), native_label)
        self.rows.extend(rows)
        self._subjects.append(rows)
        if self.save_masks:
            ref = label if isinstance(label, MetaTensor) else pred
            for name, mask in (("pred", pred), ("label", label)):
                out = self.output_dir / "masks" / f"{plain_name(str(subject))}_{name}.nii.gz"  # ids are not paths
                out.parent.mkdir(parents=True, exist_ok=True)
                _save_mask(mask, ref, out)
        if image is not None and len(self.examples) < self.n_examples:
            self.examples.append(_example_slice(image, label, pred, str(subject)))
        if _world_size() == 1:  # with several ranks only rank 0 writes, once it has everyone's rows
            self.write(complete=False)
        return rows

    def iteration_completed(self, engine: Engine) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(outputs, dict):
            outputs, batch = decollate_batch(outputs), decollate_batch(batch)
        for out, item in zip(outputs, batch):
            self.add_subject(out[self.pred_key], out[self.label_key], subject=item.get("subject"),
                             site=item.get("site", ""), image=out.get(self.image_key))

    def write(self, complete: bool) -> dict[str, Any]:
        """Rewrite ``volumes.csv``, ``summary.json``, ``summary.md`` atomically; returns the summary."""
        summary = summarise(self.rows, self.class_names, complete)
        write_atomic(self.output_dir / "volumes.csv", _csv_text(self.rows))
        write_atomic(self.output_dir / "summary.json", json.dumps(json_safe(summary), indent=2) + "\n")
        write_atomic(self.output_dir / "summary.md", summary_markdown(summary))
        return summary

    def gather(self) -> bool:
        """Under torch.distributed, collect every rank's subjects on all ranks (``rows`` and ``examples`` then
        hold the whole set, in datalist order: DistributedSampler gives rank r the subjects r, r + W, ...;
        a subject padded onto two ranks is kept once). Returns True on the rank that writes the files."""
        world = _world_size()
        if world == 1:
            return True
        import torch.distributed as dist

        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, (self._subjects, self.examples))
        subjects, examples, seen = [], [], set()
        for k in range(max(len(groups) for groups, _ in everyone)):
            for groups, _ in everyone:
                if k < len(groups) and groups[k] and groups[k][0]["subject"] not in seen:
                    seen.add(groups[k][0]["subject"])
                    subjects.append(groups[k])
        for k in range(self.n_examples):
            examples += [ex[k] for _, ex in everyone if k < len(ex)]
        self._subjects, self.rows = subjects, [row for group in subjects for row in group]
        self.examples = examples[: self.n_examples]
        return dist.get_rank() == 0

    def epoch_completed(self, engine: Engine) -> None:
        if not self.gather():
            return
        summary = self.write(complete=True)
        logger.info("volume estimation on %d subjects:\n%s", summary["n_subjects"], summary_markdown(summary))
        if self.plots and self.rows:
            from mrivol_monai.handlers import volume_plots  # matplotlib only when plotting

            volume_plots.plot_all(self.rows, self.examples, self.class_names, self.output_dir)
        if self.summary_writer is not None:
            step = self.global_epoch_transform(engine)
            for s in summary["structures"]:
                scalars = {"dice_mean": s["dice_mean"], **{f"voxels_{k}": v for k, v in s["voxels"].items()},
                           **{f"ml_{k}": v for k, v in s["ml"].items()}}
                for name, value in scalars.items():
                    if math.isfinite(value):
                        self.summary_writer.add_scalar(f"volume/{s['structure']}/{name}", value, step)
            self.summary_writer.flush()


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _example_slice(image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, subject: str) -> dict[str, Any]:
    """The slice with the most labelled (non-background) voxels: (H, W) image, true and predicted class maps."""
    true_map = torch.as_tensor(label).argmax(0)
    s = int((true_map > 0).flatten(1).sum(1).argmax())
    return {
        "subject": subject, "slice": s,
        "image": torch.as_tensor(image)[0, s].float().cpu().numpy(),
        "label": true_map[s].cpu().numpy().astype(np.uint8),
        "pred": torch.as_tensor(pred).argmax(0)[s].cpu().numpy().astype(np.uint8),
    }
