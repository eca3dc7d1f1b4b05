"""One case's input files: locate them (a case folder or explicit files), check them, read them.

A case is a folder in the MSSEG-2 layout (:mod:`mstools.case_layout`) or two raw scans
(:class:`mstools.cohort_inputs.CaseInput`). Every job and the pipeline find a case's
files here, so a folder means the same thing to every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from mstools import case_layout as layout
from mstools.cohort_inputs import CaseInput
from mstools.errors import InputError

__all__ = ["CaseInput", "resolve_case_inputs", "resolve_pair", "read_pair", "imaged_in_both", "read_sequences", "check_case_input",
           "input_files", "given_truth"]


def resolve_case_inputs(case: Optional[Path], baseline: Optional[Path], followup: Optional[Path],
                        brain_mask: Optional[Path]) -> tuple[Path, Path, Path]:
    """Baseline, follow-up and brain mask: explicit files win; otherwise the case folder's standard names."""
    if case is not None and not case.is_dir():
        raise InputError(f"{case}: not a folder; give a case folder (see `mstools simulate`) or "
                         "--baseline/--followup/--brain-mask")
    paths = []
    for given, name, option in ((baseline, layout.BASELINE, "--baseline"), (followup, layout.FOLLOWUP, "--followup"),
                                (brain_mask, layout.BRAIN_MASK, "--brain-mask")):
        if given is not None:
            paths.append(given)
        elif case is not None:
            paths.append(case / name)
        else:
            raise InputError(f"no case folder and no {option}; give CASE or all of --baseline, --followup, --brain-mask")
    return paths[0], paths[1], paths[2]


def resolve_pair(case: Optional[Path], baseline: Optional[Path], followup: Optional[Path]) -> tuple[Path, Path]:
    """Baseline and follow-up only (no brain mask needed): explicit files win, else the case folder's."""
    if case is None and (baseline is None or followup is None):
        raise InputError("give a case folder, or both --baseline and --followup")
    if case is not None and not case.is_dir():
        raise InputError(f"{case}: case folder not found")
    return baseline or case / layout.BASELINE, followup or case / layout.FOLLOWUP


def imaged_in_both(baseline, followup, within=None):
    """Voxels where both scans hold data (boolean), inside the mask ``within`` when given.
    Resampling a scan onto a common grid fills what lies outside its field of view (beyond a 2D
    slab, past a cropped edge) with exactly 0; no change can be measured there, and the zeros
    would pass for the largest change of all."""
    import numpy as np

    imaged = (np.asarray(baseline) != 0) & (np.asarray(followup) != 0)
    return imaged if within is None else imaged & (np.asarray(within) > 0)


def read_pair(baseline_path: Path, followup_path: Path, brain_path: Path):
    """Baseline, follow-up and brain mask, checked to share one grid; the mask non-empty. The
    returned mask keeps only the brain voxels both scans imaged (:func:`imaged_in_both`)."""
    from mstools.io import Image, check_same_grid, check_scan, read_image, read_mask

    baseline = read_image(baseline_path)
    followup = read_image(followup_path)
    brain = read_mask(brain_path, allow_empty=False)
    check_same_grid(baseline, followup)
    check_same_grid(baseline, brain)
    check_scan(baseline, brain_mask=brain.data)
    check_scan(followup, brain_mask=brain.data)
    inside = imaged_in_both(baseline.data, followup.data, within=brain.data)
    if not inside.any():
        raise InputError(f"{baseline_path}, {followup_path}: no brain voxel of {brain_path} holds data in both scans "
                         "(0 outside a scan's field of view); check that the scans cover the same brain")
    brain = Image(data=inside.astype(brain.data.dtype), affine=brain.affine, header=brain.header, path=brain.path)
    return baseline, followup, brain


def read_sequences(paths: dict, reference) -> dict:
    """The optional T1/T2 scans of ``paths`` ({(sequence, visit): path}, e.g.
    :func:`mstools.case_layout.sequence_files`), each checked to be on the FLAIR ``reference``'s
    grid and not empty: {(sequence, visit): Image}."""
    from mstools.io import check_same_grid, check_scan, read_image

    images = {}
    for key, path in sorted(paths.items()):
        image = read_image(path)
        check_same_grid(reference, image)
        check_scan(image)
        images[key] = image
    return images


def check_case_input(case: CaseInput) -> None:
    """Files exist; a case folder holds the layout's images."""
    if case.problem:
        raise InputError(case.problem)
    if case.folder is not None:
        if not case.folder.is_dir():
            raise InputError(f"{case.folder}: case folder not found")
        for name in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK):
            if not (case.folder / name).is_file():
                raise InputError(f"{case.folder}: no {name}; a case folder holds {layout.BASELINE}, "
                                 f"{layout.FOLLOWUP} and {layout.BRAIN_MASK} (see `mstools preprocess`), "
                                 "or give the two raw scans")
    else:
        for path, what in ((case.baseline, "baseline"), (case.followup, "follow-up")):
            if path is None:
                raise InputError(f"no {what} scan; give a case folder or both scans")
            if not Path(path).is_file():
                raise InputError(f"{path}: {what} scan not found")
    for (sequence, visit), path in case.sequences:
        if not Path(path).is_file():
            raise InputError(f"{path}: {sequence.upper()} scan of time point {visit + 1} not found; check the path")
    if case.ground_truth is not None and not Path(case.ground_truth).is_file():
        raise InputError(f"{case.ground_truth}: ground truth not found")


def input_files(case: CaseInput) -> list[Path]:
    """The images a case is made of: the folder's three (and its T1/T2 files, or the given
    ones), or the two raw scans (and the raw T1/T2 given)."""
    if case.folder is not None:
        sequences = {**layout.sequence_files(case.folder), **{key: Path(p) for key, p in case.sequences}}
        return [case.folder / n for n in (layout.BASELINE, layout.FOLLOWUP, layout.BRAIN_MASK)] + [
            sequences[key] for key in sorted(sequences)]
    return [Path(case.baseline), Path(case.followup)] + [  # type: ignore[arg-type]
        Path(p) for _, p in sorted(case.sequences)]


def given_truth(case: CaseInput) -> Optional[Path]:
    """The ground truth given with the case: explicit, else the case folder's, else None."""
    if case.ground_truth is not None:
        return Path(case.ground_truth)
    if case.folder is not None and (case.folder / layout.GROUND_TRUTH).is_file():
        return case.folder / layout.GROUND_TRUTH
    return None
