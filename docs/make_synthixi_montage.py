"""Draw docs/img/synthixi_montage.png: the first subject of each site in the default SynthIXI cohort,
reoriented to RAS, in axial / coronal / sagittal views with brain-mask and subcortical outlines.

    python docs/make_synthixi_montage.py [--out docs/img/synthixi_montage.png] [--geometry ixi]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from mrivol_monai.data import synthetic  # noqa: E402
from mrivol_monai.data.manifests import TASK_LABELS  # noqa: E402
from mrivol_monai.data.synthetic_acquisition import SITE_PROTOCOLS  # noqa: E402

STRUCTURE_COLOURS = {1: "#ff4040", 2: "#40a0ff", 3: "#ffd000", 4: "#40ff80"}


def _canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...]]:
    image = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    return np.asarray(image.dataobj), image.header.get_zooms()[:3]


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """RAS volume -> axial, coronal, sagittal slices, transposed so superior/anterior is up."""
    x, y, z = centre
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def draw(out: Path, geometry: str = synthetic.DEFAULT_GEOMETRY, seed: int = synthetic.DEFAULT_SEED) -> None:
    """Render the 3 sites x 3 views montage to ``out`` (PNG, written via a temp file)."""
    plan = synthetic.cohort_plan(synthetic.DEFAULT_N_SUBJECTS, seed)
    fig, axes = plt.subplots(3, 3, figsize=(11, 11.6), facecolor="black")
    for row, site in enumerate(synthetic.SITES):
        number, _, site_number, split, map_index = next(p for p in plan if p[1] == site)
        subject = synthetic.generate_subject(number, site, seed, geometry, site_number, split, map_index)
        image, zooms = _canonical(subject.image, subject.affine)
        brain, _ = _canonical(subject.brain, subject.affine)
        labels, _ = _canonical(subject.subcortical, subject.affine)
        # Axial and coronal through the thalami, sagittal through the right putamen.
        thalamus = np.argwhere(labels == 1).mean(axis=0)
        putamen = np.argwhere(labels == 3)
        right_putamen_x = putamen[putamen[:, 0] > thalamus[0], 0].mean()
        centre = (int(round(right_putamen_x - 0.4 * (right_putamen_x - thalamus[0]))), *(int(round(c)) for c in thalamus[1:]))
        codes = "".join(nib.aff2axcodes(subject.affine))
        vmax = float(np.percentile(image[brain > 0], 99.5))
        aspects = [zooms[1] / zooms[0], zooms[2] / zooms[0], zooms[2] / zooms[1]]
        for col, (img, msk, lab) in enumerate(zip(*(_views(v, centre) for v in (image, brain, labels)))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspects[col],
                      interpolation="bilinear")
            ax.contour(msk, levels=[0.5], colors="#00e5ff", linewidths=0.7)
            for label, colour in STRUCTURE_COLOURS.items():
                if (lab == label).any():
                    ax.contour(lab == label, levels=[0.5], colors=colour, linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{site} ({SITE_PROTOCOLS[site].scanner})\nstored {codes}, {subject.name}, age {subject.age:.0f}\n"
                              f"anatomy {subject.anatomy} ({subject.split}){', skull-stripped' if subject.skull_stripped else ''}",
                              color="white", fontsize=9)
            if row == 0:
                ax.set_title(("axial", "coronal", "sagittal")[col], color="white", fontsize=11)
    legend = [plt.Line2D([], [], color="#00e5ff", label="brain mask")]
    legend += [plt.Line2D([], [], color=c, label=TASK_LABELS["subcortical"][str(k)]) for k, c in STRUCTURE_COLOURS.items()]
    fig.legend(handles=legend, loc="lower center", ncol=5, frameon=False, labelcolor="white", fontsize=9)
    fig.suptitle(f"SynthIXI ({geometry} grid, seed {seed}), reoriented to RAS; radiological left/right not "
                 "flipped (patient right on the image right)", color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100, facecolor="black")
    plt.close(fig)
    os.replace(tmp, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "img" / "synthixi_montage.png")
    parser.add_argument("--geometry", default=synthetic.DEFAULT_GEOMETRY, choices=synthetic.GEOMETRIES)
    parser.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED)
    args = parser.parse_args()
    draw(args.out, args.geometry, args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
