"""`mstools refine`: voxel-wise LightGBM refinement of any detector's candidates.

``mstools refine CASE -c PREFIX -o OUT`` (same as ``mstools refine apply ...``) refines one
detector's candidates with a trained model (the packaged default when no ``--model``);
``mstools refine train ...`` fits a model, cross-validates it by case and writes its card.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mstools_cli import common
from mstools_cli.filter import DefaultApplyGroup
from mstools.errors import InputError
from mstools.jobs.refine import BACKGROUND_FRACTION, CLASS_WEIGHTS, DILATION_MM, FEATURE_SETS, RefineTrainOptions
from mstools.jobs.refine import RefineOptions as O

Region = common.choices("Region", O, "region")
FeatureSet = common.Enum("FeatureSet", {v: v for v in FEATURE_SETS}, type=str)  # type: ignore[misc]
ClassWeight = common.Enum("ClassWeight", {v: v for v in CLASS_WEIGHTS}, type=str)  # type: ignore[misc]

refine_app = typer.Typer(
    cls=DefaultApplyGroup, no_args_is_help=False, add_completion=False,
    help="Refine detector candidates voxel by voxel with a LightGBM classifier (Prados & Kanber).\n\n"
         "Example: mstools refine data_samples/sim-001 --candidates out/s1 -o out/s1_refined",
)


@refine_app.command("apply")
@common.command
def refine_apply(
    case: Optional[Path] = typer.Argument(None, help="Case folder (baseline, follow-up, brain mask)."),
    candidates: str = typer.Option(..., "--candidates", "-c", help="Output prefix of a detector (reads PREFIX_labels or PREFIX_mask, and PREFIX_score)."),
    out: str = typer.Option(..., "--out", "-o", help="Output prefix: OUT_score (probability), OUT_mask, OUT_labels, OUT_lesions.tsv."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline FLAIR (overrides the case folder's)."),
    followup: Optional[Path] = typer.Option(None, help="Follow-up FLAIR."),
    brain_mask: Optional[Path] = typer.Option(None, help="Brain mask."),
    model: Optional[Path] = common.opt(O, "model"),
    lesion_features: Optional[Path] = typer.Option(None, help="For 'lesion' models: the `mstools filter` _features.tsv of these candidates' labels (default: PREFIX_features.tsv, keyed by output_label)."),
    baseline_lesions: Optional[Path] = common.opt(O, "baseline_lesions"),
    followup_lesions: Optional[Path] = common.opt(O, "followup_lesions"),
    region: Region = common.opt(O, "region", Region),
    threshold: float = common.opt(O, "threshold"),
    min_voxels: int = common.opt(O, "min_voxels"),
    min_minor_axis: float = common.opt(O, "min_minor_axis"),
    min_volume_mm3: Optional[float] = common.opt(O, "min_volume_mm3"),
    min_minor_axis_mm: Optional[float] = common.opt(O, "min_minor_axis_mm"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Refine a detector's candidates: probability map, threshold and the paper's component clean-up.

    Example: mstools refine data_samples/sim-001 --candidates out/s1 -o out/s1_refined

    `mstools refine` is this command; `mstools refine train --help` trains a refinement model.
    """
    from mstools.jobs.refine import refine_job

    result = refine_job(case, candidates, out, common.options(O, locals()), baseline=baseline, followup=followup,
                        brain_mask=brain_mask, lesion_features=lesion_features, force=force)
    common.report(result, as_json=as_json)


