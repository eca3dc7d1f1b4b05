"""Scoring predictions against ground truth as a job (``mstools evaluate``): one pair or a
cohort, per-case and per-lesion tables and a summary JSON written in one atomic batch.

In a cohort, missing or unreadable cases are reported (status), not fatal. The metrics
are :func:`mstools.metrics.evaluate_case`'s.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

from mstools.errors import InputError
from mstools.messages import log

#: Columns of the per-case table, before the metrics.
CASE_ID_COLUMNS = ("case", "status", "message", "prediction", "ground_truth", "empty_ground_truth")
#: Summarised apart for cases whose ground truth is empty (MSSEG-2 practice).
EMPTY_TRUTH_METRICS = ("pred_lesions", "pred_lesion_volume_mm3", "pred_volume_mm3", "smoothed_dice",
                       "specificity")


def case_pairs(mode, prediction, ground_truth, pred_dir, gt_dir, manifest, threshold):
    from mstools.cohort import CasePair, pairs_from_folders, pairs_from_manifest
    from mstools.detections import MASK_SUFFIX, SCORE_SUFFIX

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


def evaluate_pairs(pairs, options, threshold, *, cohort: bool, on_case: Optional[Callable[[], None]] = None):
    """(case rows, lesion rows) of every pair; in a cohort a missing or unreadable case is a row with its status."""
    rows: list[dict] = []
    lesion_rows: list[dict] = []
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
        if on_case is not None:
            on_case()
    return rows, lesion_rows


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


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


def _inputs(pairs, manifest: Optional[Path] = None) -> list[Path]:
    """Every file evaluate reads (never overwritten, --force or not)."""
    files = [p for pair in pairs for p in (pair.prediction, pair.ground_truth) if p is not None]
    return files + ([manifest] if manifest is not None else [])


def check_outputs(outputs: dict[str, Path], pairs, *, force: bool, manifest: Optional[Path] = None) -> None:
    """Refuse unwritable outputs before any case is read (a cohort can take minutes); missing
    folders of --out or --out-dir are created when the results are written."""
    from mstools import provenance

    inputs = _inputs(pairs, manifest)
    provenance.check_outputs([outputs["cases"], outputs["lesions"]], inputs=inputs, force=force)
    provenance.check_outputs([outputs["summary"]], inputs=inputs, force=force, sidecars=False)


def output_paths(out: Optional[str], out_dir: Optional[Path]) -> dict[str, Path]:
    if out is not None:
        return {"cases": Path(out + "_cases.tsv"), "lesions": Path(out + "_lesions.tsv"),
                "summary": Path(out + "_summary.json")}
    if out_dir is not None:
        return {"cases": out_dir / "cases.tsv", "lesions": out_dir / "lesions.tsv",
                "summary": out_dir / "summary.json"}
    return {}


def write_outputs(outputs, rows, lesion_rows, summary, parameters, pairs, force, *,
                  manifest: Optional[Path] = None) -> list[Path]:
    if not outputs:
        return []
    from mstools.io import OutputBatch
    from mstools.metrics import LESION_COLUMNS, METRIC_DEFINITIONS
    from mstools.provenance import describe_inputs, sidecar, sidecar_path

    inputs = _inputs(pairs, manifest)
    record = sidecar(command="evaluate", parameters=parameters, inputs=describe_inputs(inputs))
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
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



def _text(path: Optional[Path]) -> str | None:
    return None if path is None else str(path)


def evaluate_job(pairs, options, threshold: Optional[float], *, cohort: bool, out: Optional[str] = None,
                 out_dir: Optional[Path] = None, manifest: Optional[Path] = None, force: bool = False,
                 on_case: Optional[Callable[[], None]] = None):
    """Score ``pairs`` (:class:`mstools.cohort.CasePair`) with ``options``
    (:class:`mstools.metrics.EvaluationOptions`); write the tables and summary when ``out``
    (a prefix) or ``out_dir`` is given. Returns (rows, lesion rows, summary, written paths).
    """
    outputs = output_paths(out, out_dir)
    if outputs:
        check_outputs(outputs, pairs, force=force, manifest=manifest)
    rows, lesion_rows = evaluate_pairs(pairs, options, threshold, cohort=cohort, on_case=on_case)
    evaluated = [r for r in rows if r["status"] == "ok"]
    if not evaluated:
        raise InputError("no case could be evaluated (" + "; ".join(
            f"{r['case']}: {r['message']}" for r in rows[:3]) + (" ..." if len(rows) > 3 else "") + ")")
    if cohort:
        log(f"evaluated {len(evaluated)} of {len(rows)} case(s)")
    parameters = {**options.as_dict(), "threshold": threshold}
    summary = build_summary(rows, parameters)
    written = write_outputs(outputs, rows, lesion_rows, summary, parameters, pairs, force, manifest=manifest)
    return rows, lesion_rows, summary, written


# ----------------------------------------------------------------------------- lesion activity

#: Columns of the per-case table of ``evaluate --activity``.
ACTIVITY_CASE_COLUMNS = ("case", "status", "active_truth", "active", "activity_probability", "new", "enlarging",
                         "shrinking", "enlarging_detected", "enlarging_as_new", "shrinking_as_new", "reported_any",
                         "right_kind")


def evaluate_activity_job(runs: Path, cases: Path, *, out: Optional[str] = None, out_dir: Optional[Path] = None,
                          force: bool = False):
    """Score lesion activity over a cohort (``mstools evaluate --activity``).

    ``runs``: folder of run folders (``mstools batch`` output, or runs named as the cases),
    each with the activity stage's results; ``cases``: folder of case folders with
    ``lesions_time01``, ``lesions_time02`` and ``ground_truth``
    (:mod:`mstools.metrics.activity` derives the true changes from them)."""
    import json

    import numpy as np

    from mstools import case_layout as layout
    from mstools import run_layout as rl
    from mstools.io import OutputBatch, check_same_grid, read_mask
    from mstools.jobs import JobResult
    from mstools.metrics import activity as metrics
    from mstools.provenance import check_outputs

    for folder, what in ((runs, "run folders"), (cases, "case folders")):
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder; --activity needs --pred-dir (a folder of {what.split()[0]} "
                             "folders) and --gt-dir (a folder of case folders)")
    names = sorted(p.name for p in runs.iterdir() if (p / rl.RUN_RECORD).is_file())
    if not names:
        raise InputError(f"{runs}: no run folders (<case>/run.json); run `mstools batch` or `mstools run` first")
    if out_dir is not None:
        paths = {"cases": out_dir / "activity_cases.tsv", "summary": out_dir / "activity_summary.json"}
    else:
        prefix = out if out is not None else str(runs / "activity")
        paths = {"cases": Path(prefix + "_activity_cases.tsv"), "summary": Path(prefix + "_activity_summary.json")}
    check_outputs(paths.values(), force=force, sidecars=False)
    rows, totals = [], {}
    probabilities, decided, truth = [], [], []
    for name in names:
        run, case = runs / name, cases / name
        record = json.loads((run / rl.RUN_RECORD).read_text())
        needed = [case / layout.LESIONS_BASELINE, case / layout.LESIONS_FOLLOWUP, case / layout.GROUND_TRUTH]
        enlarging_path = run / f"{rl.ENLARGING_PREFIX}_mask.nii.gz"
        if not record.get("activity") or not enlarging_path.is_file():
            rows.append({"case": name, "status": "no activity results (run with the activity stage)"})
            continue
        if not all(p.is_file() for p in needed):
            rows.append({"case": name, "status": f"no truth ({', '.join(p.name for p in needed)} in {case})"})
            continue
        l1, l2, new = (read_mask(p) for p in needed)
        reported_new = read_mask(run / f"{rl.FINAL_PREFIX}_mask.nii.gz")
        reported_enlarging = read_mask(enlarging_path)
        for image in (l2, new, reported_new, reported_enlarging):
            check_same_grid(l1, image)
        changes = metrics.true_changes(l1.data, l2.data, new.data, affine=l1.affine)
        counts = metrics.score_changes(changes, reported_new.data, reported_enlarging.data)
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        activity = record["activity"]
        active = metrics.is_active(changes)
        probabilities.append(activity["activity_probability"])
        decided.append(bool(activity["active"]))
        truth.append(active)
        rows.append({"case": name, "status": "ok", "active_truth": "yes" if active else "no",
                     "active": "yes" if activity["active"] else "no",
                     "activity_probability": activity["activity_probability"], **counts})
    if not truth:
        raise InputError(f"{runs}: no case had both activity results and truth (see the per-case status); "
                         "nothing to score")
    summary = {"cases": len(names), "scored": len(truth), **totals, **metrics.rates(totals),
               "patient": metrics.patient_decision(probabilities, decided, truth)}
    summary = {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in summary.items()}
    summary["patient"] = {key: (None if isinstance(v, float) and math.isnan(v) else v)
                          for key, v in summary["patient"].items()}
    with OutputBatch(force=force, create_dirs=True) as batch:
        batch.table(paths["cases"], rows, ACTIVITY_CASE_COLUMNS)
        batch.json(paths["summary"], summary)
    log(f"activity: {len(truth)} of {len(names)} cases scored")
    return JobResult(list(batch.written), summary)
