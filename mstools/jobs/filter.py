"""The candidate filter as jobs: keep a detector's candidates that look like new lesions
(La Rosa et al.'s rules or a learned LightGBM model), and train the learned filter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mstools.jobs import JobResult
from mstools.jobs.options import option

#: La Rosa et al.'s thresholds (paper 001) = mstools.candidates.filtering.FilterRules' defaults (a test checks).
MIN_LEAST_AXIS_MM, MIN_SPHERICITY, MIN_NEIGHBOUR_CONTRAST, MIN_WM_FRACTION = 1.2, 0.2, 0.9, 0.1
#: = mstools.candidates.filtering.CONFIRM_MIN_SCORE (its measurement is there; a test checks), written
#: here so that `mstools filter --help` does not import NumPy and SciPy.
CONFIRM_MIN_SCORE = 0.3
#: = mstools.candidates.filtering.ADDED_MIN_BASELINE (its measurement is there; a test checks).
ADDED_MIN_BASELINE = 0.75
#: When ``--add-confirming`` adds the confirming detector's own lesions: never, on thick-slice
#: grids only (mstools.acquisition.has_thick_slices), or always.
ADD_CONFIRMING = ("never", "thick", "always")


@dataclass(frozen=True)
class FilterOptions:
    model: Optional[str] = option(None, kind="path", help="Learned filter (from `mstools filter train`) instead of the rules.")
    learned: bool = option(False, kind="bool", help="Use the packaged learned filter instead of the rules (what `mstools run` does).")
    probability: Optional[float] = option(None, kind="float", min=0, max=1, help="With --model: keep candidates at or above this probability (default: the model card's).")
    min_least_axis_mm: float = option(MIN_LEAST_AXIS_MM, kind="float", help="Drop if pyradiomics LeastAxisLength is below (mm); 0 = off.")
    min_sphericity: float = option(MIN_SPHERICITY, kind="float", help="Drop if Sphericity is below; 0 = off.")
    min_contrast: float = option(MIN_NEIGHBOUR_CONTRAST, kind="float", help="Drop if follow-up mean / neighbour-shell mean is below; 0 = off.")
    min_wm_fraction: float = option(MIN_WM_FRACTION, kind="float", help="Drop if less than this share lies in white matter (needs --tissues); 0 = off.")
    keep_touching_csf: bool = option(False, kind="bool", help="Do not drop candidates touching CSF.")
    keep_touching_lesions: bool = option(False, kind="bool", help="Do not drop candidates touching a baseline lesion.")
    confirm: Optional[str] = option(None, kind="str", help="Another detector's output prefix P (its P_score.nii.gz on the case grid, e.g. from mstools segment --model multitask): keep only candidates where that score reaches --confirm-min (two detectors agree).")
    confirm_min: float = option(CONFIRM_MIN_SCORE, kind="float", min=0.0, max=1.0, help="With --confirm: the score a kept candidate must reach somewhere inside it (measured on validation cases; see mstools.candidates.filtering).")
    add_confirming: str = option("never", kind="choice", choices=ADD_CONFIRMING, help="With --confirm: also report the confirming detector's own lesions (its P_mask.nii.gz), never, on thick-slice grids only (largest voxel edge >= 2 mm, where subtraction misses most new lesions) or always. Measured, not run's default: see mstools/pipeline/stages.py.")
    added_min_baseline: float = option(ADDED_MIN_BASELINE, kind="float", min=0.0, help="With --add-confirming: add only lesions that were tissue at baseline, their mean baseline intensity at least this share of the baseline's brain median (not CSF, whose incomplete suppression on a 2D FLAIR passes for a new lesion); 0 = off. Measured: see mstools.candidates.filtering.ADDED_MIN_BASELINE.")

    def rules(self):
        from mstools.candidates.filtering import FilterRules

        return FilterRules(min_least_axis_mm=self.min_least_axis_mm or None, min_sphericity=self.min_sphericity or None,
                           min_neighbour_contrast=self.min_contrast or None,
                           min_wm_fraction=self.min_wm_fraction or None,
                           drop_touching_csf=not self.keep_touching_csf,
                           drop_touching_baseline_lesion=not self.keep_touching_lesions)


def _optional_map(path: Optional[Path], reference, kind: str):
    from mstools.io import check_same_grid, read_labels, read_mask

    if path is None:
        return None
    image = read_labels(path) if kind == "labels" else read_mask(path)
    check_same_grid(reference, image)
    return image.data


def compute_features(case: Optional[Path], candidates: str, *, baseline: Optional[Path] = None,
                     followup: Optional[Path] = None, brain_mask: Optional[Path] = None,
                     tissues: Optional[Path] = None, baseline_lesions: Optional[Path] = None,
                     hint: Optional[str] = None):
    """Read a case and a detector's candidates; return (reference image = the baseline, labels, rows,
    inputs used, the brain both scans imaged)."""
    from mstools.case import read_pair, resolve_case_inputs
    from mstools.detections import read_candidates
    from mstools.candidates.filtering import candidate_features, csf_and_white_matter

    paths = resolve_case_inputs(case, baseline, followup, brain_mask)
    b_img, f_img, brain_img = read_pair(*paths)
    labels, score, used = read_candidates(candidates, b_img, **({"hint": hint} if hint else {}))
    tissue_map = _optional_map(tissues, b_img, "labels")
    lesions_t1 = _optional_map(baseline_lesions, b_img, "mask")
    brain = brain_img.data > 0
    csf, wm = csf_and_white_matter(b_img.data, brain, tissue_map)
    rows = candidate_features(labels, baseline=b_img.data, followup=f_img.data, brain=brain, affine=b_img.affine,
                              csf=csf, score=score, white_matter=wm, baseline_lesions=lesions_t1)
    inputs = [*paths, *used, *(p for p in (tissues, baseline_lesions) if p is not None)]
    return b_img, labels, rows, inputs, brain


def confirmation_score_path(prefix: Optional[str]) -> Optional[Path]:
    """The score map ``--confirm P`` names (P_score.nii.gz), checked to exist; None without --confirm."""
    from mstools.detections import SCORE_SUFFIX
    from mstools.errors import InputError

    if prefix is None:
        return None
    path = Path(prefix + SCORE_SUFFIX)
    if not path.is_file():
        raise InputError(f"{path} not found; --confirm takes the output prefix of a detector that wrote a score map "
                         "(e.g. mstools segment CASE --model multitask -o CASE/multitask, then --confirm "
                         "CASE/multitask)")
    return path


def read_confirmation(path: Path, reference):
    """The confirming detector's score on the candidates' grid, as probabilities in [0, 1]."""
    from mstools.errors import InputError
    from mstools.io import check_same_grid, read_image

    image = read_image(path)
    check_same_grid(reference, image)
    if image.data.size and (float(image.data.min()) < 0 or float(image.data.max()) > 1):
        raise InputError(f"{path}: scores outside [0, 1] ({float(image.data.min()):g} to {float(image.data.max()):g}); "
                         "--confirm needs a probability map such as mstools segment's P_score.nii.gz")
    return image.data


def confirming_mask_path(options: FilterOptions) -> Optional[Path]:
    """The lesion mask ``--add-confirming`` may add (P_mask.nii.gz of ``--confirm P``), checked to
    exist; None when nothing is to be added."""
    from mstools.detections import MASK_SUFFIX
    from mstools.errors import InputError

    if options.add_confirming == "never":
        return None
    if options.confirm is None:
        raise InputError(f"--add-confirming {options.add_confirming} adds the confirming detector's lesions; "
                         "name that detector with --confirm P")
    path = Path(options.confirm + MASK_SUFFIX)
    if not path.is_file():
        raise InputError(f"{path} not found; --add-confirming adds the lesion mask of the detector --confirm names "
                         "(mstools segment writes P_mask.nii.gz beside P_score.nii.gz)")
    return path


def filter_job(case: Optional[Path], candidates: str, out: str, options: FilterOptions = FilterOptions(), *,
               baseline: Optional[Path] = None, followup: Optional[Path] = None, brain_mask: Optional[Path] = None,
               tissues: Optional[Path] = None, baseline_lesions: Optional[Path] = None,
               force: bool = False) -> JobResult:
    """Keep the candidates that pass the rules (or the learned model); write them and a feature table."""
    from mstools.case import resolve_case_inputs
    from mstools.detections import add_detections, add_table, output_paths
    from mstools.candidates.filtering import (FEATURE_COLUMNS, added_lesion_count, confirm_by_score, decide_by_model,
                                              decide_by_rules, kept_detections, tissue_at_baseline)
    from mstools.io import OutputBatch, sha256
    from mstools.messages import log
    from mstools.models import load_filter_model, packaged_model
    from mstools.provenance import check_outputs, describe_inputs, sidecar

    confirm_score = confirmation_score_path(options.confirm)
    confirm_mask = confirming_mask_path(options)
    pair = resolve_case_inputs(case, baseline, followup, brain_mask)
    read = [*pair, tissues, baseline_lesions, *output_paths(candidates).values(), confirm_score, confirm_mask]
    check_outputs([*output_paths(out).values(), out + "_features.tsv"], inputs=read, force=force)  # before the work
    rules = options.rules()
    model = Path(options.model) if options.model is not None else None
    if model is None and options.learned:
        model = packaged_model("filter")
    model_text, card = load_filter_model(model) if model is not None else (None, None)
    confirming = added = None
    if confirm_score is not None:   # checked before the features are computed
        from mstools.acquisition import has_thick_slices
        from mstools.io import check_same_grid, read_grid, read_mask

        grid = read_grid(pair[0])
        confirming = read_confirmation(confirm_score, grid)
        if confirm_mask is not None:
            lesions = read_mask(confirm_mask)
            check_same_grid(grid, lesions)
            if options.add_confirming == "always" or has_thick_slices(grid.spacing_mm):
                added = lesions.data > 0
    reference, labels, rows, inputs, brain = compute_features(case, candidates, baseline=baseline, followup=followup,
                                                              brain_mask=brain_mask, tissues=tissues,
                                                              baseline_lesions=baseline_lesions)
    if added is not None and options.added_min_baseline > 0:
        added = tissue_at_baseline(added, reference.data, brain, options.added_min_baseline)
    log(f"filter: {len(rows)} candidates from {candidates}")
    columns = list(FEATURE_COLUMNS)
    if model_text is not None:
        threshold = options.probability if options.probability is not None else float(card["threshold"])
        decide_by_model(rows, model_text, card["features"], threshold)
        columns.append("probability")
        parameters = {"mode": "model", "model": str(model), "probability": threshold}
    else:
        decide_by_rules(rows, rules, have_tissues=tissues is not None,
                        have_baseline_lesions=baseline_lesions is not None)
        parameters = {"mode": "rules", **rules.as_dict()}
    if confirm_score is not None:
        confirm_by_score(rows, labels, confirming, options.confirm_min)
        columns.append("confirm_max")
        parameters.update(confirm=options.confirm, confirm_min=options.confirm_min,
                          add_confirming=options.add_confirming, added_confirming=added is not None,
                          added_min_baseline=options.added_min_baseline)
        inputs = [*inputs, confirm_score, *([confirm_mask] if confirm_mask is not None else [])]
    detections = kept_detections(labels, rows, reference.affine, added=added, added_score=confirming)
    kept = sum(row["decision"] == "kept" for row in rows)
    extra = added_lesion_count(detections, rows) if added is not None else 0
    record = sidecar(command="filter", parameters={**parameters, "candidates": candidates},
                     inputs=describe_inputs(inputs), models={str(model): sha256(model)} if model else None)
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        add_detections(batch, out, detections, reference, record)
        add_table(batch, out + "_features.tsv", rows, columns + ["decision", "output_label"], record)
    log(f"kept {kept} of {len(rows)}" + (f"; added {extra} of the confirming detector's lesions" if added is not None
                                         else ""))
    return JobResult(list(batch.written), {"candidates": len(rows), "kept": kept, "added": extra,
                                           "written": [str(p) for p in batch.written]})


def filter_train_job(cases: Sequence[Path], out: Path, *, candidates_name: str = "subtract",
                     use_tissues: bool = False, use_baseline_lesions: bool = False, seed: int = 0,
                     force: bool = False) -> JobResult:
    """Fit the learned filter on the candidates of cases with ground truth; write the model and its card."""
    import hashlib

    import numpy as np

    from mstools import __version__
    from mstools import case_layout as layout
    from mstools.errors import InputError
    from mstools.candidates.filtering import MODEL_FEATURES, candidate_truth, feature_matrix
    from mstools.io import OutputBatch, check_same_grid, read_mask
    from mstools.candidates.lesion_classifier import train
    from mstools.messages import log
    from mstools.models import card_path as card_of
    from mstools.provenance import check_outputs, describe_inputs, sidecar

    card_path = card_of(out)
    check_outputs([out, card_path], force=force, sidecars=False)   # before minutes of work, not after
    all_rows, truth, groups, inputs = [], [], [], []
    for n, case in enumerate(cases):
        reference, labels, rows, used, _ = compute_features(
            case, str(case / candidates_name),
            tissues=case / layout.TISSUES if use_tissues else None,
            baseline_lesions=case / layout.LESIONS_BASELINE if use_baseline_lesions else None,
            hint=f"run that detector on {case} first, or name another one with --candidates-name")
        gt = read_mask(case / layout.GROUND_TRUTH)
        check_same_grid(reference, gt)
        verdicts = candidate_truth(labels, gt.data, reference.affine)
        all_rows.extend(rows)
        truth.extend(verdicts.get(row["label"], 0) for row in rows)
        groups.extend([n] * len(rows))
        inputs.extend([*used, case / layout.GROUND_TRUTH])
        log(f"{case}: {len(rows)} candidates, {sum(verdicts.values())} true")
    truth_arr = np.array(truth, dtype=int)
    try:
        trained = train(feature_matrix(all_rows), truth_arr, np.array(groups), feature_names=list(MODEL_FEATURES),
                        seed=seed)
    except ValueError as exc:
        raise InputError(f"cannot train: {exc}; add cases whose candidates include true and false lesions") from None
    card = {"mstools_version": __version__, "kind": "lesion-level LightGBM filter", "features": trained.features,
            "model_sha256": hashlib.sha256(trained.model_text.encode()).hexdigest(),
            "trees": trained.model_text.count("\nTree="),
            "threshold": trained.threshold, "training_cases": [str(c) for c in cases],
            "candidates_name": candidates_name, "use_tissues": use_tissues,
            "use_baseline_lesions": use_baseline_lesions, "seed": seed, **trained.card}
    record = sidecar(command="filter train", parameters={"candidates_name": candidates_name, "seed": seed,
                                                        "use_tissues": use_tissues,
                                                        "use_baseline_lesions": use_baseline_lesions},
                     inputs=describe_inputs(inputs))
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        batch.text(out, trained.model_text)
        batch.json(card_path, {**card, "provenance": record})
    return JobResult(list(batch.written), card)
