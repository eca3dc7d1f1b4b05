"""From the refinement probability map to new-lesion components (paper 001, Prados & Kanber).

The probability map is thresholded at 0.2; connected components with fewer than 27
voxels or with a minor axis shorter than 2 voxels are dropped. The minor axis is the
shortest axis of the ellipsoid with the component's second moments, as
``skimage.measure.regionprops``' ``axis_minor_length`` in 3D: ``sqrt(20 * lambda_min)``
for the smallest eigenvalue ``lambda_min`` of the voxel-coordinate covariance (a solid
ellipsoid of semi-axis ``a`` has variance ``a**2 / 5`` along it). A one-voxel-thick sheet
has minor axis 0. The sizes can be given in mm (``min_volume_mm3``, ``min_minor_axis_mm``):
then the covariance is taken in mm (the affine's linear part) and volumes from |det|.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Paper 001, Prados & Kanber: "threshold 0.2", "drop components < 27 voxels or minor axis < 2".
PROBABILITY_THRESHOLD = 0.2
MIN_VOXELS = 27
MIN_MINOR_AXIS_VOXELS = 2.0
#: 26-connected components, as every mstools detector.
CONNECTIVITY = 26


@dataclass(frozen=True)
class PostProcessing:
    """Threshold and component rules; a size in mm, when given, replaces the one in voxels."""

    threshold: float = PROBABILITY_THRESHOLD
    min_voxels: int = MIN_VOXELS
    min_minor_axis_voxels: float = MIN_MINOR_AXIS_VOXELS
    min_volume_mm3: float | None = None
    min_minor_axis_mm: float | None = None

    def __post_init__(self):
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], not {self.threshold}")
        for name in ("min_voxels", "min_minor_axis_voxels", "min_volume_mm3", "min_minor_axis_mm"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, not {value}")

    def as_dict(self) -> dict:
        return asdict(self)


def minor_axis_lengths(labels: np.ndarray, count: int, *, linear: np.ndarray | None = None) -> np.ndarray:
    """Minor axis length of components 0..count (index 0 unused, 0.0), in voxels or, with
    ``linear`` (the affine's 3x3 part), in mm. Single-voxel components have 0."""
    flat = np.flatnonzero(labels)
    lengths = np.zeros(count + 1)
    if flat.size == 0:
        return lengths
    lab = labels.ravel()[flat].astype(np.int64)
    coords = np.stack(np.unravel_index(flat, labels.shape), axis=1).astype(np.float64)
    if linear is not None:
        coords = coords @ np.asarray(linear, dtype=np.float64).T
    sizes = np.bincount(lab, minlength=count + 1).astype(np.float64)
    present = sizes > 0
    mean = np.zeros((count + 1, 3))
    for a in range(3):
        mean[present, a] = np.bincount(lab, weights=coords[:, a], minlength=count + 1)[present] / sizes[present]
    centred = coords - mean[lab]
    cov = np.zeros((count + 1, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            s = np.bincount(lab, weights=centred[:, a] * centred[:, b], minlength=count + 1)
            cov[present, a, b] = cov[present, b, a] = s[present] / sizes[present]
    smallest = np.linalg.eigvalsh(cov[present])[:, 0]
    lengths[present] = np.sqrt(20.0 * np.maximum(smallest, 0.0))
    return lengths


def clean_components(mask: np.ndarray, *, affine: np.ndarray, options: PostProcessing = PostProcessing()
                     ) -> tuple[np.ndarray, dict]:
    """The components of ``mask`` that pass the size and minor-axis rules, and counts of what went."""
    from mstools.lesions import label_components

    labels, count = label_components(mask, connectivity=CONNECTIVITY)
    if count == 0:
        return np.zeros(mask.shape, bool), {"components": 0, "too_small": 0, "too_thin": 0}
    linear = np.asarray(affine, dtype=float)[:3, :3]
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    if options.min_volume_mm3 is not None:
        # relative tolerance: a float32 affine's |det| is off by ~1e-7 (5 voxels of "1 mm3" may be 4.9999997)
        small = sizes * abs(float(np.linalg.det(linear))) < options.min_volume_mm3 * (1 - 1e-6)
    else:
        small = sizes < options.min_voxels
    if options.min_minor_axis_mm is not None:
        thin = minor_axis_lengths(labels, count, linear=linear) < options.min_minor_axis_mm - 1e-9
    else:
        thin = minor_axis_lengths(labels, count) < options.min_minor_axis_voxels - 1e-9
    keep = ~(small | thin)
    keep[0] = False
    report = {"components": count, "too_small": int(small[1:].sum()), "too_thin": int((thin & ~small)[1:].sum())}
    return keep[labels], report


def refined_detections(probability: np.ndarray, *, affine: np.ndarray, options: PostProcessing = PostProcessing()):
    """Threshold (``>= threshold``) and clean the probability map; common detector outputs
    (score = the probability) and the clean-up counts."""
    from mstools.lesions import detections_from_mask

    mask, report = clean_components(np.asarray(probability) >= options.threshold, affine=affine, options=options)
    return detections_from_mask(mask, np.asarray(probability, dtype=np.float32), affine,
                                connectivity=CONNECTIVITY), report
