"""Render an ``mrivol predict`` report.html in headless Chromium and save a screenshot PNG (for README).

    python docs/screenshot_report.py                         # demo: SynthIXI subjects as a BIDS dataset -> report
    python docs/screenshot_report.py --report results/report.html --png docs/img/report_html.png

The demo writes ``--subjects`` SynthIXI subjects (IXI grid, seed 0) as a BIDS dataset
(``sub-NN/anat/sub-NN_T1w.nii.gz``) into a temp folder, runs ``mrivol predict DATASET --layout bids`` with the
shipped brain model, and screenshots the ``report.html`` it wrote, opened as a ``file://`` page (no server), as
a reader would open it. Chromium comes from the Debian packages (``apt-get install chromium``); the page is
loaded with ``--allow-file-access-from-files`` only so its relative images load the way a double-click does.
Prints the command it ran and where the PNG went.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_browser() -> str:
    """Path of a Chromium executable; SystemExit with the install hint if there is none."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found (tried " + ", ".join(BROWSERS) + "); on Debian: apt-get install chromium")


def screenshot(report: Path, png: Path, width: int = 1400, height: int = 1000) -> Path:
    """Render ``report`` (an HTML file) in headless Chromium at ``width`` x ``height`` px into ``png``."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: nothing of a user's browser is touched
        command = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={profile}", "--allow-file-access-from-files", f"--window-size={width},{height}",
                   f"--screenshot={png.resolve()}", report.resolve().as_uri()]
        print(" ".join(command))
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file():
        raise SystemExit(f"chromium failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return png


def demo_report(folder: Path, subjects: int) -> Path:
    """SynthIXI subjects as a BIDS dataset in ``folder``/bids, ``mrivol predict --layout bids`` into
    ``folder``/bids/derivatives/mrivol; returns its report.html."""
    from mrivol_monai.data import synthetic

    cohort = folder / "synthixi"
    synthetic.generate_cohort(cohort, n_subjects=subjects, seed=0, workers=1, progress=False)
    bids = folder / "bids"
    for number, image in enumerate(sorted(cohort.rglob("*T1*.nii.gz")), start=1):
        anat = bids / f"sub-{number:02d}" / "anat"
        anat.mkdir(parents=True)
        shutil.copy(image, anat / f"sub-{number:02d}_T1w.nii.gz")
    (bids / "dataset_description.json").write_text('{"Name": "SynthIXI demo", "BIDSVersion": "1.9.0"}\n')
    out = bids / "derivatives" / "mrivol"
    command = [sys.executable, "-m", "mrivol_monai", "predict", str(bids), "--out", str(out), "--layout", "bids",
               "--quiet", "--threads", "1"]
    print(" ".join(command))
    subprocess.run(command, check=False)  # exit 1 if a scan failed: the report still shows the others
    return out / "report.html"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=None, help="an existing report.html (default: make the demo)")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "img" / "report_html.png")
    parser.add_argument("--subjects", type=int, default=4, help="demo: SynthIXI subjects")
    args = parser.parse_args(argv)
    if args.report is not None:
        print(f"wrote {screenshot(args.report, args.png)}")
        return
    with tempfile.TemporaryDirectory() as folder:
        report = demo_report(Path(folder), args.subjects)
        print(f"wrote {screenshot(report, args.png)}")


if __name__ == "__main__":
    main()
