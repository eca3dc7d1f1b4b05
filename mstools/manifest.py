"""The one reader of cohort manifests: a tab-separated table, one row per case.

Cells that name files are relative to the manifest's folder (empty or ``n/a``: none).
Each command takes its own columns, declared here once (:class:`ManifestFormat`):

* ``run`` / ``batch`` (:data:`RUN`): ``case`` and ``folder`` (a case folder), or ``case``,
  ``baseline`` and ``followup`` (raw scans); optional ``ground_truth``; with a folder, optional
  ``baseline_t1``, ``followup_t1``, ``baseline_t2``, ``followup_t2`` (T1/T2 on its grid, read by
  the multi-sequence model; :data:`mstools.cohort_inputs.SEQUENCE_COLUMNS`);
* ``evaluate`` (:data:`EVALUATE`): ``case``, ``prediction``, ``ground_truth``;
* ``refine train`` (:data:`REFINE_TRAIN`): ``case`` (a case folder), ``candidates`` (a
  detector's output prefix), optional ``lesion_features``, and for the cascade optional
  ``baseline_lesions`` and ``followup_lesions`` (all-lesion masks of both visits);
* ``train`` (:data:`TRAIN`): ``case`` (a case folder or a folder of case folders) and
  ``split`` (train, val or test); for ``--model cascade`` optional ``baseline_lesions`` and
  ``followup_lesions`` (the case folder's all-lesion masks of both visits).

Every row needs a case. Where the case is a name (run, evaluate) each name comes once,
and a name that becomes a folder (a run's ``OUT/<case>``) must be a plain folder name
(:func:`case_name_problem`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mstools.errors import InputError


@dataclass(frozen=True)
class ManifestFormat:
    """The columns a command reads and how it says what is wrong."""

    columns: tuple[tuple[str, ...], ...]   # accepted column sets: one of them is enough
    no_rows: str                           # the error for a manifest without a row
    bad_columns: str                       # the error for other columns ({have}, {missing})
    case: str = "name"                     # "name": a case name, once per manifest; "folder": a path
    choices: dict = field(default_factory=dict)   # column -> its allowed values


RUN = ManifestFormat(
    columns=(("case", "folder"), ("case", "baseline", "followup")),
    no_rows="manifest has no case; add rows with a case column and folder (or baseline and followup) columns, "
            "tab-separated",
    bad_columns="manifest needs the columns case and folder, or case, baseline and followup (tab-separated); "
                "it has {have}")
EVALUATE = ManifestFormat(
    columns=(("case", "prediction", "ground_truth"),),
    no_rows="manifest has no case; add rows with the columns case, prediction, ground_truth",
    bad_columns="manifest lacks the column(s) {missing}; the columns case, prediction, ground_truth are required "
                "(tab-separated)")
REFINE_TRAIN = ManifestFormat(
    columns=(("case", "candidates"),),
    no_rows="a TSV with columns case, candidates (optional lesion_features) was expected",
    bad_columns="a TSV with columns case, candidates (optional lesion_features) was expected",
    case="folder")
TRAIN = ManifestFormat(
    columns=(("case", "split"),),
    no_rows="a manifest needs the columns 'case' and 'split' (train, val or test)",
    bad_columns="a manifest needs the columns 'case' and 'split' (train, val or test)",
    case="folder", choices={"split": ("train", "val", "test")})


@dataclass(frozen=True)
class ManifestRow:
    """One row: its cells as text, paths resolved from the manifest's folder."""

    manifest: Path
    line: int
    cells: dict

    @property
    def case(self) -> str:
        return self.text("case")

    def text(self, column: str) -> str:
        return (self.cells.get(column) or "").strip()

    def path(self, column: str) -> Path | None:
        return manifest_path(self.manifest, self.cells.get(column))


def read_manifest(path: str | Path, fmt: ManifestFormat) -> list[ManifestRow]:
    """The rows of a manifest of format ``fmt``; any defect is an InputError naming the file (and line)."""
    from mstools.io import read_tsv

    path = Path(path)
    rows = read_tsv(path)
    if not rows:
        raise InputError(f"{path}: {fmt.no_rows}")
    have = set(rows[0])
    if not any(set(columns) <= have for columns in fmt.columns):
        missing = [c for c in fmt.columns[0] if c not in have]
        raise InputError(f"{path}: " + fmt.bad_columns.format(have=", ".join(sorted(have)),
                                                              missing=", ".join(missing)))
    read, seen = [], set()
    for line, cells in enumerate(rows, start=2):
        row = ManifestRow(path, line, cells)
        if not row.case:
            raise InputError(f"{path}: line {line} has no case {'name' if fmt.case == 'name' else 'folder'}")
        if fmt.case == "name":
            if row.case in seen:
                raise InputError(f"{path}: case {row.case!r} is listed twice (line {line}); keep one row per case")
            seen.add(row.case)
        for column, allowed in fmt.choices.items():
            if row.text(column) not in allowed:
                raise InputError(f"{path}: line {line}: {column} must be {', '.join(allowed[:-1])} or {allowed[-1]}, "
                                 f"not {row.text(column)!r}")
        read.append(row)
    return read


def manifest_path(manifest: Path, value: str | None) -> Path | None:
    """A path cell of a manifest: empty or n/a is None; relative paths start at the manifest's folder."""
    text = (value or "").strip()
    if not text or text == "n/a":
        return None
    p = Path(text)
    return p if p.is_absolute() else manifest.parent / p


def case_name_problem(name: str) -> str:
    """Why ``name`` cannot name a run folder inside the derivatives folder ("" when it can):
    a case name is one plain path component, so that OUT/<case> stays inside OUT."""
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute() \
            or name.startswith(".") or name != name.strip():
        return ("not a plain folder name (no '/', '\\', leading '.' or spaces); "
                "name the case with letters, digits, '-' and '_'")
    return ""
