"""Read a run (or derivatives) folder, render its page(s), write them atomically.

The only part of :mod:`mstools.report` that touches files: images through
:mod:`mstools.io`, the run record, tables and QC pictures as they lie in the folders
of :mod:`mstools.run_layout`, pages through :class:`mstools.io.OutputBatch`. The
lead commands (``mstools run``, ``mstools batch``) call :func:`write_case_report`
and :func:`write_cohort_report` directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote

import numpy as np

from mstools import __version__
from mstools import case_layout
from mstools import run_layout as layout
from mstools.jobs.subtract import SUBTRACTION_SUFFIX   # the subtract stage's z-scored subtraction map
from mstools.errors import InputError
from mstools.lesions import LABELS_SUFFIX, MASK_SUFFIX, SCORE_SUFFIX, TABLE_SUFFIX
from mstools.report.figures import DEFAULT_MAX_LESIONS

#: Preprocessing QC pictures embedded in a case page: ``RUN/case/qc*.png`` (``mstools
#: preprocess`` writes ``qc_preprocess.png``), and the same in the input case folder.
QC_GLOB = "qc*.png"
#: ``mstools preprocess``'s QC picture. The page redraws it from the pair it shows (the
#: same case folder's baseline, follow-up and brain mask) in the lesion panels' display
#: orientation, whatever orientation the file was drawn in (older versions drew the
#: stored array order: anterior at the bottom for an LPI scan).
PREPROCESS_QC = "qc_preprocess.png"


@dataclass(frozen=True)
class CaseReport:
    """A rendered case page and what it shows."""

    html: str
    case: str
    new_lesions: int
    figures: int


def folder_kind(folder: str | os.PathLike) -> str:
    """``"case"`` for a run folder (``run.json``), ``"cohort"`` for a derivatives folder
    (``cohort.tsv``); bad input otherwise."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found; give the output folder of mstools run or mstools batch")
    if not folder.is_dir():
        raise InputError(f"{folder}: is a file; give the output folder of mstools run (holding {layout.RUN_RECORD}) "
                         f"or mstools batch (holding {layout.COHORT_TABLE})")
    if (folder / layout.RUN_RECORD).is_file():
        return "case"
    if (folder / layout.COHORT_TABLE).is_file():
        return "cohort"
    raise InputError(f"{folder}: holds neither {layout.RUN_RECORD} (a mstools run folder) nor "
                     f"{layout.COHORT_TABLE} (a mstools batch folder); give the output folder of one of them")


def report_inputs(folder: str | os.PathLike) -> list[Path]:
    """Every file a report of ``folder`` may read: the folder's files (but its HTML pages)
    and a run record's input images; a report is never written over one of them."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if not p.name.endswith(".html") and p.is_file()]
    try:
        record = read_run_record(folder)
    except InputError:
        return files
    for value in (record.get("inputs") or {}).values():
        if isinstance(value, str) and value:
            files.append(_resolve(folder, value))
    return files


def read_run_record(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / layout.RUN_RECORD
    if not path.is_file():
        raise InputError(f"{path}: run record not found; give the output folder of mstools run")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable run record ({exc}); rerun mstools run") from None
    if not isinstance(record, dict):
        raise InputError(f"{path}: a JSON object was expected; rerun mstools run")
    return record


def _resolve(run_dir: Path, value) -> Path | None:
    """A path of the run record: relative ones are relative to the run folder."""
    if value in (None, ""):
        return None
    path = Path(str(value))
    return path if path.is_absolute() else run_dir / path


def _input(run_dir: Path, record: dict, key: str, default_name: str | None) -> Path | None:
    inputs = record.get("inputs") or {}
    if key in inputs:
        return _resolve(run_dir, inputs[key])
    folder = _resolve(run_dir, inputs.get("case_folder"))
    return folder / default_name if folder is not None and default_name else None


def _final_path(run_dir: Path, record: dict, key: str) -> Path:
    """The final result's file (``final`` of the record, else RUN/new_lesions_<key>)."""
    suffix = {"score": SCORE_SUFFIX, "mask": MASK_SUFFIX, "labels": LABELS_SUFFIX, "table": TABLE_SUFFIX}[key]
    return _resolve(run_dir, (record.get("final") or {}).get(key)) or Path(f"{layout.final_prefix(run_dir)}{suffix}")


