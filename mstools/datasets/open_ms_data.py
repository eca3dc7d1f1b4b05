"""Real longitudinal MS scans as case folders: the Ljubljana database (Lesjak et al.).

The public repository ``muschellij2/open_ms_data`` (CC-BY) mirrors two databases of
the University of Ljubljana. Its ``longitudinal/`` part holds, for 20 patients:

* ``coregistered/patientXX/brainmask.nii.gz`` and ``gt.nii.gz``: the brain mask and
  the lesion-*change* mask on a common grid (2D FLAIR geometry, e.g. 0.72 x 0.72 x 3 mm);
* ``raw/patientXX/studyY_FLAIR.nii.gz``: each visit's raw 2D FLAIR (stored for a few
  patients only; the largest files are absent from the repository);
* ``raw/patientXX/studyY_FLAIR_to_common_space.txt``: each raw FLAIR's affine transform
  to the common grid (ITK convention: a common-grid point -> the raw scan's point, so
  it is the transform ``Resample`` takes; checked on patient 01, where it puts 2.5x more
  signal inside the brain mask than in a 3-voxel shell around it, its inverse 1.9x).

Some visits also have ``raw/patientXX/studyY_T1W.nii.gz`` and ``studyY_T2W.nii.gz`` with
``studyY_T1W_intrastudy_to_FLAIR.txt`` (and T2W): each is resampled onto the common grid
through its intra-study transform composed with the visit's FLAIR transform (a common-grid
point -> the raw FLAIR's point -> the T1W/T2W's point: the intra-study file follows the same
ITK convention). Checked on patient 01, normalised mutual information with the visit's FLAIR
inside the brain mask, this composition vs the inverse intra-study transform: T1W 1.0699 vs
1.0666 and 1.0796 vs 1.0560, T2W 1.0629 vs 1.0507 and 1.0611 vs 1.0481 (studies 1, 2).

The change mask marks increases *and* decreases with one label. A new-lesion tool is
judged on increases (new or enlarging lesion tissue), so :func:`increase_only` keeps a
connected change component when, with each scan divided by its median inside the brain,

* the follow-up is brighter than the baseline inside it (mean of follow-up minus baseline
  above 0), and
* it is lesion tissue at follow-up: FLAIR lesions are hyperintense, so its follow-up mean is
  above the brain's median (above 1; ``rule="lesion-tissue"``, the default since 2026-12-07).

On development patient 01 the 13 components split into 5 decreases (mean difference -0.05 to
-0.16), 5 increases that are lesion tissue at follow-up (difference +0.16 to +0.45, follow-up
mean 1.08 to 1.36) and 3 that brighten but stay darker than the brain (difference +0.12 to
+0.18, follow-up mean 0.85 to 0.92, baseline 0.72 to 0.74): those three (94, 123 and 42
voxels, along the ventricles) are not hyperintense on the follow-up's T2W either (median z in
the brain +0.02, -0.25, +0.17; the five kept: +0.91, +0.28, +0.89, -0.15, +1.32), so they are
not new lesion tissue a FLAIR tool could see. ``rule="brightening"`` is the rule
before 2026-12-07 (the first condition only: 8 increases on patient 01).

References: Lesjak Z, Pernus F, Likar B, Spiclin Z. Validation of white-matter lesion
change detection methods on a novel publicly available MRI image database.
Neuroinformatics 2016; Lesjak Z et al. A novel public MR image dataset of multiple
sclerosis patients with lesion segmentations based on multi-rater consensus.
Neuroinformatics 2017. Data licence: CC-BY.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from mstools.errors import InputError

#: Longitudinal patients kept for acceptance only (never train, tune or choose on them).
HELD_OUT_PATIENTS = ("03", "12", "19")

ATTRIBUTION = (
    "Data: Laboratory of Imaging Technologies, University of Ljubljana, longitudinal MR image\n"
    "database of multiple sclerosis patients with white-matter lesion change segmentation\n"
    "(via github.com/muschellij2/open_ms_data). Licence: Creative Commons Attribution (CC-BY).\n"
    "Cite: Lesjak Z, Pernus F, Likar B, Spiclin Z. Validation of white-matter lesion change\n"
    "detection methods on a novel publicly available MRI image database. Neuroinformatics (2016).\n"
    "Changes made by mstools: both raw FLAIRs resampled (linear) onto the database's common grid\n"
    "with its own transforms (T1W/T2W, where stored, through their intra-study transforms too);\n"
    "ground_truth.nii.gz = the increase components of the change mask (the rule: source.json's\n"
    "increase_rule; each component's kind: change_components.tsv).\n"
)

#: The database's names of the optional sequences (mstools.case_layout.OPTIONAL_SEQUENCES).
DATABASE_SEQUENCES = {"t1": "T1W", "t2": "T2W"}

#: Connectivity of a change component (26: one lesion in any direction, as everywhere in mstools).
CHANGE_CONNECTIVITY = 26


@dataclass(frozen=True)
class LongitudinalPatient:
    """Where one patient's files are in a local clone."""

    patient: str
    baseline_raw: Path
    followup_raw: Path
    baseline_transform: Path
    followup_transform: Path
    brain_mask: Path
    change_mask: Path
    # optional T1W/T2W: (sequence "t1"/"t2", visit 0/1) -> (raw scan, intra-study transform to the FLAIR)
    sequences: dict = field(default_factory=dict)

    @property
    def held_out(self) -> bool:
        return self.patient in HELD_OUT_PATIENTS


