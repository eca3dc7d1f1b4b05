"""``mstools evaluate``: score predictions against ground truth, one pair or a cohort.

Parses, calls :func:`mstools.jobs.evaluate.evaluate_job` (which reads, scores with
:func:`mstools.metrics.evaluate_case` and writes the tables and the summary JSON in one
atomic batch), and reports on stdout (a readable table, or JSON with ``--json``).
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mstools_cli.common import command, emit, progress_enabled
from mstools.metrics import defaults


class HD95Choice(str, Enum):
    max_directed = "max-directed"
    pooled = "pooled"

#: Shown in the readable stdout table (column title, metric key, format).
_SHOWN = (
    ("dice", "dice", ".3f"), ("hd95_mm", "hd95_mm", ".2f"), ("assd_mm", "assd_mm", ".2f"),
    ("les_sens", "lesion_sensitivity", ".3f"), ("les_ppv", "lesion_ppv", ".3f"), ("les_f1", "lesion_f1", ".3f"),
    ("gt", "gt_lesions", "d"), ("pred", "pred_lesions", "d"), ("det", "msseg2_detected", "d"),
    ("fp", "msseg2_fp", "d"), ("score", "overall_score", ".3f"),
)


@command
def evaluate_command(
    prediction: Optional[Path] = typer.Argument(
        None, show_default=False,
        help="Prediction: a binary mask, or a score/probability map with --threshold."),
    ground_truth: Optional[Path] = typer.Argument(
        None, show_default=False, help="Ground-truth binary mask of new lesions, same grid."),
    pred_dir: Optional[Path] = typer.Option(
        None, "--pred-dir", help="Cohort: folder of predictions (<case>.nii.gz, <case>_mask.nii.gz, "
                                 "<case>_score.nii.gz or <case>/ with one *_mask.nii.gz)."),
    gt_dir: Optional[Path] = typer.Option(
        None, "--gt-dir", help="Cohort: folder of ground truths (<case>.nii.gz or <case>/ground_truth.nii.gz)."),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", help="Cohort: TSV with columns case, prediction, ground_truth."),
    threshold: Optional[float] = typer.Option(
        None, "--threshold", help="Binarise score/probability maps: lesion where value >= threshold."),
    connectivity: int = typer.Option(
        defaults.CONNECTIVITY, "--connectivity", help="Lesion connectivity: 6, 18 or 26 (Anima: 6)."),
    min_lesion_mm3: float = typer.Option(
        defaults.MIN_LESION_MM3, "--min-lesion-mm3",
        help="Lesions must be strictly larger than this volume (Anima: 3 mm3)."),
    alpha: float = typer.Option(
        defaults.ALPHA, "--alpha", help="Anima rule: a lesion must be covered by more than alpha."),
    beta: float = typer.Option(
        defaults.BETA, "--beta", help="Anima rule: an overlapping lesion more than beta outside blocks."),
    gamma: float = typer.Option(
        defaults.GAMMA, "--gamma", help="Anima rule: share of the overlap whose lesions are checked."),
    hd95: HD95Choice = typer.Option(
        HD95Choice(defaults.HD95), "--hd95", case_sensitive=False,
        help="HD95 definition of the hd95_mm column: max-directed (MONAI, Metrics Reloaded) or pooled "
             "(medpy). Both are always in the table."),
    out: Optional[str] = typer.Option(
        None, "--out", help="Output prefix: PREFIX_cases.tsv, PREFIX_lesions.tsv, PREFIX_summary.json."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", help="Output folder: cases.tsv, lesions.tsv, summary.json (created if needed)."),
    activity: bool = typer.Option(
        False, "--activity", help="Lesion activity of a cohort of runs: --pred-dir holds run folders (<case>/run.json "
                                  "with the activity stage), --gt-dir case folders with lesions_time01/02 and "
                                  "ground_truth. Scores enlarging lesions, the kinds of changes and the patient "
                                  "decision (PREFIX_activity_cases.tsv, PREFIX_activity_summary.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
) -> None:
    """Score new-lesion predictions against ground truth: voxel, surface, lesions.

    Lesion detection follows Anima's animaSegPerfAnalyzer, as in MSSEG-2
    (--alpha, --beta, --gamma); the any-overlap (ISBI 2015) and 10 %/70 %
    rules, Denner et al.'s overall score and both HD95 are reported too.
    With an empty ground truth, Dice and other truth-relative scores are n/a:
    such cases are scored by the number and volume of predicted lesions and
    summarised apart.

    \b
    Examples:
      mstools evaluate case01_mask.nii.gz case01/ground_truth.nii.gz
      mstools evaluate --pred-dir preds --gt-dir cases --out-dir results
      mstools evaluate --manifest cohort.tsv --threshold 0.5 --json
      mstools evaluate --activity --pred-dir derivatives --gt-dir cases --out-dir results
    """
    from mstools.jobs.evaluate import case_pairs, evaluate_job
    from mstools.metrics import EvaluationOptions

    mode = _input_mode(prediction, ground_truth, pred_dir, gt_dir, manifest)
    if out is not None and out_dir is not None:
        raise typer.BadParameter("give --out or --out-dir, not both", param_hint="--out/--out-dir")
    if activity:
        _activity(mode, pred_dir, gt_dir, out, out_dir, force, as_json)
        return
    rule = _lesion_rule(connectivity, min_lesion_mm3, alpha, beta, gamma, threshold)
    pairs = case_pairs(mode, prediction, ground_truth, pred_dir, gt_dir, manifest, threshold)
    with _progress(len(pairs) if mode != "pair" else 0) as on_case:
        rows, lesion_rows, summary, written = evaluate_job(
            pairs, EvaluationOptions(rule=rule, hd95=hd95.value), threshold, cohort=mode != "pair", out=out,
            out_dir=out_dir, manifest=manifest, force=force, on_case=on_case)
    _report(rows, lesion_rows, summary, written, as_json)


def _lesion_rule(connectivity, min_lesion_mm3, alpha, beta, gamma, threshold):
    from mstools.metrics import LesionRule

    if connectivity not in (6, 18, 26):
        raise typer.BadParameter(f"must be 6, 18 or 26, not {connectivity}", param_hint="--connectivity")
    if threshold is not None and not math.isfinite(threshold):
        raise typer.BadParameter("must be a finite number", param_hint="--threshold")
    try:
        return LesionRule(connectivity=connectivity, min_lesion_mm3=min_lesion_mm3, alpha=alpha, beta=beta,
                          gamma=gamma)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _activity(mode, pred_dir, gt_dir, out, out_dir, force, as_json) -> None:
    from mstools.jobs.evaluate import evaluate_activity_job

    if mode != "folders":
        raise typer.BadParameter("--activity scores a cohort: give --pred-dir (run folders) and --gt-dir (case folders)")
    result = evaluate_activity_job(pred_dir, gt_dir, out=out, out_dir=out_dir, force=force)
    if as_json:
        emit(as_json=True, payload=result.payload)
        return
    s, p = result.payload, result.payload["patient"]
    shown = (lambda v: "n/a" if v is None else f"{v:.3f}")
    print(f"enlarging LTPR {shown(s['enlarging_ltpr'])} ({s['enlarging_detected']}/{s['enlarging']}), reported as "
          f"new: enlarging {shown(s['enlarging_as_new'])}, shrinking {shown(s['shrinking_as_new'])}; kind accuracy "
          f"{shown(s['kind_accuracy'])}")
    print(f"patients {p['patients']} ({p['active']} active): sensitivity {shown(p['sensitivity'])}, specificity "
          f"{shown(p['specificity'])}, AUC {shown(p['auc'])}")
    for path in result.written:
        print(path)


# --------------------------------------------------------------------------- inputs


def _input_mode(prediction, ground_truth, pred_dir, gt_dir, manifest) -> str:
    pair = prediction is not None or ground_truth is not None
    folders = pred_dir is not None or gt_dir is not None
    chosen = [name for name, given in (("pair", pair), ("folders", folders), ("manifest", manifest is not None))
              if given]
    usage = ("give PREDICTION GROUND_TRUTH, or --pred-dir with --gt-dir, or --manifest "
             "(see mstools evaluate --help)")
    if len(chosen) != 1:
        raise typer.BadParameter(("inputs of two kinds given; " if chosen else "no input given; ") + usage)
    if chosen[0] == "pair" and (prediction is None or ground_truth is None):
        raise typer.BadParameter("a prediction and a ground truth are both needed; " + usage)
    if chosen[0] == "folders" and (pred_dir is None or gt_dir is None):
        raise typer.BadParameter("--pred-dir and --gt-dir go together; " + usage)
    return chosen[0]


class _progress:
    """A progress bar over a cohort's cases on a terminal (2 cases or more)."""

    def __init__(self, total: int):
        self.total, self.bar = total, None

    def __enter__(self):
        if not progress_enabled() or self.total < 2:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("evaluating", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _report(rows, lesion_rows, summary, written, as_json: bool) -> None:
    from mstools.jobs.evaluate import json_safe
    from mstools_cli.common import emit

    if as_json:
        emit(as_json=True, payload=json_safe({"cases": rows, "lesions": lesion_rows, "summary": summary,
                                              "written": [str(p) for p in written]}))
        return
    print(_table(rows))
    print()
    print(_summary_text(summary))
    emit(written)


def _table(rows) -> str:
    titles = ["case", *(t for t, _, _ in _SHOWN)]
    body = []
    for r in rows:
        if r["status"] != "ok":
            body.append([r["case"], f"({r['status']}: {r['message']})"])
            continue
        body.append([r["case"], *(_fmt(r.get(key), spec) for _, key, spec in _SHOWN)])
    widths = [max(len(titles[i]), *(len(b[i]) for b in body if len(b) == len(titles))) for i in range(len(titles))]
    lines = ["  ".join(t.ljust(w) for t, w in zip(titles, widths)).rstrip()]
    for b in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() if len(b) == len(titles)
                     else "  ".join(b))
    return "\n".join(lines)


