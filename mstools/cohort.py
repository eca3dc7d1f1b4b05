"""Pairs of (prediction, ground truth) for a cohort, by case name or from a manifest.

Two folders are matched by case name:

* ground-truth folder: ``<case>.nii.gz`` (or ``.nii``) files, or case folders
  ``<case>/ground_truth.nii.gz`` (the layout of :mod:`mstools.case_layout`);
* prediction folder: ``<case>.nii.gz``, or the detector outputs ``<case>_mask.nii.gz``
  / ``<case>_score.nii.gz`` (:mod:`mstools.detections`), or a run folder ``<case>/``
  (``mstools run``/``batch``: its final ``new_lesions_mask``/``_score``), or a folder
  ``<case>/`` holding exactly one ``*_mask.nii.gz`` (or ``*_score.nii.gz``). A score map is preferred
  when a threshold is given, a mask otherwise.

A manifest is a TSV with the columns ``case``, ``prediction`` and ``ground_truth``;
relative paths are relative to the manifest's folder (read by :mod:`mstools.manifest`).

A case found on one side only is kept with ``None`` on the other side, so that the
caller can report it as missing instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mstools.case_layout import GROUND_TRUTH
from mstools.errors import InputError
from mstools.io import NIFTI_SUFFIXES, strip_nifti_suffix
from mstools.detections import LABELS_SUFFIX, MASK_SUFFIX, SCORE_SUFFIX
from mstools.manifest import EVALUATE, read_manifest
from mstools.run_layout import FINAL_PREFIX, RUN_RECORD


@dataclass(frozen=True)
class CasePair:
    """One case; ``None`` marks the side that was not found."""

    case: str
    prediction: Path | None
    ground_truth: Path | None


def _is_nifti_name(name: str) -> bool:
    return name.endswith(NIFTI_SUFFIXES) and not name.startswith(".")


def _check_folder(folder: Path, role: str) -> None:
    if not folder.exists():
        raise InputError(f"{folder}: {role} folder not found; check the path")
    if not folder.is_dir():
        raise InputError(f"{folder}: is a file, a {role} folder was expected")


def ground_truth_files(folder: str | Path) -> dict[str, Path]:
    """Case name -> ground-truth file in ``folder``."""
    folder = Path(folder)
    _check_folder(folder, "ground-truth")
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and _is_nifti_name(entry.name):
            case, path = Path(strip_nifti_suffix(entry.name)).name, entry
        elif entry.is_dir() and (entry / GROUND_TRUTH).is_file():
            case, path = entry.name, entry / GROUND_TRUTH
        else:
            continue
        if case in found:
            raise InputError(f"{folder}: case {case!r} has two ground truths ({found[case].name} and "
                             f"{path.relative_to(folder)}); keep one")
        found[case] = path
    return found


def prediction_files(folder: str | Path, *, prefer_score: bool = False) -> dict[str, Path]:
    """Case name -> prediction file in ``folder`` (see the module docstring)."""
    folder = Path(folder)
    _check_folder(folder, "prediction")
    candidates: dict[str, dict[str, Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and _is_nifti_name(entry.name):
            name = entry.name
            if name.endswith(LABELS_SUFFIX):
                continue
            if name.endswith(MASK_SUFFIX):
                case, kind = name[: -len(MASK_SUFFIX)], "mask"
            elif name.endswith(SCORE_SUFFIX):
                case, kind = name[: -len(SCORE_SUFFIX)], "score"
            else:
                case, kind = strip_nifti_suffix(name), "plain"
            candidates.setdefault(case, {})[kind] = entry
        elif entry.is_dir() and (entry / RUN_RECORD).is_file():   # a run folder: its final new lesions
            for kind, suffix in (("mask", MASK_SUFFIX), ("score", SCORE_SUFFIX)):
                final = entry / (FINAL_PREFIX + suffix)
                if final.is_file():
                    candidates.setdefault(entry.name, {})[kind] = final
        elif entry.is_dir():
            for kind, suffix in (("mask", MASK_SUFFIX), ("score", SCORE_SUFFIX)):
                inside = sorted(entry.glob("*" + suffix))
                if len(inside) > 1:
                    raise InputError(f"{entry}: holds {len(inside)} *{suffix} files; keep one per case folder "
                                     "or use --manifest")
                if inside:
                    candidates.setdefault(entry.name, {}).setdefault(kind, inside[0])
    order = ("score", "plain", "mask") if prefer_score else ("mask", "plain", "score")
    return {case: next(kinds[k] for k in order if k in kinds) for case, kinds in candidates.items()}


def pairs_from_folders(prediction_dir: str | Path, ground_truth_dir: str | Path, *,
                       prefer_score: bool = False) -> list[CasePair]:
    """All cases of either folder, sorted by name, with ``None`` where a side is missing."""
    truths = ground_truth_files(ground_truth_dir)
    preds = prediction_files(prediction_dir, prefer_score=prefer_score)
    if not truths and not preds:
        raise InputError(f"{prediction_dir} and {ground_truth_dir}: no NIfTI case found in either folder")
    return [CasePair(case, preds.get(case), truths.get(case)) for case in sorted(set(truths) | set(preds))]


def pairs_from_manifest(path: str | Path) -> list[CasePair]:
    """Cases of a manifest TSV (columns ``case``, ``prediction``, ``ground_truth``: :data:`mstools.manifest.EVALUATE`)."""
    return [CasePair(row.case, row.path("prediction"), row.path("ground_truth"))
            for row in read_manifest(path, EVALUATE)]