@dataclass
class PatientCase:
    """One patient on the common grid, ready to be written as a case folder."""

    baseline: np.ndarray          # float32
    followup: np.ndarray          # float32
    brain_mask: np.ndarray        # uint8
    change_mask: np.ndarray       # uint8, increases and decreases
    ground_truth: np.ndarray      # uint8, increases only
    components: list[dict] = field(default_factory=list)
    sequences: dict = field(default_factory=dict)   # (sequence, visit) -> float32 on the common grid


def _longitudinal_root(clone: Path) -> Path:
    root = Path(clone) / "longitudinal"
    if not root.is_dir():
        raise InputError(f"{clone}: no longitudinal/ folder; give a local clone of the open_ms_data repository "
                         "(git clone of muschellij2/open_ms_data)")
    return root


#: gzip's first two bytes: every stored ``.nii.gz`` starts with them.
GZIP_MAGIC = b"\x1f\x8b"

#: A raw FLAIR smaller than this is a placeholder, not a scan (real ones are megabytes).
MIN_SCAN_BYTES = 1024


def _stored(path: Path, *, min_bytes: int = 0) -> bool:
    """A ``.nii.gz`` that is really there: clones without large-file content leave small
    text stubs (pointer files) or broken links in place of the gzip data."""
    if not path.is_file() or path.stat().st_size < min_bytes:
        return False
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def locate_patient(clone: str | os.PathLike, patient: str) -> LongitudinalPatient:
    """The files of ``patient`` (``"01"`` or ``"1"``), refusing a patient whose raw FLAIRs are absent."""
    root = _longitudinal_root(Path(clone))
    patient = f"{int(patient):02d}" if str(patient).isdigit() else str(patient)
    raw = root / "raw" / f"patient{patient}"
    common = root / "coregistered" / f"patient{patient}"
    if not raw.is_dir() or not common.is_dir():
        raise InputError(f"{root}: patient {patient} not found (expected raw/patient{patient} and "
                         f"coregistered/patient{patient}); the database has patients 01-20")
    found = LongitudinalPatient(
        patient=patient,
        baseline_raw=raw / "study1_FLAIR.nii.gz", followup_raw=raw / "study2_FLAIR.nii.gz",
        baseline_transform=raw / "study1_FLAIR_to_common_space.txt",
        followup_transform=raw / "study2_FLAIR_to_common_space.txt",
        brain_mask=common / "brainmask.nii.gz", change_mask=common / "gt.nii.gz")
    for path, min_bytes in ((found.baseline_raw, MIN_SCAN_BYTES), (found.followup_raw, MIN_SCAN_BYTES),
                            (found.brain_mask, 0), (found.change_mask, 0)):
        if not _stored(path, min_bytes=min_bytes):
            raise InputError(f"{path}: missing or not stored in this clone (the repository omits some large "
                             "scans); choose a patient whose two raw FLAIRs are present")
    for path in (found.baseline_transform, found.followup_transform):
        read_database_transform(path)  # an unreadable transform stops the import before any work
    sequences = {}
    for sequence, stem in DATABASE_SEQUENCES.items():
        for visit in (0, 1):
            scan = raw / f"study{visit + 1}_{stem}.nii.gz"
            transform = raw / f"study{visit + 1}_{stem}_intrastudy_to_FLAIR.txt"
            if _stored(scan, min_bytes=MIN_SCAN_BYTES) and transform.is_file():
                read_database_transform(transform)
                sequences[(sequence, visit)] = (scan, transform)
    return replace(found, sequences=sequences)


def _raw_flairs_stored(clone: Path, patient: str) -> bool:
    raw = Path(clone) / "longitudinal" / "raw" / f"patient{patient}"
    return all(_stored(raw / f"study{n}_FLAIR.nii.gz", min_bytes=MIN_SCAN_BYTES) for n in (1, 2))


def available_patients(clone: str | os.PathLike) -> list[str]:
    """Patients whose two raw FLAIRs are stored (their other files are checked by
    :func:`locate_patient`, so that a broken patient is an error, not silently skipped)."""
    root = _longitudinal_root(Path(clone))
    patients = (folder.name.removeprefix("patient") for folder in sorted((root / "raw").glob("patient*")))
    return [p for p in patients if _raw_flairs_stored(clone, p)]


#: How :func:`increase_only` separates new or enlarging lesion tissue from other changes.
INCREASE_RULES = ("lesion-tissue", "brightening")

#: Follow-up mean (scan divided by its median in the brain) above which a brightening change
#: component is lesion tissue: the brain's median itself (FLAIR lesions are hyperintense).
LESION_TISSUE_FOLLOWUP_MEAN = 1.0


