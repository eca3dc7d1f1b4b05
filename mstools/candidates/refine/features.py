"""Voxel features for the refinement classifier (Prados & Kanber, paper 001, section 2.2).

The published set: for a voxel and its 6 face neighbours, the normalised baseline,
the normalised follow-up and the first-stage candidate mask -- 3 inputs x 7 voxels =
21 features. Neighbour order (array axes, never x/y/z):

    c (the voxel), im (i-1), ip (i+1), jm (j-1), jp (j+1), km (k-1), kp (k+1)

and features are named ``<input>_<position>``, inputs in the order baseline,
followup, candidates: ``baseline_c, baseline_im, ..., candidates_kp``.

Edges of the volume: a neighbour outside the grid takes, for the intensities, the
value of the nearest voxel inside (edge replication: the scan does not jump to 0 at
the field-of-view edge); for the candidate mask it is 0 (no candidate beyond the
field of view).

Richer, named sets add context (all recorded in a model's card, so a model is
always applied with the features it was trained on):

* ``context``: the published 21 + the subtraction (follow-up minus baseline) at the
  voxel; local means and standard deviations of baseline, follow-up and subtraction
  in boxes of two nominal widths (``CONTEXT_BOX_MM``, see ``_box_width``); the detector's score at the voxel
  (NaN when the detector wrote none); the distance to the brain edge in mm (capped
  at ``EDGE_CAP_MM``).
* ``lesion``: ``context`` + the lesion-level features of ``mstools filter`` (its
  ``_features.tsv``) of the candidate holding the voxel (NaN outside candidates).

The cascade (paper 001: Basaran et al. feed the second network the difference of the two
time points' all-lesion probability maps, McKinley et al. feed it both maps beside the two
FLAIRs) adds to any set the all-lesion masks of both visits (CoactSeg's heads or a user's
masks, on the case grid): at the voxel, their difference (follow-up minus baseline), and
their means in the smaller context box (``CASCADE_BOX_MM``): ``CASCADE``. A model trained so
is named ``<set>+cascade`` in its card (:func:`model_feature_names`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from mstools.parallel import side_by_side

#: Neighbour positions in feature order: (name, offset along i, j, k).
NEIGHBOURS = (("c", (0, 0, 0)), ("im", (-1, 0, 0)), ("ip", (1, 0, 0)), ("jm", (0, -1, 0)),
              ("jp", (0, 1, 0)), ("km", (0, 0, -1)), ("kp", (0, 0, 1)))
PUBLISHED_INPUTS = ("baseline", "followup", "candidates")
PUBLISHED = tuple(f"{source}_{name}" for source in PUBLISHED_INPUTS for name, _ in NEIGHBOURS)

#: Widths (mm) of the two boxes of the local statistics of the ``context`` set.
CONTEXT_BOX_MM = (3.0, 7.0)
#: Brain-edge distances are capped here (mm): deeper voxels are all "deep".
EDGE_CAP_MM = 10.0

_CONTEXT_MAPS = ("baseline", "followup", "subtraction")
CONTEXT = PUBLISHED + ("subtraction_c",) + tuple(
    f"{source}_{stat}_{int(width)}mm" for width in CONTEXT_BOX_MM for source in _CONTEXT_MAPS
    for stat in ("mean", "sd")) + ("score_c", "brain_edge_mm")

#: Lesion-level columns of ``mstools filter``'s feature table used by the ``lesion`` set.
LESION_COLUMNS = ("voxels", "volume_mm3", "shape_LeastAxisLength", "shape_MinorAxisLength",
                  "shape_MajorAxisLength", "shape_Sphericity", "shape_Elongation", "shape_Flatness",
                  "neighbour_contrast", "difference_mean", "score_max", "edge_distance_mm",
                  "csf_distance_mm", "wm_fraction")
LESION = CONTEXT + tuple(f"lesion_{c}" for c in LESION_COLUMNS)

FEATURE_SETS = {"published": PUBLISHED, "context": CONTEXT, "lesion": LESION}

#: The cascade's box (mm): the smaller context box, so that a lesion beside an old one is seen.
CASCADE_BOX_MM = CONTEXT_BOX_MM[0]
_CASCADE_MAPS = ("lesions_baseline", "lesions_followup", "lesions_difference")
CASCADE = tuple(f"{m}_c" for m in _CASCADE_MAPS) + tuple(f"{m}_mean_{int(CASCADE_BOX_MM)}mm" for m in _CASCADE_MAPS)


def feature_names(feature_set: str) -> tuple[str, ...]:
    """The ordered feature names of a named set."""
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose one of {', '.join(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def model_feature_names(feature_set: str, *, cascade: bool = False) -> tuple[str, ...]:
    """A model's ordered features: the named set, then the cascade's when ``cascade``."""
    return feature_names(feature_set) + (CASCADE if cascade else ())


def cascade_features(all_lesions: tuple[np.ndarray, np.ndarray], voxels, *, spacing_mm) -> np.ndarray:
    """(n, len(CASCADE)) float32 cascade features of ``voxels`` from the (baseline, follow-up)
    all-lesion maps (masks or probabilities in [0, 1], on the case grid); inputs not modified."""
    baseline, followup = (np.asarray(m, dtype=np.float32) for m in all_lesions)
    if baseline.shape != followup.shape:
        raise ValueError(f"all-lesion maps of shapes {baseline.shape} and {followup.shape}")
    voxels = tuple(np.asarray(v, dtype=np.int64) for v in voxels)
    n = len(voxels[0])
    if not n:
        return np.zeros((0, len(CASCADE)), np.float32)
    width = _box_width(CASCADE_BOX_MM, np.asarray(spacing_mm, dtype=float))
    window, local = _crop(voxels, baseline.shape, width // 2 + 1)
    local = tuple(local)
    maps = (baseline[window], followup[window], followup[window] - baseline[window])
    at_voxel = [m[local] for m in maps]
    means = [ndimage.uniform_filter(m, size=width, mode="nearest")[local] for m in maps]
    return np.stack(at_voxel + means, axis=1).astype(np.float32)


def neighbour_values(volume: np.ndarray, voxels: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                     outside: str = "edge") -> np.ndarray:
    """(n, 7) values of ``volume`` at each voxel and its 6 face neighbours, in ``NEIGHBOURS`` order.

    ``outside="edge"`` replicates the nearest voxel inside the grid; ``"zero"`` gives 0.
    """
    if outside not in ("edge", "zero"):
        raise ValueError(f"outside must be 'edge' or 'zero', not {outside!r}")
    out = np.empty((len(voxels[0]), len(NEIGHBOURS)), dtype=np.float32)
    shape = volume.shape
    for column, (_, offset) in enumerate(NEIGHBOURS):
        idx = [np.asarray(v, dtype=np.int64) + d for v, d in zip(voxels, offset)]
        clipped = [np.clip(v, 0, n - 1) for v, n in zip(idx, shape)]
        values = volume[tuple(clipped)].astype(np.float32)
        if outside == "zero":
            inside = np.ones(len(values), dtype=bool)
            for v, n in zip(idx, shape):
                inside &= (v >= 0) & (v < n)
            values = np.where(inside, values, 0.0)
        out[:, column] = values
    return out


def _box_statistics(image: np.ndarray, width_vox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local mean and standard deviation in a box (edges: nearest-voxel replication)."""
    image = image.astype(np.float32)
    mean = ndimage.uniform_filter(image, size=width_vox, mode="nearest")
    square = ndimage.uniform_filter(image * image, size=width_vox, mode="nearest")
    return mean, np.sqrt(np.maximum(square - mean * mean, 0.0))


