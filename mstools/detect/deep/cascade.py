"""The all-lesion -> new-lesion cascade for the early-fusion U-Net (paper 001: McKinley et al.'s
DeepSCAN feeds its new-lesion network four channels, both FLAIRs and both time points'
lesion maps; Basaran et al. feed the difference of the two maps).

:class:`CascadeUNet3D` is :class:`~mstools.detect.deep.unet.UNet3D` with four input channels
(baseline, follow-up, all lesions at baseline, all lesions at follow-up); the maps are masks
(CoactSeg's heads or a user's) brought to the model grid (linear, then > 0.5), not normalised
(as McKinley's masks). :func:`widen_state` starts it from trained two-channel U-Net weights,
the maps' first-layer weights at 0, so that it starts as the plain U-Net does.
:class:`CascadeTrainer` draws the same patches and augmentations as
:class:`~mstools.detect.deep.training.Trainer` for the same seed (the maps move with the labels:
spatial changes only). :class:`CascadePredictor` applies a model to a case.

The network is the registry's ``cascade`` (:mod:`mstools.detect.deep.networks`): ``mstools train
--model cascade --lesions SOURCE`` trains it, ``mstools segment --model cascade --lesions SOURCE``
applies it, and ``mstools run`` can run it in its segment stage. Measured in
``benchmarks/unet_cascade.py`` (README, "The all-lesion -> new-lesion cascade").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mstools.detect.deep import inference
from mstools.detect.deep.augment import augment_sample
from mstools.detect.deep.config import ModelConfig
from mstools.detect.deep.predictor import PredictOptions, Predictor
from mstools.detect.deep.sampling import extract, patch_start
from mstools.detect.deep.training import TrainingCase, Trainer, ValidationCase, _head_box, _to_model_grid
from mstools.detect.deep.unet import UNet3D

#: The registry's name of the network (:data:`mstools.detect.deep.networks.NETWORKS`).
MODEL = "cascade"

#: The first convolution, whose input channels the maps widen (nnU-Net block of UNet3D).
FIRST_CONV = "encoder.stages.0.0.weight"


class CascadeUNet3D(UNet3D):
    """Four channels in (baseline, follow-up, all-lesion baseline, all-lesion follow-up)."""

    channels_in = 4


def widen_state(state: dict) -> dict:
    """Two-channel U-Net weights for :class:`CascadeUNet3D`: the maps' first-layer weights are 0
    (ValueError for weights whose first layer does not take the U-Net's two channels)."""
    import torch

    out = dict(state)
    if FIRST_CONV not in state:
        raise ValueError(f"no {FIRST_CONV}: not the weights of a U-Net")
    weight = state[FIRST_CONV]
    if weight.shape[1] != UNet3D.channels_in:
        raise ValueError(f"{FIRST_CONV} has {weight.shape[1]} input channels, not {UNet3D.channels_in}")
    extra = torch.zeros((weight.shape[0], CascadeUNet3D.channels_in - weight.shape[1], *weight.shape[2:]),
                        dtype=weight.dtype)
    out[FIRST_CONV] = torch.cat([weight, extra], dim=1)
    return out


def _check_map_shapes(maps, baseline: np.ndarray) -> None:
    """ValueError unless every all-lesion map has the scans' shape."""
    for m in maps:
        if np.asarray(m).shape != np.asarray(baseline).shape:
            raise ValueError(f"an all-lesion map of shape {np.asarray(m).shape} for scans of "
                             f"{np.asarray(baseline).shape}")


def maps_on_model_grid(maps, spacing_mm, config: ModelConfig) -> list[np.ndarray]:
    """Both all-lesion masks (on the scans' grid) on the model's grid: linear, then > 0.5 (uint8)."""
    on_grid = _to_model_grid([np.asarray(m, dtype=np.float32) for m in maps], spacing_mm, config, [1, 1])
    return [(m > 0.5).astype(np.uint8) for m in on_grid]


@dataclass
class CascadeCase(TrainingCase):
    """A two-time-point training case with its all-lesion maps (2, I, J, K) uint8, same crop."""

    maps: np.ndarray = None  # type: ignore[assignment]


def prepare_cascade_case(name: str, baseline: np.ndarray, followup: np.ndarray, label: np.ndarray,
                         maps: tuple[np.ndarray, np.ndarray], *, spacing_mm, config: ModelConfig) -> CascadeCase:
    """As :func:`mstools.detect.deep.training.prepare_case`, with the maps on the same grid and crop."""
    _check_map_shapes(maps, baseline)
    arrays = _to_model_grid([baseline, followup, label], spacing_mm, config, [1, 1, 0])
    on_grid = maps_on_model_grid(maps, spacing_mm, config)
    box = _head_box(arrays[0])
    stack = np.stack([a[box] for a in arrays[:2]]).astype(np.float32)
    stats = np.array([inference.normalisation_stats(a) for a in arrays[:2]], dtype=np.float64)
    return CascadeCase(name, stack, (arrays[2][box] > 0).astype(np.uint8), stats,
                       maps=np.stack([m[box] for m in on_grid]))


@dataclass
class CascadeValidationCase(ValidationCase):
    """A validation case with its all-lesion maps on the model's grid (2, I, J, K) uint8."""

    maps: np.ndarray = None  # type: ignore[assignment]


def prepare_cascade_validation(name: str, baseline: np.ndarray, followup: np.ndarray, truth: np.ndarray,
                               maps: tuple[np.ndarray, np.ndarray], *, spacing_mm,
                               config: ModelConfig) -> CascadeValidationCase:
    """As :func:`mstools.detect.deep.training.prepare_validation`, with the maps on the same grid."""
    from mstools.detect.deep.training import prepare_validation

    _check_map_shapes(maps, baseline)
    case = prepare_validation(name, baseline, followup, truth, spacing_mm=spacing_mm, config=config)
    return CascadeValidationCase(case.name, case.baseline, case.followup, case.truth, case.spacing_mm,
                                 maps=np.stack(maps_on_model_grid(maps, spacing_mm, config)))


class CascadeTrainer(Trainer):
    """:class:`Trainer` of a :class:`CascadeUNet3D` on :class:`CascadeCase` s (two-time-point only).

    ``init_state``: two-channel U-Net weights to start from (:func:`widen_state`)."""

    def __init__(self, model_config: ModelConfig, config, longitudinal: list[CascadeCase], single=(), *,
                 device=None, init_state: dict | None = None, **kwargs):
        if model_config.model != MODEL:
            raise ValueError(f"the cascade trains the registry's {MODEL!r} network, not {model_config.model!r}")
        if any(getattr(case, "maps", None) is None for case in longitudinal):
            raise ValueError("every cascade training case needs its all-lesion maps (prepare_cascade_case)")
        super().__init__(model_config, config, longitudinal, (), device=device, **kwargs)
        if init_state is not None:
            self.model.load_state_dict(widen_state(init_state), strict=True)

    def _sample(self, case: CascadeCase, patch):
        start = patch_start(case.label.shape, patch, self.rng, foreground=case.foreground,
                            max_shift=self.config.max_shift, p_random=self.config.p_random_patch)
        images = extract(case.images, start, patch)
        labels = extract(np.concatenate([case.label[None], case.maps]), start, patch)
        if self.config.augment:
            images, labels = augment_sample(images, labels, self.rng, single_timepoint=False, stats=case.stats,
                                            config=self.augment)
        else:
            images = ((images - case.stats[:, 0, None, None, None]) / case.stats[:, 1, None, None, None])
        return np.concatenate([images, labels[1:].astype(np.float32)]).astype(np.float32), labels[:1]

    def sample_batch(self):
        p = self.model_config.patch_size
        plan = [self.longitudinal[i]
                for i in self.rng.integers(len(self.longitudinal), size=self.config.batch_longitudinal)]
        inputs, labels = zip(*(self._sample(case, (p, p, p)) for case in plan))
        return np.stack(inputs), np.stack(labels).astype(np.float32), self.config.batch_longitudinal


    def validation_probability(self, predictor, case: CascadeValidationCase, options: PredictOptions) -> np.ndarray:
        return predictor.predict_model_grid(case.baseline, case.followup, case.maps, options=options)["new"]

    @property
    def predictor_class(self):
        return CascadePredictor


class CascadePredictor(Predictor):
    """A :class:`CascadeUNet3D` applied to a case with its all-lesion maps."""

    def predict_model_grid(self, baseline: np.ndarray, followup: np.ndarray, maps=None, *,
                           options: PredictOptions = PredictOptions(), progress=None) -> dict[str, np.ndarray]:
        """Probabilities for two normalised volumes and both maps (uint8), all on the model's grid."""
        if maps is None or len(maps) != 2 or any(np.shape(m) != np.shape(baseline) for m in maps):
            raise ValueError("the cascade needs both all-lesion maps on the scans' grid")
        volume = np.stack([baseline, followup, *maps]).astype(np.float32)
        forward = inference.flip_tta(self._forward, (2, 3, 4)) if options.tta else self._forward
        return inference.sliding_window(forward, volume, window=self.config.patch_size, overlap=options.overlap,
                                         batch_size=options.batch_size, device=self.device, progress=progress)

    def predict(self, baseline: np.ndarray, followup: np.ndarray, maps=None, *, spacing_mm,
                options: PredictOptions = PredictOptions(), progress=None) -> dict[str, np.ndarray]:
        """The new-lesion probability (float32, the input's shape) of a pair and its (baseline,
        follow-up) all-lesion maps, all on one grid."""
        baseline = np.asarray(baseline, dtype=np.float32)
        followup = np.asarray(followup, dtype=np.float32)
        if maps is None or any(np.asarray(m).shape != baseline.shape for m in maps) or followup.shape != baseline.shape:
            raise ValueError("the cascade needs the scans and both all-lesion maps on one grid")
        native = baseline.shape
        b, f = inference.normalise(baseline), inference.normalise(followup)
        if self.config.spacing_mm is not None:
            shape = inference.grid_shape(native, spacing_mm, self.config.spacing_mm)
            b, f = (inference.resample(a, shape, order=1) for a in (b, f))
        out = self.predict_model_grid(b, f, maps_on_model_grid(maps, spacing_mm, self.config), options=options,
                                      progress=progress)
        return {name: np.clip(inference.resample(p, native, order=1), 0, 1) for name, p in out.items()}
