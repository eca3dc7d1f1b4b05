"""``Predictor``: load a model once, segment many cases (as nnU-Net's predictor class).

    >>> from mstools.detect.deep.predictor import Predictor
    >>> predictor = Predictor.from_file(packaged_model("deep", "coactseg"))  # doctest: +SKIP
    >>> maps = predictor.predict(baseline, followup, spacing_mm=(1, 1, 1))  # doctest: +SKIP
    >>> maps["new"].shape == baseline.shape                               # doctest: +SKIP

Arrays in, arrays out, in the input's grid: inputs are normalised, resampled in memory
to the model's spacing when it has one, run by sliding windows (3D models) or over the
slices of the three orientations (2.5D multitask), and the probabilities are
resampled back to the input's shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mstools.acquisition import has_thick_slices
from mstools.detect.deep import inference
from mstools.detect.deep.weights import build_loaded, load_weights
from mstools.detect.deep.config import ModelConfig
from mstools.detect.deep.networks import NETWORKS
from mstools.io import sha256 as file_sha256
from mstools.models import read_card

#: Output names per model: the new-lesion map always; CoactSeg's all-lesion maps too.
OUTPUT_NAMES = {name: network.outputs for name, network in NETWORKS.items()}


@dataclass
class PredictOptions:
    overlap: float = inference.DEFAULT_OVERLAP
    batch_size: int = 2
    tta: bool = False


class Predictor:
    """A loaded network in evaluation mode on one device."""

    def __init__(self, model, config: ModelConfig, *, device=None, sha256: str | None = None,
                 card: dict | None = None, source: str | None = None):
        import torch

        self.config = config
        self.device = device or torch.device("cpu")
        self.model = model.to(self.device).eval()
        self.sha256 = sha256
        self.card = card
        self.source = source

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, device: str = "auto", threads: int | None = None) -> "Predictor":
        """Load a weight file strictly (:func:`mstools.detect.deep.weights.load_weights`)."""
        import torch

        if threads is not None:
            torch.set_num_threads(int(threads))
        config, state, _ = load_weights(path)
        model = build_loaded(config, state, source=str(path))
        return cls(model, config, device=inference.select_device(device), sha256=file_sha256(path),
                   card=read_card(path), source=str(Path(path)))

    # -- forward functions returning probabilities ------------------------------------------
    def _forward(self, x):
        import torch

        autocast = self.device.type == "cuda"
        with torch.autocast("cuda", enabled=autocast):
            out = self.model(x)
        return {k: torch.sigmoid(v.float()) for k, v in out.items() if k in OUTPUT_NAMES[self.config.model]}

    def predict_model_grid(self, baseline: np.ndarray, followup: np.ndarray, *, options: PredictOptions = PredictOptions(),
                           progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Probabilities for two already-normalised volumes on the model's grid."""
        if NETWORKS[self.config.model].lesion_maps:
            raise ValueError(f"the {self.config.model} network also reads both visits' all-lesion maps; "
                             "apply it with mstools.detect.deep.cascade.CascadePredictor")
        volume = inference.model_channels(self.config.model, baseline, followup)
        if NETWORKS[self.config.model].slices_2d:
            forward = inference.flip_tta(self._forward, (2, 3)) if options.tta else self._forward
            return inference.slice_inference(forward, volume, divisor=self.config.divisor,
                                             batch_size=max(1, options.batch_size * 4), device=self.device,
                                             progress=progress)
        forward = inference.flip_tta(self._forward, (2, 3, 4)) if options.tta else self._forward
        return inference.sliding_window(forward, volume, window=self.config.patch_size, overlap=options.overlap,
                                         batch_size=options.batch_size, device=self.device, progress=progress)

    def predict(self, baseline: np.ndarray, followup: np.ndarray, *, spacing_mm: tuple[float, float, float],
                options: PredictOptions = PredictOptions(),
                progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Probability maps (float32, the input's shape): ``new``, and for CoactSeg ``all_t1``, ``all_t2``."""
        baseline = np.asarray(baseline, dtype=np.float32)
        followup = np.asarray(followup, dtype=np.float32)
        if baseline.shape != followup.shape or baseline.ndim != 3:
            raise ValueError(f"baseline and follow-up must be 3D arrays of one shape, not {baseline.shape} "
                             f"and {followup.shape}")
        native = baseline.shape
        b = inference.normalise(baseline)
        f = inference.normalise(followup)
        if self.config.spacing_mm is not None:
            shape = inference.grid_shape(native, spacing_mm, self.config.spacing_mm)
            b = inference.resample(b, shape, order=1)
            f = inference.resample(f, shape, order=1)
        maps = self.predict_model_grid(b, f, options=options, progress=progress)
        return {name: np.clip(inference.resample(p, native, order=1), 0, 1) for name, p in maps.items()}


#: Post-processing defaults. Threshold 0.5 on the sigmoid output (Dice-trained, paper 002
#: gives no other); components must exceed 4 mm3 (paper 001, Masson et al.: "> 4 mm3";
#: they thresholded nnU-Net's softmax at 0.2, available with --threshold 0.2).
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_LESION_MM3 = 4.0

#: The 2.5D multitask network on thick slices (mstools.acquisition.has_thick_slices): its
#: 1.5 mm slices are interpolated from 3-4 mm ones, which blurs a lesion and lowers its
#: probability. Measured on the 9 thick-grid cases of the 21 validation cases (brain-masked):
#: threshold 0.3 / 0.4 / 0.5 gave lesion F1 0.539 / 0.460 / 0.424, LTPR 0.448 / 0.347 / 0.347, LFPR
#: 0.078 / 0.056 / 0.000. Three of those (xs-xs26-0..2) are in its training set; the other 6 alone:
#: F1 0.531 / 0.463 / 0.454. On thin grids 0.5 stays (12 validation cases:
#: F1 0.584 / 0.584 / 0.573; simulated 1 mm seeds 1000-1009: 0.721 / 0.798 / 0.838). CoactSeg and
#: the U-Net gained nothing on thick grids (F1 0.223 vs 0.219, 0.426 vs 0.421) and keep 0.5.
#: Re-checked with the weights of 2026-12-07 17:35 (trained on none of these backgrounds): the
#: 6 thick real-background validation cases F1 0.564 / 0.479 / 0.424, development patient 01
#: 0.364 / 0.308 / 0.200, 9 simulated clinical pairs (seeds 9100-9108) 0.511 / 0.591 / 0.655.
#: 0.3 stays: the real scans, which it is for, still want it.
THICK_SLICE_THRESHOLD = {"multitask": 0.3}


def default_threshold(model: str, spacing_mm) -> float:
    """The probability threshold of ``model``'s masks on a grid of ``spacing_mm`` when none is given."""
    if has_thick_slices(spacing_mm):
        return THICK_SLICE_THRESHOLD.get(model, DEFAULT_THRESHOLD)
    return DEFAULT_THRESHOLD


def lesion_mask(probability: np.ndarray, *, voxel_volume_mm3: float, threshold: float = DEFAULT_THRESHOLD,
                min_lesion_mm3: float = DEFAULT_MIN_LESION_MM3, connectivity: int = 26) -> np.ndarray:
    """uint8 mask: probability > threshold, keeping 26-connected components larger than ``min_lesion_mm3``."""
    from mstools.lesions import component_sizes, label_components

    labels, count = label_components(np.asarray(probability) > threshold, connectivity=connectivity)
    if count == 0:
        return np.zeros(labels.shape, dtype=np.uint8)
    keep = component_sizes(labels, count) * voxel_volume_mm3 > min_lesion_mm3
    keep[0] = False
    return keep[labels].astype(np.uint8)


def inside_region(maps: dict, region: np.ndarray) -> dict:
    """Each probability map of ``maps`` set to 0 outside the boolean ``region`` (dtype kept): the
    brain voxels both scans imaged.

    Lesions are brain tissue. On development patient 01 (database grid, `benchmarks/real_scans.py`)
    most of the networks' false lesions lay wholly outside the brain mask, in the slices beyond the
    baseline's shorter 2D slab, where the baseline is empty and the follow-up holds scalp; kept
    inside it, false lesions fall from 6 to 1 (coactseg), 26 to 1 (unet) and 8 to 2 (multitask), and
    every true lesion found stays found.
    """
    inside = np.asarray(region, dtype=bool)
    return {name: np.where(inside, p, np.zeros((), dtype=np.asarray(p).dtype)) for name, p in maps.items()}


#: How CoactSeg's time-2 all-lesion map is made. ``head``: the network's own time-2 head
#: (paper 002). ``union``: the time-1 head's map united with the new-lesion map (voxel-wise
#: maximum of the probabilities). Measured on the default weights (3 validation and 6
#: held-out simulated cases, Dice against the true time-2 lesions): head 0.129 / 0.072,
#: union 0.738 / 0.735. The head over-segments two-time-point inputs because the paper's
#: loss supervises it there only inside new lesions (eq. 3). Default: union.
ALL_TIME02_SOURCES = ("union", "head")
DEFAULT_ALL_TIME02 = "union"


def time02_all_lesions(maps: dict, *, source: str = DEFAULT_ALL_TIME02) -> np.ndarray:
    """CoactSeg's time-2 all-lesion probability map from ``maps`` (``new``, ``all_t1``, ``all_t2``)."""
    if source not in ALL_TIME02_SOURCES:
        raise ValueError(f"source must be one of {ALL_TIME02_SOURCES}, not {source!r}")
    if source == "head":
        return maps["all_t2"]
    return np.maximum(maps["all_t1"], maps["new"]).astype(np.float32, copy=False)
