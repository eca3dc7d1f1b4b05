"""Head anatomy for simulation: the MNI152 2009 template that nilearn ships.

Tissue probabilities (GM, WM from the template; CSF = brain mask minus GM and WM)
are resampled to the requested voxel size, a simple extracerebral shell (CSF gap,
skull, scalp) is added around the brain so that brain extraction has something to
remove, and the grid is cropped to the head.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Thickness (mm) of the extracerebral layers drawn around the brain mask, outwards:
#: subarachnoid CSF, skull (dark on FLAIR), scalp (fat: bright on FLAIR). Typical
#: adult values (CSF 1-3 mm, skull 5-7 mm, scalp 5-7 mm).
HEAD_LAYERS_MM = (("csf_gap", 2.0), ("skull", 6.0), ("scalp", 5.0))

#: Margin (mm) kept around the head when cropping the grid.
CROP_MARGIN_MM = 4.0


@dataclass(frozen=True)
class Anatomy:
    """Tissue maps on one grid (float32 probabilities in [0, 1], sums <= 1)."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray          # bool, brain mask
    skull: np.ndarray          # float32 partial-volume weight of the skull layer
    scalp: np.ndarray          # float32 partial-volume weight of the scalp layer
    ventricles: np.ndarray     # bool, deep CSF (lateral and third ventricles)
    affine: np.ndarray         # voxel -> MNI world (mm)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    @property
    def spacing_mm(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


@functools.lru_cache(maxsize=1)
def _mni_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(GM, WM, brain mask, affine) of the 1 mm MNI152 2009 template, from nilearn's files."""
    from nilearn import datasets  # nilearn ships these files: nothing is downloaded

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    return gm, wm, brain, np.asarray(gm_img.affine, dtype=np.float64)


def _resample(volume: np.ndarray, zoom: float, order: int) -> np.ndarray:
    if zoom == 1.0:
        return volume
    return ndimage.zoom(volume, zoom, order=order, grid_mode=True, mode="grid-constant")


@functools.lru_cache(maxsize=2)
def load_anatomy(*, voxel_mm: float = 1.0) -> Anatomy:
    """MNI anatomy on an isotropic grid of ``voxel_mm``, with a head shell, cropped to the head.

    Cached per voxel size (a cohort simulation builds it once); the arrays are read-only.
    """
    if not 0.5 <= voxel_mm <= 4.0:
        raise ValueError(f"voxel_mm must lie in [0.5, 4], not {voxel_mm}")
    gm1, wm1, brain1, affine1 = _mni_templates()
    zoom = 1.0 / voxel_mm
    gm = np.clip(_resample(gm1, zoom, 1), 0, 1).astype(np.float32)
    wm = np.clip(_resample(wm1, zoom, 1), 0, 1).astype(np.float32)
    brain_p = _resample(brain1.astype(np.float32), zoom, 1)
    brain = brain_p >= 0.5
    affine = affine1.copy()
    affine[:3, :3] = affine1[:3, :3] * voxel_mm
    # grid_mode zoom keeps the physical extent: the first voxel centre moves by half a voxel
    affine[:3, 3] = affine1[:3, 3] + (voxel_mm - 1.0) / 2.0 * np.diag(affine1[:3, :3])

    tissue = np.clip(gm + wm, 0, 1)
    scale = np.where(tissue > 1, 1 / np.maximum(tissue, 1e-6), 1).astype(np.float32)
    gm, wm = gm * scale, wm * scale
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0, 1), 0).astype(np.float32)
    gm = np.where(brain, gm, 0).astype(np.float32)
    wm = np.where(brain, wm, 0).astype(np.float32)

    # Pad so the head shell fits everywhere but below (the field of view cuts the neck).
    shell_mm = sum(t for _, t in HEAD_LAYERS_MM) + CROP_MARGIN_MM
    pad = int(np.ceil(shell_mm / voxel_mm))
    pad_width = ((pad, pad), (pad, pad), (0, pad))
    gm, wm, csf = (np.pad(a, pad_width) for a in (gm, wm, csf))
    brain = np.pad(brain, pad_width)
    affine[:3, 3] -= affine[:3, :3] @ np.array([pad, pad, 0])

    skull, scalp = _head_shell(brain, voxel_mm)
    ventricles = _ventricles(csf, brain, voxel_mm)
    head = brain | (skull > 0) | (scalp > 0)
    crop = _bounding_box(head, int(np.ceil(CROP_MARGIN_MM / voxel_mm)))
    affine[:3, 3] += affine[:3, :3] @ np.array([s.start for s in crop])
    maps = {name: np.ascontiguousarray(array[crop]) for name, array in
            (("gm", gm), ("wm", wm), ("csf", csf), ("brain", brain), ("skull", skull), ("scalp", scalp),
             ("ventricles", ventricles))}
    for array in maps.values():
        array.setflags(write=False)
    affine.setflags(write=False)
    return Anatomy(**maps, affine=affine)


def _head_shell(brain: np.ndarray, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume weights of skull and scalp, as shells at fixed distances from the brain."""
    # Distances are smooth at this scale: compute them on a 2 mm grid and interpolate.
    step = max(1, int(round(2.0 / voxel_mm)))
    coarse = brain[::step, ::step, ::step]
    distance = ndimage.distance_transform_edt(~coarse, sampling=voxel_mm * step)
    # Smooth the shell's inner surface so the skull does not copy every sulcus.
    distance = ndimage.gaussian_filter(distance, 1.0)
    zoom = np.array(brain.shape) / np.array(coarse.shape)
    distance = ndimage.zoom(distance, zoom, order=1, grid_mode=True, mode="nearest")[
        : brain.shape[0], : brain.shape[1], : brain.shape[2]]
    edges = np.cumsum([t for _, t in HEAD_LAYERS_MM])
    soft = voxel_mm / 2.0

    def band(lo: float, hi: float) -> np.ndarray:
        inside = 1 / (1 + np.exp(-(distance - lo) / soft)) * 1 / (1 + np.exp((distance - hi) / soft))
        inside[inside < 0.01] = 0
        return np.where(brain, 0, inside).astype(np.float32)

    return band(edges[0], edges[1]), band(edges[1], edges[2])


def _ventricles(csf: np.ndarray, brain: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Deep CSF: CSF-dominated voxels at least 15 mm inside the brain surface."""
    step = max(1, int(round(2.0 / voxel_mm)))
    depth = ndimage.distance_transform_edt(brain[::step, ::step, ::step], sampling=voxel_mm * step)
    depth = ndimage.zoom(depth, np.array(brain.shape) / np.array(depth.shape), order=1,
                         grid_mode=True, mode="nearest")[: brain.shape[0], : brain.shape[1], : brain.shape[2]]
    return (csf > 0.5) & (depth > 15.0)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]
