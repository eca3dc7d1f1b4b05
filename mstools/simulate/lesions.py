"""MS lesions for simulation: where they sit, their shape, and how they are drawn.

A lesion is a randomly oriented ellipsoid with an irregular, soft edge and a
heterogeneous, FLAIR-hyperintense interior. Its centre is drawn from one of the four
locations that define dissemination in space in the McDonald criteria:
periventricular, juxtacortical, infratentorial, and (beyond those) deep white matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from mstools.simulate.anatomy import Anatomy

LOCATIONS = ("periventricular", "deep_white_matter", "juxtacortical", "infratentorial")

#: Share of lesions per location. MS lesions are predominantly periventricular and
#: deep white matter; infratentorial lesions are the least frequent.
LOCATION_SHARES = (0.40, 0.30, 0.20, 0.10)

#: Soft-edge width (mm): the logistic scale of the lesion boundary, i.e. partial volume
#: over about one 1 mm voxel.
EDGE_MM = 0.5


@dataclass(frozen=True)
class Lesion:
    """One lesion, in world millimetres of the anatomy grid (MNI space)."""

    label: int
    kind: str                 # stable | new | enlarging | shrinking
    location: str
    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]  # 3x3, columns = ellipsoid axes
    contrast: float           # lesion / normal-appearing WM intensity ratio minus 1
    irregularity_seed: int
    scale_followup: float = 1.0     # semi-axes multiplier at follow-up (enlarging > 1 > shrinking)
    contrast_followup: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def nominal_volume_mm3(self) -> float:
        a, b, c = self.semi_axes_mm
        return float(4.0 / 3.0 * np.pi * a * b * c)

    def at_followup(self) -> "Lesion":
        """The lesion as it appears at follow-up (size and contrast may change)."""
        axes = tuple(float(a * self.scale_followup) for a in self.semi_axes_mm)
        contrast = self.contrast if self.contrast_followup is None else self.contrast_followup
        return replace(self, semi_axes_mm=axes, contrast=contrast)  # type: ignore[arg-type]


def location_candidates(anatomy: Anatomy) -> dict[str, np.ndarray]:
    """Voxel indices (n x 3) where a lesion centre of each location may be drawn.

    Computed on a 2 mm grid (distances are smooth at that scale) and mapped back.
    """
    spacing = float(anatomy.spacing_mm[0])
    step = max(1, int(round(2.0 / spacing)))
    sl = (slice(None, None, step),) * 3
    wm = anatomy.wm[sl]
    gm = anatomy.gm[sl]
    mm = spacing * step
    to_ventricle = ndimage.distance_transform_edt(~anatomy.ventricles[sl], sampling=mm)
    to_gm = ndimage.distance_transform_edt(gm < 0.5, sampling=mm)
    idx = np.indices(wm.shape).reshape(3, -1).T * step
    world_z = (anatomy.affine[:3, :3] @ idx.T + anatomy.affine[:3, 3:4])[2].reshape(wm.shape)
    # MNI z below -20 mm and behind the temporal lobes: brainstem and cerebellum.
    world_y = (anatomy.affine[:3, :3] @ idx.T + anatomy.affine[:3, 3:4])[1].reshape(wm.shape)
    infratentorial_zone = (world_z < -20) & (world_y < -20)
    supratentorial = ~infratentorial_zone
    masks = {
        "periventricular": (wm > 0.6) & (to_ventricle <= 5.0) & supratentorial,
        "deep_white_matter": (wm > 0.9) & (to_ventricle > 8.0) & (to_gm > 4.0) & supratentorial,
        "juxtacortical": (wm > 0.5) & (to_gm <= 2.0) & (to_gm > 0) & supratentorial,
        "infratentorial": (wm > 0.6) & infratentorial_zone,
    }
    return {name: np.argwhere(m) * step for name, m in masks.items()}


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def semi_axes_for_volume(volume_mm3: float, rng: np.random.Generator) -> tuple[float, float, float]:
    """Ovoid semi-axes with the given volume; elongation up to about 2:1 (MS lesions are ovoid)."""
    ratios = np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.45, 0.9)])
    base = (volume_mm3 / (4.0 / 3.0 * np.pi * ratios.prod())) ** (1.0 / 3.0)
    return tuple(float(v) for v in base * ratios)  # type: ignore[return-value]


def render(lesion: Lesion, anatomy: Anatomy) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
    """Soft membership weight (0..1) and relative intensity of a lesion in its bounding box.

    Returns (box, weight, brightness) where brightness is the lesion's intensity
    relative to normal white matter (1 + contrast, heterogeneous inside).
    """
    inverse = np.linalg.inv(anatomy.affine)
    centre_vox = inverse[:3, :3] @ np.asarray(lesion.centre_mm) + inverse[:3, 3]
    spacing = anatomy.spacing_mm
    reach = (max(lesion.semi_axes_mm) * 1.35 + 3 * EDGE_MM) / spacing
    lo = np.maximum(np.floor(centre_vox - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + reach).astype(int) + 1, anatomy.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    offsets_mm = (grid - centre_vox) @ anatomy.affine[:3, :3].T
    local = offsets_mm @ np.asarray(lesion.rotation)            # coordinates along the lesion axes
    axes = np.asarray(lesion.semi_axes_mm)
    radius = np.sqrt(((local / axes) ** 2).sum(-1))
    rng = np.random.default_rng(lesion.irregularity_seed)
    shape = radius.shape
    # Irregular border: a smooth random perturbation of the ellipsoid's radius (+/- ~12 %).
    wobble = ndimage.gaussian_filter(rng.normal(size=shape), max(1.0, axes.min() / spacing.min() / 2))
    wobble = wobble / (np.abs(wobble).max() + 1e-9) * 0.12
    signed_mm = (radius * (1 + wobble) - 1.0) * axes.mean()
    weight = 1.0 / (1.0 + np.exp(np.clip(signed_mm / EDGE_MM, -50, 50)))
    # Heterogeneous interior: brighter core, mottled texture (+/- ~10 %).
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    texture = texture / (texture.std() + 1e-9) * 0.10
    core = 0.25 * np.clip(1 - radius, 0, 1)
    brightness = 1.0 + lesion.contrast * (0.85 + core) * (1 + texture)
    return box, weight.astype(np.float32), brightness.astype(np.float32)