def _box_width(width_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Odd box width in voxels along each axis: ``2 * round(width / spacing / 2) + 1``, at least 3
    (a box of one voxel is no context). ``np.round`` rounds halves to even, so at 1 mm the
    3 mm box is 5 voxels wide and the 7 mm box 9 voxels (the packaged model was trained so)."""
    half = np.maximum(np.round(width_mm / spacing / 2.0), 1).astype(int)
    return 2 * half + 1


def _crop(voxels, shape, margin) -> tuple[tuple[slice, ...], list[np.ndarray]]:
    """The bounding box of ``voxels`` grown by ``margin`` voxels (clipped), and the voxels in it."""
    lo = [max(int(v.min()) - int(m), 0) for v, m in zip(voxels, margin)]
    hi = [min(int(v.max()) + int(m) + 1, n) for v, m, n in zip(voxels, margin, shape)]
    return tuple(slice(a, b) for a, b in zip(lo, hi)), [v - a for v, a in zip(voxels, lo)]


def voxel_features(baseline: np.ndarray, followup: np.ndarray, candidates: np.ndarray, *,
                   voxels: tuple[np.ndarray, np.ndarray, np.ndarray], feature_set: str = "published",
                   spacing_mm=(1.0, 1.0, 1.0), brain: np.ndarray | None = None,
                   score: np.ndarray | None = None, labels: np.ndarray | None = None,
                   lesion_rows: dict[int, dict] | None = None,
                   all_lesions: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(n, len(model_feature_names(feature_set, cascade=all_lesions is not None))) float32 features
    of the voxels ``voxels`` (i, j, k arrays).

    ``baseline`` and ``followup`` are the normalised scans (see :func:`normalise_pair`),
    ``candidates`` the first-stage mask (any non-zero = candidate). ``context`` needs
    ``brain`` (and uses ``score`` if given); ``lesion`` needs ``labels`` (the candidate
    labels) and ``lesion_rows`` (label -> filter feature row); ``all_lesions`` (baseline and
    follow-up all-lesion maps) adds the cascade's features (:func:`cascade_features`). Inputs
    are not modified.
    """
    names = model_feature_names(feature_set, cascade=all_lesions is not None)
    voxels = tuple(np.asarray(v, dtype=np.int64) for v in voxels)
    n = len(voxels[0])
    columns = [neighbour_values(baseline, voxels), neighbour_values(followup, voxels),
               neighbour_values((np.asarray(candidates) > 0).astype(np.float32), voxels, outside="zero")]
    if feature_set != "published" and n:
        if brain is None:
            raise ValueError(f"feature set {feature_set!r} needs the brain mask")
        spacing = np.asarray(spacing_mm, dtype=float)
        widths = [_box_width(w, spacing) for w in CONTEXT_BOX_MM]
        margin = np.max(widths, axis=0) // 2 + np.ceil(EDGE_CAP_MM / spacing).astype(int) + 1
        window, local = _crop(voxels, baseline.shape, margin)
        local = tuple(local)
        b, f = baseline[window].astype(np.float32), followup[window].astype(np.float32)
        maps = {"baseline": b, "followup": f, "subtraction": f - b}
        extra = [maps["subtraction"][local][:, None]]
        # the six box filters are independent: side by side (SciPy's filters release the GIL)
        for mean, sd in side_by_side(lambda image, width: [s[local] for s in _box_statistics(image, width)],
                                     [(maps[source], width) for width in widths for source in _CONTEXT_MAPS]):
            extra.append(np.stack([mean, sd], axis=1))
        score_c = (np.asarray(score)[voxels].astype(np.float32) if score is not None
                   else np.full(n, np.nan, np.float32))
        edge = brain_edge_distance(np.asarray(brain)[window] > 0, local, spacing_mm=spacing)
        extra += [score_c[:, None], edge[:, None]]
        columns += extra
    elif feature_set != "published":
        columns.append(np.zeros((0, len(CONTEXT) - len(PUBLISHED)), np.float32))
    if feature_set == "lesion":
        if labels is None or lesion_rows is None:
            raise ValueError("feature set 'lesion' needs the candidate labels and their filter feature rows")
        columns.append(lesion_matrix(np.asarray(labels)[voxels] if n else np.zeros(0, np.int64), lesion_rows))
    if all_lesions is not None:
        columns.append(cascade_features(all_lesions, voxels, spacing_mm=spacing_mm))
    matrix = np.concatenate(columns, axis=1).astype(np.float32)
    if matrix.shape[1] != len(names):  # a programming error, never bad input
        raise RuntimeError(f"feature set {feature_set!r}: {matrix.shape[1]} columns for {len(names)} names")
    return matrix


def brain_edge_distance(brain: np.ndarray, voxels, *, spacing_mm, cap_mm: float = EDGE_CAP_MM) -> np.ndarray:
    """Distance (mm, capped at ``cap_mm``) from each voxel to the nearest voxel outside the brain
    that touches it (face neighbour); 0 for voxels outside the brain. The grid edge is not a
    brain edge. :class:`~mstools.distance.DistanceToMask` answers only the voxels asked for, and
    searches no further than ``cap_mm`` (a voxel deeper comes back as inf, capped like any other:
    the same values as the uncapped search; on a 1 mm raw pair 1.1 -> 0.2 s)."""
    from mstools.distance import DistanceToMask

    voxels = np.stack([np.asarray(v, dtype=np.int64) for v in voxels], axis=1).reshape(-1, 3)
    if not len(voxels):
        return np.zeros(0, dtype=np.float32)
    distance = DistanceToMask(~(np.asarray(brain) > 0), spacing_mm)(voxels, limit_mm=cap_mm)
    return np.minimum(distance, cap_mm).astype(np.float32)


def lesion_matrix(voxel_labels: np.ndarray, lesion_rows: dict[int, dict]) -> np.ndarray:
    """(n, len(LESION_COLUMNS)) lesion features of each voxel's candidate; NaN for label 0 or unknown."""
    top = max([int(voxel_labels.max()) if voxel_labels.size else 0, *lesion_rows.keys(), 0])
    table = np.full((top + 1, len(LESION_COLUMNS)), np.nan, dtype=np.float32)
    for label, row in lesion_rows.items():
        if label <= 0:
            continue
        table[label] = [_number(row.get(c)) for c in LESION_COLUMNS]
    return table[np.asarray(voxel_labels, dtype=np.int64)]


def _number(value) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def normalise_pair(baseline: np.ndarray, followup: np.ndarray, brain: np.ndarray, *, spacing_mm,
                   bias_sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Both scans z-scored in the brain ("normalised to have a zero mean and unit standard
    deviation", paper 001), the follow-up first freed of the smooth bias difference to the
    baseline as ``mstools subtract`` does (``bias_sigma_mm`` = 0: off)."""
    from mstools.intensity import zscore_in_mask
    from mstools.detect.subtraction import condition_pair

    brain = np.asarray(brain) > 0
    corrected = condition_pair(baseline, followup, brain, spacing_mm=spacing_mm, bias_sigma_mm=bias_sigma_mm)
    return zscore_in_mask(baseline, brain), zscore_in_mask(corrected, brain)
