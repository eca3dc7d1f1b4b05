"""Intensity normalisation and tissue estimates inside a brain mask.

Small, shared helpers for the detectors: z-scoring, histogram matching, a CSF
estimate from FLAIR intensities, and normalised mutual information between scans.
"""

from __future__ import annotations

import numpy as np


def zscore_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(image - mean) / std over the mask; the whole grid is transformed (float32)."""
    values = image[mask > 0]
    if values.size < 2:
        raise ValueError("mask has fewer than 2 voxels")
    std = float(values.std())
    if std == 0:
        raise ValueError("image is constant inside the mask")
    return ((image - float(values.mean())) / std).astype(np.float32)


def match_histogram(source: np.ndarray, reference: np.ndarray, mask: np.ndarray, *,
                    landmarks: int = 101) -> np.ndarray:
    """Map ``source`` intensities so that its quantiles inside the mask match ``reference``'s.

    Piecewise-linear through ``landmarks`` evenly spaced quantiles (the landmark-based
    matching of ANTs' ``ImageMath HistogramMatch`` used by Hamzaoui et al., paper 001).
    """
    q = np.linspace(0, 100, landmarks)
    src = np.percentile(source[mask > 0], q)
    ref = np.percentile(reference[mask > 0], q)
    src, keep = np.unique(src, return_index=True)
    return np.interp(source, src, ref[keep]).astype(np.float32)


def csf_from_flair(flair: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """CSF estimate: the darkest of three Otsu classes of FLAIR intensity in the brain.

    On FLAIR, CSF is suppressed; three classes (CSF, grey/white matter, hyperintensities
    and GM) separate it without a tissue model.
    """
    from skimage.filters import threshold_multiotsu

    values = flair[brain > 0]
    thresholds = threshold_multiotsu(values, classes=3)
    return (brain > 0) & (flair < thresholds[0])


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, mask: np.ndarray, *, bins: int = 64) -> float:
    """Studholme's NMI = (H(A) + H(B)) / H(A, B) over the mask, in [1, 2]; 2 = identical."""
    x, y = a[mask > 0], b[mask > 0]
    joint, _, _ = np.histogram2d(x, y, bins=bins)
    p = joint / joint.sum()
    px, py = p.sum(1), p.sum(0)

    def entropy(v: np.ndarray) -> float:
        v = v[v > 0]
        return float(-(v * np.log(v)).sum())

    return (entropy(px) + entropy(py)) / entropy(p.ravel())


def differential_bias_correction(baseline: np.ndarray, followup: np.ndarray, mask: np.ndarray, *,
                                 spacing_mm, sigma_mm: float) -> np.ndarray:
    """Follow-up with the smooth part of its log-ratio to the baseline removed.

    The multiple-time-point ("differential") bias correction of the boundary shift
    integral pipeline used by Prados & Kanber (paper 001, section 2.1): the log ratio
    of the two scans, clipped to its robust range so lesions do not leak into the
    estimate, is smoothed inside the mask by normalised Gaussian convolution; that
    smooth field is divided out of the follow-up. Intensities must be positive.
    """
    from scipy import ndimage

    inside = (mask > 0) & (baseline > 0) & (followup > 0)
    log_ratio = np.zeros(baseline.shape, dtype=np.float32)
    log_ratio[inside] = np.log(followup[inside]) - np.log(baseline[inside])
    values = log_ratio[inside]
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    clipped = np.where(inside, np.clip(log_ratio, median - 2 * mad, median + 2 * mad), 0).astype(np.float32)
    # Smooth on a grid of about sigma/4 to keep large kernels cheap; the field is smooth.
    spacing = np.asarray(spacing_mm, dtype=float)
    step = np.maximum(1, np.floor(sigma_mm / 4 / spacing)).astype(int)
    sl = tuple(slice(None, None, s) for s in step)
    sigma_vox = sigma_mm / (spacing * step)
    num = ndimage.gaussian_filter(clipped[sl], sigma_vox, mode="constant")
    den = ndimage.gaussian_filter(inside[sl].astype(np.float32), sigma_vox, mode="constant")
    field = num / np.maximum(den, 1e-3)
    zoom = np.array(baseline.shape) / np.array(field.shape)
    field = ndimage.zoom(field, zoom, order=1, grid_mode=True, mode="nearest")[
        : baseline.shape[0], : baseline.shape[1], : baseline.shape[2]]
    return (followup * np.exp(-field)).astype(np.float32)


def denoise(image: np.ndarray, *, spacing_mm, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing with a physical width (0 = none)."""
    from scipy import ndimage

    if sigma_mm <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma_mm / np.asarray(spacing_mm, dtype=float)).astype(np.float32)