@refine_app.command("train")
@common.command
def refine_train(
    cases: Optional[List[Path]] = typer.Argument(None, help="Case folders holding ground_truth.nii.gz (or use --manifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model file (LightGBM text); the card goes to OUT.card.json, the per-case cross-validation to OUT.cv.tsv."),
    manifest: Optional[Path] = typer.Option(None, help="TSV with columns case, candidates (prefix) and optionally lesion_features, baseline_lesions and followup_lesions, instead of CASES."),
    candidates_name: str = typer.Option("subtract", help="Detector prefix name of each case's candidates (CASE/NAME_labels.nii.gz)."),
    candidates_root: Optional[Path] = typer.Option(None, help="Read candidates from ROOT/<case folder name>/NAME instead of the case folder."),
    feature_set: FeatureSet = typer.Option(FeatureSet.published, help="published: the paper's 21 features; context: + local statistics, score, brain-edge distance; lesion: + `mstools filter` lesion features."),
    dilation_mm: float = typer.Option(DILATION_MM, min=0, help="Candidate region = candidates dilated by this (mm)."),
    background_fraction: float = typer.Option(BACKGROUND_FRACTION, min=0, max=1, help="Share of the other brain voxels sampled as background."),
    class_weight: ClassWeight = typer.Option(ClassWeight.none, help="none (sampling only; calibrated for the 0.2 threshold) or balanced (scale_pos_weight = negatives/positives)."),
    bias_sigma_mm: float = typer.Option(15.0, min=0, help="Differential bias correction width before normalising (mm); 0 = off."),
    cv_folds: int = typer.Option(5, min=0, help="Case-grouped cross-validation folds (0 = none; >= cases = leave-one-out)."),
    loo: bool = typer.Option(False, "--loo", help="Leave-one-case-out cross-validation (the paper's)."),
    max_rounds: int = typer.Option(500, min=1, help="Boosting rounds at most (early stopping after 50 without improvement)."),
    dask: bool = typer.Option(False, "--dask", help="Train with lightgbm.dask on a local Dask cluster started and stopped here."),
    scheduler: Optional[str] = typer.Option(None, help="Train on an existing Dask cluster (scheduler address, e.g. tcp://10.0.0.5:8786)."),
    dask_workers: int = typer.Option(2, min=1, help="Workers of the local Dask cluster (one thread each)."),
    scheduler_timeout: float = typer.Option(30.0, min=0.1, help="Seconds to wait for --scheduler to answer."),
    seed: int = typer.Option(0, help="Random seed (sampling, folds, validation split, bagging)."),
    cascade: Optional[str] = typer.Option(None, help="Paper 001's cascade: add the all-lesion masks of both visits as features. SOURCE: the output name of `mstools segment --model coactseg` in each case folder (or under --candidates-root), e.g. coactseg; or 'case' for the case's lesions_time01/02 (on simulated cases their difference is the truth: train on what you will apply to). Manifest columns baseline_lesions/followup_lesions win."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing model."),
    as_json: bool = typer.Option(False, "--json", help="Print the model card as JSON."),
) -> None:
    """Fit a refinement model on cases with ground truth; cross-validate it by case; write it with its card.

    Example: mstools refine train sims/train/sim-* --candidates-name subtract --loo -o refine_model.txt

    Cascade: mstools refine train sims/train/sim-* --cascade coactseg -o refine_cascade.txt
    """
    from mstools.jobs.refine import manifest_cases, refine_train_job
    from mstools.jobs.segment import cascade_entry_maps

    if manifest is not None and cases:
        raise InputError("give case folders or --manifest, not both")
    if manifest is not None:
        entries = manifest_cases(manifest)
    elif cases:
        root = candidates_root
        entries = [(c, str((root / c.name if root is not None else c) / candidates_name), None, None) for c in cases]
    else:
        raise InputError("no cases; give case folders or --manifest")
    if cascade is not None:
        entries = [(c, prefix, table, maps if maps is not None
                    else cascade_entry_maps(c, cascade, root=candidates_root))
                   for c, prefix, table, maps in entries]
    if dask and scheduler:
        raise InputError("give --dask (local cluster) or --scheduler ADDRESS, not both")
    options = RefineTrainOptions(feature_set=feature_set.value, dilation_mm=dilation_mm,
                                 background_fraction=background_fraction, class_weight=class_weight.value,
                                 bias_sigma_mm=bias_sigma_mm, cv_folds=cv_folds, loo=loo, max_rounds=max_rounds,
                                 seed=seed, cascade=cascade is not None)
    result = refine_train_job(entries, out, options, dask=dask, scheduler=scheduler, dask_workers=dask_workers,
                              scheduler_timeout=scheduler_timeout, force=force)
    common.report(result, as_json=as_json)
