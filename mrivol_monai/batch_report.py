"""``report.html`` of an output folder: one line per scan (ids, volumes, QC verdict, QC picture) and a cohort plot.

A static page opened straight from disk: no script, no server, every link relative to the output folder. It is
rebuilt from ``volumes.csv`` (so rows written by other processes appear too) and rewritten through a temp file
and a rename, as is the cohort plot ``cohort_volumes.png`` (each structure's volumes against its adult range,
:data:`mrivol_monai.scan_qc.ADULT_RANGES_ML`).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mrivol_monai.atomic_io import atomic_path, write_atomic
from mrivol_monai.scan_qc import ADULT_RANGES_ML, QC_PASS

__all__ = ["COHORT_PNG", "REPORT_HTML", "save_cohort_plot", "write_report"]

REPORT_HTML = "report.html"
COHORT_PNG = "cohort_volumes.png"
ID_COLUMNS = ("scan", "subject", "session")

STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.pass{color:#1a7f37}td.flag{color:#b3261e;max-width:22em}img.qc{height:110px}"""


def _relative(path: str, out: Path) -> str:
    """``path`` (as written in ``volumes.csv``) relative to the folder ``out``, with forward slashes."""
    return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()


def save_cohort_plot(rows: Sequence[Mapping[str, str]], volume_columns: Sequence[str], path: str | os.PathLike) -> Path:
    """One strip per ``<structure>_ml`` column: each scan's volume as a dot (red if its QC is not ``pass``), the
    adult range as a grey band where one is known. PNG written via temp name + rename."""
    from matplotlib.figure import Figure

    names = [c[:-3] for c in volume_columns]
    fig = Figure(figsize=(max(5.5, 0.7 * len(names) + 1.5), 3.6), dpi=100)
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # fixed jitter: the same rows give the same picture
    for x, (column, name) in enumerate(zip(volume_columns, names)):
        if name in ADULT_RANGES_ML:
            low, high = ADULT_RANGES_ML[name]
            ax.fill_between([x - 0.35, x + 0.35], low, high, color="#d9d9d9", zorder=0)
        values, flagged = [], []
        for row in rows:
            try:
                values.append(float(row[column]))
            except (KeyError, ValueError):
                continue
            flagged.append(row.get("qc", QC_PASS) not in ("", QC_PASS))
        if values:
            jitter = rng.uniform(-0.2, 0.2, len(values))
            colours = ["#b3261e" if f else "#0a84ff" for f in flagged]
            ax.scatter(x + jitter, values, s=14, c=colours, zorder=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center",
                       fontsize=8)
    ax.set_ylabel("mL")
    ax.set_title("each scan's volume (red: QC flagged); grey band: adult range", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _with_interval(row: Mapping[str, str], column: str) -> str:
    """A volume cell: the value, and its 95 % interval when the row has one (``<column>_lo95``/``_hi95``)."""
    value, low, high = row.get(column, ""), row.get(f"{column}_lo95", ""), row.get(f"{column}_hi95", "")
    return f"{value} [{low}, {high}]" if value and low and high else value


def write_report(out: str | os.PathLike, rows: Sequence[Mapping[str, str]], volume_columns: Sequence[str],
                 qc_picture: Mapping[str, str], title: str = "mrivol volumes") -> Path:
    """Write ``out/report.html`` and ``out/cohort_volumes.png`` for ``rows`` (``volumes.csv`` rows).
    ``qc_picture``: scan id -> its QC PNG path; a picture that does not exist (``--no-qc``) is left out."""
    out = Path(out)
    save_cohort_plot(rows, volume_columns, out / COHORT_PNG)
    ids = [c for c in ID_COLUMNS if any(row.get(c) for row in rows) or c == "scan"]
    passed = sum(1 for row in rows if row.get("qc") == QC_PASS)
    unchecked = sum(1 for row in rows if not row.get("qc"))  # rows of a version without QC
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in [*ids, *volume_columns, "qc", "QC picture"])
    lines = []
    for row in rows:
        cells = [f"<td>{esc(row.get(c, ''))}</td>" for c in ids]
        cells += [f"<td class=\"num\">{esc(_with_interval(row, c))}</td>" for c in volume_columns]
        verdict = row.get("qc", "")
        cells.append(f"<td class=\"{'pass' if verdict == QC_PASS else 'flag'}\">{esc(verdict or 'not checked')}</td>")
        picture = qc_picture.get(row.get("scan", ""), "")
        if picture and Path(picture).is_file():
            link = esc(_relative(picture, out), quote=True)
            alt = esc(f"QC {row['scan']}", quote=True)
            cells.append(f"<td><a href=\"{link}\"><img class=\"qc\" src=\"{link}\" alt=\"{alt}\"></a></td>")
        else:
            cells.append("<td></td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = f"{len(rows)} scans, {passed} pass QC, {len(rows) - passed - unchecked} flagged" + \
        (f", {unchecked} not checked" if unchecked else "")
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{esc(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{esc(title)}</h1>\n"
            f"<p>{counts}; volumes in mL; updated {stamp}. Numbers as in <a href=\"volumes.csv\">volumes.csv</a>.</p>\n"
            f"<p><img src=\"{COHORT_PNG}\" alt=\"cohort volumes against adult ranges\"></p>\n"
            f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>\n"
            "</body>\n</html>\n")
    return write_atomic(out / REPORT_HTML, page)
