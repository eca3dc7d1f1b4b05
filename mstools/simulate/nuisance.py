"""Between-scan differences that are not disease: the confounders a detector must ignore.

Scanner gain and contrast, smooth bias fields, Rician noise, blur, thick slices,
residual misalignment and mild atrophy. Each is a plain function of an array and a
random generator, and each is switched off by a zero parameter.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def bias_field(shape: tuple[int, int, int], strength: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field with max/min = (1 + strength) / (1 - strength).

    A random cubic polynomial in normalised coordinates, exponentiated (the usual
    log-polynomial model of RF inhomogeneity, as in N4), evaluated on a coarse grid.
    """
    if strength <= 0:
        return np.ones(shape, dtype=np.float32)
    coarse_shape = tuple(max(2, s // 4) for s in shape)
    axes = [np.linspace(-1, 1, n) for n in coarse_shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    log_field = np.zeros(coarse_shape)
    for a in range(4):
        for b in range(4 - a):
            for c in range(4 - a - b):
                if a + b + c == 0:
                    continue
                log_field += rng.normal() / (a + b + c) * x ** a * y ** b * z ** c
    span = log_field.max() - log_field.min()
    target = np.log((1 + strength) / (1 - strength))
    log_field = (log_field - log_field.mean()) * (target / span if span > 0 else 0)
    field = ndimage.zoom(np.exp(log_field), np.array(shape) / np.array(coarse_shape), order=1,
                         grid_mode=True, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    return field.astype(np.float32)


def rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise of standard deviation ``sigma``."""
    if sigma <= 0:
        return image.astype(np.float32)
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def gain_and_contrast(image: np.ndarray, gain: float, gamma: float, reference: float) -> np.ndarray:
    """Scanner gain and a power-law contrast change around a reference intensity."""
    relative = np.clip(image / reference, 0, None)
    return (gain * reference * relative ** gamma).astype(np.float32)


def blur(image: np.ndarray, sigma_mm: float, spacing_mm: np.ndarray) -> np.ndarray:
    if sigma_mm <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma_mm / np.asarray(spacing_mm)).astype(np.float32)


def thick_slices(image: np.ndarray, slice_mm: float, voxel_mm: float, *, axis: int = 2) -> np.ndarray:
    """Acquire with thick slices along ``axis`` (box profile), then interpolate back to the grid."""
    factor = int(round(slice_mm / voxel_mm))
    if factor <= 1:
        return image
    averaged = ndimage.uniform_filter1d(image, size=factor, axis=axis, mode="nearest")
    centres = np.arange(factor // 2, image.shape[axis], factor)
    sampled = np.take(averaged, centres, axis=axis)
    # Linear interpolation between slice centres, constant beyond the first and last.
    positions = np.arange(image.shape[axis], dtype=np.float64)
    coordinate = np.interp(positions, centres, np.arange(len(centres)))
    lower = np.floor(coordinate).astype(int)
    upper = np.minimum(lower + 1, len(centres) - 1)
    frac = (coordinate - lower).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    frac = frac.reshape(shape)
    result = np.take(sampled, lower, axis=axis) * (1 - frac) + np.take(sampled, upper, axis=axis) * frac
    return result.astype(np.float32)


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_rigid(translation_mm: float, rotation_deg: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (3x3) and translation (mm) with the given magnitudes in random directions."""
    def direction() -> np.ndarray:
        v = rng.normal(size=3)
        return v / np.linalg.norm(v)

    return rotation_matrix(direction() * rotation_deg), direction() * translation_mm


def atrophy_displacement(ventricles: np.ndarray, max_mm: float, spacing_mm: np.ndarray) -> np.ndarray | None:
    """Displacement (mm, shape (3, ...)) that enlarges the ventricles by up to ``max_mm``.

    Sampling the baseline at x + u(x), with u pointing up the gradient of the smoothed
    ventricle map, moves ventricular CSF outwards: the ex-vacuo enlargement that
    accompanies brain atrophy.
    """
    if max_mm <= 0 or not ventricles.any():
        return None
    step = 2
    coarse = ventricles[::step, ::step, ::step].astype(np.float32)
    smooth = ndimage.gaussian_filter(coarse, 4.0 / (np.asarray(spacing_mm) * step))
    grads = np.stack(np.gradient(smooth, *(np.asarray(spacing_mm) * step)))
    magnitude = np.sqrt((grads ** 2).sum(0)).max()
    grads *= max_mm / max(magnitude, 1e-12)
    shape = ventricles.shape
    zoom = np.array(shape) / np.array(coarse.shape)
    return np.stack([ndimage.zoom(g, zoom, order=1, grid_mode=True, mode="nearest")[
        : shape[0], : shape[1], : shape[2]] for g in grads]).astype(np.float32)


def warp_coordinates(shape: tuple[int, int, int], spacing_mm: np.ndarray, rotation: np.ndarray,
                     translation_mm: np.ndarray, displacement_mm: np.ndarray | None) -> np.ndarray:
    """Voxel coordinates to sample the undeformed image at: R (x + u(x) - c) + c + t.

    x is in mm on the (axis-aligned) simulation grid, c its centre; the result is in voxels.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape) - 1) / 2.0
    points = np.empty((3,) + shape, dtype=np.float32)
    for axis in range(3):
        points[axis] = (grid[axis] - centre[axis]) * spacing[axis]
        if displacement_mm is not None:
            points[axis] += displacement_mm[axis]
    del grid
    moved = np.tensordot(rotation.astype(np.float32), points, axes=1)
    for axis in range(3):
        moved[axis] = (moved[axis] + translation_mm[axis]) / spacing[axis] + centre[axis]
    return moved


def resample(image: np.ndarray, coordinates: np.ndarray, *, order: int) -> np.ndarray:
    return ndimage.map_coordinates(image, coordinates, order=order, mode="nearest", prefilter=order > 1)
