"""Inference machinery: device choice, input preparation, sliding windows, flip TTA, resampling.

Sliding windows follow nnU-Net v2: windows of the model's patch size placed evenly
with a step of at most ``(1 - overlap) x window``, each window's probabilities
weighted by a Gaussian (sigma = window / 8) centred on it, the weighted sum divided by
the summed weights; windows are run in batches. Paper 002 instead averages windows
with a stride of 20^3 on 80^3 patches (overlap 0.75) without weighting.
"""

from __future__ import annotations

import itertools
from typing import Callable, Mapping

import numpy as np
from scipy import ndimage

#: nnU-Net v2 defaults: Gaussian sigma = 1/8 of the window; 50 % overlap.
GAUSSIAN_SIGMA_SCALE = 1.0 / 8
DEFAULT_OVERLAP = 0.5
#: Foreground for intensity normalisation: voxels above 10 % of the 99th percentile.
FOREGROUND_FRACTION = 0.1


def select_device(preference: str = "auto"):
    """torch device: ``auto`` = cuda, then mps, then cpu; or the one named (checked)."""
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available; use --device auto or cpu")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device mps requested but MPS is not available; use --device auto or cpu")
    if preference not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda or mps, not {preference!r}")
    return torch.device(preference)


def normalisation_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the foreground (paper 002: "zero mean and unit variance").

    Foreground = voxels above ``FOREGROUND_FRACTION`` x the 99th percentile, which keeps
    the head and drops the background noise without needing a brain mask.
    """
    image = np.asarray(image, dtype=np.float32)
    threshold = FOREGROUND_FRACTION * float(np.percentile(image, 99))
    values = image[image > threshold]
    if values.size < 2:
        values = image.reshape(-1)
    std = float(values.std())
    return float(values.mean()), std if std > 0 else 1.0


def normalise(image: np.ndarray, stats: tuple[float, float] | None = None) -> np.ndarray:
    mean, std = stats if stats is not None else normalisation_stats(image)
    return ((np.asarray(image, dtype=np.float32) - mean) / std).astype(np.float32)


def model_channels(model: str, baseline: np.ndarray, followup: np.ndarray) -> np.ndarray:
    """Network input from normalised images: (b, f), and f - b for a network whose registry
    entry has ``difference_input`` (CoactSeg, paper 002)."""
    from mstools.detect.deep.networks import network

    if network(model).difference_input:
        return np.stack([baseline, followup, followup - baseline]).astype(np.float32)
    return np.stack([baseline, followup]).astype(np.float32)


def gaussian_weights(window: tuple[int, ...], *, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> np.ndarray:
    """nnU-Net's importance map: a Gaussian centred on the window, max 1, no zero."""
    impulse = np.zeros(window, dtype=np.float64)
    impulse[tuple(n // 2 for n in window)] = 1.0
    g = ndimage.gaussian_filter(impulse, [n * sigma_scale for n in window], mode="constant", cval=0)
    g = g / g.max()
    g[g == 0] = g[g > 0].min()
    return g.astype(np.float32)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering ``size`` with steps <= (1 - overlap) window."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), not {overlap}")
    if size <= window:
        return [0]
    step = max(1, int(window * (1 - overlap)))
    n = int(np.ceil((size - window) / step)) + 1
    return [int(round(v)) for v in np.linspace(0, size - window, n)]


Forward = Callable[[object], Mapping[str, object]]


def flip_tta(forward: Forward, dims: tuple[int, ...]) -> Forward:
    """Average ``forward`` (probabilities) over every mirroring of ``dims`` (nnU-Net's mirror TTA)."""
    import torch

    combos = [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]

    def tta(x):
        total: dict[str, torch.Tensor] = {}
        for axes in combos:
            out = forward(torch.flip(x, axes) if axes else x)
            for k, v in out.items():
                v = torch.flip(v, axes) if axes else v
                total[k] = total[k] + v if k in total else v
        return {k: v / len(combos) for k, v in total.items()}

    return tta


def sliding_window(forward: Forward, volume: np.ndarray, *, window: int, overlap: float = DEFAULT_OVERLAP,
                   batch_size: int = 2, device=None, gaussian: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Probabilities over a whole volume (C, I, J, K) from windows of ``window``^3.

    ``forward`` maps a batch (B, C, w, w, w) to probabilities per output (B, 1, w, w, w).
    A volume smaller than a window is padded (edge values) and cropped back.
    """
    import torch

    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 4:
        raise ValueError(f"volume must be (channels, I, J, K), not {volume.shape}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    shape = volume.shape[1:]
    pad = [(0, max(0, window - n)) for n in shape]
    padded = np.pad(volume, [(0, 0)] + pad, mode="edge") if any(p[1] for p in pad) else volume
    size = padded.shape[1:]
    weights = gaussian_weights((window,) * 3) if gaussian else np.ones((window,) * 3, dtype=np.float32)
    starts = list(itertools.product(*(window_starts(n, window, overlap) for n in size)))
    sums: dict[str, np.ndarray] = {}
    norm = np.zeros(size, dtype=np.float32)
    device = device or torch.device("cpu")
    for b in range(0, len(starts), batch_size):
        chunk = starts[b:b + batch_size]
        batch = np.stack([padded[:, i:i + window, j:j + window, k:k + window] for i, j, k in chunk])
        with torch.inference_mode():
            out = forward(torch.from_numpy(batch).to(device))
        out = {k: v.float().cpu().numpy() for k, v in out.items()}
        for n, (i, j, k) in enumerate(chunk):
            region = (slice(i, i + window), slice(j, j + window), slice(k, k + window))
            for name, prob in out.items():
                if name not in sums:
                    sums[name] = np.zeros(size, dtype=np.float32)
                sums[name][region] += prob[n, 0] * weights
            norm[region] += weights
        if progress is not None:
            progress(min(b + batch_size, len(starts)), len(starts))
    crop = tuple(slice(0, n) for n in shape)
    return {name: (s / norm)[crop].astype(np.float32) for name, s in sums.items()}


def slice_inference(forward: Forward, volume: np.ndarray, *, divisor: int, batch_size: int = 8, device=None,
                    axes: tuple[int, ...] = (0, 1, 2),
                    progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """2.5D inference (paper 000): every slice along each axis, probabilities averaged over axes.

    ``forward`` maps (B, C, H, W) to probabilities (B, 1, H, W); slices are edge-padded to
    multiples of ``divisor`` and cropped back.
    """
    import torch

    volume = np.asarray(volume, dtype=np.float32)
    device = device or torch.device("cpu")
    totals: dict[str, np.ndarray] = {}
    n_total = sum(volume.shape[1 + a] for a in axes)
    done = 0
    for axis in axes:
        moved = np.moveaxis(volume, 1 + axis, 0)            # (S, C, H, W)
        h, w = moved.shape[2:]
        ph, pw = (-h) % divisor, (-w) % divisor
        if ph or pw:
            moved = np.pad(moved, [(0, 0), (0, 0), (0, ph), (0, pw)], mode="edge")
        parts: dict[str, list[np.ndarray]] = {}
        for s in range(0, moved.shape[0], batch_size):
            with torch.inference_mode():
                out = forward(torch.from_numpy(np.ascontiguousarray(moved[s:s + batch_size])).to(device))
            for name, prob in out.items():
                parts.setdefault(name, []).append(prob.float().cpu().numpy()[:, 0, :h, :w])
            done += min(batch_size, moved.shape[0] - s)
            if progress is not None:
                progress(done, n_total)
        for name, chunks in parts.items():
            stacked = np.moveaxis(np.concatenate(chunks), 0, axis)
            totals[name] = totals[name] + stacked if name in totals else stacked
    return {name: (t / len(axes)).astype(np.float32) for name, t in totals.items()}


def grid_shape(shape: tuple[int, ...], spacing_mm: tuple[float, ...], target_mm: float) -> tuple[int, ...]:
    """Shape of the same field of view sampled at ``target_mm``."""
    return tuple(max(1, int(round(n * s / target_mm))) for n, s in zip(shape, spacing_mm))


def resample(volume: np.ndarray, shape: tuple[int, ...], *, order: int) -> np.ndarray:
    """Resample a 3D array to ``shape`` over the same field of view (voxel-area convention)."""
    volume = np.asarray(volume, dtype=np.float32)
    if tuple(volume.shape) == tuple(shape):
        return volume.copy()
    factors = [t / n for t, n in zip(shape, volume.shape)]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # zoom rounds; pad or crop the last voxel if needed
        out = out[tuple(slice(0, t) for t in shape)]
        out = np.pad(out, [(0, t - n) for t, n in zip(shape, out.shape)], mode="edge")
    return out.astype(np.float32)
