"""NumPy array + NIfTI affine <-> SimpleITK image, in memory and exact.

NIfTI affines map voxel indices (i, j, k) to RAS+ world millimetres; ITK images live
in LPS+ world millimetres (x and y negated) with ``origin + direction @ diag(spacing)
@ index``, and ``sitk.GetArrayFromImage`` returns axes in (k, j, i) order. This module
does those three conversions in one place, and converts 4x4 world transforms between
the two conventions. No file I/O here (``mstools/io.py`` owns files).
"""

from __future__ import annotations

import threading

import numpy as np

#: RAS <-> LPS: negate the first two world axes (the same matrix both ways).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: Held around every call into SimpleITK that may run on a worker thread (preprocess's two
#: scans side by side, run's carry-back of the final maps). SimpleITK is not safe to enter
#: from two Python threads at once: its IO factories are created on first use without a
#: lock (SimpleITK issues #74 and #805: concurrent reads crash about once in 100 runs), and a
#: ``run`` on raw scans aborted once at exit with "double free or corruption" after two
#: threads read their transforms together. ITK's own threads still share each filter's work.
ITK_LOCK = threading.RLock()

#: Largest deviation of a normalised affine from an orthonormal matrix accepted. ITK
#: images cannot carry shear; scanner affines are orthonormal to float32 rounding.
ORTHONORMAL_TOLERANCE = 1e-4


def affine_to_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin, direction) in ITK's LPS convention for a NIfTI (RAS) affine.

    Raises ``ValueError`` for affines with shear or zero-size voxels, which no ITK image
    can represent.
    """
    affine = np.asarray(affine, dtype=np.float64)
    linear = RAS_TO_LPS @ affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("affine has a zero-size voxel axis")
    direction = linear / spacing
    if np.max(np.abs(direction.T @ direction - np.eye(3))) > ORTHONORMAL_TOLERANCE:
        raise ValueError("affine has shear (non-orthogonal voxel axes), which ITK images cannot represent")
    origin = RAS_TO_LPS @ affine[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def geometry_to_affine(spacing, origin, direction) -> np.ndarray:
    """The NIfTI (RAS) affine of an ITK geometry (inverse of :func:`affine_to_geometry`)."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = RAS_TO_LPS @ direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = RAS_TO_LPS @ np.asarray(origin, dtype=np.float64)
    return affine


def to_sitk(data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image holding ``data`` (axes i, j, k) on the grid of ``affine``."""
    import SimpleITK as sitk

    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"a 3D array was expected, got shape {data.shape}")
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    spacing, origin, direction = affine_to_geometry(affine)
    with ITK_LOCK:
        image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
    return image


def from_sitk(image) -> tuple[np.ndarray, np.ndarray]:
    """(array with axes i, j, k, NIfTI affine) of a SimpleITK image."""
    import SimpleITK as sitk

    with ITK_LOCK:
        data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        geometry = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    return np.ascontiguousarray(data), geometry_to_affine(*geometry)


def world_to_lps(matrix_ras: np.ndarray) -> np.ndarray:
    """A 4x4 point transform written in RAS coordinates, rewritten in LPS (and back)."""
    flip = np.eye(4)
    flip[:3, :3] = RAS_TO_LPS
    return flip @ np.asarray(matrix_ras, dtype=np.float64) @ flip


lps_to_world = world_to_lps  # the flip is its own inverse


def affine_transform(matrix_ras: np.ndarray):
    """A SimpleITK AffineTransform for a 4x4 RAS point transform (output point -> input point)."""
    import SimpleITK as sitk

    lps = world_to_lps(matrix_ras)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(lps[:3, :3].ravel().tolist())
    transform.SetTranslation(lps[:3, 3].tolist())
    return transform


def transform_matrix(transform) -> np.ndarray:
    """The 4x4 RAS point transform of a linear SimpleITK transform (Euler, Versor, Affine...)."""
    import SimpleITK as sitk

    if isinstance(transform, sitk.CompositeTransform) or transform.GetName() == "CompositeTransform":
        # A composite of linear transforms is linear: read its matrix off the images of
        # four points. (Its parts cannot always be unwrapped: a file's
        # MatrixOffsetTransformBase comes back as a composite of itself.)
        return lps_to_world(_probed_matrix(transform))
    try:
        linear = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
        translation = np.asarray(transform.GetTranslation(), dtype=np.float64)
        centre = np.asarray(transform.GetCenter(), dtype=np.float64)
    except AttributeError:
        raise ValueError(f"{transform.GetName()} is not a linear (matrix) transform") from None
    lps = np.eye(4)
    lps[:3, :3] = linear
    lps[:3, 3] = translation + centre - linear @ centre
    return lps_to_world(lps)


def _probed_matrix(transform) -> np.ndarray:
    """The 4x4 LPS matrix of a transform assumed linear, from the images of the origin and
    the unit points; a fifth point checks the assumption."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)), dtype=np.float64)
    lps = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 100.0
        lps[:3, axis] = (np.asarray(transform.TransformPoint(tuple(unit)), dtype=np.float64) - origin) / 100.0
    lps[:3, 3] = origin
    check = np.array([37.0, -52.0, 81.0])
    if not np.allclose(np.asarray(transform.TransformPoint(tuple(check))), lps[:3, :3] @ check + origin, atol=1e-4):
        raise ValueError(f"{transform.GetName()} is not a linear (matrix) transform")
    return lps


def itk_transform_text(matrix_ras: np.ndarray) -> str:
    """A 4x4 RAS point transform as an ITK transform file (``.tfm``, read by SimpleITK,
    ITK-SNAP, ANTs and 3D Slicer): an AffineTransform in ITK's LPS convention."""
    lps = world_to_lps(matrix_ras)
    values = [*lps[:3, :3].ravel(), *lps[:3, 3]]
    return ("#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
            "Parameters: " + " ".join(repr(float(v)) for v in values) + "\nFixedParameters: 0 0 0\n")
