"""Evaluation metrics: pure functions on arrays (no file I/O).

* :mod:`~mstools.metrics.voxelwise` -- Dice, Jaccard, PPV, sensitivity, specificity,
  volumes, relative volume error, VD, smoothed Dice (paper 001, eq. 1);
* :mod:`~mstools.metrics.surface` -- Hausdorff, HD95 (pooled or max-directed), ASSD in mm;
* :mod:`~mstools.metrics.lesionwise` -- components, overlap table, the MSSEG-2
  (Anima) rule, the any-overlap rule (ISBI 2015) and the 10 %/70 % rule (paper 004);
* :mod:`~mstools.metrics.summary` -- Denner et al.'s overall score, statistics over cases;
* :mod:`~mstools.metrics.case` -- all of them for one case, one labelling per image.

Every definition, and what each metric is when a mask is empty, is written in the
docstring of the module that computes it.
"""

from mstools.metrics.case import (LESION_COLUMNS, METRIC_DEFINITIONS, CaseEvaluation, EvaluationOptions,
                                  evaluate_case)
from mstools.metrics.lesionwise import ANIMA_RULE, LesionRule
from mstools.metrics.surface import DEFAULT_HD95, HD95_DEFINITIONS

__all__ = [
    "ANIMA_RULE", "CaseEvaluation", "DEFAULT_HD95", "EvaluationOptions", "HD95_DEFINITIONS", "LESION_COLUMNS",
    "LesionRule", "METRIC_DEFINITIONS", "evaluate_case",
]