def _optional_mask(run_dir: Path, record: dict, key: str, reference) -> np.ndarray | None:
    """The brain mask or ground truth the run used, or None. A path the record names must
    exist; without the record naming one, the case folder's brain mask is used if present."""
    from mstools.io import check_same_grid, read_mask

    inputs = record.get("inputs") or {}
    if key in inputs:
        path = _resolve(run_dir, inputs[key])
    elif key == "brain_mask":
        path = _input(run_dir, record, key, case_layout.BRAIN_MASK)
        path = path if path is not None and path.is_file() else None
    else:
        path = None
    if path is None:
        return None
    image = read_mask(path)
    check_same_grid(reference, image)
    return image.data


def _qc_pictures(run_dir: Path, record: dict, redraw: Callable[[], bytes] | None = None,
                 pair_folder: Path | None = None) -> list[tuple[str, bytes]]:
    """(name, PNG bytes) of the QC pictures of the run's case folders; ``mstools preprocess``'s
    picture of ``pair_folder`` (the folder of the pair the page shows) is ``redraw()`` instead."""
    folders = [run_dir / layout.CASE_DIR]
    case_folder = _resolve(run_dir, (record.get("inputs") or {}).get("case_folder"))
    if case_folder is not None:
        folders.append(case_folder)
    seen: set[Path] = set()
    pictures = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(QC_GLOB)):
            key = path.resolve()
            if key in seen or not path.is_file():
                continue
            seen.add(key)
            name = os.path.relpath(path, run_dir)
            if (redraw is not None and pair_folder is not None and path.name == PREPROCESS_QC
                    and key.parent == pair_folder.resolve()):
                pictures.append((f"{name}, redrawn from the preprocessed pair (anterior at the top, "
                                 "R on the right; k: display axial slice)", redraw()))
                continue
            data = path.read_bytes()
            if data.startswith(b"\x89PNG\r\n\x1a\n"):
                pictures.append((name, data))
    return pictures


def case_name(record: dict, run_dir: str | os.PathLike) -> str:
    """The name a page gives a run: the record's case, or the run folder's name when the
    record's case is only the raw follow-up's file name (``mstools run --baseline
    --followup`` names the case so) or missing."""
    case = str(record.get("case") or "")
    raw = (record.get("inputs") or {}).get("raw_followup")
    if not case or (raw and case == Path(str(raw)).name.split(".")[0]):
        return Path(run_dir).resolve().name
    return case


def _activity_figures(run_dir: Path, record: dict, baseline, followup, difference, difference_name: str,
                      brain_mask, max_lesions: int) -> tuple[list[dict] | None, list]:
    """The activity stage's table rows and one picture row per enlarging lesion (its grown
    part outlined on the baseline, the follow-up and the difference); (None, []) without it."""
    from mstools.io import check_same_grid, read_labels, read_tsv
    from mstools.report.figures import case_figures

    table = run_dir / layout.LESION_CHANGES
    labels_path = run_dir / f"{layout.ENLARGING_PREFIX}_labels.nii.gz"
    if not record.get("activity") or not table.is_file():
        return None, []
    changes = read_tsv(table)
    if not labels_path.is_file() or not any(row.get("kind") == "enlarging" for row in changes):
        return changes, []
    labels = read_labels(labels_path)
    check_same_grid(baseline, labels)
    figures = case_figures(baseline.data, followup.data, labels.data, baseline.affine, difference=difference,
                           difference_name=difference_name, brain_mask=brain_mask, show_missed=False,
                           max_lesions=max_lesions, score_name=None, what="enlarging lesion",
                           legend="red: the grown part (labelled as its baseline lesion)", figure_kind="enlarging")
    return changes, figures


