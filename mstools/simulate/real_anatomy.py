"""New lesions on real anatomy: a real FLAIR (or a real aligned pair) as background.

Two modes, both adding new lesions to the follow-up only:

* one real FLAIR: the baseline is the real scan; the follow-up is the same scan with new
  lesions added, then the usual nuisances (misalignment, gain / contrast, bias, noise) and,
  optionally, each visit's 2D acquisition. Lesions of the scan can be declared new (e.g. a
  real follow-up's new lesions): the baseline is then the scan with them filled in, and
  these real lesions join the ground truth;
* a real pair (two FLAIRs already aligned on one grid): the new lesions are added to the
  real follow-up and nothing else is changed (its nuisances are real).

Lesion shapes come from a *lesion library* built from real binary lesion masks (connected
components, 26-connectivity, within a volume range, kept as small boolean crops with their
spacing); each is resampled to the background's grid and randomly flipped and rotated by
multiples of 90 degrees. The intensity follows real lesions: a lesion multiplies the
background by 1 + c * profile(d), where d is the depth below the lesion's boundary, so the
intensity rises from the rim to the core as measured on real FLAIR, and the background's
own texture and noise carry through. Lesions are placed in white matter (from a tissue map
or, without one, the brain voxels between the 30th and 70th intensity percentile,
eroded), away from existing lesions and from each other.

No file I/O here: the command reads the files and passes arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from mstools.simulate import nuisance
from mstools.simulate.acquisition import partial_volume, sample_onto
from mstools.simulate.lesion_filling import (FILL_MARGIN_MM, FILL_SIGMA_MM, VISIBLE_MIN_CONTRAST,
                                             fill_lesions)
from mstools.simulate.case import (WM_UNITS, RawScan, SimulatedCase, SimulationConfig, _acquire_visit,
                                   carry_labels)

#: Brain-intensity percentiles that bound the white-matter estimate on FLAIR (CSF below,
#: GM and lesions above; WM is the bulk of the middle).
WM_PERCENTILES = (30.0, 70.0)
#: Erosion of the WM estimate (mm) and the margin kept from existing lesions and from
#: other new lesions (mm).
WM_EROSION_MM = 2.0
LESION_MARGIN_MM = 3.0
#: A placed lesion must lie this much inside the brain and inside the (uneroded) WM estimate.
MIN_INSIDE_BRAIN = 1.0
MIN_INSIDE_WM = 0.6

#: Intensity profile of real lesions, measured on the Ljubljana FLAIRs (patients 07, 19,
#: 26 of the open MS data, 1 mm MNI): lesion / normal-appearing-WM ratio 1.29-1.33 in the
#: outer 1 mm, 1.40-1.55 deeper. So the rim carries 0.64 of the core contrast and the full
#: contrast is reached 1.5 mm inside the boundary.
RIM_SHARE = 0.64
CORE_DEPTH_MM = 1.5
#: Core contrast (ratio - 1) drawn when no real lesion is there to measure it: the range of
#: the core ratios above.
DEFAULT_CORE_CONTRAST = (0.40, 0.55)
#: Range of ratios accepted from a measurement (outside: the lesion mask or FLAIR is odd).
MEASURED_CONTRAST_RANGE = (0.05, 2.0)


@dataclass(frozen=True)
class LesionShape:
    mask: np.ndarray            # bool crop
    spacing_mm: tuple[float, float, float]

    @property
    def volume_mm3(self) -> float:
        return float(self.mask.sum() * np.prod(self.spacing_mm))


@dataclass
class LesionLibrary:
    shapes: list[LesionShape]
    source: list[str] = field(default_factory=list)   # where the shapes come from (for truth.json)

    def __len__(self) -> int:
        return len(self.shapes)


def lesion_shapes(mask: np.ndarray, spacing_mm, *, volume_mm3: tuple[float, float]) -> list[LesionShape]:
    """The connected lesions (26-connectivity) of a binary mask within a volume range, as crops."""
    labels, count = ndimage.label(np.asarray(mask) > 0, structure=np.ones((3, 3, 3), dtype=bool))
    voxel = float(np.prod(spacing_mm))
    shapes = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = labels[box] == label
        if volume_mm3[0] <= crop.sum() * voxel <= volume_mm3[1]:
            shapes.append(LesionShape(mask=np.pad(crop, 1), spacing_mm=tuple(float(s) for s in spacing_mm)))
    return shapes


def build_lesion_library(masks, *, volume_mm3: tuple[float, float], names=()) -> LesionLibrary:
    """A library from (mask, spacing_mm) pairs. Raises ``ValueError`` when no lesion qualifies."""
    shapes = []
    for mask, spacing in masks:
        shapes.extend(lesion_shapes(mask, spacing, volume_mm3=volume_mm3))
    if not shapes:
        raise ValueError(f"no lesion of {volume_mm3[0]:g}-{volume_mm3[1]:g} mm3 in the lesion masks; "
                         "give masks with lesions or widen the volume range")
    return LesionLibrary(shapes=shapes, source=list(names))


def wm_estimate(flair: np.ndarray, brain: np.ndarray, spacing_mm) -> np.ndarray:
    """White matter from FLAIR intensity: brain voxels between the WM_PERCENTILES (not eroded)."""
    values = flair[brain]
    lo, hi = np.percentile(values, WM_PERCENTILES)
    return brain & (flair >= lo) & (flair <= hi)


def _ball(radius_mm: float, spacing_mm) -> np.ndarray:
    reach = np.maximum(np.floor(radius_mm / np.asarray(spacing_mm)), 0).astype(int)
    grid = np.indices(2 * reach + 1) - reach[:, None, None, None]
    return ((grid * np.asarray(spacing_mm)[:, None, None, None]) ** 2).sum(0) <= radius_mm ** 2 + 1e-9


def measure_contrasts(flair: np.ndarray, lesions: np.ndarray, wm: np.ndarray, spacing_mm) -> list[float]:
    """Core contrast (lesion / NAWM - 1) of each real lesion: the median ratio of its voxels
    deeper than 1 mm below its boundary (the whole lesion when it is thinner)."""
    nawm = wm & ~ndimage.binary_dilation(lesions, _ball(LESION_MARGIN_MM, spacing_mm))
    if not nawm.any():
        return []
    reference = float(np.median(flair[nawm]))
    if reference <= 0:
        return []
    depth = ndimage.distance_transform_edt(lesions, sampling=spacing_mm)
    labels, _ = ndimage.label(lesions, structure=np.ones((3, 3, 3), dtype=bool))
    contrasts = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == label
        core = inside & (depth[box] > 1.0)
        values = flair[box][core if core.sum() >= 3 else inside]
        ratio = float(np.median(values)) / reference - 1.0
        if MEASURED_CONTRAST_RANGE[0] <= ratio <= MEASURED_CONTRAST_RANGE[1]:
            contrasts.append(ratio)
    return contrasts


def _oriented(shape: LesionShape, spacing_mm, rng: np.random.Generator) -> np.ndarray:
    """A library shape on the target spacing (linear, partial-volume weight 0..1), randomly
    flipped and rotated by a multiple of 90 degrees."""
    weight = shape.mask.astype(np.float32)
    axes = [(0, 1), (0, 2), (1, 2)][rng.integers(3)]
    turns = int(rng.integers(4))
    # Rotate before resampling so that the spacing follows the rotated axes.
    weight = np.rot90(weight, turns, axes=axes)
    spacing = np.array(shape.spacing_mm, dtype=np.float64)
    if turns % 2:
        spacing[list(axes)] = spacing[list(axes[::-1])]
    for axis in range(3):
        if rng.uniform() < 0.5:
            weight = np.flip(weight, axis)
    zoom = spacing / np.asarray(spacing_mm, dtype=np.float64)
    if np.allclose(zoom, 1.0):
        return np.ascontiguousarray(weight)
    return np.clip(ndimage.zoom(np.ascontiguousarray(weight), zoom, order=1, grid_mode=True,
                                mode="grid-constant"), 0, 1)


@dataclass
class RealLesion:
    label: int
    corner: tuple[int, int, int]
    weight: np.ndarray          # partial-volume weight on the background grid, from corner
    contrast: float
    library_index: int


def place_lesions(flair: np.ndarray, brain: np.ndarray, spacing_mm, library: LesionLibrary, *, count: int,
                  contrasts: list[float], rng: np.random.Generator, wm: np.ndarray | None = None,
                  avoid: np.ndarray | None = None, first_label: int = 1) -> list[RealLesion]:
    """Draw ``count`` library lesions into white matter, away from ``avoid`` and each other.

    Raises ``ValueError`` when the brain has no room left for them.
    """
    if count == 0:
        return []
    spacing_mm = np.asarray(spacing_mm, dtype=np.float64)
    wm = wm_estimate(flair, brain, spacing_mm) if wm is None else wm
    centres_ok = ndimage.binary_erosion(wm, _ball(WM_EROSION_MM, spacing_mm))
    margin = _ball(LESION_MARGIN_MM, spacing_mm)
    blocked = np.zeros(flair.shape, dtype=bool) if avoid is None else ndimage.binary_dilation(avoid > 0, margin)
    pool = np.argwhere(centres_ok & ~blocked)
    if len(pool) == 0:
        raise ValueError("no white matter away from existing lesions to place new lesions in")
    placed: list[RealLesion] = []
    for n in range(count):
        for _attempt in range(300):
            index = int(rng.integers(len(library)))
            weight = _oriented(library.shapes[index], spacing_mm, rng)
            core = weight >= 0.5
            if not core.any():
                continue
            centre = pool[rng.integers(len(pool))]
            corner = centre - np.array(weight.shape) // 2
            if np.any(corner < 0) or np.any(corner + weight.shape > np.array(flair.shape)):
                continue
            box = tuple(slice(int(c), int(c + s)) for c, s in zip(corner, weight.shape))
            if blocked[box][core].any():
                continue
            if brain[box][core].mean() < MIN_INSIDE_BRAIN or wm[box][core].mean() < MIN_INSIDE_WM:
                continue
            contrast = (float(rng.choice(contrasts)) if contrasts else float(rng.uniform(*DEFAULT_CORE_CONTRAST)))
            placed.append(RealLesion(label=first_label + n, corner=tuple(int(c) for c in corner),
                                     weight=weight, contrast=contrast, library_index=index))
            grown = ndimage.binary_dilation(np.pad(core, margin.shape[0]), margin)
            _or_into(blocked, grown, corner - margin.shape[0])
            break
        else:
            raise ValueError(f"could place only {n} of {count} new lesions in this brain's white matter; "
                             "lower the count or use smaller lesions")
    return placed


def _or_into(target: np.ndarray, patch: np.ndarray, corner) -> None:
    lo = np.maximum(np.asarray(corner), 0)
    hi = np.minimum(np.asarray(corner) + patch.shape, target.shape)
    if np.any(hi <= lo):
        return
    src = tuple(slice(int(a - c), int(b - c)) for a, b, c in zip(lo, hi, corner))
    target[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))] |= patch[src]


def paint(image: np.ndarray, lesions: list[RealLesion], spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """The image with the lesions drawn in (a new array) and their label map (weight >= 0.5)."""
    out = np.array(image, dtype=np.float32, copy=True)
    ids = np.zeros(image.shape, dtype=np.int32)
    for lesion in lesions:
        box = tuple(slice(c, c + s) for c, s in zip(lesion.corner, lesion.weight.shape))
        core = lesion.weight >= 0.5
        depth = ndimage.distance_transform_edt(np.pad(core, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
        # Depth below the boundary: half a voxel at the outermost lesion voxels.
        profile = RIM_SHARE + (1 - RIM_SHARE) * np.clip(depth / CORE_DEPTH_MM, 0, 1)
        profile = np.where(core, profile, RIM_SHARE)
        out[box] *= (1.0 + lesion.weight * lesion.contrast * profile).astype(np.float32)
        ids[box][core] = lesion.label
    return out, ids


def simulate_on_real(baseline: np.ndarray, affine: np.ndarray, brain_mask: np.ndarray, library: LesionLibrary,
                     config: SimulationConfig, *, followup: np.ndarray | None = None,
                     lesions: np.ndarray | None = None, wm: np.ndarray | None = None,
                     new_lesions: np.ndarray | None = None) -> SimulatedCase:
    """A case on real anatomy (see the module docstring). Arrays are not modified.

    ``lesions`` (optional) is the background's own lesion mask: new lesions avoid it, and
    their contrast is drawn from its lesions' measured contrasts. ``new_lesions``
    (optional, single-FLAIR mode only) marks lesions of the background that are new: they
    are filled in at baseline (:mod:`mstools.simulate.lesion_filling`) and join the ground
    truth with the ``n_new`` drawn ones.
    """
    rng = np.random.default_rng(config.seed)
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    brain = np.asarray(brain_mask) > 0
    if not brain.any():
        raise ValueError("the brain mask is empty")
    existing = np.zeros(brain.shape, dtype=bool) if lesions is None else np.asarray(lesions) > 0
    scan = np.asarray(baseline, dtype=np.float32)
    real_new = np.zeros(brain.shape, dtype=bool)
    real_new_contrasts: list[float] = []
    image = scan
    if new_lesions is not None:
        if followup is not None:
            raise ValueError("new lesions of the background are for a single FLAIR, not a pair")
        marked = np.asarray(new_lesions) > 0
        existing = existing & ~marked
        image, real_new, real_new_contrasts = fill_lesions(scan, marked, brain, spacing, rng,
                                                           other_lesions=existing)
    wm = wm_estimate(image, brain, spacing) if wm is None else np.asarray(wm) > 0
    measured = measure_contrasts(image, existing, wm, spacing) if existing.any() else []
    placed = place_lesions(image, brain, spacing, library, count=config.n_new, contrasts=measured, rng=rng,
                           wm=wm, avoid=existing | real_new, first_label=1)
    ids_t1, n_old = ndimage.label(existing, structure=np.ones((3, 3, 3), dtype=bool))
    real_ids, n_real = ndimage.label(real_new, structure=np.ones((3, 3, 3), dtype=bool))
    for lesion in placed:
        lesion.label += n_old + n_real
    source = scan if followup is None else np.asarray(followup, dtype=np.float32)
    painted, new_ids = paint(source, placed, spacing)
    ids_t2 = np.where(new_ids > 0, new_ids, np.where(real_ids > 0, real_ids + n_old, ids_t1)).astype(np.int32)
    wm_level = float(np.median(image[wm])) if wm.any() else float(np.median(image[brain]))
    extra: dict = {"mode": "real_pair" if followup is not None else "real_flair"}
    if new_lesions is not None:
        extra.update(mode="real_flair_filled", background_new_lesions=n_real,
                     background_new_lesion_contrasts=real_new_contrasts,
                     lesion_filling={"sigma_mm": FILL_SIGMA_MM, "margin_mm": FILL_MARGIN_MM,
                                     "visible_min_contrast": VISIBLE_MIN_CONTRAST})
    if followup is None:
        # The usual between-scan nuisances, on the follow-up only (the baseline is the scan).
        rotation, translation = nuisance.random_rigid(config.misalignment_mm, config.misalignment_deg, rng)
        if config.misalignment_mm > 0 or config.misalignment_deg > 0:
            coords = nuisance.warp_coordinates(image.shape, spacing, rotation, translation, None)
            painted = nuisance.resample(painted, coords, order=1)
            ids_t2 = nuisance.resample(ids_t2, coords, order=0)
            del coords
        gain = rng.uniform(1 - config.gain_change, 1 + config.gain_change)
        gamma = rng.uniform(1 - config.contrast_change, 1 + config.contrast_change)
        painted = nuisance.gain_and_contrast(painted, gain, gamma, wm_level)
        extra.update(followup_misalignment={"rotation_matrix": rotation.round(6).tolist(),
                                            "translation_mm": translation.round(4).tolist()},
                     followup_gain=round(float(gain), 4), followup_gamma=round(float(gamma), 4))
    new_labels = [n_old + n for n in range(1, n_real + 1)] + [lesion.label for lesion in placed]
    return _finish(config, image, painted, followup is None, affine, brain, wm, ids_t1.astype(np.int32),
                   ids_t2, new_labels, placed, library, wm_level, measured, extra, rng)


def _finish(config, baseline, followup, add_noise, affine, brain, wm, ids_t1, ids_t2, new_labels, placed,
            library, wm_level, measured, extra, rng) -> SimulatedCase:
    """Acquisition (optional), bias and added noise, the common grid and the truth record."""
    tissues = np.zeros(brain.shape, dtype=np.uint8)
    values = baseline[brain]
    lo, hi = np.percentile(values, WM_PERCENTILES)
    tissues[brain & (baseline < lo)] = 1
    tissues[brain & (baseline > hi)] = 2
    tissues[wm] = 3
    sigma_scale = wm_level / WM_UNITS  # _acquire_visit's noise is relative to WM_UNITS of WM
    if add_noise or config.acquisitions:
        snr_t2 = config.snr_followup if add_noise else 0.0
        # A re-acquired baseline gets its own noise: the slice profile averages the scan's
        # noise away, and a scan acquired on that protocol would have noise of its own.
        snr_t1 = config.snr_baseline if config.acquisition_baseline is not None else 0.0
        raw_t1 = _real_visit(baseline, affine, config.acquisition_baseline, snr_t1, 0.0, sigma_scale, rng)
        raw_t2 = _real_visit(followup, affine, config.acquisition_followup, snr_t2,
                             config.bias_strength if add_noise else 0.0, sigma_scale, rng)
    else:
        raw_t1, raw_t2 = RawScan(baseline, affine), RawScan(followup.astype(np.float32), affine)
    shape, grid = raw_t2.data.shape, raw_t2.affine
    def on_common_grid(scan: RawScan) -> np.ndarray:
        if scan.data.shape == shape and np.allclose(scan.affine, grid):
            return scan.data
        return sample_onto(scan.data, scan.affine, shape, grid, order=1)

    out_t1 = on_common_grid(raw_t1)
    if shape == baseline.shape and np.allclose(grid, affine):
        out_ids_t1, out_ids_t2, out_brain, out_tissues = ids_t1, ids_t2, brain, tissues
    else:
        out_ids_t1 = carry_labels(ids_t1, affine, shape, grid)
        out_ids_t2 = carry_labels(ids_t2, affine, shape, grid)
        out_brain = partial_volume(brain, affine, shape, grid) > 0.5
        out_tissues = sample_onto(tissues, affine, shape, grid, order=0).astype(np.uint8)
    ground_truth = np.isin(out_ids_t2, new_labels).astype(np.uint8)
    voxel_mm3 = float(abs(np.linalg.det(grid[:3, :3])))
    fine_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    counts = np.bincount(out_ids_t2.ravel(), minlength=max(new_labels, default=0) + 1)
    fine_counts = np.bincount(ids_t2.ravel(), minlength=max(new_labels, default=0) + 1)
    inverse = np.linalg.inv(grid)
    records = []
    for lesion in placed:
        centre_vox = np.array(lesion.corner) + (np.array(lesion.weight.shape) - 1) / 2.0
        centre_mm = affine[:3, :3] @ centre_vox + affine[:3, 3]
        records.append({
            "label": lesion.label, "kind": "new", "location": "white_matter",
            "centre_mm": [round(float(v), 3) for v in centre_mm],
            "centre_voxel": [round(float(v), 2) for v in inverse[:3, :3] @ centre_mm + inverse[:3, 3]],
            "volume_mm3_time01": 0.0, "volume_mm3_time02": round(float(counts[lesion.label] * voxel_mm3), 3),
            "volume_mm3_time02_background_grid": round(float(fine_counts[lesion.label] * fine_mm3), 3),
            "contrast_time02": round(lesion.contrast, 4), "library_shape": lesion.library_index,
            "library_volume_mm3": round(library.shapes[lesion.library_index].volume_mm3, 3)})
    config_record = asdict(config)
    truth = {
        "generator": "mstools.simulate.real_anatomy", "config": config_record, **extra,
        "voxel_volume_mm3": voxel_mm3, "background_voxel_volume_mm3": fine_mm3,
        "existing_lesions": int(ids_t1.max()), "measured_lesion_contrasts": [round(c, 4) for c in measured],
        "lesion_library": {"shapes": len(library), "sources": library.source},
        "intensity_profile": {"rim_share": RIM_SHARE, "core_depth_mm": CORE_DEPTH_MM},
        "n_new": len(new_labels),
        "new_lesion_volume_mm3": round(float(ground_truth.sum() * voxel_mm3), 3),
        "new_lesion_volume_mm3_background_grid": round(float(np.isin(ids_t2, new_labels).sum() * fine_mm3), 3),
        "lesions": records,
    }
    raw = config.acquisitions
    return SimulatedCase(
        baseline=np.asarray(out_t1, dtype=np.float32), followup=np.asarray(raw_t2.data, dtype=np.float32),
        lesions_baseline=out_ids_t1, lesions_followup=out_ids_t2, ground_truth=ground_truth,
        brain_mask=np.asarray(out_brain, dtype=np.uint8), tissues=out_tissues, affine=grid, truth=truth,
        raw_baseline=raw_t1 if raw else None, raw_followup=raw_t2 if raw else None)


def _real_visit(image, affine, acquisition, snr, bias, sigma_scale, rng) -> RawScan:
    """A real visit acquired (optionally) with bias and noise scaled to its own WM level."""
    if acquisition is None and snr <= 0 and bias <= 0:
        return RawScan(data=np.asarray(image, dtype=np.float32), affine=np.asarray(affine, dtype=np.float64))
    scaled = np.asarray(image, dtype=np.float32) / sigma_scale
    raw = _acquire_visit(scaled, affine, acquisition, snr=snr, bias=bias, rng=rng)
    return RawScan(data=(raw.data * sigma_scale).astype(np.float32), affine=raw.affine)
