"""The cases of a cohort: from a manifest, a folder of case folders, or a BIDS dataset.

* Manifest (``.tsv``, read by :mod:`mstools.manifest`): a ``case`` column, and either
  ``folder`` (a case folder, see :mod:`mstools.case_layout`) or ``baseline`` and
  ``followup`` (raw scans); optional ``ground_truth``; optional T1/T2 scans
  (``baseline_t1``, ``followup_t1``, ``baseline_t2``, ``followup_t2``: on the case folder's grid,
  or with raw scans each on any grid, registered to its visit's FLAIR by ``preprocess``), read by
  the multi-sequence model (:data:`SEQUENCE_COLUMNS`). Relative paths are relative to
  the manifest's folder.
* A folder of MSSEG-2-style case folders (``<case>/flair_time01_on_middle_space.nii.gz``
  ...): every sub-folder holding both FLAIRs is a case; others are ignored.
* A BIDS dataset (``sub-*/[ses-*/]anat/*FLAIR*.nii[.gz]``): per subject, the first and
  the last session (sorted by name) are the baseline and the follow-up, as raw scans.
  A subject with fewer than two sessions is kept with a ``problem``, so that a batch
  reports it instead of dropping it silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mstools import case_layout as layout
from mstools.errors import InputError
from mstools.manifest import RUN, case_name_problem, read_manifest


@dataclass(frozen=True)
class CaseInput:
    """One case: a case folder (scans already on one grid) or two raw scans."""

    case: str
    folder: Optional[Path] = None
    baseline: Optional[Path] = None
    followup: Optional[Path] = None
    ground_truth: Optional[Path] = None
    #: Set when the case cannot run (e.g. a BIDS subject with one session).
    problem: str = ""
    #: Optional T1/T2 scans: ((sequence, visit), path) pairs. Beside a case folder on its grid (the
    #: folder's own files, mstools.case_layout.SEQUENCE_FILES, need not be listed); with raw scans
    #: each on its own grid, registered to its visit's FLAIR by preprocess.
    sequences: tuple = ()

    @property
    def raw(self) -> bool:
        return self.folder is None


#: Manifest columns of the optional sequences: column -> (sequence, visit).
SEQUENCE_COLUMNS = {"baseline_t1": ("t1", 0), "followup_t1": ("t1", 1), "baseline_t2": ("t2", 0),
                    "followup_t2": ("t2", 1)}


def discover_cases(source: str | Path) -> list[CaseInput]:
    """The cases of a manifest, a folder of case folders, or a BIDS dataset (see the module doc)."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: not found; give a manifest (.tsv), a folder of case folders or a BIDS dataset")
    if source.is_file():
        return cases_from_manifest(source)
    if any(source.glob("sub-*")):
        return cases_from_bids(source)
    cases = [CaseInput(entry.name, folder=entry, ground_truth=_truth(entry)) for entry in layout.case_folders(source)]
    if not cases:
        raise InputError(f"{source}: no case folder inside (sub-folders holding {layout.BASELINE} and "
                         f"{layout.FOLLOWUP}) and no sub-* BIDS subject; check the path")
    return cases


def _truth(folder: Path) -> Optional[Path]:
    path = folder / layout.GROUND_TRUTH
    return path if path.is_file() else None


def cases_from_manifest(path: Path) -> list[CaseInput]:
    """The cases of a run manifest (:data:`mstools.manifest.RUN`); a case whose name cannot
    name a folder is kept with a ``problem``."""
    cases = []
    for row in read_manifest(path, RUN):
        name = row.case
        problem = case_name_problem(name)
        if problem:
            cases.append(CaseInput(name, problem=f"{path}: case {name!r}: {problem}"))
            continue
        folder, truth = row.path("folder"), row.path("ground_truth")
        sequences = tuple((key, row.path(column)) for column, key in SEQUENCE_COLUMNS.items()
                          if row.path(column) is not None)
        if folder is not None:
            cases.append(CaseInput(name, folder=folder, ground_truth=truth or _truth(folder), sequences=sequences))
        else:   # raw T1/T2: preprocess registers each to its visit's FLAIR
            cases.append(CaseInput(name, baseline=row.path("baseline"), followup=row.path("followup"),
                                   ground_truth=truth, sequences=sequences))
    return cases


def cases_from_bids(root: Path) -> list[CaseInput]:
    cases = []
    for subject in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir())
        scans = []
        for session in sessions:
            flairs = sorted(f for f in (session / "anat").glob("*FLAIR*.nii*") if f.is_file())
            if len(flairs) > 1:
                cases.append(CaseInput(subject.name, problem=f"{session}: {len(flairs)} FLAIR files; keep one per "
                                                             "session or use a manifest"))
                break
            if flairs:
                scans.append(flairs[0])
        else:
            if len(scans) < 2:
                cases.append(CaseInput(subject.name, problem=f"{subject}: {len(scans)} session(s) with a FLAIR; "
                                                             "two are needed"))
            else:
                cases.append(CaseInput(subject.name, baseline=scans[0], followup=scans[-1]))
    if not cases:
        raise InputError(f"{root}: no sub-* subject folder; not a BIDS dataset")
    return cases