def render_case_report(run_dir: str | os.PathLike, *, max_lesions: int = DEFAULT_MAX_LESIONS) -> CaseReport:
    """Read a run folder and render its page (nothing written)."""
    from mstools.io import check_same_grid, read_image, read_labels, read_mask, read_tsv
    from mstools.lesions import label_components, lesion_table
    from mstools.report.figures import case_figures
    from mstools.report.html import case_page, score_display

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    baseline_path = _input(run_dir, record, "baseline", case_layout.BASELINE)
    followup_path = _input(run_dir, record, "followup", case_layout.FOLLOWUP)
    if baseline_path is None or followup_path is None:
        raise InputError(f"{run_dir / layout.RUN_RECORD}: names no baseline/follow-up (inputs); rerun mstools run")
    baseline = read_image(baseline_path)
    followup = read_image(followup_path)
    check_same_grid(baseline, followup)

    labels_path, mask_path, table_path = (_final_path(run_dir, record, key) for key in ("labels", "mask", "table"))
    if labels_path.is_file():
        labels_img = read_labels(labels_path)
        labels = labels_img.data
    elif mask_path.is_file():
        labels_img = read_mask(mask_path)
        labels, _ = label_components(labels_img.data, connectivity=26)
    else:
        raise InputError(f"{labels_path}: final result not found (nor {mask_path.name}); rerun mstools run")
    check_same_grid(baseline, labels_img)

    lesions = read_tsv(table_path) if table_path.is_file() else lesion_table(labels, baseline.affine)

    difference, difference_name = None, "follow-up - baseline"
    subtract = (record.get("stages") or {}).get("subtract") or {}
    sub_prefix = _resolve(run_dir, subtract.get("prefix")) or layout.stage_prefix(run_dir, "subtract")
    subtraction_path = Path(f"{sub_prefix}{SUBTRACTION_SUFFIX}")
    if subtraction_path.is_file() and subtract.get("status") != "off":  # not a stale map of an earlier run
        subtraction = read_image(subtraction_path)
        check_same_grid(baseline, subtraction)
        difference, difference_name = subtraction.data, "subtraction (subtract stage, z-scored)"

    optional = {key: _optional_mask(run_dir, record, key, baseline)
                for key in ("brain_mask", "ground_truth")}

    final_stage = record.get("final_stage")
    score = score_display(lesions, str(final_stage) if final_stage else None)
    figures = case_figures(baseline.data, followup.data, labels, baseline.affine, difference=difference,
                           difference_name=difference_name, ground_truth=optional["ground_truth"],
                           brain_mask=optional["brain_mask"], lesions=lesions, max_lesions=max_lesions,
                           score_name=score.name)
    changes, enlarging_figures = _activity_figures(run_dir, record, baseline, followup, difference,
                                                   difference_name, optional["brain_mask"], max_lesions)
    evaluation = read_tsv(run_dir / layout.EVALUATION) if (run_dir / layout.EVALUATION).is_file() else None
    config_path = run_dir / layout.CONFIG
    config_text = config_path.read_text(errors="replace") if config_path.is_file() else None

    def redraw_qc() -> bytes:
        from mstools.preprocess.qc import qc_png

        inputs = record.get("inputs") or {}
        raw = [Path(str(inputs[k])).name for k in ("raw_baseline", "raw_followup") if inputs.get(k)]
        return qc_png(baseline.data, followup.data, optional["brain_mask"], affine=baseline.affine,
                      title=" -> ".join(raw) if len(raw) == 2 else "")

    qc_pictures = _qc_pictures(run_dir, record, redraw_qc if optional["brain_mask"] is not None else None,
                               baseline_path.parent)
    name = case_name(record, run_dir)
    html = case_page(record, name=name, lesions=lesions, evaluation=evaluation, figures=figures,
                     qc_pictures=qc_pictures, config_text=config_text,
                     difference_name=difference_name, version=__version__, changes=changes,
                     enlarging_figures=enlarging_figures)
    count = record.get("new_lesions")
    return CaseReport(html=html, case=name,
                      new_lesions=int(count) if isinstance(count, (int, float)) else len(lesions),
                      figures=len(figures))


def write_case_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                      max_lesions: int = DEFAULT_MAX_LESIONS, force: bool = False) -> Path:
    """Render and write a run folder's page (default ``RUN/report.html``); returns its path."""
    from mstools.io import OutputBatch, check_writable

    run_dir = Path(run_dir)
    if folder_kind(run_dir) != "case":
        raise InputError(f"{run_dir}: holds no {layout.RUN_RECORD}; give the output folder of mstools run")
    target = Path(out) if out is not None else run_dir / layout.REPORT
    inputs = report_inputs(run_dir)
    check_writable(target, inputs=inputs, force=force, create_dirs=True)  # fail before the work
    report = render_case_report(run_dir, max_lesions=max_lesions)
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        batch.text(target, report.html)
    return target


def _cohort_rows(deriv_dir: Path) -> list[dict]:
    from mstools.io import read_tsv

    rows = read_tsv(deriv_dir / layout.COHORT_TABLE)
    if rows and "case" not in rows[0]:
        raise InputError(f"{deriv_dir / layout.COHORT_TABLE}: has no 'case' column; "
                         "give the cohort.tsv of mstools batch")
    return rows


