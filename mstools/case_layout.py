"""File names of a case folder, shared by every command.

Two-time-point cases follow MSSEG-2 (paper 001): both FLAIRs already rigidly aligned
in a halfway "middle space", the consensus new-lesion mask as ground truth.
Single-time-point cases (one FLAIR and its all-lesion mask) are what the learned
models additionally train on (paper 002).
"""

from __future__ import annotations

from pathlib import Path

BASELINE = "flair_time01_on_middle_space.nii.gz"
FOLLOWUP = "flair_time02_on_middle_space.nii.gz"
GROUND_TRUTH = "ground_truth.nii.gz"          # new lesions only
BRAIN_MASK = "brain_mask.nii.gz"
LESIONS_BASELINE = "lesions_time01.nii.gz"    # all lesions at time 1
LESIONS_FOLLOWUP = "lesions_time02.nii.gz"    # all lesions at time 2
TISSUES = "tissues.nii.gz"                    # 0 background, 1 CSF, 2 GM, 3 WM
TRUTH = "truth.json"                          # every simulated lesion, described

#: Optional T1- and T2-weighted scans of each visit, on the FLAIR's grid (paper 004: any subset
#: of the sequences; a learned model fills in the absent ones). sequence -> (time 1, time 2).
SEQUENCE_FILES = {
    "t1": ("t1_time01_on_middle_space.nii.gz", "t1_time02_on_middle_space.nii.gz"),
    "t2": ("t2_time01_on_middle_space.nii.gz", "t2_time02_on_middle_space.nii.gz"),
}
#: The optional sequences, in the order the multi-sequence model reads them.
OPTIONAL_SEQUENCES = tuple(SEQUENCE_FILES)

SINGLE_FLAIR = "flair.nii.gz"
SINGLE_LESIONS = "lesions.nii.gz"

TISSUE_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3}


def is_longitudinal_case(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / BASELINE).is_file() and (folder / FOLLOWUP).is_file()


def is_single_case(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / SINGLE_FLAIR).is_file() and not is_longitudinal_case(folder)


def case_folders(folder: str | Path, *, single_timepoint: bool = False) -> list[Path]:
    """The case folders directly inside ``folder``, sorted: two-time-point ones (and
    single-time-point ones with ``single_timepoint``)."""
    return [entry for entry in sorted(Path(folder).iterdir()) if entry.is_dir() and (
        is_longitudinal_case(entry) or (single_timepoint and is_single_case(entry)))]


def sequence_files(folder: str | Path) -> dict:
    """The optional sequences a case folder holds: {(sequence, visit 0 or 1): path} of the files present."""
    folder = Path(folder)
    return {(sequence, visit): folder / name for sequence, names in SEQUENCE_FILES.items()
            for visit, name in enumerate(names) if (folder / name).is_file()}
