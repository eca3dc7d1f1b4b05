"""A simulated patient: baseline and follow-up FLAIR with known new lesions.

The recipe, in order:

1. anatomy: MNI152 tissue maps on the requested grid, with a head shell;
2. lesions: stable ones present at both time points, enlarging and shrinking ones
   (changed, not new), and new ones at follow-up only, among them small, faint and
   touching-an-existing-lesion ones;
3. FLAIR contrast (partial volume: each tissue's share of each voxel), tissue
   texture, lesions blended in with their soft edges;
4. follow-up only: mild atrophy and a residual rigid misalignment (one resampling),
   extra blur, optionally thick slices;
5. each time point: its own bias field, scanner gain / contrast, and Rician noise.

With acquisitions (``acquisition_baseline`` / ``acquisition_followup``, off by default),
step 5 changes: each visit is drawn in its own FLAIR contrast (``contrast_baseline`` /
``contrast_followup``), acquired as a 2D multi-slice scan on its own grid
(:mod:`mstools.simulate.acquisition`), and gets bias and noise there, per acquired voxel.
The case is then put on one common grid, the follow-up's acquired grid: the baseline
resampled (linear) onto it, every lesion carried over by partial volume with its volume
kept (:func:`carry_labels`), the brain mask by partial volume > 0.5, the tissues by
nearest neighbour. The raw scans are kept too (``raw_baseline``, ``raw_followup``).

All randomness flows from one seed, so a case is a pure function of its config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
from scipy import ndimage

from mstools.simulate import nuisance
from mstools.simulate.acquisition import Acquisition, ProtocolContrast, acquire, partial_volume, sample_onto
from mstools.simulate.anatomy import Anatomy, load_anatomy
from mstools.simulate.lesions import (LOCATION_SHARES, LOCATIONS, Lesion, location_candidates,
                                      random_rotation, render, semi_axes_for_volume)

#: FLAIR-like mean intensities relative to normal white matter. On FLAIR, CSF is
#: suppressed (dark), grey matter is slightly brighter than white matter, the skull is
#: dark and scalp fat bright. The template's tissue maps are blurred averages, so
#: most voxels mix tissues: the pure-GM value is set so that the mean of GM-labelled
#: voxels comes out about 5-10 % above WM, as measured on 3D FLAIR at 3 T
#: (benchmarks/bench_simulate.py prints the realised means).
TISSUE_INTENSITY = {"csf": 0.25, "gm": 1.22, "wm": 1.00, "skull": 0.10, "scalp": 1.25}

#: T1- and T2-weighted contrasts (``SimulationConfig.sequences``): mean intensities relative
#: to normal white matter and the lesions' contrast as a multiple of their FLAIR contrast
#: (negative: darker than WM). Chosen for the ordering of clinical 3 T scans -- T1w:
#: CSF < GM < WM, lesions hypointense (0.65-0.84 of WM for FLAIR contrasts 0.45-1.0, GM-like
#: to darker, "black holes" at the dark end); T2w: WM < GM < CSF, lesions hyperintense
#: (1.5-2.1 of WM). Realised medians / WM on seed 9100 (time 1): T1 CSF 0.45, GM 0.76,
#: lesions 0.82; T2 CSF 2.09, GM 1.30, lesions 1.59. Against development patient 01 (no
#: tissue map there): new lesions / brain median at follow-up, FLAIR, T1, T2: real 1.32,
#: 1.14, 1.27; simulated seeds 9100-9105 1.20-1.43, 0.96-1.14, 1.03-1.32
#: (benchmarks/bench_sequences.py --contrast / --lesion-contrast).
SEQUENCE_INTENSITY = {
    "t1": {"csf": 0.30, "gm": 0.72, "wm": 1.00, "skull": 0.15, "scalp": 1.10},
    "t2": {"csf": 2.60, "gm": 1.35, "wm": 1.00, "skull": 0.10, "scalp": 0.90},
}
SEQUENCE_LESION_SCALE = {"t1": -0.35, "t2": 1.10}
#: The optional sequences a case can carry besides FLAIR.
SEQUENCES = tuple(SEQUENCE_INTENSITY)

#: File names of the raw scans (each visit on its own acquired grid) in a case folder.
RAW_BASELINE = "flair_time01_raw.nii.gz"
RAW_FOLLOWUP = "flair_time02_raw.nii.gz"

#: Scanner units of normal white matter (arbitrary; int16-friendly).
WM_UNITS = 400.0

#: Relative amplitude of the smooth tissue texture (multiplicative).
TEXTURE_AMPLITUDE = 0.03

#: Fraction of a lesion voxel that must be parenchyma (GM + WM) for the lesion to
#: claim it: lesions do not grow into the ventricles.
PARENCHYMA_MIN = 0.5


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that defines a simulated case. Zero switches a nuisance off."""

    seed: int = 0
    voxel_mm: float = 1.0
    # lesions
    n_stable: int = 15
    n_enlarging: int = 2
    n_shrinking: int = 1
    n_new: int = 5
    lesion_volume_mm3: tuple[float, float] = (8.0, 1500.0)   # baseline lesions, log-uniform
    new_volume_mm3: tuple[float, float] = (10.0, 400.0)       # new lesions, log-uniform
    small_new_volume_mm3: tuple[float, float] = (4.0, 15.0)   # "a few voxels" at 1 mm
    contrast: tuple[float, float] = (0.45, 1.0)               # lesion/WM - 1
    faint_contrast: tuple[float, float] = (0.18, 0.30)
    enlarge_factor: tuple[float, float] = (1.25, 1.5)         # semi-axes at follow-up
    shrink_factor: tuple[float, float] = (0.6, 0.8)
    # between-scan differences (follow-up relative to baseline unless stated)
    snr_baseline: float = 30.0        # WM intensity / noise sigma
    snr_followup: float = 22.0
    bias_strength: float = 0.15       # each time point, max/min = 1.15/0.85
    gain_change: float = 0.12         # follow-up gain drawn in [1 - g, 1 + g]
    contrast_change: float = 0.06     # follow-up gamma drawn in [1 - c, 1 + c]
    # Residual misalignment after rigid registration to the halfway space: same-subject
    # rigid registration of 3D FLAIR is accurate to a few tenths of a millimetre; 0.25 mm
    # and 0.25 degrees (0.4 mm at 90 mm from the centre) is a realistic residual.
    misalignment_mm: float = 0.25
    misalignment_deg: float = 0.25
    blur_mm: float = 0.4              # extra Gaussian sigma on the follow-up
    followup_slice_mm: float = 0.0    # e.g. 3.0: follow-up acquired with 3 mm slices
    atrophy_mm: float = 0.4           # largest ventricular enlargement
    # Clinical acquisitions (None: the visit stays on the fine isotropic grid) and each
    # visit's FLAIR contrast (None: the default TISSUE_INTENSITY and lesion contrasts).
    acquisition_baseline: Acquisition | None = None
    acquisition_followup: Acquisition | None = None
    contrast_baseline: ProtocolContrast | None = None
    contrast_followup: ProtocolContrast | None = None
    # T1- and/or T2-weighted scans of each visit on the FLAIR's grid (SEQUENCE_INTENSITY):
    # same anatomy, lesions, follow-up pose, atrophy and blur as the FLAIR of that visit,
    # their own bias field and noise. () writes FLAIR only; the FLAIRs never change.
    sequences: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [s for s in self.sequences if s not in SEQUENCES]
        if unknown:
            raise ValueError(f"sequences must be among {', '.join(SEQUENCES)}, not {', '.join(unknown)}")
        if self.sequences and self.acquisitions:
            raise ValueError("T1/T2 sequences are simulated on the fine grid only; drop the acquisitions")
        counts = (self.n_stable, self.n_enlarging, self.n_shrinking, self.n_new)
        if min(counts) < 0:
            raise ValueError("lesion counts must be >= 0")
        for name in ("snr_baseline", "snr_followup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = no noise)")
        for name in ("lesion_volume_mm3", "new_volume_mm3", "small_new_volume_mm3"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range 0 < min <= max, not {(lo, hi)}")
        if not 0 <= self.bias_strength < 1:
            raise ValueError("bias_strength must lie in [0, 1)")
        if self.acquisitions and self.followup_slice_mm > 0:
            raise ValueError("followup_slice_mm and acquisitions exclude each other; describe the "
                             "follow-up's slices with its acquisition")

    @property
    def acquisitions(self) -> bool:
        return self.acquisition_baseline is not None or self.acquisition_followup is not None


@dataclass
class RawScan:
    """One visit as the scanner stored it: float32 FLAIR on its own (anisotropic) grid."""

    data: np.ndarray
    affine: np.ndarray


@dataclass
class SimulatedCase:
    baseline: np.ndarray           # float32 FLAIR
    followup: np.ndarray           # float32 FLAIR
    lesions_baseline: np.ndarray   # int32 lesion ids at time 1
    lesions_followup: np.ndarray   # int32 lesion ids at time 2
    ground_truth: np.ndarray       # uint8 new lesions
    brain_mask: np.ndarray         # uint8
    tissues: np.ndarray            # uint8: 0 background, 1 CSF, 2 GM, 3 WM (baseline)
    affine: np.ndarray
    truth: dict = field(default_factory=dict)
    raw_baseline: RawScan | None = None    # the scans as acquired, each on its own grid
    raw_followup: RawScan | None = None
    # sequence ("t1", "t2") -> (baseline, follow-up) float32 on the case grid
    sequences: dict = field(default_factory=dict)


@dataclass
class SingleTimepointCase:
    flair: np.ndarray
    lesions: np.ndarray            # int32 lesion ids
    brain_mask: np.ndarray
    tissues: np.ndarray
    affine: np.ndarray
    truth: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- lesions


def _world(anatomy: Anatomy, voxel: np.ndarray) -> np.ndarray:
    return anatomy.affine[:3, :3] @ voxel + anatomy.affine[:3, 3]


def _draw_lesions(config: SimulationConfig, anatomy: Anatomy, rng: np.random.Generator) -> list[Lesion]:
    candidates = location_candidates(anatomy)
    shares = np.array([LOCATION_SHARES[i] if len(candidates[n]) else 0 for i, n in enumerate(LOCATIONS)])
    shares = shares / shares.sum()
    lesions: list[Lesion] = []

    def far_enough(centre: np.ndarray, radius: float) -> bool:
        for other in lesions:
            gap = np.linalg.norm(centre - np.asarray(other.centre_mm))
            if gap < radius + max(other.semi_axes_mm) * other.scale_followup + 2.0:
                return False
        return True

    def place(kind: str, volume: float, contrast: float, *, notes=(), scale=1.0, contrast_fu=None,
              location: str | None = None) -> None:
        axes = semi_axes_for_volume(volume, rng)
        for attempt in range(200):
            if attempt % 50 == 0:  # keep the drawn location unless it is too crowded
                where = location or LOCATIONS[rng.choice(len(LOCATIONS), p=shares)]
            pool = candidates[where]
            centre = _world(anatomy, pool[rng.integers(len(pool))] + rng.uniform(-0.5, 0.5, 3))
            if far_enough(centre, max(axes) * max(scale, 1.0)):
                lesions.append(Lesion(
                    label=len(lesions) + 1, kind=kind, location=where,
                    centre_mm=tuple(float(v) for v in centre), semi_axes_mm=axes,
                    rotation=tuple(map(tuple, random_rotation(rng))), contrast=float(contrast),
                    irregularity_seed=int(rng.integers(2**31)), scale_followup=float(scale),
                    contrast_followup=contrast_fu, notes=list(notes)))
                return
        raise RuntimeError("could not place a lesion: too many lesions for this brain; lower the counts")

    def log_uniform(lo_hi: tuple[float, float]) -> float:
        return float(np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))

    for _ in range(config.n_stable):
        place("stable", log_uniform(config.lesion_volume_mm3), rng.uniform(*config.contrast))
    for _ in range(config.n_enlarging):
        place("enlarging", log_uniform((config.lesion_volume_mm3[0] * 4, config.lesion_volume_mm3[1] / 3)),
              rng.uniform(*config.contrast), scale=rng.uniform(*config.enlarge_factor))
    for _ in range(config.n_shrinking):
        contrast = rng.uniform(*config.contrast)
        place("shrinking", log_uniform((config.lesion_volume_mm3[0] * 4, config.lesion_volume_mm3[1] / 3)),
              contrast, scale=rng.uniform(*config.shrink_factor), contrast_fu=contrast * 0.7)
    existing = list(lesions)
    for n in range(config.n_new):
        # The first new lesions cover the hard cases: small, faint, touching an old one.
        if n == 0 and config.n_new >= 2:
            place("new", log_uniform(config.small_new_volume_mm3), rng.uniform(*config.contrast),
                  notes=["small"])
        elif n == 1 and config.n_new >= 3:
            place("new", log_uniform(config.new_volume_mm3), rng.uniform(*config.faint_contrast),
                  notes=["faint"])
        elif n == 2 and config.n_new >= 4 and existing:
            _place_touching(lesions, existing, config, rng, log_uniform, anatomy)
        else:
            place("new", log_uniform(config.new_volume_mm3), rng.uniform(*config.contrast))
    return lesions


