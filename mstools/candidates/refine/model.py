"""Train, cross-validate and apply the voxel-wise refinement classifier (paper 001, section 2.2).

Prados & Kanber trained a LightGBM voxel classifier, evaluated it by leave-one-out
cross-validation, and stopped boosting after 50 rounds without improvement on an
inner validation split. Here the inner split holds out whole cases
(``VALIDATION_SHARE`` of the training cases, with the trainer the learned filter uses:
:func:`mstools.models.boosting.fit_grouped`), the number of rounds found there is refitted on
every training case, and the outer cross-validation is grouped by case (k-fold or
leave-one-out). Scores come from ``mstools.metrics.evaluate_case``, on the whole
volumes, after the paper's post-processing.

A model travels as LightGBM's text format plus a card (JSON) naming its feature set
and the feature options; :class:`RefineModel` refuses features other than its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mstools.models.boosting import (EARLY_STOPPING_ROUNDS, LGBM_PARAMS, VALIDATION_SHARE, can_stop_early,
                                     fit_grouped, lgbm_params, split_cases)
from mstools.candidates.refine.features import model_feature_names, normalise_pair, voxel_features
from mstools.candidates.refine.postprocess import PostProcessing, refined_detections
from mstools.candidates.refine.sampling import SamplingOptions, candidate_region, training_voxels

#: The learned filter's settings (shared), with larger leaves and a faster rate for the
#: 10^5-10^6 voxels of a cohort (the filter sees a few hundred candidates).
#: ``max_delta_step`` 1 bounds each leaf's Newton step: with ~0.6 % lesion voxels a pure leaf of the
#: first tree otherwise jumps by ~1/prevalence x the rate (~16 logits), and on the 108 mixed-domain
#: training cases of 2026-12-07 the held-out loss rose from 0.052 to 0.178 at round 2 and never came
#: back within the patience: early stopping kept 1 round. With the bound: 0.082 -> 0.024, 114 rounds
#: (measured on that split, benchmarks/retrain_mixed_domain.sh; XGBoost's advice of 1-10 for
#: imbalanced logistic regression).
VOXEL_PARAMS = {**LGBM_PARAMS, "learning_rate": 0.1, "num_leaves": 31, "min_data_in_leaf": 100,
                "max_delta_step": 1.0}
MAX_ROUNDS = 500
#: Of ``mstools.models.boosting.CLASS_WEIGHTS``: "none", the candidate-region sampling is the only rebalancing, so
#: probabilities stay calibrated for the paper's 0.2 threshold.
DEFAULT_CLASS_WEIGHT = "none"
#: Normalisation: the follow-up's bias difference to the baseline removed as `mstools subtract` does.
BIAS_SIGMA_MM = 15.0
KIND = "mstools refine voxel classifier"
#: Metrics reported by cross-validation (keys of ``evaluate_case``'s metrics).
CV_METRICS = ("dice", "smoothed_dice", "lesion_f1", "lesion_sensitivity", "lesion_ppv")


@dataclass
class CaseInputs:
    """One case on one grid: raw scans, brain, the detector's candidates (labels or mask)."""

    baseline: np.ndarray
    followup: np.ndarray
    brain: np.ndarray
    candidates: np.ndarray           # labels (int) or mask; > 0 = candidate
    affine: np.ndarray
    score: np.ndarray | None = None
    lesion_rows: dict | None = None  # label -> filter feature row (feature set "lesion")
    ground_truth: np.ndarray | None = None
    name: str = ""
    #: The cascade's inputs (paper 001: Basaran; McKinley): all-lesion maps of (baseline, follow-up).
    all_lesions: tuple | None = None


@dataclass
class CaseSamples:
    """A case's training rows and what its evaluation needs (no full volumes kept)."""

    name: str
    features: np.ndarray     # (n, f) float32
    truth: np.ndarray        # (n,) uint8
    in_region: np.ndarray    # (n,) bool: rows predicted at apply time
    voxels: np.ndarray       # (n,) flat indices
    shape: tuple
    affine: np.ndarray
    truth_voxels: np.ndarray      # flat indices of the ground-truth voxels
    candidate_voxels: np.ndarray  # flat indices of the candidate voxels


