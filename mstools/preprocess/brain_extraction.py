"""Brain masks of single FLAIR scans, and the checks that a scan is a head at all.

Two methods:

* ``otsu`` -- Cabezas et al. (paper 001): Otsu threshold, erosion to cut the scalp and
  fat off the brain, largest connected component, dilation back, holes (ventricles)
  filled. "A rough brain mask is usually enough" for FLAIR lesions (same paper). Fast.
* ``deepbet`` -- the deepbet network (Fisch et al., 2024; its weights ship inside the
  ``deepbet`` package, nothing is downloaded). It was trained on T1-weighted images;
  on FLAIR it is used as is (see :data:`DEEPBET_NOTE`).

A given mask (``--baseline-mask``) is a third option handled by the pipeline.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from mstools.errors import InputError
from mstools.preprocess.rigid import mask_bounds

#: Erosion radius (mm) that separates the brain from scalp and fat before the largest
#: component is taken, and the dilation radius that restores its size. The skull
#: between them is ~4-7 mm thick on FLAIR; 4 mm cuts the thin bridges the threshold
#: leaves (optic nerves, vessels) while keeping the brain in one piece.
OTSU_EROSION_MM = 4.0

#: Plausible volume (mL) of a brain mask from an adult human head; outside this range
#: the scan is refused as "not a head" (adult brains measure about 1000-1700 mL; the
#: wide margins accept partial fields of view, atrophy and children over ~2 years).
BRAIN_VOLUME_ML = (400.0, 3000.0)

#: Voxel size (mm) at which the Otsu mask's erosion and dilation are computed.
MORPHOLOGY_MM = 2.0

#: A head FLAIR covers at least this many mm along two of its axes (an adult brain is
#: ~140 x 170 x 120 mm); smaller fields of view are refused as "not a head".
MIN_HEAD_EXTENT_MM = 100.0

#: Measured (`python benchmarks/bench_preprocess.py brain`): on simulated 1 mm FLAIRs
#: (seeds 0-1, both time points) deepbet works on FLAIR although it was trained on T1:
#: Dice with the simulated brain mask 0.9853-0.9861, against 0.9842-0.9854 for ``otsu``,
#: at 7-13 s per scan on 2 CPU cores against 0.5-0.9 s. Hence ``otsu`` is the default;
#: on real scans with a thick bright scalp or neck fat, deepbet is the safer choice.
#: (The simulated heads have a simple skull/scalp shell, so these Dice values flatter
#: both methods.)
DEEPBET_NOTE = ("deepbet was trained on T1-weighted MRI; on simulated 1 mm FLAIR it reached Dice 0.985-0.986 "
                "(otsu 0.984-0.985)")

METHODS = ("otsu", "deepbet")


def check_scan(data: np.ndarray, affine: np.ndarray, *, name: str = "scan") -> None:
    """Refuse an empty (constant) image or one whose field of view cannot hold a head."""
    data = np.asarray(data)
    if data.size == 0 or float(data.max()) == float(data.min()):
        raise InputError(f"{name}: image is empty (all voxels {float(data.flat[0]) if data.size else 0:g}); "
                         "a FLAIR scan of the head is required")
    extent = np.asarray(data.shape) * np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    if np.sort(extent)[1] < MIN_HEAD_EXTENT_MM:
        raise InputError(f"{name}: field of view {' x '.join(f'{e:.0f}' for e in extent)} mm is too small "
                         f"for a head (>= {MIN_HEAD_EXTENT_MM:.0f} mm along two axes expected); "
                         "is this a head FLAIR?")


def check_brain_mask(mask: np.ndarray, affine: np.ndarray, *, name: str = "scan") -> None:
    """Refuse a brain mask whose volume is not that of a human brain."""
    volume_ml = float(np.count_nonzero(mask)) * abs(np.linalg.det(np.asarray(affine)[:3, :3])) / 1000.0
    lo, hi = BRAIN_VOLUME_ML
    if not lo <= volume_ml <= hi:
        raise InputError(f"{name}: brain mask measures {volume_ml:.0f} mL, outside the {lo:.0f}-{hi:.0f} mL of "
                         "a human brain; is this a head FLAIR? (or pass a brain mask with --baseline-mask/"
                         "--followup-mask)")


def otsu_brain_mask(data: np.ndarray, spacing_mm, *, erosion_mm: float = OTSU_EROSION_MM,
                    fill_slices: bool = True) -> np.ndarray:
    """Brain mask (uint8) of a head FLAIR by Otsu threshold and morphology (Cabezas et al.).

    The erosion, largest component and dilation run on a copy subsampled to voxels of at
    least :data:`MORPHOLOGY_MM` (the distance transforms dominate the cost at 1 mm); the
    result is intersected with the full-resolution threshold mask, so the brain's edge
    keeps the scan's resolution. Holes are filled in 3D and, with ``fill_slices``,
    slice by slice along each axis (ventricles open to the edge of a slab).
    """
    from skimage.filters import threshold_otsu

    data = np.asarray(data, dtype=np.float32)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    smooth = ndimage.gaussian_filter(data, 1.0 / spacing)  # 1 mm: the threshold should not follow the noise
    foreground = smooth > threshold_otsu(smooth)
    if not foreground.any():
        return np.zeros(data.shape, dtype=np.uint8)
    step = np.maximum(1, np.floor(MORPHOLOGY_MM / spacing)).astype(int)
    small = foreground[::step[0], ::step[1], ::step[2]]
    small_spacing = spacing * step
    core = ndimage.distance_transform_edt(small, sampling=small_spacing) > erosion_mm
    if not core.any():
        return np.zeros(data.shape, dtype=np.uint8)
    labels, _ = ndimage.label(core)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    grown = ndimage.distance_transform_edt(~largest, sampling=small_spacing) <= erosion_mm + small_spacing.max() / 2
    for axis in range(3):
        grown = np.repeat(grown, step[axis], axis=axis)
    mask = grown[: data.shape[0], : data.shape[1], : data.shape[2]] & foreground
    bounds = mask_bounds(mask)
    if bounds is None:
        return np.zeros(data.shape, dtype=np.uint8)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(*bounds))
    inner = ndimage.binary_closing(mask[box], structure=ndimage.generate_binary_structure(3, 1), iterations=1,
                                   border_value=0)
    inner = fill_holes(inner)
    if fill_slices:
        for axis in range(3):
            inner = fill_holes(inner, slice_axis=axis)
    out = np.zeros(data.shape, dtype=np.uint8)
    out[box] = inner
    return out


def fill_holes(mask: np.ndarray, *, slice_axis: int | None = None) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` in one labelling pass: the background voxels not
    face-connected to the array's border become foreground. With ``slice_axis``, every
    slice across that axis is filled on its own (the 2D fill of each slice, as a loop of
    ``binary_fill_holes`` over the slices gives, at a fraction of the cost)."""
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(3, 1)
    if slice_axis is not None:
        structure = structure.copy()
        index = [slice(None)] * 3
        for side in (0, 2):            # no connection between neighbouring slices
            index[slice_axis] = side
            structure[tuple(index)] = False
    labels, count = ndimage.label(~mask, structure=structure)
    if count == 0:
        return mask.copy()
    outside = np.zeros(count + 1, dtype=bool)
    for axis in range(3):
        if axis == slice_axis:
            continue                   # the first and last slices are not a border of a slice
        outside[np.take(labels, 0, axis=axis)] = True
        outside[np.take(labels, -1, axis=axis)] = True
    outside[0] = False                 # label 0 is the mask itself
    return ~outside[labels]


