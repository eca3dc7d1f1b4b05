"""A lesion-level LightGBM classifier over candidate features (the learned filter).

Training groups candidates by case (:func:`mstools.models.boosting.fit_grouped`, the
trainer refine uses too), so early stopping and the probability threshold are chosen on
cases the trees did not see. The model travels as LightGBM's text
format plus a card (features, parameters, training cases, threshold, scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mstools.models.boosting import LGBM_PARAMS, fit_grouped

#: The filter trains with LightGBM's small-data settings (:data:`~mstools.models.boosting.LGBM_PARAMS`);
#: class imbalance is handled by weighting positives by negatives/positives (``scale_pos_weight``).
MAX_ROUNDS = 1000
#: Rounds fitted when no held-out cases can stop the boosting early.
ROUNDS_WITHOUT_VALIDATION = 200


@dataclass
class TrainedClassifier:
    model_text: str
    features: list[str]
    threshold: float
    card: dict = field(default_factory=dict)


def best_f1_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Probability threshold maximising F1 of candidate classification (0.5 if undecidable)."""
    best, best_f1 = 0.5, -1.0
    for t in np.linspace(0.05, 0.95, 19):
        predicted = probabilities >= t
        tp = float((predicted & (truth == 1)).sum())
        denom = predicted.sum() + (truth == 1).sum()
        f1 = 2 * tp / denom if denom else 0.0
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), f1
    return best


def train(features: np.ndarray, truth: np.ndarray, groups: np.ndarray, *, feature_names: list[str],
          seed: int = 0) -> TrainedClassifier:
    """Fit on all cases with early stopping on a case-grouped validation split, whose
    candidates also choose the probability threshold (:func:`best_f1_threshold`)."""
    truth = np.asarray(truth, dtype=int)
    if len(np.unique(truth)) < 2:
        raise ValueError("training needs both true and false candidates")
    fit = fit_grouped(features, truth, groups, names=feature_names, base_params=LGBM_PARAMS, seed=seed,
                      class_weight="balanced", max_rounds=MAX_ROUNDS, fallback_rounds=ROUNDS_WITHOUT_VALIDATION,
                      held_out_probability=True)
    val = fit.held_out
    threshold = 0.5 if fit.held_out_probability is None else best_f1_threshold(fit.held_out_probability, truth[val])
    importance = dict(zip(feature_names, fit.booster.feature_importance("gain").round(3).tolist()))
    card = {"rounds": fit.rounds, "threshold": threshold, "params": fit.params,
            "candidates": int(len(truth)), "positives": int(truth.sum()),
            "cases": int(len(np.unique(groups))), "validation_cases": int(len(np.unique(groups[val]))),
            "feature_importance_gain": importance}
    return TrainedClassifier(model_text=fit.model_text, features=list(feature_names),
                             threshold=threshold, card=card)


def predict(model_text: str, features: np.ndarray) -> np.ndarray:
    """Probabilities of the model's positive class, one per row of ``features``.

    Walked in NumPy by :class:`~mstools.candidates.refine.trees.TreeEnsemble` (LightGBM's own split
    rule, checked against ``lightgbm.Booster.predict`` in the tests): importing LightGBM
    pulls in scikit-learn and cost 4-6 s of a 1 mm `mstools run` for a few hundred trees.
    """
    from mstools.candidates.refine.trees import TreeEnsemble

    if features.shape[0] == 0:
        return np.zeros(0)
    return TreeEnsemble.from_text(model_text).predict(features)


def model_feature_names(model_text: str) -> list[str]:
    from mstools.candidates.refine.trees import TreeEnsemble

    return list(TreeEnsemble.from_text(model_text).feature_names)
