"""The whole preprocessing chain for one pair: pure steps on arrays, in memory.

Order (each step can be switched off in :class:`PreprocessOptions`):

1. checks: each scan non-empty, with a head-sized field of view;
2. brain mask of each time point in its own space (``otsu``, ``deepbet`` or a given
   mask), checked to have a human brain's volume;
3. N4 bias-field correction of each time point in its own space, inside its mask;
4. rigid registration of the follow-up onto the baseline (bias-corrected images,
   masked metric), then a common grid: the halfway space (default, as MSSEG-2: half
   the transform applied to each scan so that both carry one interpolation), or the
   baseline's or the follow-up's grid;
5. resampling: intensities with cubic B-splines, masks linearly then >= 0.5; a scan
   whose transform is the identity onto its own grid is copied, not interpolated. The
   brain masks are combined (union by default) and limited to where both scans have
   data;
6. intensity harmonisation inside the combined mask;
7. optional T1-/T2-weighted scans of either visit (any grid): each registered rigidly to its
   own visit's FLAIR (the registration of step 4, mutual information inside the FLAIR's brain
   mask, started from the scanner's coordinates: one session) and resampled onto the common
   grid through that FLAIR's transform; their intensities are left as they are (no N4, no
   harmonisation), as ``import-open-ms`` writes a case folder's T1/T2.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from mstools.errors import InputError
from mstools.parallel import side_by_side
from mstools.preprocess import brain_extraction as bet
from mstools.preprocess import harmonise as harm
from mstools.preprocess.bias_field import SHRINK_FACTOR, correct_bias
from mstools.preprocess.rigid import (IDENTITY_TOLERANCE_VOXELS, Grid, common_grid, crop_to_boxes, grid_of,
                                      half_transform,
                                      mask_box_corners, max_displacement_mm, regrid, register_rigid,
                                      resample, resample_mask, rotation_angle_deg)

SPACES = ("halfway", "baseline", "followup")
REGISTRATION = ("auto", "off")


@dataclass(frozen=True)
class PreprocessOptions:
    """Every switch of the chain; the defaults are the published ones (see the modules)."""

    brain_extraction: str = "otsu"          # otsu | deepbet | none (given masks win)
    combine_masks: str = "union"            # union (MSSEG-2 organisers) | intersection (Cabezas)
    bias_correction: bool = True
    n4_shrink: int = SHRINK_FACTOR
    registration: str = "auto"              # auto: register | off: the pair must share a grid
    space: str = "halfway"                  # halfway | baseline | followup
    spacing_mm: tuple[float, float, float] | None = None
    harmonisation: str = harm.DEFAULT_METHOD
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.brain_extraction not in (*bet.METHODS, "none"):
            raise ValueError(f"brain_extraction must be one of {(*bet.METHODS, 'none')}")
        if self.combine_masks not in ("union", "intersection"):
            raise ValueError("combine_masks must be 'union' or 'intersection'")
        if self.registration not in REGISTRATION:
            raise ValueError(f"registration must be one of {REGISTRATION}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}")
        if self.harmonisation not in harm.METHODS:
            raise ValueError(f"harmonisation must be one of {harm.METHODS}")
        if self.spacing_mm is not None and (len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0):
            raise ValueError("spacing_mm must be three positive voxel sizes")
        if not 0 < self.mask_threshold <= 1:
            raise ValueError("mask_threshold must lie in (0, 1]")


@dataclass
class PreprocessResult:
    baseline: np.ndarray            # float32, on grid
    followup: np.ndarray            # float32, on grid
    brain_mask: np.ndarray          # uint8, on grid
    grid: Grid
    to_baseline: np.ndarray         # 4x4 RAS: grid point -> baseline scan point
    to_followup: np.ndarray         # 4x4 RAS: grid point -> follow-up scan point
    registration: np.ndarray        # 4x4 RAS: baseline point -> follow-up point
    carried: dict[str, np.ndarray] = field(default_factory=dict)
    #: T1/T2 on the common grid: {(sequence, visit 0 or 1): float32 array}
    sequences: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _same_grid(a_shape, a_affine, b_shape, b_affine, tolerance_mm: float = 1e-3) -> bool:
    return tuple(a_shape) == tuple(b_shape) and bool(np.max(np.abs(np.asarray(a_affine) - np.asarray(b_affine)))
                                                     <= tolerance_mm)


#: A scan is 2D multi-slice when its thickest voxel side is at least this many times its
#: finest (clinical 2D FLAIR: 3-5 mm slices, 0.5-1 mm in-plane).
MULTISLICE_RATIO = 2.0
#: Common grid (isotropic voxel edge, mm) of a pair with a 2D multi-slice scan. Measured
#: with benchmarks/preprocess_accuracy.py (2026-12-07, today's models, default chain scored
#: against the carried ground truth): on 9 simulated clinical pairs of the Ljubljana
#: database's protocols, lesion F1 0.595 / Dice 0.565 at 1 mm against 0.440 / 0.521 on the
#: follow-up's own voxel size (the previous default; 0.72 x 0.72 x 3 mm or 0.9 x 0.9 x 3.3 mm),
#: F1 higher on 8 of 9 pairs; development patient 01 F1 0.190 against 0.100. Isotropic
#: voxels at the finest edge (0.57-0.72 mm, the first default) gave F1 0.620 / Dice 0.580 on
#: the same clinical pairs but 5x the time (patient 01: 137 s against 26 s; issue "Speed on
#: real grids" asks for <= 45 s).
MULTISLICE_GRID_MM = 1.0

#: A new middle space covers the two brain masks' bounding boxes plus this margin (mm),
#: not the whole fields of view: every later stage then handles fewer voxels (a 1 mm
#: head: 185 x 227 x 188 voxels with the whole view). 10 mm is the largest neighbourhood
#: any detector looks at (refine's brain-edge distance cap and 7 mm context boxes,
#: filter's 2 mm shell). None keeps the whole fields of view. Pairs found already
#: aligned keep their own grid.
BRAIN_MARGIN_MM: float | None = 10.0


def _is_multislice(grid: Grid) -> bool:
    spacing = np.asarray(grid.spacing_mm)
    return bool(spacing.max() >= MULTISLICE_RATIO * spacing.min())


def _default_spacing(baseline: Grid, followup: Grid) -> tuple[float, float, float]:
    """The common grid's voxel size, in the baseline's axis order.

    * Either scan 2D multi-slice: isotropic ``MULTISLICE_GRID_MM`` (measured, see there).
    * Both scans with the same voxel size (in any axis order): that size.
    * Otherwise isotropic voxels of the finest edge of either scan (no detail is lost).
    """
    if _is_multislice(baseline) or _is_multislice(followup):
        return (MULTISLICE_GRID_MM,) * 3  # type: ignore[return-value]
    b, f = np.asarray(baseline.spacing_mm), np.asarray(followup.spacing_mm)
    if np.allclose(np.sort(b), np.sort(f), atol=1e-3):
        return tuple(float(v) for v in b)  # type: ignore[return-value]
    finest = float(min(b.min(), f.min()))
    return (finest, finest, finest)


def _direction(affine: np.ndarray) -> np.ndarray:
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    return linear / np.linalg.norm(linear, axis=0)


def _into(data, affine, grid: Grid, transform: np.ndarray, *, kind: str, threshold: float = 0.5) -> np.ndarray:
    """One scan-space array onto ``grid``: copied when nothing moves, else interpolated."""
    if np.allclose(transform, np.eye(4), atol=1e-9) and _same_grid(np.shape(data), affine, grid.shape, grid.affine):
        return np.array(data, dtype=np.float32 if kind == "image" else np.uint8, copy=True)
    if kind == "image":
        return resample(data, affine, grid, transform, interpolation="smooth")
    return resample_mask(data, affine, grid, transform, threshold=threshold)


def _covers(source: Grid, grid: Grid, to_source: np.ndarray) -> bool:
    """True when every voxel centre of ``grid`` falls inside ``source``'s voxel centres
    (``to_source`` maps grid points to source points): the grid's corners suffice, a
    box being convex. Then the scan covers the whole grid and no coverage map is needed."""
    from nibabel.affines import apply_affine

    last = np.asarray(grid.shape) - 1
    corners = np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])], float)
    index = apply_affine(np.linalg.inv(source.affine) @ to_source @ grid.affine, corners)
    return bool(np.all(index >= -1e-6) and np.all(index <= np.asarray(source.shape) - 1 + 1e-6))


def _into_common(points: np.ndarray, to_scan: np.ndarray) -> np.ndarray:
    """Scan-space world points moved into the common space (``to_scan`` maps common -> scan)."""
    from nibabel.affines import apply_affine

    return apply_affine(np.linalg.inv(to_scan), points)


def sequence_onto_grid(data: np.ndarray, affine: np.ndarray, flair: np.ndarray, flair_affine: np.ndarray,
                       flair_mask: np.ndarray, grid: Grid, to_flair: np.ndarray) -> tuple[np.ndarray, dict]:
    """A T1/T2 scan of one visit on the common grid: rigidly registered to that visit's FLAIR
    (``flair`` bias-corrected, ``flair_mask`` its brain; one session, so started from the scanner's
    coordinates), then resampled through ``to_flair`` (common grid -> FLAIR points) with cubic
    B-splines. Returns the float32 array and what the registration moved."""
    transform = register_rigid(flair, flair_affine, np.maximum(np.asarray(data, dtype=np.float32), 0.0), affine,
                               baseline_mask=flair_mask, initialise="identity")
    moved = resample(np.asarray(data, dtype=np.float32), affine, grid, transform @ to_flair, interpolation="smooth")
    report = {"rotation_deg": round(rotation_angle_deg(transform), 4),
              "max_brain_displacement_mm": round(max_displacement_mm(transform, mask_box_corners(flair_mask,
                                                                                                 flair_affine)), 4),
              "flair_to_sequence_ras": transform.round(6).tolist()}
    return moved.astype(np.float32), report


def preprocess_pair(baseline: np.ndarray, baseline_affine: np.ndarray, followup: np.ndarray,
                    followup_affine: np.ndarray, *, options: PreprocessOptions = PreprocessOptions(),
                    baseline_mask: np.ndarray | None = None, followup_mask: np.ndarray | None = None,
                    carry: dict[str, tuple[np.ndarray, str]] | None = None,
                    sequences: dict | None = None,
                    names: tuple[str, str] = ("baseline", "follow-up"),
                    progress: Callable[[str], None] | None = None) -> PreprocessResult:
    """Bring two FLAIR scans of one patient onto one grid with comparable intensities.

    ``carry`` maps a name to (binary mask, "baseline" | "followup"): masks on that
    scan's grid taken into the common space alongside (e.g. lesion masks).
    ``sequences`` maps (``"t1"``/``"t2"``, visit 0 or 1) to (array, affine): a T1/T2 scan of that
    visit on its own grid, registered to the visit's FLAIR and brought onto the common grid
    (:func:`sequence_onto_grid`; ``result.sequences``).
    Bad input raises :class:`~mstools.errors.InputError`. ``progress`` receives one
    line per step (the CLI logs them on stderr).
    """
    say = progress or (lambda message: None)
    seconds: dict[str, float] = {}      # wall clock per step
    cpu_seconds: dict[str, float] = {}  # CPU time of this process (all threads) per step
    report: dict = {"options": asdict(options)}
    b_grid, f_grid = grid_of(np.shape(baseline), baseline_affine), grid_of(np.shape(followup), followup_affine)
    bet.check_scan(baseline, baseline_affine, name=names[0])
    bet.check_scan(followup, followup_affine, name=names[1])
    for mask, grid, name in ((baseline_mask, b_grid, names[0]), (followup_mask, f_grid, names[1])):
        if mask is not None and tuple(np.shape(mask)) != grid.shape:
            raise InputError(f"the brain mask of the {name} has shape {np.shape(mask)}, not the scan's "
                             f"{grid.shape}; give a mask on the scan's own grid")
    for name, (mask, which) in (carry or {}).items():
        grid = b_grid if which == "baseline" else f_grid
        if tuple(np.shape(mask)) != grid.shape:
            raise InputError(f"{name} has shape {np.shape(mask)}, not the {which} scan's {grid.shape}; "
                             "give a mask on the scan's own grid")

    same = _same_grid(b_grid.shape, b_grid.affine, f_grid.shape, f_grid.affine)
    if options.registration == "off" and not same:
        raise InputError(f"the {names[0]} and {names[1]} are not on one grid, so registration cannot be "
                         "switched off; drop --no-registration")

    # 2. brain masks
    say("brain extraction")
    start, cpu = time.perf_counter(), time.process_time()
    def extracted(data, affine, given):
        if given is not None:
            return (np.asarray(given) > 0).astype(np.uint8), "given"
        if options.brain_extraction == "none":
            return np.ones(np.shape(data), dtype=np.uint8), "none"
        return bet.brain_mask(data, affine, method=options.brain_extraction), options.brain_extraction

    pairs = ((baseline, baseline_affine, baseline_mask), (followup, followup_affine, followup_mask))
    # Otsu masks (NumPy/SciPy, which release the GIL) of the two scans side by side; deepbet's
    # network already takes both cores
    extract_both = side_by_side if options.brain_extraction == "otsu" else (lambda job, args: [job(*a) for a in args])
    masks = []
    for (mask, source), (data, affine, _), name, key in zip(extract_both(extracted, list(pairs)), pairs, names,
                                                           ("baseline", "followup")):
        if source != "none":
            bet.check_brain_mask(mask, affine, name=name)
        masks.append(mask)
        report.setdefault("brain_masks", {})[key] = {
            "method": source, "volume_ml": round(float(mask.sum()) * float(abs(np.linalg.det(affine[:3, :3]))) / 1000, 1)}
    seconds["brain_extraction"] = time.perf_counter() - start
    cpu_seconds["brain_extraction"] = time.process_time() - cpu

    # 3. bias field
    say("N4 bias-field correction")
    start, cpu = time.perf_counter(), time.process_time()

    def bias_corrected(data, affine, mask):
        data = np.maximum(np.asarray(data, dtype=np.float32), 0.0)
        if options.bias_correction:
            data, _ = correct_bias(data, affine, mask=mask, shrink_factor=options.n4_shrink)
        return data

    # the two scans side by side: their NumPy parts overlap, their N4 fits take turns
    # (SimpleITK calls hold mstools.sitk_bridge.ITK_LOCK; each filter uses ITK's own threads)
    corrected = side_by_side(bias_corrected, [(baseline, baseline_affine, masks[0]), (followup, followup_affine, masks[1])])
    seconds["bias_correction"] = time.perf_counter() - start
    cpu_seconds["bias_correction"] = time.process_time() - cpu

    # 4. registration and the common grid
    say("rigid registration")
    start, cpu = time.perf_counter(), time.process_time()
    if options.registration == "off":
        transform = np.eye(4)
    else:
        try:
            transform = register_rigid(corrected[0], baseline_affine, corrected[1], followup_affine,
                                       baseline_mask=masks[0], followup_mask=masks[1])
        except RuntimeError as exc:  # ITK: e.g. no overlap between the two scans
            reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
            raise InputError(f"rigid registration of the {names[1]} onto the {names[0]} failed ({reason}); "
                             "are both scans of the same head? Check their orientation in a viewer") from exc
    corners = mask_box_corners(masks[0], baseline_affine)
    moved_mm = max_displacement_mm(transform, corners)
    finest = min(min(b_grid.spacing_mm), min(f_grid.spacing_mm))
    already_aligned = moved_mm <= IDENTITY_TOLERANCE_VOXELS * finest
    report["registration"] = {
        "mode": options.registration, "same_grid": same,
        "rotation_deg": round(rotation_angle_deg(transform), 4),
        "max_brain_displacement_mm": round(moved_mm, 4),
        "already_aligned": bool(already_aligned),
        "baseline_to_followup_ras": transform.round(6).tolist()}
    if already_aligned:
        transform = np.eye(4)
    seconds["registration"] = time.perf_counter() - start
    cpu_seconds["registration"] = time.process_time() - cpu

    start, cpu = time.perf_counter(), time.process_time()
    say("resampling into the common space")
    spacing = options.spacing_mm
    if options.space == "halfway":
        half = half_transform(transform)
        to_baseline, to_followup = np.linalg.inv(half), half
        spacing = spacing or _default_spacing(b_grid, f_grid)
        grid = common_grid([b_grid, f_grid], [to_baseline, to_followup],
                           direction_ras=half[:3, :3] @ _direction(baseline_affine), spacing_mm=spacing)
        if not already_aligned and BRAIN_MARGIN_MM is not None:
            # the middle space is new anyway: keep only the brains and a margin
            boxes = [_into_common(mask_box_corners(mask, affine), to_scan)
                     for mask, affine, to_scan in ((masks[0], baseline_affine, to_baseline),
                                                   (masks[1], followup_affine, to_followup))]
            grid = crop_to_boxes(grid, boxes, BRAIN_MARGIN_MM)
    else:
        reference = b_grid if options.space == "baseline" else f_grid
        to_baseline = np.eye(4) if options.space == "baseline" else np.linalg.inv(transform)
        to_followup = transform if options.space == "baseline" else np.eye(4)
        grid = regrid(reference, spacing) if spacing is not None else reference
    report["grid"] = {"shape": list(grid.shape), "spacing_mm": [round(s, 4) for s in grid.spacing_mm],
                      "affine": grid.affine.round(6).tolist(), "space": options.space}

    images = side_by_side(lambda data, affine, transform: _into(data, affine, grid, transform, kind="image"),
                   [(corrected[0], baseline_affine, to_baseline), (corrected[1], followup_affine, to_followup)])
    moved_masks = side_by_side(lambda mask, affine, transform: _into(mask, affine, grid, transform, kind="mask",
                                                              threshold=options.mask_threshold),
                        [(masks[0], baseline_affine, to_baseline), (masks[1], followup_affine, to_followup)])
    brain = bet.combine_masks(moved_masks[0], moved_masks[1], how=options.combine_masks)
    # where each scan has data (its field of view; nearest neighbour on a uint8 image is cheap)
    for g, t in ((b_grid, to_baseline), (f_grid, to_followup)):
        if not _covers(g, grid, t):
            brain &= resample(np.ones(g.shape, np.uint8), g.affine, grid, t, interpolation="nearest")
    if not brain.any():
        raise InputError(f"the {names[0]} and {names[1]} brains do not overlap after registration; "
                         "are both scans of the same head?")
    carried = {}
    for name, (mask, which) in (carry or {}).items():
        source = b_grid if which == "baseline" else f_grid
        carried[name] = _into(np.asarray(mask) > 0, source.affine, grid,
                              to_baseline if which == "baseline" else to_followup, kind="mask",
                              threshold=options.mask_threshold)
    seconds["resampling"] = time.perf_counter() - start
    cpu_seconds["resampling"] = time.process_time() - cpu

    # 6. harmonisation
    say("intensity harmonisation")
    start, cpu = time.perf_counter(), time.process_time()
    base_out, follow_out, params = harm.harmonise(images[0], images[1], brain, method=options.harmonisation)
    report["harmonisation"] = params
    report["brain_mask_volume_ml"] = round(float(brain.sum()) * float(abs(np.linalg.det(grid.affine[:3, :3]))) / 1000, 1)
    seconds["harmonisation"] = time.perf_counter() - start
    cpu_seconds["harmonisation"] = time.process_time() - cpu
    # 7. T1/T2 of either visit: onto their own FLAIR, then the common grid
    moved_sequences = {}
    if sequences:
        say("registering T1/T2 to their FLAIRs")
        start, cpu = time.perf_counter(), time.process_time()
        flairs = ((corrected[0], baseline_affine, masks[0], to_baseline),
                  (corrected[1], followup_affine, masks[1], to_followup))
        for (sequence, visit), (data, affine) in sorted(sequences.items()):
            name = f"{sequence.upper()} scan of time point {visit + 1}"
            bet.check_scan(data, affine, name=name)
            flair, flair_affine, flair_mask, to_flair = flairs[visit]
            try:
                moved, about = sequence_onto_grid(data, affine, flair, flair_affine, flair_mask, grid, to_flair)
            except RuntimeError as exc:  # ITK: e.g. no overlap with the FLAIR
                reason = str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__
                raise InputError(f"rigid registration of the {name} onto its FLAIR failed ({reason}); is it a scan "
                                 "of the same head and session?") from exc
            moved_sequences[(sequence, visit)] = moved
            report.setdefault("sequences", {})[f"{sequence}_time0{visit + 1}"] = about
        seconds["sequences"] = time.perf_counter() - start
        cpu_seconds["sequences"] = time.process_time() - cpu
    report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    report["cpu_seconds"] = {k: round(v, 3) for k, v in cpu_seconds.items()}
    return PreprocessResult(baseline=base_out, followup=follow_out, brain_mask=brain, grid=grid,
                            to_baseline=to_baseline, to_followup=to_followup, registration=transform,
                            carried=carried, sequences=moved_sequences, report=report, seconds=seconds)
