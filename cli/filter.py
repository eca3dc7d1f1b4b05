"""`mstools filter`: keep the candidates that look like new lesions (rules or a learned model).

``mstools filter CASE ...`` (same as ``mstools filter apply CASE ...``) filters one
detector's candidates; ``mstools filter train ...`` fits the learned filter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import List, Optional

import click
import numpy as np
import typer
from typer.core import TyperGroup

from cli import common
from cli.subtract import read_pair, resolve_case_inputs
from mstools import case_layout as layout
from mstools.errors import InputError
from mstools.filtering import FilterRules

RULES = FilterRules()



class DefaultApplyGroup(TyperGroup):
    """A group whose first argument, when it is not a subcommand, goes to ``apply``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["apply", *args]
        return super().parse_args(ctx, args)


filter_app = typer.Typer(
    cls=DefaultApplyGroup, no_args_is_help=True, add_completion=False,
    help="Filter detector candidates with La Rosa et al.'s rules or a learned LightGBM model.\n\n"
         "Example: mstools filter data_samples/sim-001 --candidates out/s1 -o out/s1_filtered",
)


def _candidate_maps(prefix: str, reference):
    """Candidate labels (from P_labels, else P_mask labelled 26-connected) and score (P_score, if any)."""
    from mstools.io import check_same_grid, read_image, read_labels, read_mask
    from mstools.lesions import LABELS_SUFFIX, MASK_SUFFIX, SCORE_SUFFIX, label_components

    used = []
    if Path(prefix + LABELS_SUFFIX).is_file():
        labels_img = read_labels(prefix + LABELS_SUFFIX)
        check_same_grid(reference, labels_img)
        if labels_img.data.min() < 0:
            raise InputError(f"{labels_img.name}: negative labels; a lesion label map (0 = background) was expected")
        labels = labels_img.data.astype(np.int32)
        used.append(prefix + LABELS_SUFFIX)
    elif Path(prefix + MASK_SUFFIX).is_file():
        mask_img = read_mask(prefix + MASK_SUFFIX)
        check_same_grid(reference, mask_img)
        labels, _ = label_components(mask_img.data, connectivity=26)
        used.append(prefix + MASK_SUFFIX)
    else:
        raise InputError(f"{prefix}{LABELS_SUFFIX} (or {MASK_SUFFIX}) not found; give the output prefix of a "
                         "detector, e.g. --candidates CASE/subtract")
    score = None
    if Path(prefix + SCORE_SUFFIX).is_file():
        score_img = read_image(prefix + SCORE_SUFFIX)
        check_same_grid(reference, score_img)
        score = score_img.data
        used.append(prefix + SCORE_SUFFIX)
    return labels, score, used


def _optional_map(path: Optional[Path], reference, kind: str):
    from mstools.io import check_same_grid, read_labels, read_mask

    if path is None:
        return None
    image = read_labels(path) if kind == "labels" else read_mask(path)
    check_same_grid(reference, image)
    return image.data


def compute_features(case: Optional[Path], candidates: str, *, baseline: Optional[Path] = None,
                     followup: Optional[Path] = None, brain_mask: Optional[Path] = None,
                     tissues: Optional[Path] = None, baseline_lesions: Optional[Path] = None):
    """Read a case and a detector's candidates; return (reference image, labels, rows, inputs used)."""
    from mstools.filtering import candidate_features, csf_and_white_matter

    paths = resolve_case_inputs(case, baseline, followup, brain_mask)
    b_img, f_img, brain_img = read_pair(*paths)
    labels, score, used = _candidate_maps(candidates, b_img)
    tissue_map = _optional_map(tissues, b_img, "labels")
    lesions_t1 = _optional_map(baseline_lesions, b_img, "mask")
    brain = brain_img.data > 0
    csf, wm = csf_and_white_matter(b_img.data, brain, tissue_map)
    rows = candidate_features(labels, baseline=b_img.data, followup=f_img.data, brain=brain, affine=b_img.affine,
                              csf=csf, score=score, white_matter=wm, baseline_lesions=lesions_t1)
    inputs = [*paths, *used, *(p for p in (tissues, baseline_lesions) if p is not None)]
    return b_img, labels, rows, inputs


