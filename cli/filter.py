"""`mstools filter`: keep the candidates that look like new lesions (rules or a learned model).

``mstools filter CASE ...`` (same as ``mstools filter apply CASE ...``) filters one
detector's candidates; ``mstools filter train ...`` fits the learned filter.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mstools_cli import common
from mstools.jobs.filter import FilterOptions as O


class DefaultApplyGroup(common.Group):
    """A group whose bare form is its ``apply`` command: a first argument that is not a
    subcommand goes to ``apply``, and ``--help`` (or no argument) shows apply's options
    (apply's help names the other subcommand)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if not args or args[0] in ("-h", "--help"):
            args = ["apply", "--help"]
        elif args[0] not in self.commands:
            args = ["apply", *args]
        return super().parse_args(ctx, args)


filter_app = typer.Typer(
    cls=DefaultApplyGroup, no_args_is_help=False, add_completion=False,
    help="Filter detector candidates with La Rosa et al.'s rules or a learned LightGBM model.\n\n"
         "Example: mstools filter data_samples/sim-001 --candidates out/s1 -o out/s1_filtered",
)


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
    model: Optional[Path] = common.opt(O, "model"),
    learned: bool = common.opt(O, "learned"),
    probability: Optional[float] = common.opt(O, "probability"),
    min_least_axis_mm: float = common.opt(O, "min_least_axis_mm"),
    min_sphericity: float = common.opt(O, "min_sphericity"),
    min_contrast: float = common.opt(O, "min_contrast"),
    min_wm_fraction: float = common.opt(O, "min_wm_fraction"),
    keep_touching_csf: bool = common.opt(O, "keep_touching_csf"),
    keep_touching_lesions: bool = common.opt(O, "keep_touching_lesions"),
    confirm: Optional[str] = common.opt(O, "confirm"),
    confirm_min: float = common.opt(O, "confirm_min"),
    add_confirming: str = common.opt(O, "add_confirming"),
    added_min_baseline: float = common.opt(O, "added_min_baseline"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Keep the candidates that pass La Rosa et al.'s rules (or a learned model); write them and a feature table.

    Example: mstools filter data_samples/sim-001 --candidates out/s1 -o out/s1_filtered

    Two detectors agreeing (what `mstools run` does): mstools segment CASE --model multitask -o out/mt,
    then mstools filter CASE -c out/refine -o out/final --learned --confirm out/mt
    (--add-confirming thick also reports out/mt's own lesions on thick-slice grids; measured, off in `mstools run`)

    `mstools filter` is this command; `mstools filter train --help` fits a learned filter.
    """
    from mstools.jobs.filter import filter_job

    result = filter_job(case, candidates, out, common.options(O, locals()), baseline=baseline, followup=followup,
                        brain_mask=brain_mask, tissues=tissues, baseline_lesions=baseline_lesions, force=force)
    common.report(result, as_json=as_json)


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
    from mstools.jobs.filter import filter_train_job

    result = filter_train_job(cases, out, candidates_name=candidates_name, use_tissues=use_tissues,
                              use_baseline_lesions=use_baseline_lesions, seed=seed, force=force)
    common.report(result, as_json=as_json)
