"""Combined scores and statistics over cases.

``overall_score`` is Denner et al.'s score (paper 000, eq. 3), implemented from the
formula as printed:

    0.125 DSC + 0.125 PPV + 0.25 (1 - VD) + 0.25 LTPR + 0.25 (1 - LFPR)

with the voxel-wise DSC and PPV, VD = |V_P - V_G| / V_G, and the any-overlap LTPR
and LFPR. Nothing is clipped: a VD above 1 lowers the score below the range of the
other terms, as the formula says. It is n/a when any term is n/a (empty ground truth).

Statistics over cases: n/a values are left out, and their number is reported
(``n_undefined``) so that a mean over fewer cases is visible. The standard deviation
is the sample one (ddof = 1); quartiles interpolate linearly.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

#: Denner et al. (paper 000, eq. 3) weights.
OVERALL_SCORE_WEIGHTS = {"dsc": 0.125, "ppv": 0.125, "one_minus_vd": 0.25, "ltpr": 0.25, "one_minus_lfpr": 0.25}


def overall_score(*, dsc: float, ppv: float, vd: float, ltpr: float, lfpr: float) -> float:
    """Paper 000, eq. 3; NaN when any input is NaN."""
    w = OVERALL_SCORE_WEIGHTS
    return (w["dsc"] * dsc + w["ppv"] * ppv + w["one_minus_vd"] * (1.0 - vd) + w["ltpr"] * ltpr
            + w["one_minus_lfpr"] * (1.0 - lfpr))


def describe(values: Iterable[object]) -> dict[str, float | int | None]:
    """n, n_undefined, mean, std, min, q1, median, q3, max of the defined values."""
    raw = [v for v in values]
    numbers = np.array([float(v) for v in raw if v is not None and not _is_nan(v)], dtype=np.float64)
    n = int(numbers.size)
    out: dict[str, float | int | None] = {"n": n, "n_undefined": len(raw) - n}
    if n == 0:
        out.update({k: None for k in ("mean", "std", "min", "q1", "median", "q3", "max")})
        return out
    q1, median, q3 = np.percentile(numbers, [25, 50, 75])
    out.update({
        "mean": float(numbers.mean()),
        "std": float(numbers.std(ddof=1)) if n > 1 else None,
        "min": float(numbers.min()),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(numbers.max()),
    })
    return out


def _is_nan(value: object) -> bool:
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def summarise(rows: Sequence[Mapping[str, object]], metrics: Sequence[str]) -> dict[str, dict]:
    """``describe`` of each metric over the rows."""
    return {m: describe(row.get(m) for row in rows) for m in metrics}
