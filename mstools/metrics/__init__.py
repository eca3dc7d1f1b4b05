"""Evaluation metrics: pure functions on arrays (no file I/O).

* :mod:`~mstools.metrics.voxelwise` -- Dice, Jaccard, PPV, sensitivity, specificity,
  volumes, relative volume error, VD, smoothed Dice (paper 001, eq. 1);
* :mod:`~mstools.metrics.surface` -- Hausdorff, HD95 (pooled or max-directed), ASSD in mm;
* :mod:`~mstools.metrics.lesionwise` -- components, overlap table, the MSSEG-2
  (Anima) rule, the any-overlap rule (ISBI 2015) and the 10 %/70 % rule (paper 004);
* :mod:`~mstools.metrics.summary` -- Denner et al.'s overall score, statistics over cases;
* :mod:`~mstools.metrics.case` -- all of them for one case, one labelling per image;
* :mod:`~mstools.metrics.defaults` -- the published defaults, in one place.

Every definition, and what each metric is when a mask is empty, is written in the
docstring of the module that computes it. The names below are loaded on first use,
so that importing :mod:`mstools.metrics.defaults` stays light.
"""

from __future__ import annotations

from mstools._lazy import lazy_exports

_EXPORTS = {
    "CaseEvaluation": "mstools.metrics.case",
    "EvaluationOptions": "mstools.metrics.case",
    "LESION_COLUMNS": "mstools.metrics.case",
    "METRIC_DEFINITIONS": "mstools.metrics.case",
    "evaluate_case": "mstools.metrics.case",
    "ANIMA_RULE": "mstools.metrics.lesionwise",
    "LesionRule": "mstools.metrics.lesionwise",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
