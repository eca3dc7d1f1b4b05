"""The cases of a cohort: from a manifest, a folder of case folders, or a BIDS dataset.

* Manifest (``.tsv``): a ``case`` column, and either ``folder`` (a case folder, see
  :mod:`mstools.case_layout`) or ``baseline`` and ``followup`` (raw scans); optional
  ``ground_truth``. Relative paths are relative to the manifest's folder.
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
from mstools.cohort import manifest_path, named_rows
from mstools.errors import InputError


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

    @property
    def raw(self) -> bool:
        return self.folder is None


def discover_cases(source: str | Path) -> list[CaseInput]:
    """The cases of a manifest, a folder of case folders, or a BIDS dataset (see the module doc)."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: not found; give a manifest (.tsv), a folder of case folders or a BIDS dataset")
    if source.is_file():
        return cases_from_manifest(source)
    if any(source.glob("sub-*")):
        return cases_from_bids(source)
    cases = [CaseInput(entry.name, folder=entry, ground_truth=_truth(entry))
             for entry in sorted(source.iterdir()) if entry.is_dir() and layout.is_longitudinal_case(entry)]
    if not cases:
        raise InputError(f"{source}: no case folder inside (sub-folders holding {layout.BASELINE} and "
                         f"{layout.FOLLOWUP}) and no sub-* BIDS subject; check the path")
    return cases


def _truth(folder: Path) -> Optional[Path]:
    path = folder / layout.GROUND_TRUTH
    return path if path.is_file() else None


def case_name_problem(name: str) -> str:
    """Why ``name`` cannot name a run folder inside the derivatives folder ("" when it can):
    a case name is one plain path component, so that OUT/<case> stays inside OUT."""
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute() \
            or name.startswith(".") or name != name.strip():
        return ("not a plain folder name (no '/', '\\', leading '.' or spaces); "
                "name the case with letters, digits, '-' and '_'")
    return ""


def cases_from_manifest(path: Path) -> list[CaseInput]:
    from mstools.io import read_tsv

    rows = read_tsv(path)
    if not rows:
        raise InputError(f"{path}: manifest has no case; add rows with a case column and folder (or baseline and "
                         "followup) columns, tab-separated")
    columns = set(rows[0])
    if "case" not in columns or not ({"folder"} <= columns or {"baseline", "followup"} <= columns):
        raise InputError(f"{path}: manifest needs the columns case and folder, or case, baseline and followup "
                         f"(tab-separated); it has {', '.join(sorted(columns))}")
    cases = []
    for name, row in named_rows(path, rows):
        problem = case_name_problem(name)
        if problem:
            cases.append(CaseInput(name, problem=f"{path}: case {name!r}: {problem}"))
            continue
        folder = manifest_path(path, row.get("folder"))
        truth = manifest_path(path, row.get("ground_truth"))
        if folder is not None:
            cases.append(CaseInput(name, folder=folder, ground_truth=truth or _truth(folder)))
        else:
            cases.append(CaseInput(name, baseline=manifest_path(path, row.get("baseline")),
                                   followup=manifest_path(path, row.get("followup")), ground_truth=truth))
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
