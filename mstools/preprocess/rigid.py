"""Rigid registration of two time points and resampling into a common (halfway) space.

Conventions. A *transform* here is a 4x4 matrix acting on RAS world points in mm. As in
ITK, the transform used to resample a scan into a grid maps the grid's (output) points
to the scan's (input) points. :func:`register_rigid` returns ``T`` mapping a baseline
world point to the follow-up world point showing the same anatomy.

Halfway ("middle") space, as MSSEG-2 prepared its pairs (paper 001: both FLAIRs rigidly
registered to a middle point, so that both carry one interpolation): ``H`` with
``H @ H = T`` (half the rotation angle about the same axis, and the matching
translation). A middle-space point ``y`` shows the baseline at ``H^-1 y`` and the
follow-up at ``H y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstools.sitk_bridge import ITK_LOCK, affine_transform, affine_to_geometry, geometry_to_affine, to_sitk

#: Coarse-to-fine pyramid: the voxel size (mm) targeted at each level; the shrink factor
#: of each level is this size over the image's finest voxel edge (at least 1). A last
#: level at full resolution is added only when the shrunk voxels would exceed 2 mm along
#: some axis (ITK shrinks every axis alike: 0.72 x 0.72 x 3 mm shrunk by 3 is 9 mm thick).
#: So a 1 mm scan is registered at 4 and 2 mm: on three simulated 1 mm pairs misaligned
#: by 4 mm / 4 deg that was as accurate as adding the 1 mm level (rms error <= 0.016 vs
#: 0.020 mm, largest 0.026 vs 0.036 mm) in 4.0 instead of 5.5 s (2026-12-02, loaded machine).
PYRAMID_MM = (4.0, 2.0)

#: Gaussian smoothing (mm) at each pyramid level, as ITK's examples pair with 4/2 shrinking.
SMOOTHING_MM = (2.0, 1.0)

#: Mattes mutual information: bins, and voxels sampled at random (fixed seed, so
#: repeatable) inside the baseline mask at each pyramid level. MI tolerates the
#: follow-up's gain and contrast change (simulator: +-12 % gain, +-6 % gamma).
#: 50 000 samples and at most 100 iterations per level, on scans cropped to the brain
#: (CROP_MARGIN_MM) with point-wise gradients (GRADIENT_IMAGES): on three simulated 1 mm
#: pairs misaligned by 4 mm / 4 deg, rms error <= 0.020 mm (largest 0.036 mm) in 4.7 s,
#: against <= 0.024 mm in 12.5 s with 100 000 samples on the uncropped scans
#: (2 cores, loaded machine; /tmp experiment of 2026-12-02, see bench_preprocess.py registration).
MI_BINS = 50
SAMPLES_PER_LEVEL = 50_000
ITERATIONS = 100

#: The registration sees each scan cropped to its brain mask's bounding box plus this
#: margin (mm): more than the coarsest level's smoothing (2 mm) reaches. None: no crop.
CROP_MARGIN_MM: float | None = 10.0

#: ITK's Mattes metric by default filters whole gradient images at every pyramid level;
#: off, it takes the gradient at the sampled points (central differences).
GRADIENT_IMAGES = False

#: A registration whose transform moves no corner of the brain's bounding box by more
#: than this share of the finest voxel edge counts as identity: the pair is already in
#: a common space and is not resampled. On simulated pairs without misalignment (after
#: N4) the estimate moved the box corners by at most 0.07 voxel: 1 mm <= 0.027 mm
#: (2 seeds), 2 mm <= 0.083 mm (3 seeds), 3 mm <= 0.21 mm (3 seeds), each with and
#: without atrophy (`python benchmarks/bench_preprocess.py aligned --voxel-mm ...`).
IDENTITY_TOLERANCE_VOXELS = 0.1


@dataclass(frozen=True)
class Grid:
    """A voxel grid: array shape and NIfTI (RAS) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


# --------------------------------------------------------------------------- transforms


def rotation_angle_deg(transform: np.ndarray) -> float:
    """Rotation angle (degrees) of a rigid 4x4 transform."""
    from scipy.spatial.transform import Rotation

    return float(np.degrees(Rotation.from_matrix(np.asarray(transform, dtype=np.float64)[:3, :3]).magnitude()))