def spacing_of(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def _features_for(case: CaseInputs, voxels, *, feature_set: str, bias_sigma_mm: float,
                  cascade: bool = False) -> np.ndarray:
    if cascade and case.all_lesions is None:
        raise ValueError("a cascade model needs the all-lesion maps of both visits")
    spacing = spacing_of(case.affine)
    b, f = normalise_pair(case.baseline, case.followup, case.brain, spacing_mm=spacing, bias_sigma_mm=bias_sigma_mm)
    return voxel_features(b, f, case.candidates, voxels=voxels, feature_set=feature_set, spacing_mm=spacing,
                          brain=case.brain, score=case.score,
                          labels=case.candidates if feature_set == "lesion" else None, lesion_rows=case.lesion_rows,
                          all_lesions=case.all_lesions if cascade else None)


def case_samples(case: CaseInputs, *, feature_set: str, sampling: SamplingOptions = SamplingOptions(),
                 bias_sigma_mm: float = BIAS_SIGMA_MM, seed: int = 0, cascade: bool = False) -> CaseSamples:
    """Training rows of one case with ground truth (see ``mstools.candidates.refine.sampling``);
    ``cascade``: with the features of the case's all-lesion maps."""
    if case.ground_truth is None:
        raise ValueError(f"{case.name or 'case'}: training needs a ground truth")
    region = candidate_region(case.candidates, case.brain, spacing_mm=spacing_of(case.affine),
                              dilation_mm=sampling.dilation_mm)
    voxels, in_region = training_voxels(region, case.brain, background_fraction=sampling.background_fraction,
                                        seed=seed)
    features = _features_for(case, voxels, feature_set=feature_set, bias_sigma_mm=bias_sigma_mm, cascade=cascade)
    gt = np.asarray(case.ground_truth) > 0
    return CaseSamples(name=case.name, features=features, truth=gt[voxels].astype(np.uint8), in_region=in_region,
                       voxels=np.ravel_multi_index(voxels, gt.shape), shape=gt.shape,
                       affine=np.asarray(case.affine, dtype=float), truth_voxels=np.flatnonzero(gt),
                       candidate_voxels=np.flatnonzero(np.asarray(case.candidates) > 0))


def _params(seed: int, class_weight: str, truth: np.ndarray) -> dict:
    return lgbm_params(VOXEL_PARAMS, seed=seed, class_weight=class_weight, truth=truth)


def _check_classes(truth: np.ndarray) -> None:
    if len(np.unique(truth)) < 2:
        raise ValueError("training needs voxels of both classes (lesion and background)")


def _stopping_round(curve: list[float]) -> int:
    """Rounds kept by early stopping with a patience of ``EARLY_STOPPING_ROUNDS`` on a loss curve."""
    best, best_round = math.inf, 0
    for n, value in enumerate(curve, start=1):
        if value < best - 1e-12:
            best, best_round = value, n
        elif n - best_round >= EARLY_STOPPING_ROUNDS:
            break
    return max(best_round, 1)


def fit(features: np.ndarray, truth: np.ndarray, groups: np.ndarray, *, names, seed: int = 0,
        class_weight: str = DEFAULT_CLASS_WEIGHT, max_rounds: int = MAX_ROUNDS) -> tuple[str, dict]:
    """(LightGBM model text, training facts): early stopping on held-out cases, then a refit on all."""
    truth = np.asarray(truth, dtype=np.uint8)
    _check_classes(truth)
    fitted = fit_grouped(features, truth, groups, names=names, base_params=VOXEL_PARAMS, seed=seed,
                         class_weight=class_weight, max_rounds=max_rounds)
    info = {"rounds": fitted.rounds, "params": fitted.params, "voxels": int(len(truth)),
            "positives": int(truth.sum()), "cases": int(len(np.unique(groups))),
            "validation_cases": int(len(np.unique(np.asarray(groups)[fitted.held_out]))),
            "feature_importance_gain": _importance(fitted.booster, names)}
    return fitted.model_text, info


def _importance(booster, names) -> dict:
    gain = booster.feature_importance("gain")
    total = float(gain.sum()) or 1.0
    return {name: round(float(g) / total, 5) for name, g in zip(names, gain)}


def fit_dask(features: np.ndarray, truth: np.ndarray, groups: np.ndarray, *, client, names, seed: int = 0,
             class_weight: str = DEFAULT_CLASS_WEIGHT, max_rounds: int = MAX_ROUNDS,
             chunk_rows: int = 200_000) -> tuple[str, dict]:
    """As :func:`fit`, on a Dask cluster (``lightgbm.dask``): the validation curve picks the rounds
    (patience ``EARLY_STOPPING_ROUNDS``), then a refit on every case."""
    import dask.array as da
    from lightgbm.dask import DaskLGBMClassifier

    truth = np.asarray(truth, dtype=np.uint8)
    _check_classes(truth)
    workers = max(len(client.scheduler_info().get("workers", {})), 1)
    chunk = max(min(chunk_rows, -(-len(truth) // workers)), 1)

    def arrays(rows):
        return (da.from_array(features[rows], chunks=(chunk, features.shape[1])),
                da.from_array(truth[rows], chunks=(chunk,)))

    def model(params, rounds):
        settings = {k: v for k, v in params.items() if k not in ("objective", "num_threads")}
        # threads per worker come from the Dask workers themselves (lightgbm.dask sets them)
        return DaskLGBMClassifier(client=client, n_estimators=rounds, **settings)

    val = split_cases(np.asarray(groups), VALIDATION_SHARE, seed)
    rounds = max_rounds
    if can_stop_early(truth, val):
        x_train, y_train = arrays(~val)
        probe = model(_params(seed, class_weight, truth[~val]), max_rounds)
        probe.fit(x_train, y_train, feature_name=list(names))
        # The validation curve is computed here, not by the workers: lightgbm.dask leaves
        # evals_result_ empty when the returned worker held no validation chunk.
        rounds = _stopping_round(_logloss_curve(probe.booster_, features[val], truth[val]))
    everything = np.ones(len(truth), bool)
    x_all, y_all = arrays(everything)
    final = model(_params(seed, class_weight, truth), rounds)
    final.fit(x_all, y_all, feature_name=list(names))
    booster = final.booster_
    info = {"rounds": rounds, "params": _params(seed, class_weight, truth), "voxels": int(len(truth)),
            "positives": int(truth.sum()), "cases": int(len(np.unique(groups))),
            "validation_cases": int(len(np.unique(np.asarray(groups)[val]))), "dask_workers": workers,
            "feature_importance_gain": _importance(booster, names)}
    return booster.model_to_string(), info


def _logloss_curve(booster, features: np.ndarray, truth: np.ndarray) -> list[float]:
    """Binary log loss on (features, truth) after each boosting round of ``booster``."""
    raw = np.zeros(len(truth))
    curve = []
    for k in range(booster.num_trees()):
        raw += booster.predict(features, raw_score=True, start_iteration=k, num_iteration=1)
        p = np.clip(1.0 / (1.0 + np.exp(-raw)), 1e-15, 1 - 1e-15)
        curve.append(float(-np.mean(truth * np.log(p) + (1 - truth) * np.log(1 - p))))
    return curve


@dataclass
class RefineModel:
    """A trained refinement model: load once, predict many. Refuses features not its own."""

    model_text: str
    card: dict
    _booster: object = field(default=None, repr=False)

    def __post_init__(self):
        from mstools.candidates.refine.trees import TreeEnsemble

        try:  # NumPy prediction: importing lightgbm (and scikit-learn with it) takes seconds
            self._booster = TreeEnsemble.from_text(self.model_text)
        except (ValueError, KeyError, IndexError) as exc:
            raise ValueError(f"not a LightGBM model ({exc})") from None
        names = list(self._booster.feature_names)
        feature_set = self.card.get("feature_set")
        cascade = self.card.get("cascade", False)
        if not isinstance(cascade, bool):
            raise ValueError(f"the card's cascade {cascade!r} is not true or false")
        try:
            expected = list(model_feature_names(str(feature_set), cascade=cascade))
        except ValueError:
            raise ValueError(f"the card's feature set {feature_set!r} is not one of this version's") from None
        if names != list(self.card.get("features", [])) or names != expected:
            raise ValueError(f"the model's features {names[:3]}... (card: set {feature_set!r}) are not this "
                             f"version's {feature_set!r} features")
        # the card's other values are used only when predicting: checked now, not after the work
        sampling = self.card.get("sampling", {})
        try:
            if not isinstance(sampling, dict) or not all(math.isfinite(float(v)) for v in sampling.values()):
                raise ValueError
            SamplingOptions(**sampling)
        except (TypeError, ValueError):
            raise ValueError(f"the card's sampling {sampling!r} is not dilation_mm (>= 0) and background_fraction "
                             "(0 to 1)") from None
        sigma = self.card.get("bias_sigma_mm", BIAS_SIGMA_MM)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"the card's bias_sigma_mm {sigma!r} is not a number of mm (>= 0)")

    @property
    def features(self) -> list[str]:
        return list(self.card["features"])

    @property
    def feature_set(self) -> str:
        return str(self.card["feature_set"])

    @property
    def cascade(self) -> bool:
        """Whether the model reads the all-lesion maps of both visits (paper 001's cascade)."""
        return bool(self.card.get("cascade", False))

    @property
    def sampling(self) -> SamplingOptions:
        return SamplingOptions(**self.card.get("sampling", {}))

    @property
    def bias_sigma_mm(self) -> float:
        return float(self.card.get("bias_sigma_mm", BIAS_SIGMA_MM))

    def predict(self, features: np.ndarray, names) -> np.ndarray:
        """Probabilities of rows of ``features`` whose columns are ``names`` (must be the model's)."""
        if list(names) != self.features:
            raise ValueError(f"features {list(names)[:3]}... ({len(names)}) are not the model's "
                             f"{self.feature_set!r} set ({len(self.features)})")
        if features.shape[0] == 0:
            return np.zeros(0)
        return self._booster.predict(features)

    def probability_map(self, case: CaseInputs, *, region: str = "candidates") -> np.ndarray:
        """Probability of "new lesion" at every voxel of the candidate region (or the brain); 0 elsewhere."""
        brain = np.asarray(case.brain) > 0
        if region == "candidates":
            where = candidate_region(case.candidates, brain, spacing_mm=spacing_of(case.affine),
                                     dilation_mm=self.sampling.dilation_mm)
        elif region == "brain":
            where = brain | (np.asarray(case.candidates) > 0)
        else:
            raise ValueError(f"region must be 'candidates' or 'brain', not {region!r}")
        voxels = np.nonzero(where)
        probability = np.zeros(brain.shape, dtype=np.float32)
        if len(voxels[0]):
            matrix = _features_for(case, voxels, feature_set=self.feature_set, bias_sigma_mm=self.bias_sigma_mm,
                                   cascade=self.cascade)
            probability[voxels] = self.predict(matrix, self.features)
        return probability


def _volume(flat: np.ndarray, shape) -> np.ndarray:
    volume = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    volume[flat] = 1
    return volume.reshape(shape)


def folds_of(n_cases: int, folds: int | None, seed: int) -> np.ndarray:
    """Fold index of each case: ``folds`` groups (None or >= n_cases: leave-one-out)."""
    if n_cases < 2:
        raise ValueError("cross-validation needs at least 2 cases")
    k = n_cases if folds is None or folds >= n_cases else folds
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {folds}")
    order = np.random.default_rng(seed).permutation(n_cases)
    assignment = np.empty(n_cases, dtype=int)
    assignment[order] = np.arange(n_cases) % k
    return assignment


def evaluate_held_out(sample: CaseSamples, probability_rows: np.ndarray, *,
                      postprocessing: PostProcessing = PostProcessing()) -> tuple[dict, dict]:
    """(metrics of the candidates, metrics of the refined mask) of one held-out case."""
    from mstools.metrics import evaluate_case

    truth = _volume(sample.truth_voxels, sample.shape)
    probability = np.zeros(int(np.prod(sample.shape)), dtype=np.float32)
    probability[sample.voxels[sample.in_region]] = probability_rows
    detections, _ = refined_detections(probability.reshape(sample.shape), affine=sample.affine,
                                       options=postprocessing)
    before = evaluate_case(_volume(sample.candidate_voxels, sample.shape), truth, affine=sample.affine).metrics
    after = evaluate_case(detections.mask, truth, affine=sample.affine).metrics
    return before, after


def cross_validate(samples: list[CaseSamples], *, names, folds: int | None = 5, seed: int = 0,
                   class_weight: str = DEFAULT_CLASS_WEIGHT, max_rounds: int = MAX_ROUNDS,
                   postprocessing: PostProcessing = PostProcessing(), also: dict | None = None,
                   trainer=None, progress=None) -> dict:
    """Case-grouped cross-validation; per-case metrics of candidates and refined masks, and means.

    ``also`` (name -> PostProcessing) scores the same held-out probabilities under other
    post-processing settings (columns ``<name>_<metric>``).

    ``trainer`` (default :func:`fit`) is called as ``trainer(features, truth, groups, names=,
    seed=, class_weight=, max_rounds=)``; ``progress(message)`` is told of each fold.
    """
    trainer = trainer or fit
    assignment = folds_of(len(samples), folds, seed)
    rows = []
    for fold in range(int(assignment.max()) + 1):
        train_idx = [n for n in range(len(samples)) if assignment[n] != fold]
        test_idx = [n for n in range(len(samples)) if assignment[n] == fold]
        features = np.concatenate([samples[n].features for n in train_idx])
        truth = np.concatenate([samples[n].truth for n in train_idx])
        groups = np.concatenate([np.full(len(samples[n].truth), n) for n in train_idx])
        text, info = trainer(features, truth, groups, names=names, seed=seed, class_weight=class_weight,
                             max_rounds=max_rounds)
        del features, truth, groups
        feature_set, cascade = _set_of(names)
        model = RefineModel(text, {"feature_set": feature_set, "cascade": cascade, "features": list(names)})
        for n in test_idx:
            sample = samples[n]
            p = model.predict(sample.features[sample.in_region], names)
            before, after = evaluate_held_out(sample, p, postprocessing=postprocessing)
            row = {"case": sample.name, "fold": fold, "rounds": info["rounds"]}
            row.update({f"candidates_{m}": before[m] for m in CV_METRICS})
            row.update({f"refined_{m}": after[m] for m in CV_METRICS})
            for key, options in (also or {}).items():
                _, other = evaluate_held_out(sample, p, postprocessing=options)
                row.update({f"{key}_{m}": other[m] for m in CV_METRICS})
            rows.append(row)
        if progress is not None:
            progress(f"fold {fold + 1}/{int(assignment.max()) + 1}: {len(test_idx)} held-out case(s), "
                     f"{info['rounds']} rounds")
    return {"folds": int(assignment.max()) + 1, "leave_one_out": int(assignment.max()) + 1 == len(samples),
            "cases": rows, "mean": summarise(rows, stages=("candidates", "refined", *(also or {})))}


def _set_of(names) -> tuple[str, bool]:
    """(named set, cascade) of a model's feature names."""
    from mstools.candidates.refine.features import FEATURE_SETS

    for key in FEATURE_SETS:
        for cascade in (False, True):
            if list(model_feature_names(key, cascade=cascade)) == list(names):
                return key, cascade
    raise ValueError("features are not one of the named sets")


def summarise(rows: list[dict], stages=("candidates", "refined")) -> dict:
    """Mean of every metric over the cases where it is defined (NaN = empty ground truth)."""
    out = {}
    for stage in stages:
        for metric in CV_METRICS:
            values = [r[f"{stage}_{metric}"] for r in rows if not _nan(r[f"{stage}_{metric}"])]
            out[f"{stage}_{metric}"] = float(np.mean(values)) if values else math.nan
    return out


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
