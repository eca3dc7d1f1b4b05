"""``mstools evaluate``: score predictions against ground truth, one pair or a cohort.

Parses, reads (``mstools.io``), calls :func:`mstools.metrics.evaluate_case`, writes
the per-case and per-lesion tables and the summary JSON in one atomic batch, and
reports on stdout (a readable table, or JSON with ``--json``). In a cohort, missing
or unreadable cases are reported, not fatal.
"""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mstools_cli.common import command, log, progress_enabled
from mstools.errors import InputError
from mstools.metrics import defaults


class HD95Choice(str, Enum):
    max_directed = "max-directed"
    pooled = "pooled"

#: Columns of the per-case table, before the metrics.
CASE_ID_COLUMNS = ("case", "status", "message", "prediction", "ground_truth", "empty_ground_truth")
#: Shown in the readable stdout table (column title, metric key, format).
_SHOWN = (
    ("dice", "dice", ".3f"), ("hd95_mm", "hd95_mm", ".2f"), ("assd_mm", "assd_mm", ".2f"),
    ("les_sens", "lesion_sensitivity", ".3f"), ("les_ppv", "lesion_ppv", ".3f"), ("les_f1", "lesion_f1", ".3f"),
    ("gt", "gt_lesions", "d"), ("pred", "pred_lesions", "d"), ("det", "msseg2_detected", "d"),
    ("fp", "msseg2_fp", "d"), ("score", "overall_score", ".3f"),
)
#: Summarised apart for cases whose ground truth is empty (MSSEG-2 practice).
EMPTY_TRUTH_METRICS = ("pred_lesions", "pred_lesion_volume_mm3", "pred_volume_mm3", "smoothed_dice",
                       "specificity")


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
    """
    from mstools.metrics import EvaluationOptions, LesionRule

    mode = _input_mode(prediction, ground_truth, pred_dir, gt_dir, manifest)
    if out is not None and out_dir is not None:
        raise typer.BadParameter("give --out or --out-dir, not both", param_hint="--out/--out-dir")
    if connectivity not in (6, 18, 26):
        raise typer.BadParameter(f"must be 6, 18 or 26, not {connectivity}", param_hint="--connectivity")
    if threshold is not None and not math.isfinite(threshold):
        raise typer.BadParameter("must be a finite number", param_hint="--threshold")
    try:
        rule = LesionRule(connectivity=connectivity, min_lesion_mm3=min_lesion_mm3, alpha=alpha, beta=beta,
                          gamma=gamma)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    options = EvaluationOptions(rule=rule, hd95=hd95.value)

    pairs = _pairs(mode, prediction, ground_truth, pred_dir, gt_dir, manifest, threshold)
    outputs = _output_paths(out, out_dir)
    _check_outputs(outputs, pairs, force=force, folder_created=out_dir is not None, manifest=manifest)

    rows, lesion_rows = _run(pairs, options, threshold, cohort=mode != "pair")
    evaluated = [r for r in rows if r["status"] == "ok"]
    if not evaluated:
        raise InputError("no case could be evaluated (" + "; ".join(
            f"{r['case']}: {r['message']}" for r in rows[:3]) + (" ..." if len(rows) > 3 else "") + ")")
    if mode != "pair":
        log(f"evaluated {len(evaluated)} of {len(rows)} case(s)")

    parameters = {**options.as_dict(), "threshold": threshold}
    summary = build_summary(rows, parameters)
    written = _write(outputs, rows, lesion_rows, summary, parameters, pairs, force, out_dir is not None,
                     manifest=manifest)
    _report(rows, lesion_rows, summary, written, as_json)


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


def _pairs(mode, prediction, ground_truth, pred_dir, gt_dir, manifest, threshold):
    from mstools.cohort import CasePair, pairs_from_folders, pairs_from_manifest
    from mstools.lesions import MASK_SUFFIX, SCORE_SUFFIX

    if mode == "pair":
        name = prediction.name
        for suffix in (MASK_SUFFIX, SCORE_SUFFIX, ".nii.gz", ".nii"):
            if name.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        return [CasePair(name, prediction, ground_truth)]
    if mode == "folders":
        return pairs_from_folders(pred_dir, gt_dir, prefer_score=threshold is not None)
    return pairs_from_manifest(manifest)


def _read_prediction(path: Path, threshold: Optional[float]):
    """The prediction as a boolean mask on its grid (threshold applied to score maps)."""
    from mstools.io import read_image

    image = read_image(path)
    data = image.data
    if threshold is not None:
        return image.with_data(data >= threshold)
    odd = (data != 0) & (data != 1)
    if odd.any():
        raise InputError(
            f"{path}: prediction is not a binary mask (values {_values(data[odd])}, range "
            f"{float(data.min()):.3g} to {float(data.max()):.3g}); for a score or probability map pass "
            "--threshold (e.g. --threshold 0.5)")
    return image.with_data(data != 0)


def _read_truth(path: Path):
    """The ground truth as a boolean mask; anything but 0 and 1 is refused."""
    from mstools.io import read_image

    image = read_image(path)
    data = image.data
    odd = (data != 0) & (data != 1)
    if odd.any():
        raise InputError(
            f"{path}: ground truth is not a binary mask (values {_values(data[odd])} besides 0 and 1); "
            "evaluate needs a 0/1 mask of the new lesions: binarise it first (every lesion voxel 1)")
    return image.with_data(data != 0)


def _values(values) -> str:
    import numpy as np

    shown = np.unique(values[:100000])
    return ", ".join(f"{v:g}" for v in shown[:5]) + (" ..." if shown.size > 5 else "")


# --------------------------------------------------------------------------- running


def _missing(pair) -> tuple[str, str] | None:
    if pair.prediction is None:
        return "missing_prediction", "no prediction found for this case"
    if pair.ground_truth is None:
        return "missing_ground_truth", "no ground truth found for this case"
    if not pair.prediction.is_file():
        return "missing_prediction", f"{pair.prediction}: file not found"
    if not pair.ground_truth.is_file():
        return "missing_ground_truth", f"{pair.ground_truth}: file not found"
    return None


def _evaluate_pair(pair, options, threshold):
    from mstools.io import check_same_grid
    from mstools.metrics import evaluate_case

    truth = _read_truth(pair.ground_truth)
    pred = _read_prediction(pair.prediction, threshold)
    check_same_grid(pred, truth, names=(pair.prediction, pair.ground_truth))
    return evaluate_case(pred.data, truth.data, affine=truth.affine, options=options, case=pair.case)


def _run(pairs, options, threshold, *, cohort: bool):
    rows: list[dict] = []
    lesion_rows: list[dict] = []
    progress = _progress(len(pairs)) if cohort else None
    try:
        for pair in pairs:
            row = {"case": pair.case, "prediction": _text(pair.prediction), "ground_truth": _text(pair.ground_truth)}
            missing = _missing(pair) if cohort else None
            if missing is not None:
                row.update(status=missing[0], message=missing[1])
                log(f"warning: case {pair.case}: {missing[1]} (reported as {missing[0]})")
            else:
                try:
                    result = _evaluate_pair(pair, options, threshold)
                except InputError as exc:
                    if not cohort:
                        raise
                    row.update(status="error", message=str(exc))
                    log(f"warning: case {pair.case}: {exc} (reported as error)")
                else:
                    row.update(status="ok", message="")
                    row.update(result.metrics)
                    lesion_rows.extend(result.lesions)
                    log(f"{pair.case}: dice {_fmt(row.get('dice'), '.3f')}, "
                        f"lesion F1 {_fmt(row.get('lesion_f1'), '.3f')}", level=1)
            rows.append(row)
            if progress is not None:
                progress[0].advance(progress[1])
    finally:
        if progress is not None:
            progress[0].stop()
    return rows, lesion_rows


def _progress(total: int):
    if not progress_enabled() or total < 2:
        return None
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(console=Console(stderr=True), transient=True)
    bar.start()
    return bar, bar.add_task("evaluating", total=total)


def _text(path: Optional[Path]) -> str | None:
    return None if path is None else str(path)


# --------------------------------------------------------------------------- summary


def build_summary(rows: list[dict], parameters: dict) -> dict:
    """Statistics over evaluated cases, empty-ground-truth cases apart; missing and failed listed."""
    from mstools.metrics import METRIC_DEFINITIONS
    from mstools.metrics.summary import summarise

    ok = [r for r in rows if r["status"] == "ok"]
    with_truth = [r for r in ok if not r["empty_ground_truth"]]
    empty = [r for r in ok if r["empty_ground_truth"]]
    return {
        "parameters": parameters,
        "hd95_definition": ("max of the two directed 95th percentiles (MONAI, Metrics Reloaded)"
                            if parameters["hd95"] == "max-directed"
                            else "95th percentile of both directions pooled (medpy)"),
        "conventions": {
            "empty_ground_truth": "truth-relative scores (Dice, Jaccard, PPV, sensitivity, VD, RVE, surface "
                                  "distances, lesion scores, overall score) are n/a; the case is summarised "
                                  "apart by the number and volume of predicted lesions (MSSEG-2)",
            "empty_prediction": "Dice, Jaccard, sensitivity, PPV, lesion PPV/F1, LTPR, LFPR are 0, VD is 1; "
                                "surface distances are n/a",
            "undefined": "n/a values are left out of the statistics; n_undefined counts them",
            "std": "sample standard deviation (ddof = 1)",
        },
        "cases": {
            "total": len(rows),
            "evaluated": len(ok),
            "with_ground_truth": len(with_truth),
            "empty_ground_truth": len(empty),
            "missing": [{"case": r["case"], "status": r["status"], "message": r["message"]}
                        for r in rows if r["status"].startswith("missing")],
            "failed": [{"case": r["case"], "message": r["message"]} for r in rows if r["status"] == "error"],
        },
        "ground_truth_cases": summarise(with_truth, list(METRIC_DEFINITIONS)),
        "empty_ground_truth_cases": {
            "cases_without_predicted_lesion": sum(1 for r in empty if r["pred_lesions"] == 0),
            **summarise(empty, EMPTY_TRUTH_METRICS),
        },
        "definitions": dict(METRIC_DEFINITIONS),
    }


# --------------------------------------------------------------------------- outputs


def _inputs(pairs, manifest: Optional[Path] = None) -> list[Path]:
    """Every file evaluate reads (never overwritten, --force or not)."""
    files = [p for pair in pairs for p in (pair.prediction, pair.ground_truth) if p is not None]
    return files + ([manifest] if manifest is not None else [])


def _check_outputs(outputs: dict[str, Path], pairs, *, force: bool, folder_created: bool,
                   manifest: Optional[Path] = None) -> None:
    """Refuse unwritable outputs before any case is read (a cohort can take minutes)."""
    from mstools.io import check_writable

    inputs = _inputs(pairs, manifest)
    for path in outputs.values():
        if folder_created and not path.parent.exists():
            continue                          # --out-dir is created when the results are written
        check_writable(path, inputs=inputs, force=force)


def _output_paths(out: Optional[str], out_dir: Optional[Path]) -> dict[str, Path]:
    if out is not None:
        return {"cases": Path(out + "_cases.tsv"), "lesions": Path(out + "_lesions.tsv"),
                "summary": Path(out + "_summary.json")}
    if out_dir is not None:
        return {"cases": out_dir / "cases.tsv", "lesions": out_dir / "lesions.tsv",
                "summary": out_dir / "summary.json"}
    return {}


def _write(outputs, rows, lesion_rows, summary, parameters, pairs, force, create_dirs, *,
           manifest: Optional[Path] = None) -> list[Path]:
    if not outputs:
        return []
    from mstools.io import OutputBatch
    from mstools.metrics import LESION_COLUMNS, METRIC_DEFINITIONS
    from mstools.provenance import describe_inputs, sidecar, sidecar_path

    inputs = _inputs(pairs, manifest)
    record = sidecar(command="evaluate", parameters=parameters, inputs=describe_inputs(inputs))
    with OutputBatch(inputs=inputs, force=force, create_dirs=create_dirs) as batch:
        batch.table(outputs["cases"], rows, [*CASE_ID_COLUMNS, *METRIC_DEFINITIONS])
        batch.json(sidecar_path(outputs["cases"]), record)
        batch.table(outputs["lesions"], lesion_rows, LESION_COLUMNS)
        batch.json(sidecar_path(outputs["lesions"]), record)
        # a JSON output cannot have a <name>.json sidecar: its provenance is inside it
        batch.json(outputs["summary"], json_safe({**summary, "provenance": record}))
    return list(batch.written)


def json_safe(value):
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    import numpy as np

    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def _report(rows, lesion_rows, summary, written, as_json: bool) -> None:
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
