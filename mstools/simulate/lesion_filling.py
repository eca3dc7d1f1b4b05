"""Lesion filling: a real scan as it looked before some of its lesions appeared.

Used to turn a real follow-up with known new lesions into a training pair whose new
lesions are real (their shape, partial volume and intensity are the scanner's, not a
model's): the baseline is the scan with those lesions filled in from the surrounding
tissue.

The fill is a normalised convolution (a Gaussian-weighted mean of the nearby usable
voxels: brain, outside any lesion, between the CSF and lesion intensity levels) plus the
scan's own texture: its residual around that local mean, copied from a nearby stretch of
usable tissue (so the noise keeps the scanner's grain and spatial correlation instead of
looking like white noise). Where no such stretch is found, Gaussian noise of the same
spread is used.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Width of the Gaussian that averages the surrounding tissue (mm); doubled up to
#: FILL_WIDENINGS times where a voxel has too little usable tissue around it.
FILL_SIGMA_MM = 3.0
FILL_WIDENINGS = 4
#: Margin filled around each lesion (mm): the rater's mask leaves partial-volume voxels
#: of the lesion just outside it.
FILL_MARGIN_MM = 1.0
#: Usable tissue for the fill: brain voxels between these multiples of the white-matter
#: level (the median of the brain's 30th-70th intensity percentiles, as the simulator's WM
#: estimate). Above 1.25: lesions, whose outer rim measures 1.29-1.33 x NAWM on the
#: Ljubljana FLAIRs (mstools.simulate.real_anatomy); below 0.7: CSF and its partial volume.
USABLE_RANGE = (0.7, 1.25)
#: Texture source: shifts of up to this distance (mm) are tried, TEXTURE_TRIES times; the
#: best is taken when at least this share of the filled voxels lands on usable tissue.
TEXTURE_SHIFT_MM = 20.0
TEXTURE_TRIES = 50
TEXTURE_USABLE_SHARE = 0.5
TEXTURE_CALM = 1.5
#: A lesion is *visible* (and is filled) when its mean intensity exceeds the fill by this
#: share of the brain's median intensity. Source: the importer's increase measure on
#: development patient 01 of open_ms_data (increases +0.12 to +0.45 of brain median,
#: decreases -0.05 to -0.16), so 0.10 keeps every real increase and no decrease.
VISIBLE_MIN_CONTRAST = 0.10


def _ball(radius_mm: float, spacing_mm) -> np.ndarray:
    reach = np.maximum(np.floor(radius_mm / np.asarray(spacing_mm, dtype=float)), 0).astype(int)
    grid = np.indices(2 * reach + 1) - reach[:, None, None, None]
    return ((grid * np.asarray(spacing_mm, dtype=float)[:, None, None, None]) ** 2).sum(0) <= radius_mm ** 2 + 1e-9


def fill_lesions(image: np.ndarray, lesions: np.ndarray, brain: np.ndarray, spacing_mm,
                 rng: np.random.Generator, *, other_lesions: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Fill the visible lesions of ``lesions`` (a binary mask) in ``image``.

    Returns the filled image (a new float32 array), the mask of the lesions that were
    visible and filled (bool), and each visible lesion's contrast (mean excess over the
    fill, in units of the brain's median intensity). Arrays are not modified.
    """
    image = np.asarray(image, dtype=np.float32)
    lesions = np.asarray(lesions) > 0
    brain = np.asarray(brain) > 0
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    out = image.copy()
    visible = np.zeros(image.shape, dtype=bool)
    if not lesions.any():
        return out, visible, []
    region = ndimage.binary_dilation(lesions, _ball(FILL_MARGIN_MM, spacing)) & brain | lesions
    blocked = region if other_lesions is None else region | (np.asarray(other_lesions) > 0)
    values = image[brain]
    lo, hi = np.percentile(values, (30.0, 70.0))
    wm_level = float(np.median(values[(values >= lo) & (values <= hi)]))
    usable = brain & ~blocked & (image >= USABLE_RANGE[0] * wm_level) & (image <= USABLE_RANGE[1] * wm_level)
    reference = float(np.median(image[brain]))

    # Work in the region's bounding box plus the widest Gaussian's reach.
    reach = np.ceil(3 * FILL_SIGMA_MM * 2 ** FILL_WIDENINGS / spacing).astype(int)
    where = np.argwhere(region)
    start = np.maximum(where.min(0) - reach, 0)
    stop = np.minimum(where.max(0) + reach + 1, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    crop, weight, target = image[box], usable[box].astype(np.float32), region[box]

    fill = np.zeros(crop.shape, dtype=np.float32)
    missing = target.copy()
    sigma_mm = FILL_SIGMA_MM
    for _ in range(FILL_WIDENINGS + 1):
        sigma = sigma_mm / spacing
        numerator = ndimage.gaussian_filter(crop * weight, sigma, mode="nearest")
        denominator = ndimage.gaussian_filter(weight, sigma, mode="nearest")
        enough = missing & (denominator > 0.05)
        fill[enough] = numerator[enough] / denominator[enough]
        missing &= ~enough
        if not missing.any():
            break
        sigma_mm *= 2
    if missing.any():  # no usable tissue anywhere near: the brain's median
        fill[missing] = reference

    # The scan's own spread around its local mean, measured on the usable voxels nearby.
    sigma = FILL_SIGMA_MM / spacing
    local_mean = ndimage.gaussian_filter(crop * weight, sigma, mode="nearest") / np.maximum(
        ndimage.gaussian_filter(weight, sigma, mode="nearest"), 1e-6)
    near = (weight > 0) & ndimage.binary_dilation(target, _ball(3 * FILL_SIGMA_MM, spacing))
    residual = (crop - local_mean)[near]
    spread = float(1.4826 * np.median(np.abs(residual - np.median(residual)))) if residual.size else 0.0
    # Texture only from calm tissue: where the local spread of the residual is at most
    # TEXTURE_CALM x the typical one (tissue edges leave larger residuals around a blurred mean).
    residual_field = np.where(weight > 0, crop - local_mean, 0.0).astype(np.float32)
    local_spread = np.sqrt(ndimage.gaussian_filter(residual_field ** 2, sigma, mode="nearest") / np.maximum(
        ndimage.gaussian_filter(weight, sigma, mode="nearest"), 1e-6))
    calm = (weight > 0) & (local_spread <= TEXTURE_CALM * spread)
    texture_field = np.where(calm, residual_field, np.nan).astype(np.float32)

    labels, count = ndimage.label(lesions[box], structure=np.ones((3, 3, 3), dtype=bool))
    grown, _ = ndimage.label(target, structure=np.ones((3, 3, 3), dtype=bool))
    contrasts: list[float] = []
    filled_crop = crop.copy()
    for label in range(1, count + 1):
        core = labels == label
        excess = float(np.mean(crop[core] - fill[core])) / reference if reference > 0 else 0.0
        if excess < VISIBLE_MIN_CONTRAST:
            continue
        # Fill the lesion with its margin (the grown component that holds it).
        margin_labels = np.unique(grown[core])
        zone = np.isin(grown, margin_labels[margin_labels > 0]) & (target & ~(labels > 0) | core)
        filled_crop[zone] = fill[zone] + _texture(texture_field, zone, spread, spacing, rng)
        visible[box][core] = True
        contrasts.append(round(excess, 4))
    out[box] = filled_crop
    return out, visible, contrasts


def _texture(field: np.ndarray, zone: np.ndarray, spread: float, spacing: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
    """Residual texture for the voxels of ``zone``: ``field`` (NaN where not usable) read
    at the nearby shift (of TEXTURE_TRIES random ones) that lands most on usable tissue;
    Gaussian noise of ``spread`` for the voxels that do not, or everywhere when less than
    TEXTURE_USABLE_SHARE of them do."""
    where = np.argwhere(zone)
    reach = np.maximum(np.round(TEXTURE_SHIFT_MM / spacing).astype(int), 1)
    best, best_share = None, -1.0
    for _ in range(TEXTURE_TRIES):
        moved = where + np.array([rng.integers(-r, r + 1) for r in reach])
        if np.any(moved.min(0) < 0) or np.any(moved.max(0) >= field.shape):
            continue
        values = field[tuple(moved.T)]
        share = float(np.isfinite(values).mean())
        if share > best_share:
            best, best_share = values, share
        if share == 1.0:
            break
    noise = rng.normal(0.0, spread, size=len(where)).astype(np.float32)
    if best is None or best_share < TEXTURE_USABLE_SHARE:
        return noise
    return np.where(np.isfinite(best), best, noise).astype(np.float32)
