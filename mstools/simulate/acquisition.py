"""A 2D multi-slice acquisition: the image a clinical scanner stores for a simulated head.

Clinical FLAIR is mostly 2D: thick slices (3-5 mm), sometimes a gap between them, fine
in-plane voxels (0.5-1 mm), axial or another orientation, often tilted a few degrees
(e.g. along the AC-PC line). :func:`acquire` turns a noise-free image on a fine grid into
that scan, on its own grid:

1. each acquired voxel integrates the fine image along the slice normal with the slice
   profile (Gaussian or rectangular, FWHM = slice thickness), by quadrature at steps of
   at most half a fine voxel, in world millimetres (so a tilted slab works the same);
2. slice centres lie every thickness + gap along the normal, centred on the field of view;
3. in-plane, the fine image is sampled at the in-plane voxel size (linear), after an
   anti-aliasing Gaussian when the in-plane voxel is coarser than the fine grid.

The acquired grid keeps the fine grid's axis order and signs (as a scan reoriented to
the standard, e.g. with ``fslreorient2std``): an axial scan is thick along the array axis
that points head-foot, a coronal one along the front-back axis. Its affine is anisotropic,
e.g. 0.72 x 0.72 x 3 mm. Noise and bias are not added here: the caller adds them on the
acquired grid, per acquired voxel, as a scanner does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

ORIENTATIONS = ("axial", "coronal", "sagittal")
PROFILES = ("gaussian", "rect")

#: World (RAS) axis normal to the slices of each orientation.
_NORMAL_WORLD_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}

#: Parameter ranges of clinical 2D FLAIR. The Ljubljana database's scans (Lesjak et al.,
#: the open MS data of `mstools import-open-ms`) are axial 2D FLAIR at 0.72 x 0.72 x 3,
#: 0.57 x 0.57 x 3.3, 0.72 x 0.72 x 4 and 0.9 x 0.9 x 3 mm; clinical protocols range over
#: 3-5 mm slices and 0.5-1 mm in-plane voxels.
INPLANE_RANGE_MM = (0.5, 1.0)
SLICE_RANGE_MM = (3.0, 5.0)
MAX_GAP_MM = 3.0
#: Oblique tilts beyond this are not a "small" tilt (AC-PC alignment is within ~15 degrees).
MAX_TILT_DEG = 20.0

#: FWHM of a Gaussian in units of its sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class Acquisition:
    """One 2D multi-slice protocol. Defaults: the Ljubljana database's commonest grid
    (0.72 x 0.72 x 3 mm axial, no gap)."""

    inplane_mm: float = 0.72
    slice_mm: float = 3.0
    gap_mm: float = 0.0
    profile: str = "gaussian"
    orientation: str = "axial"
    tilt_deg: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = INPLANE_RANGE_MM
        if not lo <= self.inplane_mm <= hi:
            raise ValueError(f"in-plane voxel must lie in [{lo}, {hi}] mm, not {self.inplane_mm}")
        lo, hi = SLICE_RANGE_MM
        if not lo <= self.slice_mm <= hi:
            raise ValueError(f"slice thickness must lie in [{lo}, {hi}] mm, not {self.slice_mm}")
        if not 0 <= self.gap_mm <= MAX_GAP_MM:
            raise ValueError(f"slice gap must lie in [0, {MAX_GAP_MM}] mm, not {self.gap_mm}")
        if self.profile not in PROFILES:
            raise ValueError(f"slice profile must be one of {', '.join(PROFILES)}, not {self.profile!r}")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, not {self.orientation!r}")
        if abs(self.tilt_deg) > MAX_TILT_DEG:
            raise ValueError(f"tilt must lie within +/-{MAX_TILT_DEG} degrees, not {self.tilt_deg}")

    @property
    def slice_spacing_mm(self) -> float:
        return self.slice_mm + self.gap_mm

    @property
    def text(self) -> str:
        """The protocol in the form :func:`parse_acquisition` reads."""
        return (f"2d:{self.inplane_mm:g}x{self.inplane_mm:g}x{self.slice_mm:g},gap={self.gap_mm:g},"
                f"{self.orientation},{self.profile},tilt={self.tilt_deg:g}")


def parse_acquisition(text: str) -> Acquisition:
    """Read ``"2d:0.72x0.72x4,gap=0.5,axial,rect,tilt=5"`` (all but the size optional).

    Raises ``ValueError`` with a message that says what is wrong.
    """
    spec = text.strip()
    match = re.fullmatch(r"2d:([0-9.]+)x([0-9.]+)x([0-9.]+)((?:,[^,]+)*)", spec)
    if not match:
        raise ValueError(f"acquisition {text!r} is not of the form 2d:0.72x0.72x3[,gap=0][,axial][,gaussian][,tilt=0]")
    a, b, thickness, rest = match.groups()
    try:
        inplane, other, thickness_mm = float(a), float(b), float(thickness)
    except ValueError:
        raise ValueError(f"acquisition {text!r}: sizes must be numbers") from None
    if abs(inplane - other) > 1e-9:
        raise ValueError(f"acquisition {text!r}: in-plane voxels must be square ({a} vs {b})")
    options: dict = {"inplane_mm": inplane, "slice_mm": thickness_mm}
    for item in filter(None, rest.split(",")):
        key, _, value = item.strip().partition("=")
        try:
            if key == "gap" and value:
                options["gap_mm"] = float(value)
            elif key == "tilt" and value:
                options["tilt_deg"] = float(value)
            elif key in ORIENTATIONS and not value:
                options["orientation"] = key
            elif key in PROFILES and not value:
                options["profile"] = key
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"acquisition {text!r}: unknown item {item!r} (gap=MM, tilt=DEG, "
                             f"{'/'.join(ORIENTATIONS)}, {'/'.join(PROFILES)})") from None
    return Acquisition(**options)


def random_protocol(rng: np.random.Generator) -> Acquisition:
    """A clinical 2D FLAIR protocol: axial, slices 3-5 mm, gap 0-1 mm, in-plane 0.5-1 mm
    (the ranges of :data:`SLICE_RANGE_MM`, :data:`INPLANE_RANGE_MM`; gaps of up to 1 mm
    are common in clinical 2D protocols, 0 in the Ljubljana database)."""
    return Acquisition(inplane_mm=round(float(rng.uniform(*INPLANE_RANGE_MM)), 2),
                       slice_mm=round(float(rng.uniform(*SLICE_RANGE_MM)), 1),
                       gap_mm=round(float(rng.choice([0.0, rng.uniform(0.0, 1.0)])), 1),
                       profile="gaussian", orientation="axial", tilt_deg=0.0)


# --------------------------------------------------------------------------- geometry


def _rotation_about(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def slice_axis(affine: np.ndarray, orientation: str) -> int:
    """The array axis of a grid that points closest to the orientation's slice normal."""
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)
    return int(np.argmax(np.abs(directions[_NORMAL_WORLD_AXIS[orientation]])))