def _summary_text(summary) -> str:
    cases = summary["cases"]
    stats = summary["ground_truth_cases"]
    lines = [f"{cases['with_ground_truth']} case(s) with ground truth "
             f"(HD95: {summary['parameters']['hd95']}); mean +/- sd [median]:"]
    for _, key, spec in _SHOWN:
        s = stats[key]
        if s["n"] == 0:
            lines.append(f"  {key:<20} n/a")
            continue
        sd = f" +/- {_fmt(s['std'], '.3f')}" if s["std"] is not None else ""
        spec = ".3f" if spec == "d" else spec
        extra = f"  ({s['n_undefined']} n/a left out)" if s["n_undefined"] else ""
        lines.append(f"  {key:<20} {_fmt(s['mean'], spec)}{sd} [{_fmt(s['median'], spec)}]{extra}")
    empty = summary["empty_ground_truth_cases"]
    if cases["empty_ground_truth"]:
        n_les, vol = empty["pred_lesions"], empty["pred_lesion_volume_mm3"]
        lines.append(f"{cases['empty_ground_truth']} case(s) with empty ground truth: predicted lesions "
                     f"mean {_fmt(n_les['mean'], '.2f')}, volume mean {_fmt(vol['mean'], '.1f')} mm3, "
                     f"{empty['cases_without_predicted_lesion']} without any predicted lesion")
    for item in cases["missing"]:
        lines.append(f"missing: {item['case']} ({item['message']})")
    for item in cases["failed"]:
        lines.append(f"failed: {item['case']} ({item['message']})")
    return "\n".join(lines)