def max_displacement_mm(transform: np.ndarray, points: np.ndarray) -> float:
    """Largest distance (mm) a transform moves any of ``points`` (N x 3, world mm)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    moved = points @ transform[:3, :3].T + transform[:3, 3]
    return float(np.max(np.linalg.norm(moved - points, axis=1)))


def half_transform(transform: np.ndarray) -> np.ndarray:
    """The rigid transform ``H`` with ``H @ H == transform`` (half the rotation angle)."""
    from scipy.spatial.transform import Rotation

    transform = np.asarray(transform, dtype=np.float64)
    rotvec = Rotation.from_matrix(transform[:3, :3]).as_rotvec()
    half_rotation = Rotation.from_rotvec(rotvec / 2.0).as_matrix()
    half = np.eye(4)
    half[:3, :3] = half_rotation
    # H(H(x)) = Rh Rh x + Rh th + th = R x + t  =>  (Rh + I) th = t
    half[:3, 3] = np.linalg.solve(half_rotation + np.eye(3), transform[:3, 3])
    return half


def fov_corners(shape, affine) -> np.ndarray:
    """The 8 outer corners (world mm) of a grid's field of view (voxel edges, not centres)."""
    shape = np.asarray(shape, dtype=np.float64)
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    return corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def mask_bounds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(first, last) index (inclusive) of a mask's non-zero voxels along each axis, None when
    there are none: the box of ``np.argwhere(mask).min(0)``, ``.max(0)`` from one projection
    per axis instead of a list of every voxel (1 mm brain: 4 ms instead of 0.24 s)."""
    mask = np.asarray(mask)
    first, last = [], []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hit.size == 0:
            return None
        first.append(hit[0])
        last.append(hit[-1])
    return np.array(first, dtype=np.int64), np.array(last, dtype=np.int64)


def mask_box_corners(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The 8 corners (world mm) of a mask's bounding box (the whole grid if it is empty)."""
    bounds = mask_bounds(mask)
    if bounds is None:
        return fov_corners(mask.shape, affine)
    lo, hi = bounds
    corners = np.array([[i, j, k] for i in (lo[0], hi[0]) for j in (lo[1], hi[1]) for k in (lo[2], hi[2])],
                       dtype=np.float64)
    return corners @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


# --------------------------------------------------------------------------- registration


