"""What a grid says about the acquisition it came from.

Clinical FLAIR is mostly 2D multi-slice with 3-5 mm slices (issue "Real clinical scans");
some defaults differ on such grids, and they all ask this module which grid is thick.
"""

from __future__ import annotations

from typing import Iterable

#: A grid whose largest voxel edge is at least this (mm) holds thick slices: the real
#: longitudinal pairs' common grid (development patient 01: 0.72 x 0.72 x 3 mm) and the
#: clinical simulations (3-5 mm slices) do; the 1 mm and 1.5 mm simulations and 3D FLAIR
#: (MSSEG-2: about 1 mm) do not.
THICK_SLICE_MM = 2.0


def has_thick_slices(spacing_mm: Iterable[float]) -> bool:
    """True when the grid's largest voxel edge is at least :data:`THICK_SLICE_MM`."""
    return max(float(v) for v in spacing_mm) >= THICK_SLICE_MM