def deepbet_brain_mask(data: np.ndarray, affine: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Brain mask (uint8) from the deepbet network (CPU; weights from the installed package)."""
    import nibabel as nib
    import torch
    from deepbet import BrainExtraction

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    _, mask_image, _ = BrainExtraction(no_gpu=True).run(image, threshold=threshold)
    mask = np.asarray(mask_image.dataobj).reshape(np.asarray(data).shape)
    return (mask > 0).astype(np.uint8)


def brain_mask(data: np.ndarray, affine: np.ndarray, *, method: str = "otsu") -> np.ndarray:
    """Brain mask (uint8) of one scan by ``method`` (one of :data:`METHODS`)."""
    if method == "otsu":
        return otsu_brain_mask(data, np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    if method == "deepbet":
        return deepbet_brain_mask(data, affine)
    raise ValueError(f"brain extraction method must be one of {METHODS}")


def combine_masks(first: np.ndarray, second: np.ndarray, *, how: str = "union") -> np.ndarray:
    """Union (MSSEG-2 organisers' chain, paper 001) or intersection (Cabezas et al.) of two masks."""
    if how == "union":
        return (np.asarray(first, bool) | np.asarray(second, bool)).astype(np.uint8)
    if how == "intersection":
        return (np.asarray(first, bool) & np.asarray(second, bool)).astype(np.uint8)
    raise ValueError("how must be 'union' or 'intersection'")
