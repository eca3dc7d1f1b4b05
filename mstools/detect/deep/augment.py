"""Training augmentation of one sample (numpy, channels first; the inputs are not modified).

* spatial (the same for every channel and label): flips and rotations (paper 002:
  "random flip or rotation"): right-angle rotations in a random plane, and small
  rotations (labels by nearest neighbour);
* image quality, after Kamraoui et al. (paper 001): "either blur, edge enhancement,
  or axial subsampling distortion": Gaussian blur with sigma in [0.5, 1.75] voxels,
  unsharp masking with the same blur, a mean filter of 2, 3 or 4 voxels along the
  axial axis (array axis k);
* bias field (smooth multiplicative polynomial, TorchIO's RandomBiasField: order 3),
  intensity scale/shift and Gaussian noise.

Time points of a two-time-point sample get independent intensity and quality
changes (paper 001, Kamraoui: the two copies are "altered with different data
augmentation"); a single-time-point sample is augmented once and then used for both
time points, so that its difference channel stays 0 (paper 002, eq. 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Paper 001 (Kamraoui et al.): blur sigma range and axial mean-filter sizes.
BLUR_SIGMA = (0.5, 1.75)
AXIAL_SIZES = (2, 3, 4)
AXIAL_AXIS = 2


@dataclass(frozen=True)
class AugmentConfig:
    p_flip: float = 0.5            # per axis
    p_rot90: float = 0.5
    p_rotate: float = 0.2
    max_degrees: float = 15.0
    p_quality: float = 0.3         # per time point: one of blur / sharpen / axial thickness
    p_bias: float = 0.3
    bias_coefficient: float = 0.3  # TorchIO default 0.5 on log scale; milder here
    p_intensity: float = 0.5
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.1
    p_noise: float = 0.2
    noise_sigma: tuple[float, float] = (0.0, 0.1)   # in units of the normalised intensity


def quality(image: np.ndarray, rng: np.random.Generator, *, kind: str | None = None) -> np.ndarray:
    """Kamraoui's image-quality change of one 3D image (paper 001); ``kind`` drawn if None."""
    kind = kind or ("blur", "sharpen", "axial")[rng.integers(3)]
    if kind == "axial":
        size = [1] * image.ndim
        size[AXIAL_AXIS] = int(AXIAL_SIZES[rng.integers(len(AXIAL_SIZES))])
        return ndimage.uniform_filter(image, size=size, mode="nearest").astype(image.dtype)
    sigma = rng.uniform(*BLUR_SIGMA)
    blurred = ndimage.gaussian_filter(image, sigma, mode="nearest")
    if kind == "blur":
        return blurred.astype(image.dtype)
    if kind == "sharpen":
        return (image + (image - blurred)).astype(image.dtype)
    raise ValueError(f"unknown quality change {kind!r}")


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, *, coefficient: float, order: int = 3) -> np.ndarray:
    """exp(sum of random polynomial terms up to ``order`` in normalised coordinates)."""
    axes = [np.linspace(-1, 1, n) for n in shape]
    grids = np.meshgrid(*axes, indexing="ij")
    log_field = np.zeros(shape)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                if i + j + k:
                    log_field += rng.uniform(-coefficient, coefficient) * grids[0] ** i * grids[1] ** j * grids[2] ** k
    return np.exp(log_field).astype(np.float32)


def _spatial(arrays: list[np.ndarray], orders: list[int], rng: np.random.Generator, cfg: AugmentConfig):
    shape = arrays[0].shape
    spatial_axes = (1, 2, 3)
    for axis in spatial_axes:
        if rng.random() < cfg.p_flip:
            arrays = [np.flip(a, axis=axis) for a in arrays]
    # rotations only in planes of two non-thin axes (a 2.5D slab keeps its thin axis)
    planes = [(a, b) for a in spatial_axes for b in spatial_axes if a < b and shape[a] > 1 and shape[b] > 1]
    square = [p for p in planes if shape[p[0]] == shape[p[1]]]
    if square and rng.random() < cfg.p_rot90:
        plane = square[rng.integers(len(square))]
        k = int(rng.integers(1, 4))
        arrays = [np.rot90(a, k=k, axes=plane) for a in arrays]
    if planes and rng.random() < cfg.p_rotate:
        plane = planes[rng.integers(len(planes))]
        angle = rng.uniform(-cfg.max_degrees, cfg.max_degrees)
        arrays = [ndimage.rotate(a, angle, axes=plane, reshape=False, order=o, mode="nearest")
                  for a, o in zip(arrays, orders)]
    return [np.ascontiguousarray(a) for a in arrays]


def augment_sample(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *,
                   single_timepoint: bool, stats: np.ndarray, config: AugmentConfig = AugmentConfig()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Augment raw patches (T, I, J, K) and labels (L, I, J, K); returns normalised images.

    ``stats`` (T, 2) holds each time point's foreground mean and standard deviation
    (:func:`mstools.detect.deep.inference.normalisation_stats` of the whole volume), applied
    after the quality and bias changes and before intensity scaling and noise.
    """
    images = np.array(images, dtype=np.float32, copy=True)
    n_time = 1 if single_timepoint else images.shape[0]
    for t in range(n_time):
        if rng.random() < config.p_quality:
            images[t] = quality(images[t], rng)
        if rng.random() < config.p_bias:
            images[t] = images[t] * bias_field(images.shape[1:], rng, coefficient=config.bias_coefficient)
    if single_timepoint:
        images[1:] = images[0]
    images, labels = _spatial([images, labels.astype(np.float32)], [1, 0], rng, config)
    images = (images - stats[:, 0, None, None, None]) / stats[:, 1, None, None, None]
    for t in range(n_time):
        if rng.random() < config.p_intensity:
            images[t] = images[t] * rng.uniform(*config.scale) + rng.uniform(-config.shift, config.shift)
        if rng.random() < config.p_noise:
            images[t] = images[t] + rng.normal(0, rng.uniform(*config.noise_sigma), images.shape[1:])
    if single_timepoint:
        images[1:] = images[0]
    return images.astype(np.float32), (labels > 0.5).astype(np.uint8)
