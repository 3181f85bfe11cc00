"""The IXI dataset's sites and their subject counts, shared by the cohort generator and the manifests.

Numpy-free on purpose: the generator's spawned workers import it without MONAI.
"""

from __future__ import annotations

__all__ = ["SITES", "SITE_SUBJECTS"]

SITES: tuple[str, ...] = ("Guys", "HH", "IOP")
SITE_SUBJECTS: dict[str, int] = {"Guys": 311, "HH": 181, "IOP": 74}  # IXI T1 scans per site
