"""Intensity harmonisation between the two time points, inside the brain.

Methods (all return both images; the baseline's scale is kept except for ``zscore``):

* ``zscore`` -- each image minus its brain mean, over its brain standard deviation
  (Salem, Hamzaoui, Cabezas... paper 001, and nnU-Net practice);
* ``linear`` -- Masson et al. (paper 001, step 6i): the follow-up rescaled
  linearly so that the joint histogram of (follow-up, baseline) brain intensities best
  fits the line y = x in the least-squares sense. Implemented as the orthogonal
  (total least squares) fit of the joint distribution, which treats both time points
  alike;
* ``histogram`` -- Nyul standardisation (Nyul et al. 2000, used by Masson et al. and
  others in paper 001) of the follow-up onto the baseline: piecewise-linear mapping
  of the follow-up's brain percentile landmarks :data:`NYUL_LANDMARKS` onto the
  baseline's (histogram matching on landmarks, the baseline acting as the template);
* ``none``.

The default :data:`DEFAULT_METHOD` was chosen by measurement, see its comment.
"""

from __future__ import annotations

import numpy as np

METHODS = ("zscore", "linear", "histogram", "none")

#: Percentile landmarks of Nyul et al. (2000): p1, the deciles, p99.
NYUL_LANDMARKS = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)

#: Chosen by measurement: 6 simulated 2 mm pairs (seeds 0-5, default nuisances: gain
#: +-12 %, gamma +-6 %, bias 0.15, SNR 30/22), after N4 and halfway registration;
#: `python benchmarks/bench_preprocess.py harmonisation`. Mean (min-max) over pairs of
#: std(follow-up - baseline) / std(baseline) in the brain outside (dilated) lesions, and
#: mean |follow-up - baseline| in eroded normal-appearing white matter / std(baseline):
#:
#:   raw pair (no preprocessing)  0.4245 (0.3501-0.4939)  n/a
#:   none (N4 + registration)     0.2396 (0.2256-0.2636)  0.3234 (0.1809-0.4817)
#:   zscore                       0.2313 (0.2195-0.2477)  0.1735 (0.1646-0.1874)
#:   linear (Masson et al.)       0.2313 (0.2193-0.2479)  0.1735 (0.1645-0.1876)
#:   histogram (Nyul landmarks)   0.2303 (0.2184-0.2468)  0.1697 (0.1612-0.1829)
#:
#: Landmark matching is lowest on both measures (it also absorbs the gamma change that
#: a linear map cannot), and keeps the baseline's scanner units.
DEFAULT_METHOD = "histogram"


def _brain_values(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = np.asarray(image)[np.asarray(mask, bool)]
    if values.size < 10:
        raise ValueError("brain mask has fewer than 10 voxels; cannot harmonise intensities")
    return values.astype(np.float64)


def zscore(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = _brain_values(image, mask)
    std = values.std()
    return ((np.asarray(image, np.float64) - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def linear_fit(baseline: np.ndarray, followup: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) so that slope * followup + intercept best matches the baseline
    along the y = x line (orthogonal least squares on the joint brain intensities)."""
    b = _brain_values(baseline, mask)
    f = _brain_values(followup, mask)
    cov = np.cov(np.stack([f, b]))
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    direction = eigenvectors[:, int(np.argmax(eigenvalues))]
    if abs(direction[0]) < 1e-12 or direction[1] / direction[0] <= 0:
        slope = b.std() / f.std() if f.std() > 0 else 1.0
    else:
        slope = direction[1] / direction[0]
    intercept = b.mean() - slope * f.mean()
    return float(slope), float(intercept)


def landmark_map(followup: np.ndarray, baseline: np.ndarray, mask: np.ndarray,
                 landmarks=NYUL_LANDMARKS) -> np.ndarray:
    """The follow-up mapped piecewise-linearly so that its brain percentiles equal the baseline's.

    Beyond the outer landmarks the mapping continues with the slope of the outer segments.
    """
    f_marks = np.percentile(_brain_values(followup, mask), landmarks)
    b_marks = np.percentile(_brain_values(baseline, mask), landmarks)
    if np.min(followup) >= 0 and np.min(baseline) >= 0 and f_marks[0] > 0 and b_marks[0] > 0:
        # MR magnitudes: zero (air) stays zero, below the first landmark the map is linear to 0
        f_marks, b_marks = np.concatenate([[0.0], f_marks]), np.concatenate([[0.0], b_marks])
    f_marks = np.maximum.accumulate(f_marks + np.arange(len(f_marks)) * 1e-6 * max(1.0, abs(f_marks[-1])))
    image = np.asarray(followup, np.float64)
    out = np.interp(image, f_marks, b_marks)
    low_slope = (b_marks[1] - b_marks[0]) / (f_marks[1] - f_marks[0])
    high_slope = (b_marks[-1] - b_marks[-2]) / (f_marks[-1] - f_marks[-2])
    # the outer segments' lines at the voxels beyond the landmarks only (no whole-volume temporaries)
    low, high = image < f_marks[0], image > f_marks[-1]
    out[low] = b_marks[0] + (image[low] - f_marks[0]) * low_slope
    out[high] = b_marks[-1] + (image[high] - f_marks[-1]) * high_slope
    return out.astype(np.float32)


def harmonise(baseline: np.ndarray, followup: np.ndarray, mask: np.ndarray, *,
              method: str = DEFAULT_METHOD) -> tuple[np.ndarray, np.ndarray, dict]:
    """(baseline, follow-up, parameters) with comparable intensities inside ``mask``."""
    baseline = np.asarray(baseline, dtype=np.float32)
    followup = np.asarray(followup, dtype=np.float32)
    if method == "none":
        return baseline, followup, {"method": "none"}
    if method == "zscore":
        b, f = _brain_values(baseline, mask), _brain_values(followup, mask)
        return zscore(baseline, mask), zscore(followup, mask), {
            "method": "zscore", "baseline_mean": b.mean(), "baseline_std": b.std(),
            "followup_mean": f.mean(), "followup_std": f.std()}
    if method == "linear":
        slope, intercept = linear_fit(baseline, followup, mask)
        return baseline, (slope * followup.astype(np.float64) + intercept).astype(np.float32), {
            "method": "linear", "slope": slope, "intercept": intercept}
    if method == "histogram":
        return baseline, landmark_map(followup, baseline, mask), {
            "method": "histogram", "landmarks_percent": list(NYUL_LANDMARKS)}
    raise ValueError(f"harmonisation method must be one of {METHODS}")


def relative_difference_std(baseline: np.ndarray, followup: np.ndarray, mask: np.ndarray) -> float:
    """std(follow-up - baseline) / std(baseline) inside ``mask``: a scale-free measure of
    how different two harmonised images are (used to choose the default)."""
    b = _brain_values(baseline, mask)
    f = _brain_values(followup, mask)
    return float(np.std(f - b) / (np.std(b) if np.std(b) > 0 else 1.0))