def _run_folder(deriv_dir: Path, row: dict) -> Path:
    value = row.get("run_folder")
    if value not in (None, "", "n/a"):
        return _resolve(deriv_dir, value)
    return deriv_dir / str(row.get("case", ""))


def write_cohort_reports(deriv_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                         case_pages: bool = True, max_lesions: int = DEFAULT_MAX_LESIONS, force: bool = False,
                         on_case: Callable[[str, str], None] | None = None) -> list[Path]:
    """Write a cohort page (default ``DERIV/cohort.html``) and, with ``case_pages``, the page of
    every case whose run folder holds ``run.json``; returns the written paths, the cohort page first.

    A case page that already exists is linked, not rewritten, unless ``force``. A case
    whose page cannot be made (its run folder is incomplete) is named on the cohort page
    without a link; ``on_case(case, message)`` is called once per row of cohort.tsv
    (for logging and progress).
    All pages are written together (:class:`mstools.io.OutputBatch`), or none.
    """
    from mstools.io import OutputBatch, check_writable, read_tsv
    from mstools.report.figures import cohort_histograms
    from mstools.report.html import cohort_page, number

    deriv_dir = Path(deriv_dir)
    if folder_kind(deriv_dir) != "cohort":
        raise InputError(f"{deriv_dir}: holds no {layout.COHORT_TABLE}; give the output folder of mstools batch")
    target = Path(out) if out is not None else deriv_dir / layout.COHORT_REPORT
    inputs = report_inputs(deriv_dir)
    check_writable(target, inputs=inputs, force=force, create_dirs=True)
    rows = _cohort_rows(deriv_dir)
    errors_path = deriv_dir / layout.ERRORS_TABLE
    errors = read_tsv(errors_path) if errors_path.is_file() else []
    tell = on_case or (lambda case, message: None)

    pages: dict[Path, str] = {}
    links: dict[str, str] = {}
    notes: dict[str, str] = {}
    lesion_volumes: list[float] = []
    for row in rows:
        case = str(row.get("case", ""))
        run_dir = _run_folder(deriv_dir, row)
        page = run_dir / layout.REPORT
        if not (run_dir / layout.RUN_RECORD).is_file():
            notes[case] = "no run record"
            tell(case, f"no page: {run_dir / layout.RUN_RECORD} not found")
            continue
        table = _final_path(run_dir, read_run_record(run_dir), "table")
        if table.is_file():
            lesion_volumes += [v for v in (number(r.get("volume_mm3")) for r in read_tsv(table)) if v is not None]
        if case_pages and (force or not page.exists()):
            try:
                pages[page] = render_case_report(run_dir, max_lesions=max_lesions).html
                tell(case, f"page {page}")
            except InputError as exc:
                notes[case] = "no page: " + str(exc)
                tell(case, f"no page: {exc}")
                continue
        elif page.exists():
            tell(case, f"page {page} exists, linked" + ("" if case_pages else " (--no-case-pages)"))
        else:
            notes[case] = "no page"
            tell(case, "no page (--no-case-pages)")
            continue
        links[case] = quote(Path(os.path.relpath(page, target.parent)).as_posix())

    def known(column: str) -> list[float]:
        return [v for v in (number(r.get(column)) for r in rows) if v is not None]

    histograms = (cohort_histograms(known("new_lesions"), known("new_lesion_volume_mm3"), lesion_volumes)
                  if rows else None)
    html = cohort_page(rows, title=deriv_dir.resolve().name, columns=list(rows[0]) if rows else layout.COHORT_COLUMNS,
                       links=links, errors=errors, histograms=histograms, notes=notes, version=__version__)
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        batch.text(target, html)
        for page, text in pages.items():
            batch.text(page, text)
    return list(batch.written)


def write_cohort_report(deriv_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                        case_pages: bool = True, max_lesions: int = DEFAULT_MAX_LESIONS,
                        force: bool = False) -> Path:
    """:func:`write_cohort_reports`, returning the cohort page's path."""
    return write_cohort_reports(deriv_dir, out, case_pages=case_pages, max_lesions=max_lesions, force=force)[0]


__all__: Sequence[str] = ("CaseReport", "case_name", "folder_kind", "read_run_record", "render_case_report",
                          "write_case_report", "write_cohort_report", "write_cohort_reports")
