"""PNG figures of the volume estimates: Bland-Altman and predicted-vs-true per structure (mL), and example test
slices (image, true mask, predicted mask) like the paper's Fig. 1.

Built on ``matplotlib.figure.Figure`` (no pyplot), so plotting never touches a global backend or GUI state.
Every figure is saved to a temp file and renamed into place.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from mrivol_monai.atomic_io import write_atomic

# class id -> colour; background transparent-black, then distinct colours for structures
_CLASS_COLOURS = ("#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())


def _panels(rows: Sequence[Mapping[str, Any]], structures: Sequence[str], title: str, xlabel: str, ylabel: str):
    """A figure with one panel per structure; yields (axes, true mL, predicted mL) per panel, then the figure."""
    cols = min(len(structures), 3)
    n_rows = (len(structures) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.7 * n_rows))
    fig.suptitle(title, fontsize=10)
    for i, name in enumerate(structures):
        mine = [r for r in rows if r["structure"] == name]
        ax = fig.add_subplot(n_rows, cols, i + 1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        yield ax, np.array([r["true_ml"] for r in mine], float), np.array([r["pred_ml"] for r in mine], float)
    yield fig


def bland_altman(rows: Sequence[Mapping[str, Any]], structures: Sequence[str], path: str | os.PathLike) -> Path:
    """One panel per structure: mean of true and predicted mL (x) against predicted - true (y), with the mean
    bias and the 95 % limits of agreement (bias ± 1.96 sample std)."""
    *panels, fig = _panels(rows, structures, "Bland-Altman: predicted vs native-label volume",
                           "mean of true and predicted (mL)", "predicted − true (mL)")
    for ax, true, pred in panels:
        diff = pred - true
        ax.scatter((pred + true) / 2, diff, s=14, alpha=0.8)
        ax.axhline(0, color="0.6", lw=0.6)
        if diff.size:
            bias = diff.mean()
            sd = diff.std(ddof=1) if diff.size > 1 else 0.0
            ax.axhline(bias, color="k", lw=1, label=f"bias {bias:+.2f} mL")
            for lim in (bias - 1.96 * sd, bias + 1.96 * sd):
                ax.axhline(lim, color="k", lw=0.8, ls="--")
            ax.legend(fontsize=7, loc="best")
    return _save(fig, Path(path))


def predicted_vs_true(rows: Sequence[Mapping[str, Any]], structures: Sequence[str], path: str | os.PathLike) -> Path:
    """One panel per structure: true mL (x) against predicted mL (y) with the identity line."""
    *panels, fig = _panels(rows, structures, "Predicted vs true volume", "true (mL)", "predicted (mL)")
    for ax, true, pred in panels:
        ax.scatter(true, pred, s=14, alpha=0.8)
        if true.size:
            lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8)
    return _save(fig, Path(path))


def segmentation_examples(examples: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                          path: str | os.PathLike) -> Path:
    """Rows = subjects; columns = image, true mask, predicted mask (masks over the image). Each example holds
    ``subject``, ``slice`` and (H, W) arrays ``image``, ``label``, ``pred`` (class ids)."""
    n = max(len(examples), 1)
    cmap = ListedColormap(_CLASS_COLOURS[: max(len(class_names), 2)])
    fig = Figure(figsize=(7.5, 2.6 * n))
    for i, ex in enumerate(examples):
        for j, (title, mask) in enumerate((("image", None), ("true", ex["label"]), ("predicted", ex["pred"]))):
            ax = fig.add_subplot(n, 3, 3 * i + j + 1)
            ax.imshow(ex["image"], cmap="gray")
            if mask is not None:
                shown = np.ma.masked_where(mask == 0, mask)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=cmap.N - 1, alpha=0.6, interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{ex['subject']} s{ex['slice']}: {title}" if j == 0 else title, fontsize=8)
    fig.suptitle("Test slices: image, true mask, predicted mask", fontsize=10)
    return _save(fig, Path(path))


def plot_all(rows: Sequence[Mapping[str, Any]], examples: Sequence[Mapping[str, Any]], class_names: Sequence[str],
             output_dir: str | os.PathLike) -> list[Path]:
    """Write ``bland_altman.png``, ``pred_vs_true.png`` (foreground structures; all if only one class) and
    ``examples.png`` (if there are examples) into ``output_dir``."""
    out = Path(output_dir)
    structures = list(class_names[1:]) or list(class_names)
    paths = [bland_altman(rows, structures, out / "bland_altman.png"),
             predicted_vs_true(rows, structures, out / "pred_vs_true.png")]
    if examples:
        paths.append(segmentation_examples(examples, class_names, out / "examples.png"))
    return paths