def register_rigid(baseline: np.ndarray, baseline_affine: np.ndarray, followup: np.ndarray,
                   followup_affine: np.ndarray, *, baseline_mask: np.ndarray | None = None,
                   followup_mask: np.ndarray | None = None, iterations: int = ITERATIONS,
                   seed: int = 20211, initialise: str = "moments") -> np.ndarray:
    """Rigid transform (4x4, RAS mm) mapping baseline world points onto the follow-up's.

    SimpleITK: Euler transform initialised at the centres of mass (of the brain when
    masks are given), Mattes mutual information inside the masks, regular-step gradient
    descent with scales from physical shifts, on the pyramid :data:`PYRAMID_MM`.
    ``initialise="identity"`` starts from the scanner's coordinates instead (rotation centre at
    the baseline's (brain's) centre of mass): two sequences of one session, whose centres of
    mass differ with their fields of view and contrasts, not with the head's position.

    Accuracy (`python benchmarks/bench_preprocess.py registration`): on 5 simulated 2 mm
    pairs misaligned by 4 mm and 4 degrees, after N4, the rotation error was
    0.012-0.021 degrees and the largest displacement error over the brain 0.034-0.050 mm
    (rms 0.020-0.036 mm; 2026-12-02, cropped scans, 50 000 samples per level). Without N4 the differing bias fields bias the estimate
    (0.6-0.8 mm rms on 3 mm pairs): register bias-corrected images.
    """
    import SimpleITK as sitk

    if baseline_mask is not None:
        baseline, baseline_affine, baseline_mask = _crop_to_mask(baseline, baseline_affine, baseline_mask)
    if followup_mask is not None:
        followup, followup_affine, followup_mask = _crop_to_mask(followup, followup_affine, followup_mask)
    fixed = sitk.Cast(to_sitk(np.asarray(baseline, dtype=np.float32), baseline_affine), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(np.asarray(followup, dtype=np.float32), followup_affine), sitk.sitkFloat32)
    fixed_mask = to_sitk(np.asarray(baseline_mask, dtype=np.uint8), baseline_affine) if baseline_mask is not None else None
    moving_mask = to_sitk(np.asarray(followup_mask, dtype=np.uint8), followup_affine) if followup_mask is not None else None

    if initialise not in ("moments", "identity"):
        raise ValueError(f"initialise must be 'moments' or 'identity', not {initialise!r}")
    init_fixed = fixed if fixed_mask is None else sitk.Mask(fixed, fixed_mask)
    init_moving = moving if moving_mask is None else sitk.Mask(moving, moving_mask)
    # the fixed image against itself: no translation, the centre at its centre of mass
    initial = sitk.CenteredTransformInitializer(init_fixed, init_fixed if initialise == "identity" else init_moving,
                                                sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)

    finest = min(min(fixed.GetSpacing()), min(moving.GetSpacing()))
    coarsest = max(max(fixed.GetSpacing()), max(moving.GetSpacing()))
    shrink, smooth = [], []
    for size_mm, sigma_mm in zip(PYRAMID_MM, SMOOTHING_MM):
        factor = max(1, int(round(size_mm / finest)))
        if shrink and factor == shrink[-1]:
            continue
        shrink.append(factor)
        smooth.append(sigma_mm)
    if shrink[-1] != 1 and shrink[-1] * coarsest > PYRAMID_MM[-1] + 1e-6:
        shrink.append(1)
        smooth.append(0.0)

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=MI_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    region = int(np.count_nonzero(baseline_mask)) if baseline_mask is not None else int(np.size(baseline))
    shares = [float(min(1.0, SAMPLES_PER_LEVEL * f ** 3 / max(region, 1))) for f in shrink]
    method.SetMetricSamplingPercentagePerLevel(shares, seed)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    # gradients at the sampled points only, not whole gradient images at each level
    method.SetMetricUseFixedImageGradientFilter(GRADIENT_IMAGES)
    method.SetMetricUseMovingImageGradientFilter(GRADIENT_IMAGES)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                    numberOfIterations=iterations,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(smooth)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=True)
    method.Execute(fixed, moving)

    from mstools.sitk_bridge import transform_matrix

    return transform_matrix(initial)


def _crop_to_mask(data: np.ndarray, affine: np.ndarray, mask: np.ndarray):
    """The part of a scan (and its mask) within :data:`CROP_MARGIN_MM` of the mask's
    bounding box, with the matching affine: the metric only samples inside the mask,
    and the pyramid's smoothing and shrinking then cost a fraction of the head's volume."""
    bounds = mask_bounds(np.asarray(mask) > 0) if CROP_MARGIN_MM is not None else None
    if bounds is None:
        return data, affine, mask
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    margin = np.ceil(CROP_MARGIN_MM / spacing).astype(int)
    lo = np.maximum(bounds[0] - margin, 0)
    hi = np.minimum(bounds[1] + margin + 1, np.shape(data))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    from nibabel.affines import apply_affine

    moved = np.array(affine, dtype=np.float64, copy=True)
    moved[:3, 3] = apply_affine(moved, lo)
    return np.asarray(data)[box], moved, np.asarray(mask)[box]


# --------------------------------------------------------------------------- grids


def common_grid(grids: list[Grid], transforms: list[np.ndarray], *, direction_ras: np.ndarray,
                spacing_mm) -> Grid:
    """The grid with axes ``direction_ras`` (3x3, unit columns) and ``spacing_mm`` that
    covers every grid's field of view once moved into the common space.

    ``transforms[n]`` maps common-space points to grid ``n``'s points (so its inverse
    brings grid ``n``'s corners in). When one input grid already has these axes and
    spacing and its transform is the identity, the result is that grid exactly.
    """
    direction = np.asarray(direction_ras, dtype=np.float64)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    points = []
    for grid, transform in zip(grids, transforms):
        corners = fov_corners(grid.shape, grid.affine)
        inverse = np.linalg.inv(transform)
        points.append(corners @ inverse[:3, :3].T + inverse[:3, 3])
    coords = np.concatenate(points) @ direction  # coordinates along the new axes (mm)
    lo, hi = coords.min(0), coords.max(0)
    counts = (hi - lo) / spacing
    shape = np.maximum(1, np.ceil(counts - 1e-3)).astype(int)
    centre = (lo + hi) / 2.0
    first = centre - (shape - 1) / 2.0 * spacing
    affine = np.eye(4)
    affine[:3, :3] = direction * spacing
    affine[:3, 3] = direction @ first
    return Grid(shape=tuple(int(v) for v in shape), affine=affine)