def acquired_grid(shape: tuple[int, int, int], affine: np.ndarray,
                  acquisition: Acquisition) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of the scan ``acquisition`` makes of the field of view of a grid."""
    affine = np.asarray(affine, dtype=np.float64)
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    thick = slice_axis(affine, acquisition.orientation)
    if acquisition.tilt_deg:
        # Tilt about the first in-plane axis (for axial: left-right, as an AC-PC tilt).
        hinge = directions[:, [a for a in range(3) if a != thick][0]]
        directions = _rotation_about(hinge, acquisition.tilt_deg) @ directions
    spacing = np.full(3, acquisition.inplane_mm)
    spacing[thick] = acquisition.slice_spacing_mm
    corners = np.array([[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
                        for k in (-0.5, shape[2] - 0.5)])
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    centre = world.mean(0)
    along = (world - centre) @ directions             # extent along each new axis
    extent = along.max(0) - along.min(0)
    counts = np.maximum(1, np.floor(extent / spacing + 1e-6)).astype(int)
    new = np.eye(4)
    new[:3, :3] = directions * spacing
    # Centre the grid on the field of view: voxel (n - 1) / 2 sits at the centre.
    new[:3, 3] = centre - new[:3, :3] @ ((counts - 1) / 2.0)
    return tuple(int(c) for c in counts), new  # type: ignore[return-value]


# --------------------------------------------------------------------------- sampling


def _profile_points(acquisition: Acquisition, step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (mm) along the slice normal and their weights (sum 1) of the slice profile."""
    thickness = acquisition.slice_mm
    if acquisition.profile == "rect":
        n = max(1, int(np.ceil(thickness / step_mm)))
        offsets = -thickness / 2 + (np.arange(n) + 0.5) * thickness / n
        weights = np.ones(n)
    else:
        sigma = thickness / FWHM_PER_SIGMA
        reach = 2.5 * sigma
        n = max(1, int(np.ceil(2 * reach / step_mm)))
        offsets = -reach + (np.arange(n) + 0.5) * 2 * reach / n
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return offsets, weights / weights.sum()