def increase_only(change: np.ndarray, baseline: np.ndarray, followup: np.ndarray,
                  brain: np.ndarray, *, rule: str = "lesion-tissue") -> tuple[np.ndarray, list[dict]]:
    """The change components that are new or enlarging lesion tissue (see the module docstring).

    Returns the increase mask (uint8) and one record per component (voxels, mean
    normalised difference, follow-up mean, kind ``increase``, ``decrease`` or
    ``not_hyperintense``: brighter than at baseline but darker than the brain at follow-up).
    """
    from mstools.lesions import label_components

    if rule not in INCREASE_RULES:
        raise InputError(f"unknown increase rule {rule!r}; choose one of {', '.join(INCREASE_RULES)}")
    brain = brain > 0
    if not brain.any():
        raise InputError("the brain mask is empty; the increase/decrease split needs the brain's intensities")
    b = baseline / max(float(np.median(baseline[brain])), 1e-6)
    f = followup / max(float(np.median(followup[brain])), 1e-6)
    labels, count = label_components(change > 0, connectivity=CHANGE_CONNECTIVITY)
    if count == 0:
        return np.zeros(change.shape, dtype=np.uint8), []
    index = np.arange(1, count + 1)
    means = np.asarray(ndimage.mean(f - b, labels, index))
    followup_means = np.asarray(ndimage.mean(f, labels, index))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    tissue = followup_means > LESION_TISSUE_FOLLOWUP_MEAN
    kinds = np.where(means <= 0, "decrease", np.where(tissue, "increase", "not_hyperintense"))
    kept = (means > 0) & (tissue if rule == "lesion-tissue" else True)
    records = [{"component": int(n), "voxels": int(s), "mean_difference": round(float(m), 4),
                "followup_mean": round(float(fm), 4), "kind": str(k)}
               for n, s, m, fm, k in zip(index, sizes, means, followup_means, kinds)]
    return np.isin(labels, index[kept]).astype(np.uint8), records


def read_database_transform(path: Path) -> np.ndarray:
    """One of the database's ``*_to_common_space.txt`` files as a 4x4 RAS point transform
    (a common-grid point -> the raw scan's point), refused in one line when damaged."""
    from mstools.io import read_transform

    try:
        return read_transform(path)
    except InputError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise InputError(f"{path}: not a readable ITK transform ({detail}); "
                         "the clone's transform file is damaged, check it out again") from None


def resample_onto(raw, reference, transform_path: Path) -> np.ndarray:
    """A raw scan (an :class:`mstools.io.Image`) resampled (linear) onto ``reference``'s grid
    through the database's transform file. Returns float32 on the reference grid."""
    from mstools.preprocess.rigid import Grid, resample

    transform = read_database_transform(transform_path)
    grid = Grid(shape=reference.shape, affine=reference.affine)
    return resample(raw.data, raw.affine, grid, transform, interpolation="linear").astype(np.float32)


def resample_sequence(raw, reference, flair_transform: Path, intrastudy_transform: Path) -> np.ndarray:
    """A visit's T1W/T2W resampled (linear) onto ``reference``'s grid: the visit's FLAIR transform,
    then the intra-study transform (see the module docstring). float32."""
    from mstools.preprocess.rigid import Grid, resample

    transform = read_database_transform(intrastudy_transform) @ read_database_transform(flair_transform)
    grid = Grid(shape=reference.shape, affine=reference.affine)
    return resample(raw.data, raw.affine, grid, transform, interpolation="linear").astype(np.float32)


def read_patient(found: LongitudinalPatient, *, rule: str = "lesion-tissue"):
    """(reference Image of the common grid, :class:`PatientCase`) for one located patient;
    ``rule``: how the ground truth is separated from the change mask (:func:`increase_only`)."""
    from mstools.io import check_same_grid, read_image, read_mask

    brain = read_mask(found.brain_mask, allow_empty=False)
    change = read_mask(found.change_mask)
    check_same_grid(brain, change)
    baseline = resample_onto(read_image(found.baseline_raw), brain, found.baseline_transform)
    followup = resample_onto(read_image(found.followup_raw), brain, found.followup_transform)
    inside = brain.data > 0
    for name, data in (("baseline", baseline), ("follow-up", followup)):
        if float(np.mean(data[inside] > 0)) < 0.5:
            raise InputError(f"{found.patient}: the {name} FLAIR lands mostly outside the brain mask after its "
                             "transform; the clone's files do not belong together")
    ground_truth, components = increase_only(change.data, baseline, followup, inside, rule=rule)
    sequences = {}
    for (sequence, visit), (scan, transform) in sorted(found.sequences.items()):
        flair_transform = (found.baseline_transform, found.followup_transform)[visit]
        data = resample_sequence(read_image(scan), brain, flair_transform, transform)
        if float(np.mean(data[inside] > 0)) < 0.5:
            raise InputError(f"{scan}: lands mostly outside the brain mask after its transforms; the clone's files "
                             "do not belong together")
        sequences[(sequence, visit)] = data
    case = PatientCase(baseline=baseline, followup=followup, brain_mask=inside.astype(np.uint8),
                       change_mask=(change.data > 0).astype(np.uint8), ground_truth=ground_truth,
                       components=components, sequences=sequences)
    return brain, case
