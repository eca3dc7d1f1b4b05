"""The one LightGBM trainer of mstools: the learned filter and the refine classifier use it.

Both hold out whole cases (``VALIDATION_SHARE`` of them) so that early stopping (patience
``EARLY_STOPPING_ROUNDS``, as Prados & Kanber, paper 001, used for their voxel
classifier) is decided on cases the trees did not see, then refit the number of rounds
found there on every case. Without a usable held-out split (one case; or one class among
the held-out or the training rows) a fixed number of rounds is fitted on every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Small-data LightGBM settings: shallow trees and a low learning rate for a few hundred
#: to a few thousand candidates (the filter; refine enlarges them for its voxels).
LGBM_PARAMS = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 10,
    "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
    "verbosity": -1, "num_threads": 2, "deterministic": True, "force_row_wise": True,
}
EARLY_STOPPING_ROUNDS = 50
VALIDATION_SHARE = 0.25
#: "none": the rows as they are; "balanced": positives weighted by negatives / positives
#: (LightGBM ``scale_pos_weight``).
CLASS_WEIGHTS = ("none", "balanced")


def split_cases(groups: np.ndarray, share: float = VALIDATION_SHARE, seed: int = 0) -> np.ndarray:
    """Boolean mask of the rows whose case (``groups`` value) is drawn for validation."""
    cases = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(len(cases) * share))) if len(cases) > 1 else 0
    chosen = set(rng.choice(cases, size=n_val, replace=False).tolist()) if n_val else set()
    return np.array([g in chosen for g in groups])


def lgbm_params(base: dict, *, seed: int, class_weight: str, truth: np.ndarray) -> dict:
    """``base`` with the seed and, for ``class_weight="balanced"``, ``scale_pos_weight`` of ``truth``."""
    if class_weight not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of {', '.join(CLASS_WEIGHTS)}, not {class_weight!r}")
    params = {**base, "seed": seed}
    if class_weight == "balanced":
        positives = max(int(np.sum(truth)), 1)
        params["scale_pos_weight"] = float(len(truth) - positives) / positives
    return params


def can_stop_early(truth: np.ndarray, held_out: np.ndarray) -> bool:
    """Whether the held-out rows can choose the rounds: both sides non-empty, each with both classes."""
    return bool(held_out.any() and not held_out.all() and len(np.unique(truth[held_out])) == 2
                and len(np.unique(truth[~held_out])) == 2)


@dataclass
class GroupedFit:
    """A model refitted on every case, and what the held-out cases decided."""

    booster: object               # lightgbm.Booster fitted on every row with ``rounds``
    rounds: int
    params: dict                  # the refit's parameters
    held_out: np.ndarray          # rows of the cases drawn for validation
    held_out_probability: np.ndarray | None  # the probe's probabilities there (if asked for)

    @property
    def model_text(self) -> str:
        return self.booster.model_to_string()


def fit_grouped(features: np.ndarray, truth: np.ndarray, groups: np.ndarray, *, names, base_params: dict,
                seed: int = 0, class_weight: str = "none", max_rounds: int, fallback_rounds: int | None = None,
                held_out_probability: bool = False) -> GroupedFit:
    """Early stopping on held-out cases, then a refit on every case.

    A probe is trained on the other cases (at most ``max_rounds``, stopped by the held-out
    loss); its number of rounds is refitted on every row. Without a usable split the
    refit has ``fallback_rounds`` (default ``max_rounds``). ``held_out_probability``: the
    probe's probabilities of the held-out rows are returned (a probe of
    ``fallback_rounds`` is trained for them when the split cannot stop early).
    """
    import lightgbm as lgb

    names = list(names)
    fallback_rounds = max_rounds if fallback_rounds is None else fallback_rounds
    held = split_cases(np.asarray(groups), VALIDATION_SHARE, seed)
    rounds, probability = fallback_rounds, None
    early = can_stop_early(truth, held)
    if early or (held_out_probability and held.any() and not held.all()):
        params = lgbm_params(base_params, seed=seed, class_weight=class_weight, truth=truth[~held])
        train_set = lgb.Dataset(features[~held], truth[~held], feature_name=names)
        if early:
            valid_set = lgb.Dataset(features[held], truth[held], reference=train_set)
            probe = lgb.train(params, train_set, num_boost_round=max_rounds, valid_sets=[valid_set],
                              callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])
            rounds = int(probe.best_iteration or probe.current_iteration())
        else:
            probe = lgb.train(params, train_set, num_boost_round=fallback_rounds)
        if held_out_probability:
            probability = probe.predict(features[held], num_iteration=rounds)
    params = lgbm_params(base_params, seed=seed, class_weight=class_weight, truth=truth)
    final = lgb.train(params, lgb.Dataset(features, truth, feature_name=names), num_boost_round=max(rounds, 1))
    return GroupedFit(booster=final, rounds=int(rounds), params=params, held_out=held,
                      held_out_probability=probability)
