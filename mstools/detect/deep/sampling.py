"""Lesion-centred weighted patch sampling (paper 002, Implementation Details).

"If the input sample contains the foreground, we randomly select one of the
foreground voxels as the patch center and shift the patch via a maximum margin of
[-10, 10] voxels. Otherwise, we randomly crop 3D patches." Patches that reach past
the volume are clipped back inside it; a volume smaller than the patch is
zero-padded around its centre.
"""

from __future__ import annotations

import numpy as np

#: Paper 002: the patch centre moves by up to +/-10 voxels from the chosen lesion voxel.
MAX_SHIFT = 10


def patch_start(shape: tuple[int, ...], patch: tuple[int, ...], rng: np.random.Generator, *,
                foreground: np.ndarray | None = None, max_shift: int = MAX_SHIFT,
                p_random: float = 0.0) -> tuple[int, ...]:
    """First voxel of a patch of size ``patch`` in a volume of ``shape``.

    ``foreground`` holds the flat indices of the lesion voxels (empty or ``None``: a
    random patch). With probability ``p_random`` a random patch is drawn even when
    there are lesions (0 in paper 002).
    """
    if len(shape) != len(patch):
        raise ValueError(f"patch {patch} and volume {shape} have different dimensions")
    shape_a = np.asarray(shape)
    patch_a = np.asarray(patch)
    high = shape_a - patch_a
    lesion = foreground is not None and len(foreground) > 0 and not (p_random > 0 and rng.random() < p_random)
    if lesion:
        centre = np.asarray(np.unravel_index(foreground[rng.integers(len(foreground))], shape))
        centre = centre + rng.integers(-max_shift, max_shift + 1, size=len(shape))
        start = centre - patch_a // 2
    else:
        start = np.array([rng.integers(0, h + 1) if h > 0 else 0 for h in high])
    start = np.where(high >= 0, np.clip(start, 0, np.maximum(high, 0)), high // 2)
    return tuple(int(s) for s in start)


def extract(volume: np.ndarray, start: tuple[int, ...], patch: tuple[int, ...]) -> np.ndarray:
    """The patch starting at ``start`` over the last ``len(patch)`` axes; outside voxels are 0."""
    spatial = volume.shape[-len(patch):]
    out = np.zeros(volume.shape[:-len(patch)] + tuple(patch), dtype=volume.dtype)
    src, dst = [], []
    for s, p, n in zip(start, patch, spatial):
        lo, hi = max(s, 0), min(s + p, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    lead = (slice(None),) * (volume.ndim - len(patch))
    out[lead + tuple(dst)] = volume[lead + tuple(src)]
    return out
