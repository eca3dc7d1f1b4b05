"""`mstools activity`: new, enlarging and shrinking lesions, and whether the patient is active."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mstools_cli import common
from mstools.jobs.activity import ActivityOptions as O


def activity_command(
    case: Path = typer.Argument(..., help="Case folder (flair_time01/02_on_middle_space, brain_mask)."),
    run: Optional[Path] = typer.Option(None, "--run", help="A run folder of this case: its final new lesions (RUN/new_lesions) and subtract's candidates (RUN/subtract/subtract); --new and --candidates override."),
    new: Optional[str] = typer.Option(None, "--new", help="Prefix of the reported new lesions (a detector's or a run's PREFIX_mask/_score)."),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="Prefix of subtract's outputs (PREFIX_mask, _lesions.tsv, _subtraction)."),
    out: str = typer.Option(..., "--out", "-o", help="Output prefix: PREFIX_new_*, PREFIX_enlarging_*, PREFIX_lesion_changes.tsv, PREFIX_patient.json."),
    baseline_lesions: Optional[Path] = common.opt(O, "baseline_lesions"),
    rim_coverage: float = common.opt(O, "rim_coverage"),
    shrink_fraction: float = common.opt(O, "shrink_fraction"),
    k: float = common.opt(O, "k"),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Classify every change as new, enlarging or shrinking, and decide whether the patient is active.

    A change that wraps round a baseline lesion is its growth (enlarging); one that does
    not is new; a baseline lesion that darkens is shrinking. Needs the baseline lesions
    (--baseline-lesions, or the case's lesions_time01.nii.gz, or the run's CoactSeg map).
    With --run, register's Jacobian (when the run has one) is reported per lesion.

    Example: mstools activity data_samples/sim-001 --run out/sim-001 -o out/sim-001_activity/activity
    """
    from mstools.errors import InputError
    from mstools.jobs.activity import activity_job

    if run is not None:
        new = new or str(run / "new_lesions")
        candidates = candidates or str(run / "subtract" / "subtract")
    if new is None or candidates is None:
        raise InputError("give --run RUN, or both --new PREFIX and --candidates PREFIX")
    segment = str(run / "segment" / "segment") if run is not None else None
    register = str(run / "register" / "register") if run is not None else None
    result = activity_job(case, new, candidates, out, common.options(O, locals()), segment_prefix=segment,
                          register_prefix=register, force=force)
    common.report(result, as_json=as_json)


activity_command = common.command(activity_command)
