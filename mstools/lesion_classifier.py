"""A lesion-level LightGBM classifier over candidate features (the learned filter).

Training groups candidates by case, so early stopping and the probability threshold
are chosen on cases the trees did not see. The model travels as LightGBM's text
format plus a card (features, parameters, training cases, threshold, scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Small-data LightGBM settings: shallow trees and a low learning rate for a few hundred
#: to a few thousand candidates; class imbalance handled by weighting positives by
#: negatives/positives (``scale_pos_weight``). Early stopping after 50 rounds without
#: improvement, as Prados & Kanber (paper 001) used for their voxel classifier.
LGBM_PARAMS = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 10,
    "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
    "verbosity": -1, "num_threads": 2, "deterministic": True, "force_row_wise": True,
}
MAX_ROUNDS = 1000
EARLY_STOPPING_ROUNDS = 50
VALIDATION_SHARE = 0.25


@dataclass
class TrainedClassifier:
    model_text: str
    features: list[str]
    threshold: float
    card: dict = field(default_factory=dict)


def _split_cases(groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows whose case is in the validation share."""
    cases = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(len(cases) * share))) if len(cases) > 1 else 0
    chosen = set(rng.choice(cases, size=n_val, replace=False).tolist()) if n_val else set()
    return np.array([g in chosen for g in groups])


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
    """Fit on all cases with early stopping on a case-grouped validation split."""
    import lightgbm as lgb

    truth = np.asarray(truth, dtype=int)
    if truth.min(initial=1) == truth.max(initial=0) or len(np.unique(truth)) < 2:
        raise ValueError("training needs both true and false candidates")
    val = _split_cases(groups, VALIDATION_SHARE, seed)
    if not val.any() or val.all():
        val = np.zeros(len(truth), bool)
    params = {**LGBM_PARAMS, "seed": seed}
    positives = max(int(truth[~val].sum()), 1)
    params["scale_pos_weight"] = float((~val).sum() - positives) / positives
    train_set = lgb.Dataset(features[~val], truth[~val], feature_name=list(feature_names))
    callbacks = []
    valid_sets = []
    if val.any() and len(np.unique(truth[val])) == 2:
        valid_sets = [lgb.Dataset(features[val], truth[val], reference=train_set)]
        callbacks = [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)]
    booster = lgb.train(params, train_set, num_boost_round=MAX_ROUNDS if valid_sets else 200,
                        valid_sets=valid_sets, callbacks=callbacks)
    rounds = booster.best_iteration or booster.current_iteration()
    threshold = best_f1_threshold(booster.predict(features[val], num_iteration=rounds), truth[val]) \
        if val.any() else 0.5
    # Refit on every case with the chosen number of rounds.
    params["scale_pos_weight"] = float(len(truth) - truth.sum()) / max(int(truth.sum()), 1)
    final = lgb.train(params, lgb.Dataset(features, truth, feature_name=list(feature_names)),
                      num_boost_round=max(rounds, 1))
    importance = dict(zip(feature_names, final.feature_importance("gain").round(3).tolist()))
    card = {"rounds": int(rounds), "threshold": threshold, "params": params,
            "candidates": int(len(truth)), "positives": int(truth.sum()),
            "cases": int(len(np.unique(groups))), "validation_cases": int(len(np.unique(groups[val]))),
            "feature_importance_gain": importance}
    return TrainedClassifier(model_text=final.model_to_string(), features=list(feature_names),
                             threshold=threshold, card=card)


def predict(model_text: str, features: np.ndarray) -> np.ndarray:
    """Probabilities of the model's positive class, one per row of ``features``.

    Walked in NumPy by :class:`~mstools.refine.trees.TreeEnsemble` (LightGBM's own split
    rule, checked against ``lightgbm.Booster.predict`` in the tests): importing LightGBM
    pulls in scikit-learn and cost 4-6 s of a 1 mm `mstools run` for a few hundred trees.
    """
    from mstools.refine.trees import TreeEnsemble

    if features.shape[0] == 0:
        return np.zeros(0)
    return TreeEnsemble.from_text(model_text).predict(features)


def model_feature_names(model_text: str) -> list[str]:
    from mstools.refine.trees import TreeEnsemble

    return list(TreeEnsemble.from_text(model_text).feature_names)