def sample_onto(image: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], target_affine: np.ndarray,
                *, offsets_mm: np.ndarray | None = None, weights: np.ndarray | None = None,
                order: int = 1, cval: float = 0.0) -> np.ndarray:
    """``image`` (on ``affine``) sampled onto a target grid, optionally averaged over world
    offsets (n x 3 mm) with weights: the one resampler of the simulator (scipy, world
    coordinates through the two affines). Outside the image's field of view: ``cval``."""
    if offsets_mm is None:
        offsets_mm = np.zeros((1, 3))
    if weights is None:
        weights = np.full(len(offsets_mm), 1.0 / len(offsets_mm))
    to_source = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(target_affine, dtype=np.float64)
    offsets_vox = offsets_mm @ np.linalg.inv(np.asarray(affine, dtype=np.float64)[:3, :3]).T
    plane = np.indices(shape[:2], dtype=np.float64).reshape(2, -1)
    out = np.zeros(shape, dtype=np.float32)
    source = np.asarray(image, dtype=np.float32) if order > 0 else np.asarray(image)
    for k in range(shape[2]):  # one slice at a time: memory stays at one plane
        points = np.vstack([plane, np.full(plane.shape[1], k)])
        base = to_source[:3, :3] @ points + to_source[:3, 3:4]
        total = np.zeros(plane.shape[1], dtype=np.float64)
        for offset, weight in zip(offsets_vox, weights):
            total += weight * ndimage.map_coordinates(source, base + offset[:, None], order=order,
                                                      mode="constant", cval=cval, prefilter=False)
        out[:, :, k] = total.reshape(shape[:2])
    return out


def acquire(image: np.ndarray, affine: np.ndarray, acquisition: Acquisition,
            ) -> tuple[np.ndarray, np.ndarray]:
    """The scan (float32 array, affine) a 2D acquisition makes of a noise-free fine image.

    ``image`` is not modified. See the module docstring for the model.
    """
    affine = np.asarray(affine, dtype=np.float64)
    fine_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    shape, target = acquired_grid(image.shape, affine, acquisition)
    thick = slice_axis(affine, acquisition.orientation)
    # In-plane anti-aliasing: a Gaussian that takes the fine resolution to the in-plane one.
    sigma_mm = np.sqrt(np.maximum(acquisition.inplane_mm ** 2 - fine_spacing ** 2, 0.0)) / FWHM_PER_SIGMA
    sigma_mm[thick] = 0.0
    source = image
    if np.any(sigma_mm > 0.1 * fine_spacing):
        source = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma_mm / fine_spacing)
    offsets, weights = _profile_points(acquisition, step_mm=0.5 * float(fine_spacing.min()))
    if acquisition.tilt_deg == 0:
        # Slices parallel to the fine grid: the profile integral is a 1D correlation along
        # that axis (each quadrature point spread linearly over its two fine neighbours),
        # then one linear sample per acquired voxel. Same result as the quadrature below
        # up to the interpolation of the already smooth profile-filtered image; ~10x faster.
        kernel = _profile_kernel(offsets / fine_spacing[thick], weights)
        source = ndimage.correlate1d(np.asarray(source, dtype=np.float32), kernel, axis=thick, mode="constant")
        return sample_onto(source, affine, shape, target), target
    normal = target[:3, thick] / np.linalg.norm(target[:3, thick])
    return sample_onto(source, affine, shape, target, offsets_mm=offsets[:, None] * normal[None, :],
                       weights=weights), target