def _place_touching(lesions, existing, config, rng, log_uniform, anatomy) -> None:
    """A new lesion whose edge meets an existing stable lesion (hard for subtraction)."""
    hosts = [les for les in existing if les.kind == "stable"] or existing
    host = hosts[rng.integers(len(hosts))]
    volume = log_uniform(config.new_volume_mm3)
    axes = semi_axes_for_volume(volume, rng)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    # Host extent along that direction (ellipsoid support function) plus most of the new radius.
    rot = np.asarray(host.rotation)
    along = rot.T @ direction
    host_reach = float(np.sqrt(((np.asarray(host.semi_axes_mm) * along) ** 2).sum()))
    centre = np.asarray(host.centre_mm) + direction * (host_reach + 0.8 * min(axes))
    lesions.append(Lesion(
        label=len(lesions) + 1, kind="new", location=host.location,
        centre_mm=tuple(float(v) for v in centre), semi_axes_mm=axes,
        rotation=tuple(map(tuple, random_rotation(rng))), contrast=float(rng.uniform(*config.contrast)),
        irregularity_seed=int(rng.integers(2**31)), notes=[f"touches lesion {host.label}"]))


# --------------------------------------------------------------------------- images


def _tissue_texture(shape, rng: np.random.Generator, spacing_mm) -> np.ndarray:
    """Smooth multiplicative texture (~2 mm correlation), drawn on a coarse grid for speed."""
    step = 2
    coarse = rng.normal(size=tuple(max(2, s // step) for s in shape)).astype(np.float32)
    coarse = ndimage.gaussian_filter(coarse, 1.0)
    coarse *= TEXTURE_AMPLITUDE / (coarse.std() + 1e-9)
    zoom = np.array(shape) / np.array(coarse.shape)
    texture = ndimage.zoom(coarse, zoom, order=1, grid_mode=True, mode="nearest")
    return 1.0 + texture[: shape[0], : shape[1], : shape[2]]


def _draw_image(anatomy: Anatomy, lesions: list[Lesion], texture: np.ndarray,
                contrast: ProtocolContrast | None = None, sequence: str | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free FLAIR (or ``sequence``: T1/T2, scanner units) and lesion id map for one time point."""
    t = TISSUE_INTENSITY
    if sequence is not None:
        t = SEQUENCE_INTENSITY[sequence]
        lesions = [replace(les, contrast=les.contrast * SEQUENCE_LESION_SCALE[sequence]) for les in lesions]
    elif contrast is not None:
        t = {**t, "gm": 1.0 + (t["gm"] - 1.0) * contrast.gm_scale,
             "csf": t["csf"] if contrast.csf_level is None else contrast.csf_level}
        lesions = [replace(les, contrast=les.contrast * contrast.lesion_scale) for les in lesions]
    image = (anatomy.csf * t["csf"] + anatomy.gm * t["gm"] + anatomy.wm * t["wm"]
             + anatomy.skull * t["skull"] + anatomy.scalp * t["scalp"]) * texture
    parenchyma = anatomy.gm + anatomy.wm
    ids = np.zeros(anatomy.shape, dtype=np.int32)
    best = np.zeros(anatomy.shape, dtype=np.float32)
    for lesion in lesions:
        box, weight, brightness = render(lesion, anatomy)
        weight = weight * np.clip(parenchyma[box] / PARENCHYMA_MIN, 0, 1)
        region = image[box]
        region += weight * (brightness * texture[box] - region)
        claim = (weight > 0.5) & (weight > best[box])
        ids[box][claim] = lesion.label
        best[box][claim] = weight[claim]
    return (image * WM_UNITS).astype(np.float32), ids


def _acquire(image: np.ndarray, *, snr: float, bias: float, rng: np.random.Generator) -> np.ndarray:
    image = image * nuisance.bias_field(image.shape, bias, rng)
    return nuisance.rician_noise(image, WM_UNITS / snr if snr > 0 else 0.0, rng)


def _tissue_labels(anatomy: Anatomy) -> np.ndarray:
    stack = np.stack([anatomy.csf, anatomy.gm, anatomy.wm])
    labels = (np.argmax(stack, axis=0) + 1).astype(np.uint8)
    labels[~anatomy.brain] = 0
    return labels


def _lesion_record(lesion: Lesion, volume_t1: float, volume_t2: float, centre_vox: np.ndarray) -> dict:
    record = {
        "label": lesion.label, "kind": lesion.kind, "location": lesion.location,
        "centre_mm": [round(v, 3) for v in lesion.centre_mm],
        "centre_voxel": [round(float(v), 2) for v in centre_vox],
        "volume_mm3_time01": round(volume_t1, 3), "volume_mm3_time02": round(volume_t2, 3),
        "contrast_time01": round(lesion.contrast, 4) if lesion.kind != "new" else 0.0,
        "contrast_time02": round(lesion.at_followup().contrast, 4),
        "semi_axes_mm": [round(v, 3) for v in lesion.semi_axes_mm],
        "scale_time02": round(lesion.scale_followup, 4),
    }
    if lesion.notes:
        record["notes"] = lesion.notes
    return record


def simulate_case(config: SimulationConfig) -> SimulatedCase:
    """Simulate one two-time-point case (see the module docstring for the recipe)."""
    rng = np.random.default_rng(config.seed)
    anatomy = load_anatomy(voxel_mm=config.voxel_mm)
    lesions = _draw_lesions(config, anatomy, rng)
    texture = _tissue_texture(anatomy.shape, rng, anatomy.spacing_mm)
    before = [les for les in lesions if les.kind != "new"]
    after = [les.at_followup() for les in lesions]
    clean_t1, ids_t1 = _draw_image(anatomy, before, texture, config.contrast_baseline)
    clean_t2, ids_t2 = _draw_image(anatomy, after, texture, config.contrast_followup)
    # other sequences of each visit: (baseline, follow-up) drawn alike, moved with the follow-up below
    others = {s: [_draw_image(anatomy, before, texture, sequence=s)[0], _draw_image(anatomy, after, texture,
                                                                                    sequence=s)[0]]
              for s in config.sequences}

    rotation, translation = nuisance.random_rigid(config.misalignment_mm, config.misalignment_deg, rng)
    displacement = nuisance.atrophy_displacement(anatomy.ventricles, config.atrophy_mm, anatomy.spacing_mm)
    if displacement is not None or config.misalignment_mm > 0 or config.misalignment_deg > 0:
        coords = nuisance.warp_coordinates(anatomy.shape, anatomy.spacing_mm, rotation, translation, displacement)
        clean_t2 = nuisance.resample(clean_t2, coords, order=1)
        ids_t2 = nuisance.resample(ids_t2, coords, order=0)
        for pair in others.values():
            pair[1] = nuisance.resample(pair[1], coords, order=1)
        del coords
    clean_t2 = nuisance.blur(clean_t2, config.blur_mm, anatomy.spacing_mm)
    if config.followup_slice_mm > 0:
        clean_t2 = nuisance.thick_slices(clean_t2, config.followup_slice_mm, config.voxel_mm)
    for pair in others.values():
        pair[1] = nuisance.blur(pair[1], config.blur_mm, anatomy.spacing_mm)
        if config.followup_slice_mm > 0:
            pair[1] = nuisance.thick_slices(pair[1], config.followup_slice_mm, config.voxel_mm)

    gain = rng.uniform(1 - config.gain_change, 1 + config.gain_change)
    gamma = rng.uniform(1 - config.contrast_change, 1 + config.contrast_change)
    clean_t2 = nuisance.gain_and_contrast(clean_t2, gain, gamma, WM_UNITS)
    if config.acquisitions:
        return _clinical_case(config, anatomy, lesions, (clean_t1, clean_t2), (ids_t1, ids_t2),
                              rng, extra={"followup_misalignment": _misalignment_record(rotation, translation),
                                          "followup_gain": round(float(gain), 4),
                                          "followup_gamma": round(float(gamma), 4)})
    baseline = _acquire(clean_t1, snr=config.snr_baseline, bias=config.bias_strength, rng=rng)
    followup = _acquire(clean_t2, snr=config.snr_followup, bias=config.bias_strength, rng=rng)
    # the sequences' bias and noise come from a stream of their own: the FLAIRs of a seed
    # are the same with or without them
    sequence_rng = np.random.default_rng([config.seed, 3])
    sequences = {s: tuple(_acquire(image, snr=snr, bias=config.bias_strength, rng=sequence_rng)
                          for image, snr in zip(pair, (config.snr_baseline, config.snr_followup)))
                 for s, pair in others.items()}

    new_labels = [les.label for les in lesions if les.kind == "new"]
    ground_truth = np.isin(ids_t2, new_labels).astype(np.uint8)
    voxel_mm3 = float(abs(np.linalg.det(anatomy.affine[:3, :3])))
    counts_t1 = np.bincount(ids_t1.ravel(), minlength=len(lesions) + 1)
    counts_t2 = np.bincount(ids_t2.ravel(), minlength=len(lesions) + 1)
    inverse = np.linalg.inv(anatomy.affine)
    records = [_lesion_record(les, counts_t1[les.label] * voxel_mm3, counts_t2[les.label] * voxel_mm3,
                              inverse[:3, :3] @ np.asarray(les.centre_mm) + inverse[:3, 3])
               for les in lesions]
    truth = {
        "generator": "mstools.simulate",
        "config": asdict(config),
        "voxel_volume_mm3": voxel_mm3,
        "followup_misalignment": _misalignment_record(rotation, translation),
        "followup_gain": round(float(gain), 4), "followup_gamma": round(float(gamma), 4),
        "n_new": len(new_labels),
        "new_lesion_volume_mm3": round(float(ground_truth.sum() * voxel_mm3), 3),
        "lesions": records,
    }
    return SimulatedCase(
        baseline=baseline, followup=followup, lesions_baseline=ids_t1, lesions_followup=ids_t2,
        ground_truth=ground_truth, brain_mask=anatomy.brain.astype(np.uint8),
        tissues=_tissue_labels(anatomy), affine=anatomy.affine, truth=truth, sequences=sequences)


def _misalignment_record(rotation: np.ndarray, translation: np.ndarray) -> dict:
    return {"rotation_matrix": rotation.round(6).tolist(), "translation_mm": translation.round(4).tolist(),
            "about": "grid centre; follow-up sampled at R(x + u - c) + c + t"}


def _acquire_visit(clean: np.ndarray, affine: np.ndarray, acquisition: Acquisition | None, *, snr: float,
                   bias: float, rng: np.random.Generator) -> RawScan:
    """One visit as stored: acquired on its own grid (or kept on the fine one), then
    bias and Rician noise per stored voxel."""
    if acquisition is None:
        data, grid = clean, np.asarray(affine, dtype=np.float64)
    else:
        data, grid = acquire(clean, affine, acquisition)
    return RawScan(data=_acquire(data, snr=snr, bias=bias, rng=rng), affine=grid)


def carry_labels(ids: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int],
                 target_affine: np.ndarray) -> np.ndarray:
    """A label map moved onto another grid by partial volume, keeping each label's volume.

    Each label's coverage of every target voxel is computed (on its own bounding box); the
    label claims its most covered voxels, as many as the coverage sums to (its volume in
    target voxels, rounded). A plain "covered more than half" rule would drop a lesion
    thinner than a 4 mm slice and shrink small lesions by a third; this one keeps every
    lesion's volume to within half a target voxel. Where two labels want a voxel, the
    better-covering one wins."""
    out = np.zeros(shape, dtype=np.int32)
    best = np.zeros(shape, dtype=np.float32)
    inverse_target = np.linalg.inv(target_affine)
    for label, box in enumerate(ndimage.find_objects(ids), start=1):
        if box is None:
            continue
        lo = np.array([s.start for s in box]) - 1
        hi = np.array([s.stop for s in box])
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        world = corners @ affine[:3, :3].T + affine[:3, 3]
        target = world @ inverse_target[:3, :3].T + inverse_target[:3, 3]
        t_lo = np.maximum(np.floor(target.min(0)).astype(int) - 1, 0)
        t_hi = np.minimum(np.ceil(target.max(0)).astype(int) + 2, shape)
        if np.any(t_hi <= t_lo):
            continue
        f_lo = np.maximum(lo, 0)
        fine_box = tuple(slice(int(a), int(b)) for a, b in zip(f_lo, np.minimum(hi + 1, ids.shape)))
        fine_affine = affine.copy()
        fine_affine[:3, 3] = affine[:3, :3] @ f_lo + affine[:3, 3]
        sub_affine = np.array(target_affine, dtype=np.float64)
        sub_affine[:3, 3] = target_affine[:3, :3] @ t_lo + target_affine[:3, 3]
        sub_shape = tuple(int(v) for v in t_hi - t_lo)
        fraction = partial_volume(ids[fine_box] == label, fine_affine, sub_shape, sub_affine)
        region = tuple(slice(int(a), int(b)) for a, b in zip(t_lo, t_hi))
        keep = int(round(float(fraction.sum())))
        if keep == 0:
            continue
        threshold = np.partition(fraction.ravel(), fraction.size - keep)[fraction.size - keep]
        claim = (fraction >= max(threshold, 1e-6)) & (fraction > best[region])
        out[region][claim] = label
        best[region][claim] = fraction[claim]
    return out


def _clinical_case(config: SimulationConfig, anatomy: Anatomy, lesions: list[Lesion], clean, ids,
                   rng: np.random.Generator, extra: dict) -> SimulatedCase:
    """Both visits acquired on their own grids, then the case on the follow-up's grid."""
    raw_t1 = _acquire_visit(clean[0], anatomy.affine, config.acquisition_baseline, snr=config.snr_baseline,
                            bias=config.bias_strength, rng=rng)
    raw_t2 = _acquire_visit(clean[1], anatomy.affine, config.acquisition_followup, snr=config.snr_followup,
                            bias=config.bias_strength, rng=rng)
    shape, grid = raw_t2.data.shape, raw_t2.affine
    baseline = sample_onto(raw_t1.data, raw_t1.affine, shape, grid, order=1)
    ids_t1 = carry_labels(ids[0], anatomy.affine, shape, grid)
    ids_t2 = carry_labels(ids[1], anatomy.affine, shape, grid)
    brain = (partial_volume(anatomy.brain, anatomy.affine, shape, grid) > 0.5).astype(np.uint8)
    tissues = sample_onto(_tissue_labels(anatomy), anatomy.affine, shape, grid, order=0).astype(np.uint8)
    new_labels = [les.label for les in lesions if les.kind == "new"]
    ground_truth = np.isin(ids_t2, new_labels).astype(np.uint8)
    fine_mm3 = float(abs(np.linalg.det(anatomy.affine[:3, :3])))
    voxel_mm3 = float(abs(np.linalg.det(grid[:3, :3])))
    fine_t1 = np.bincount(ids[0].ravel(), minlength=len(lesions) + 1)
    fine_t2 = np.bincount(ids[1].ravel(), minlength=len(lesions) + 1)
    counts_t1 = np.bincount(ids_t1.ravel(), minlength=len(lesions) + 1)
    counts_t2 = np.bincount(ids_t2.ravel(), minlength=len(lesions) + 1)
    inverse = np.linalg.inv(grid)
    records = []
    for les in lesions:
        record = _lesion_record(les, counts_t1[les.label] * voxel_mm3, counts_t2[les.label] * voxel_mm3,
                                inverse[:3, :3] @ np.asarray(les.centre_mm) + inverse[:3, 3])
        record["volume_mm3_time01_fine"] = round(float(fine_t1[les.label] * fine_mm3), 3)
        record["volume_mm3_time02_fine"] = round(float(fine_t2[les.label] * fine_mm3), 3)
        records.append(record)
    fine_new = float(np.isin(ids[1], new_labels).sum() * fine_mm3)

    def described(acquisition: Acquisition | None) -> dict:
        if acquisition is None:
            return {"kind": "3d", "voxel_mm": config.voxel_mm}
        return {"kind": "2d", "text": acquisition.text, **asdict(acquisition)}

    truth = {
        "generator": "mstools.simulate",
        "config": asdict(config),
        "voxel_volume_mm3": voxel_mm3,
        "common_grid": {"about": "the follow-up's acquired grid; baseline resampled linearly, "
                                 "lesions by partial volume keeping each lesion's volume, brain "
                                 "mask by partial volume > 0.5, tissues nearest-neighbour",
                        "shape": list(shape), "affine": np.round(grid, 6).tolist()},
        "raw_grids": {"time01": {"shape": list(raw_t1.data.shape), "affine": np.round(raw_t1.affine, 6).tolist()},
                      "time02": {"shape": list(shape), "affine": np.round(grid, 6).tolist()}},
        "acquisitions": {"time01": described(config.acquisition_baseline),
                         "time02": described(config.acquisition_followup)},
        "fine_voxel_volume_mm3": fine_mm3,
        **extra,
        "n_new": len(new_labels),
        "new_lesion_volume_mm3": round(float(ground_truth.sum() * voxel_mm3), 3),
        "new_lesion_volume_mm3_fine": round(fine_new, 3),
        "lesions": records,
    }
    return SimulatedCase(
        baseline=baseline, followup=raw_t2.data, lesions_baseline=ids_t1, lesions_followup=ids_t2,
        ground_truth=ground_truth, brain_mask=brain, tissues=tissues, affine=grid, truth=truth,
        raw_baseline=raw_t1, raw_followup=raw_t2)


def simulate_single_timepoint(config: SimulationConfig) -> SingleTimepointCase:
    """One FLAIR with all its lesions labelled (the all-lesion data CoactSeg also trains on)."""
    rng = np.random.default_rng(config.seed)
    anatomy = load_anatomy(voxel_mm=config.voxel_mm)
    lesions = _draw_lesions(config, anatomy, rng)
    lesions = [replace(les, kind="stable", scale_followup=1.0, contrast_followup=None) for les in lesions]
    texture = _tissue_texture(anatomy.shape, rng, anatomy.spacing_mm)
    clean, ids = _draw_image(anatomy, lesions, texture)
    flair = _acquire(clean, snr=config.snr_baseline, bias=config.bias_strength, rng=rng)
    voxel_mm3 = float(abs(np.linalg.det(anatomy.affine[:3, :3])))
    counts = np.bincount(ids.ravel(), minlength=len(lesions) + 1)
    inverse = np.linalg.inv(anatomy.affine)
    records = [_lesion_record(les, counts[les.label] * voxel_mm3, counts[les.label] * voxel_mm3,
                              inverse[:3, :3] @ np.asarray(les.centre_mm) + inverse[:3, 3])
               for les in lesions]
    truth = {"generator": "mstools.simulate", "single_timepoint": True, "config": asdict(config),
             "voxel_volume_mm3": voxel_mm3, "lesions": records}
    return SingleTimepointCase(flair=flair, lesions=ids, brain_mask=anatomy.brain.astype(np.uint8),
                               tissues=_tissue_labels(anatomy), affine=anatomy.affine, truth=truth)