def crop_to_boxes(grid: Grid, corners_world: list[np.ndarray], margin_mm: float) -> Grid:
    """The part of ``grid`` covering the given points (N x 3 world mm, e.g. the corners of
    brain bounding boxes) plus ``margin_mm`` on every side: same axes, spacing and voxel
    centres, an integer offset. Returns ``grid`` itself when that is no smaller."""
    from nibabel.affines import apply_affine

    points = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 3) for c in corners_world])
    index = apply_affine(np.linalg.inv(grid.affine), points)
    margin = np.ceil(margin_mm / np.asarray(grid.spacing_mm)).astype(int)
    lo = np.maximum(np.floor(index.min(0) + 1e-6).astype(int) - margin, 0)      # round-off is no voxel
    hi = np.minimum(np.ceil(index.max(0) - 1e-6).astype(int) + margin, np.asarray(grid.shape) - 1)
    if np.any(hi < lo) or (np.all(lo == 0) and np.all(hi == np.asarray(grid.shape) - 1)):
        return grid
    affine = np.array(grid.affine, dtype=np.float64, copy=True)
    affine[:3, 3] = apply_affine(grid.affine, lo)
    return Grid(shape=tuple(int(v) for v in hi - lo + 1), affine=affine)


def regrid(grid: Grid, spacing_mm) -> Grid:
    """Same axes and field of view, another voxel size (used for a target spacing)."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    direction = grid.affine[:3, :3] / np.asarray(grid.spacing_mm)
    return common_grid([grid], [np.eye(4)], direction_ras=direction, spacing_mm=spacing)


# --------------------------------------------------------------------------- resampling

#: Interpolators by name: "smooth" is cubic B-spline (intensities), "linear" is used for
#: masks followed by a 0.5 threshold, "nearest" for label maps.
INTERPOLATORS = ("smooth", "linear", "nearest")


def resample(data: np.ndarray, affine: np.ndarray, grid: Grid, transform: np.ndarray, *,
             interpolation: str = "smooth", fill: float = 0.0) -> np.ndarray:
    """``data`` (on ``affine``) resampled onto ``grid``; ``transform`` maps grid points to data points.

    ``smooth`` (cubic B-spline) results are clipped to the input's range, so that no
    negative intensities or overshoots appear at edges. Returns float32 for ``smooth``
    and ``linear``, the input dtype for ``nearest``.
    """
    import SimpleITK as sitk

    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {INTERPOLATORS}")
    data = np.asarray(data)
    source = to_sitk(data.astype(np.float32) if interpolation != "nearest" else data, affine)
    spacing, origin, direction = affine_to_geometry(grid.affine)
    method = {"smooth": sitk.sitkBSpline, "linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    with ITK_LOCK:
        out = sitk.Resample(source, [int(v) for v in grid.shape], affine_transform(transform),
                            method[interpolation], origin, spacing, direction, float(fill),
                            source.GetPixelID())
        array = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    if interpolation == "smooth" and data.size:
        array = np.clip(array, min(float(data.min()), fill), max(float(data.max()), fill))
    return np.ascontiguousarray(array)


def resample_mask(mask: np.ndarray, affine: np.ndarray, grid: Grid, transform: np.ndarray, *,
                  threshold: float = 0.5) -> np.ndarray:
    """A binary mask carried onto ``grid``: linear interpolation, then ``>= threshold`` (uint8)."""
    values = resample(np.asarray(mask, dtype=np.float32), affine, grid, transform, interpolation="linear")
    return (values >= threshold).astype(np.uint8)


def grid_of(shape, affine) -> Grid:
    return Grid(shape=tuple(int(v) for v in shape), affine=np.asarray(affine, dtype=np.float64))


__all__ = ["Grid", "IDENTITY_TOLERANCE_VOXELS", "common_grid", "crop_to_boxes", "fov_corners", "grid_of", "half_transform",
           "mask_bounds", "mask_box_corners", "max_displacement_mm", "regrid", "register_rigid", "resample",
           "resample_mask", "rotation_angle_deg", "geometry_to_affine"]