def _profile_kernel(offsets_vox: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A symmetric discrete kernel: each (offset, weight) split linearly between the two
    nearest integer offsets."""
    reach = int(np.ceil(np.abs(offsets_vox).max())) + 1
    kernel = np.zeros(2 * reach + 1)
    for offset, weight in zip(offsets_vox, weights):
        low = int(np.floor(offset))
        frac = offset - low
        kernel[low + reach] += weight * (1 - frac)
        kernel[low + 1 + reach] += weight * frac
    return kernel


def partial_volume(mask: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int],
                   target_affine: np.ndarray) -> np.ndarray:
    """Fraction (0..1) of each target voxel covered by a fine binary mask: the mask averaged
    over the target voxel's box (midpoint rule, about one point per fine voxel)."""
    fine_spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0).min()
    target_affine = np.asarray(target_affine, dtype=np.float64)
    spacing = np.linalg.norm(target_affine[:3, :3], axis=0)
    counts = np.maximum(1, np.round(spacing / fine_spacing)).astype(int)
    grids = [(np.arange(n) + 0.5) / n - 0.5 for n in counts]
    fractions = np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3)
    offsets = fractions @ target_affine[:3, :3].T
    weights = np.full(len(offsets), 1.0 / len(offsets))
    return sample_onto(np.asarray(mask, dtype=np.float32), affine, shape, target_affine,
                       offsets_mm=offsets, weights=weights, order=1)


# --------------------------------------------------------------------------- contrast

#: Ranges of a visit's FLAIR contrast under another protocol (TI, TE, TR): the CSF level
#: (CSF / WM) spans 0.13-0.41 as the 5th brain-intensity percentile over WM measured on
#: the Ljubljana FLAIRs of patients 07, 19 and 26 (benchmarks/bench_simulate_clinical.py
#: prints it); lesion and GM contrasts (ratio - 1) are scaled by up to +/-25 % and +/-40 %
#: (a judgement: the lesion/NAWM ratios measured there, 1.33-1.39, move less than GM/WM).
CSF_LEVEL_RANGE = (0.13, 0.41)
LESION_SCALE_RANGE = (0.75, 1.25)
GM_SCALE_RANGE = (0.6, 1.4)


@dataclass(frozen=True)
class ProtocolContrast:
    """A visit's FLAIR contrast relative to the simulator's default one: lesion-to-WM and
    GM-to-WM contrasts (ratio - 1) multiplied, and the CSF level (CSF / WM; None keeps
    the default), as a change of TI/TE between protocols does."""

    lesion_scale: float = 1.0
    gm_scale: float = 1.0
    csf_level: float | None = None

    def __post_init__(self) -> None:
        for name in ("lesion_scale", "gm_scale"):
            if not 0 < getattr(self, name) <= 3:
                raise ValueError(f"{name} must lie in (0, 3], not {getattr(self, name)}")
        if self.csf_level is not None and not 0 <= self.csf_level <= 1:
            raise ValueError(f"csf level must lie in [0, 1] (suppressed CSF is darker than WM), not {self.csf_level}")


def parse_contrast(text: str) -> ProtocolContrast:
    """Read ``"lesion=0.8,gm=1.3,csf=0.1"`` (any subset). Raises ``ValueError``."""
    names = {"lesion": "lesion_scale", "gm": "gm_scale", "csf": "csf_level"}
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key not in names or not value:
            raise ValueError(f"protocol contrast {text!r}: unknown item {item!r} (lesion=X, gm=X, csf=X)")
        try:
            options[names[key]] = float(value)
        except ValueError:
            raise ValueError(f"protocol contrast {text!r}: {key} must be a number, not {value!r}") from None
    return ProtocolContrast(**options)


def random_contrast(rng: np.random.Generator) -> ProtocolContrast:
    """A protocol's contrast drawn from the ranges above."""
    return ProtocolContrast(lesion_scale=round(float(rng.uniform(*LESION_SCALE_RANGE)), 3),
                            gm_scale=round(float(rng.uniform(*GM_SCALE_RANGE)), 3),
                            csf_level=round(float(rng.uniform(*CSF_LEVEL_RANGE)), 3))


def clinical_protocols(rng: np.random.Generator) -> tuple[Acquisition, Acquisition, ProtocolContrast | None]:
    """The ``--clinical`` preset: a random protocol for the baseline; the follow-up on the
    same protocol or, with probability 1/2, on another (grid and contrast)."""
    baseline = random_protocol(rng)
    if rng.uniform() < 0.5:
        return baseline, baseline, None
    return baseline, random_protocol(rng), random_contrast(rng)