@filter_app.command("apply")
@common.command
def filter_apply(
    case: Optional[Path] = typer.Argument(None, help="Case folder (baseline, follow-up, brain mask)."),
    candidates: str = typer.Option(..., "--candidates", "-c", help="Output prefix of a detector (reads PREFIX_labels or PREFIX_mask, and PREFIX_score)."),
    out: str = typer.Option(..., "--out", "-o", help="Output prefix for the kept candidates and the feature table."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline FLAIR (overrides the case folder's)."),
    followup: Optional[Path] = typer.Option(None, help="Follow-up FLAIR."),
    brain_mask: Optional[Path] = typer.Option(None, help="Brain mask."),
    tissues: Optional[Path] = typer.Option(None, help="Tissue map (1 CSF, 2 GM, 3 WM), e.g. from SAMSEG/FAST; enables the WM rule and a better CSF."),
    baseline_lesions: Optional[Path] = typer.Option(None, help="Baseline lesion mask; enables the baseline-lesion rule."),
    model: Optional[Path] = typer.Option(None, help="Learned filter (from `mstools filter train`) instead of the rules."),
    learned: bool = typer.Option(False, "--learned", help="Use the packaged learned filter instead of the rules (what `mstools run` does)."),
    probability: Optional[float] = typer.Option(None, min=0, max=1, help="With --model: keep candidates at or above this probability (default: the model card's)."),
    min_least_axis_mm: float = typer.Option(RULES.min_least_axis_mm, help="Drop if pyradiomics LeastAxisLength is below (mm); 0 = off."),
    min_sphericity: float = typer.Option(RULES.min_sphericity, help="Drop if Sphericity is below; 0 = off."),
    min_contrast: float = typer.Option(RULES.min_neighbour_contrast, help="Drop if follow-up mean / neighbour-shell mean is below; 0 = off."),
    min_wm_fraction: float = typer.Option(RULES.min_wm_fraction, help="Drop if less than this share lies in white matter (needs --tissues); 0 = off."),
    keep_touching_csf: bool = typer.Option(not RULES.drop_touching_csf, "--keep-touching-csf", help="Do not drop candidates touching CSF."),
    keep_touching_lesions: bool = typer.Option(not RULES.drop_touching_baseline_lesion, "--keep-touching-lesions", help="Do not drop candidates touching a baseline lesion."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Keep the candidates that pass La Rosa et al.'s rules (or a learned model); write them and a feature table.

    Example: mstools filter data_samples/sim-001 --candidates out/s1 -o out/s1_filtered
    """
    from mstools.filtering import FEATURE_COLUMNS, decide_by_model, decide_by_rules, kept_detections
    from mstools.io import OutputBatch, sha256
    from mstools.provenance import describe_inputs, sidecar

    rules = FilterRules(min_least_axis_mm=min_least_axis_mm or None, min_sphericity=min_sphericity or None,
                        min_neighbour_contrast=min_contrast or None, min_wm_fraction=min_wm_fraction or None,
                        drop_touching_csf=not keep_touching_csf,
                        drop_touching_baseline_lesion=not keep_touching_lesions)
    if model is None and learned:
        model = packaged_model()
    model_text, card = _load_model(model) if model is not None else (None, None)
    reference, labels, rows, inputs = compute_features(case, candidates, baseline=baseline, followup=followup,
                                                       brain_mask=brain_mask, tissues=tissues,
                                                       baseline_lesions=baseline_lesions)
    common.log(f"filter: {len(rows)} candidates from {candidates}")
    columns = list(FEATURE_COLUMNS)
    if model_text is not None:
        threshold = probability if probability is not None else float(card["threshold"])
        decide_by_model(rows, model_text, card["features"], threshold)
        columns.append("probability")
        parameters = {"mode": "model", "model": str(model), "probability": threshold}
    else:
        decide_by_rules(rows, rules, have_tissues=tissues is not None,
                        have_baseline_lesions=baseline_lesions is not None)
        parameters = {"mode": "rules", **rules.as_dict()}
    detections = kept_detections(labels, rows, reference.affine)
    kept = sum(row["decision"] == "kept" for row in rows)
    record = sidecar(command="filter", parameters={**parameters, "candidates": candidates},
                     inputs=describe_inputs(inputs), models={str(model): sha256(model)} if model else None)
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        common.add_detections(batch, out, detections, reference, record)
        common.add_table(batch, out + "_features.tsv", rows, columns + ["decision", "output_label"], record)
    common.log(f"kept {kept} of {len(rows)}")
    common.emit(batch.written, as_json=as_json,
                payload={"candidates": len(rows), "kept": kept, "written": [str(p) for p in batch.written]})


def packaged_model() -> Path:
    """The learned filter shipped with mstools (installed beside the library)."""
    import mstools

    return Path(mstools.__file__).resolve().parent / "models" / "filter" / "default.txt"


def _load_model(path: Path) -> tuple[str, dict]:
    card_path = Path(str(path) + ".card.json")
    if not path.is_file():
        raise InputError(f"{path}: model not found; train one with `mstools filter train`")
    if not card_path.is_file():
        raise InputError(f"{card_path}: model card not found; keep the card that `mstools filter train` wrote beside the model")
    try:
        card = json.loads(card_path.read_text())
        text = path.read_text()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable model or card ({exc}); retrain with `mstools filter train`") from None
    threshold = card.get("threshold") if isinstance(card, dict) else None
    if not isinstance(card, dict) or not isinstance(card.get("features"), list) \
            or isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise InputError(f"{card_path}: not a model card (a JSON object with features and a threshold in "
                         "[0, 1] was expected); keep the card that `mstools filter train` wrote beside the model")
    from mstools.filtering import MODEL_FEATURES
    from mstools.io import sha256
    from mstools.lesion_classifier import model_feature_names
    from mstools.refine.trees import check_model_text

    try:  # before LightGBM reads it: a malformed tree crashes LightGBM's reader
        check_model_text(text, card, sha256=sha256(path))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}; retrain with `mstools filter train`") from None
    try:
        names = model_feature_names(text)
    except Exception as exc:
        raise InputError(f"{path}: not a LightGBM model ({str(exc).splitlines()[0]}); retrain with `mstools filter train`") from None
    if names != card.get("features") or not set(names) <= set(MODEL_FEATURES):
        raise InputError(f"{path}: the model's features {names} are not this version's candidate features; "
                         "retrain with `mstools filter train`")
    return text, card


@filter_app.command("train")
@common.command
def filter_train(
    cases: List[Path] = typer.Argument(..., help="Case folders holding ground_truth.nii.gz and the detector's outputs."),
    candidates_name: str = typer.Option("subtract", help="Detector prefix inside each case folder (CASE/NAME_labels.nii.gz)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (LightGBM text); the card goes to OUT.card.json."),
    use_tissues: bool = typer.Option(False, help="Use each case's tissues.nii.gz (then apply with --tissues too)."),
    use_baseline_lesions: bool = typer.Option(False, help="Use each case's lesions_time01.nii.gz (then apply with --baseline-lesions)."),
    seed: int = typer.Option(0, help="Random seed (validation split, bagging)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing model."),
    as_json: bool = typer.Option(False, "--json", help="Print the model card as JSON."),
) -> None:
    """Fit the learned filter: a lesion-level LightGBM classifier on candidates of cases with ground truth.

    A candidate is positive when the MSSEG-2 (Anima) rule of `mstools evaluate` judges it a true lesion.

    Example: mstools filter train sims/train/sim-* --candidates-name subtract -o filter_model.txt
    """
    from mstools import __version__
    from mstools.filtering import MODEL_FEATURES, candidate_truth, feature_matrix
    from mstools.io import OutputBatch, check_same_grid, read_mask
    from mstools.lesion_classifier import train
    from mstools.provenance import describe_inputs, sidecar

    all_rows, truth, groups, inputs = [], [], [], []
    for n, case in enumerate(cases):
        reference, labels, rows, used = compute_features(
            case, str(case / candidates_name),
            tissues=case / layout.TISSUES if use_tissues else None,
            baseline_lesions=case / layout.LESIONS_BASELINE if use_baseline_lesions else None)
        gt = read_mask(case / layout.GROUND_TRUTH)
        check_same_grid(reference, gt)
        verdicts = candidate_truth(labels, gt.data, reference.affine)
        all_rows.extend(rows)
        truth.extend(verdicts.get(row["label"], 0) for row in rows)
        groups.extend([n] * len(rows))
        inputs.extend([*used, case / layout.GROUND_TRUTH])
        common.log(f"{case}: {len(rows)} candidates, {sum(verdicts.values())} true")
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
    with OutputBatch(inputs=inputs, force=force) as batch:
        batch.text(out, trained.model_text)
        batch.json(Path(str(out) + ".card.json"), {**card, "provenance": record})
    common.emit(batch.written, as_json=as_json, payload=card)
