"""`mstools subtract`: candidate new lesions from the subtraction of two aligned scans."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common
from mstools.jobs.subtract import SubtractOptions as O

Rule = common.choices("Rule", O, "rule")
Noise = common.choices("Noise", O, "noise")


def subtract_command(
    case: Optional[Path] = typer.Argument(None, help="Case folder (flair_time01/02_on_middle_space, brain_mask)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output prefix (default: CASE/subtract, i.e. inside the input case folder)."),
    rule: Rule = common.opt(O, "rule", Rule),
    baseline: Optional[Path] = typer.Option(None, help="Baseline FLAIR (overrides the case folder's)."),
    followup: Optional[Path] = typer.Option(None, help="Follow-up FLAIR on the same grid."),
    brain_mask: Optional[Path] = typer.Option(None, help="Brain mask on the same grid."),
    tissues: Optional[Path] = typer.Option(None, help="Tissue map (1 CSF, 2 GM, 3 WM) for the prados CSF exclusion; default: CSF from FLAIR intensities."),
    k: float = common.opt(O, "k"),
    core_mm: float = common.opt(O, "core_mm"),
    noise: Noise = common.opt(O, "noise", Noise),
    min_followup_sd: float = common.opt(O, "min_followup_sd"),
    min_peak_sd: Optional[float] = common.opt(O, "min_peak_sd"),
    threshold: Optional[float] = common.opt(O, "threshold"),
    ratio_threshold: float = common.opt(O, "ratio_threshold"),
    bias_sigma_mm: float = common.opt(O, "bias_sigma_mm"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Find candidate new lesions in the subtraction image of two aligned FLAIR scans.

    Writes PREFIX_subtraction and PREFIX_ratio maps and the common detector outputs
    (PREFIX_score, _mask, _labels, _lesions.tsv).

    Example: mstools subtract data_samples/sim-001 -o out/sim-001_subtract --rule prados
    """
    from mstools.jobs.subtract import subtract_job

    result = subtract_job(case, out, common.options(O, locals()), baseline=baseline, followup=followup,
                          brain_mask=brain_mask, tissues=tissues, force=force)
    common.report(result, as_json=as_json)


subtract_command = common.command(subtract_command)
