"""Training: mixed two-time-point / single-time-point batches, one step at a time, resumable.

:class:`Trainer` owns the network, the optimiser and the random generators; the
caller decides when to validate and where to save (:meth:`Trainer.state_dict` holds
everything needed to resume exactly). Following paper 002 (CoactSeg,
Implementation Details): every batch mixes ``batch_longitudinal`` two-time-point
samples (new-lesion labels) and ``batch_single`` single-time-point samples
(all-lesion labels, baseline = follow-up, zero difference), drawn by lesion-centred
weighted cropping; Adam; the relation regulariser is switched on (lambda2 = 1) after
``relation_start`` of the iterations (10k of 20k in the paper). The U-Net and the
multitask network learn from the two-time-point samples only (their papers have no
all-lesion head); the multitask network additionally learns to register the
follow-up slice onto the baseline slice (paper 000, eq. 1: L = L_seg + L_reg).
On CUDA, steps run in mixed precision (autocast + gradient scaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mstools.detect.deep import inference
from mstools.detect.deep.augment import AugmentConfig, augment_sample
from mstools.detect.deep.config import ModelConfig, TrainingConfig
from mstools.detect.deep.networks import build_model, network
from mstools.detect.deep.sampling import extract, patch_start

#: Voxels kept around the head's bounding box when cases are cropped for training.
CROP_MARGIN = 4
#: Thickness (voxels) of the slab drawn for a 2.5D sample; its middle slice is used, the
#: rest only gives 3D augmentations (axial thickness) real neighbours.
SLAB = 7


@dataclass
class TrainingCase:
    """One case on the model's grid, cropped to the head: raw images (T, I, J, K), T = 2 or 1."""

    name: str
    images: np.ndarray
    label: np.ndarray          # uint8: new lesions (two time points) or all lesions (one)
    stats: np.ndarray          # (T, 2) foreground mean and std per time point
    foreground: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.foreground = np.flatnonzero(self.label)

    @property
    def longitudinal(self) -> bool:
        return self.images.shape[0] == 2


@dataclass
class ValidationCase:
    """A two-time-point case on the model's grid, normalised, with its new-lesion truth."""

    name: str
    baseline: np.ndarray
    followup: np.ndarray
    truth: np.ndarray
    spacing_mm: tuple[float, float, float]


def _to_model_grid(arrays, spacing_mm, config: ModelConfig, orders):
    if config.spacing_mm is None:
        return [np.asarray(a) for a in arrays]
    shape = inference.grid_shape(np.asarray(arrays[0]).shape, spacing_mm, config.spacing_mm)
    out = []
    for a, order in zip(arrays, orders):
        r = inference.resample(np.asarray(a, dtype=np.float32), shape, order=1)
        out.append((r > 0.5).astype(np.uint8) if order == 0 else r)
    return out


def _head_box(image: np.ndarray) -> tuple[slice, ...]:
    threshold = inference.FOREGROUND_FRACTION * float(np.percentile(image, 99))
    idx = np.argwhere(image > threshold)
    if idx.size == 0:
        return tuple(slice(0, n) for n in image.shape)
    lo = np.maximum(idx.min(0) - CROP_MARGIN, 0)
    hi = np.minimum(idx.max(0) + 1 + CROP_MARGIN, image.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def prepare_case(name: str, images: list[np.ndarray], label: np.ndarray, *, spacing_mm, config: ModelConfig
                 ) -> TrainingCase:
    """Resample to the model grid (labels: linear then > 0.5), crop to the head, record intensity stats."""
    arrays = _to_model_grid([*images, label], spacing_mm, config, [1] * len(images) + [0])
    box = _head_box(arrays[0])
    stack = np.stack([a[box] for a in arrays[:-1]]).astype(np.float32)
    stats = np.array([inference.normalisation_stats(a) for a in arrays[:-1]], dtype=np.float64)
    return TrainingCase(name, stack, (arrays[-1][box] > 0).astype(np.uint8), stats)


def prepare_validation(name: str, baseline: np.ndarray, followup: np.ndarray, truth: np.ndarray, *, spacing_mm,
                       config: ModelConfig) -> ValidationCase:
    b, f, t = _to_model_grid([inference.normalise(baseline), inference.normalise(followup), truth],
                             spacing_mm, config, [1, 1, 0])
    spacing = tuple(float(config.spacing_mm or s) for s in (spacing_mm if config.spacing_mm is None else (1, 1, 1)))
    return ValidationCase(name, b, f, (t > 0).astype(np.uint8), spacing)  # type: ignore[arg-type]


class Trainer:
    """Network + optimiser + generators; :meth:`step` runs one iteration."""

    def __init__(self, model_config: ModelConfig, config: TrainingConfig, longitudinal: list[TrainingCase],
                 single: list[TrainingCase] = (), *, device=None, augment: AugmentConfig = AugmentConfig()):
        import torch

        if not longitudinal:
            raise ValueError("training needs at least one two-time-point case")
        self.network = network(model_config.model)
        mixes_single = self.network.single_timepoint   # CoactSeg (paper 002)
        if mixes_single and config.batch_single > 0 and not single:
            raise ValueError(f"{model_config.model} mixes single-time-point cases into every batch (paper 002); "
                             "give some or set batch_single to 0")
        self.model_config = model_config
        self.config = config
        self.longitudinal = list(longitudinal)
        self.single = list(single) if mixes_single else []
        self.augment = augment
        self.device = device or torch.device("cpu")
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.model = build_model(model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate,
                                          amsgrad=self.network.amsgrad)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.iteration = 0

    # -- sampling --------------------------------------------------------------------------------
    def _sample(self, case: TrainingCase, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        start = patch_start(case.label.shape, patch, self.rng, foreground=case.foreground,
                            max_shift=self.config.max_shift, p_random=self.config.p_random_patch)
        images = extract(case.images, start, patch)
        label = extract(case.label[None], start, patch)
        stats = case.stats
        if not case.longitudinal:
            images = np.concatenate([images, images])
            stats = np.concatenate([stats, stats])
        if self.config.augment:
            return augment_sample(images, label, self.rng, single_timepoint=not case.longitudinal, stats=stats,
                                  config=self.augment)
        norm = (images - stats[:, 0, None, None, None]) / stats[:, 1, None, None, None]
        return norm.astype(np.float32), label

    def sample_batch(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(inputs, labels, number of two-time-point samples first in the batch)."""
        p = self.model_config.patch_size
        name = self.model_config.model
        inputs, labels = [], []
        plan = [self.longitudinal[i] for i in self.rng.integers(len(self.longitudinal), size=self.config.batch_longitudinal)]
        if self.single and self.config.batch_single:
            plan += [self.single[i] for i in self.rng.integers(len(self.single), size=self.config.batch_single)]
        for case in plan:
            if self.network.slices_2d:   # a slice of one of the three orientations
                axis = int(self.rng.integers(3))
                patch = [p, p, p]
                patch[axis] = SLAB
                images, label = self._sample(case, tuple(patch))
                images = np.take(images, SLAB // 2, axis=1 + axis)
                label = np.take(label, SLAB // 2, axis=1 + axis)
            else:
                images, label = self._sample(case, (p, p, p))
            inputs.append(inference.model_channels(name, images[0], images[1]))
            labels.append(label)
        return np.stack(inputs), np.stack(labels).astype(np.float32), self.config.batch_longitudinal

    # -- optimisation ----------------------------------------------------------------------------
    @property
    def relation_start_iteration(self) -> int:
        """First iteration with the relation regulariser: ``relation_start`` x iterations, or,
        once a resumed run had it on already, the iteration it really started at (so that
        resuming with more iterations never switches it off again)."""
        started = getattr(self, "_relation_started_at", None)
        return started if started is not None else math.ceil(self.config.relation_start * self.config.iterations)

    def relation_weight(self) -> float:
        """lambda2 of paper 002: 0 before ``relation_start_iteration``, then ``lambda_relation``."""
        on = self.iteration >= self.relation_start_iteration
        return self.config.lambda_relation if on else 0.0

    def losses(self, outputs, x, y, n_long: int, weights=None) -> dict:
        """The network's training objective (its registry entry's ``loss``) on one batch."""
        return self.network.objective()(outputs, x, y, n_longitudinal=n_long, config=self.config,
                                        relation_weight=self.relation_weight(), weights=weights)

    def step(self) -> dict[str, float]:
        import torch

        self.model.train()
        relation_weight = self.relation_weight()
        x_np, y_np, n_long = self.sample_batch()
        x = torch.from_numpy(x_np).to(self.device)
        y = torch.from_numpy(y_np).to(self.device)
        weights = None
        if self.config.lesion_size_reference > 0:
            from mstools.detect.deep.losses import lesion_size_weights

            weights = torch.from_numpy(lesion_size_weights(y_np, self.config.lesion_size_reference)).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", enabled=self.amp):
            outputs = self.model(x)
        parts = self.losses({k: v.float() for k, v in outputs.items()}, x, y, n_long, weights)
        if self.scaler is not None:
            self.scaler.scale(parts["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            parts["loss"].backward()
            self.optimizer.step()
        self.iteration += 1
        return {k: float(v.detach()) for k, v in parts.items()} | {"relation_weight": relation_weight}

    # -- validation ------------------------------------------------------------------------------
    def validate(self, cases: list[ValidationCase], *, threshold: float = 0.5, overlap: float = 0.5,
                 batch_size: int = 2) -> dict[str, float]:
        """Mean Dice and MSSEG-2 lesion-wise F1 (``mstools.metrics``) over validation cases."""
        from mstools.detect.deep.predictor import PredictOptions
        from mstools.metrics import evaluate_case

        predictor = self.predictor_class(self.model, self.model_config, device=self.device)
        rows = []
        for case in cases:
            prob = self.validation_probability(predictor, case, PredictOptions(overlap=overlap, batch_size=batch_size))
            rows.append(evaluate_case((prob > threshold).astype(np.uint8), case.truth,
                                      affine=np.diag([*case.spacing_mm, 1.0])).metrics)
        self.model.train()

        def mean(key):
            values = [r[key] for r in rows if not (isinstance(r[key], float) and math.isnan(r[key]))]
            return float(np.mean(values)) if values else math.nan

        return {"val_dice": mean("dice"), "val_lesion_f1": mean("lesion_f1"),
                "val_lesion_sensitivity": mean("lesion_sensitivity"), "val_lesion_ppv": mean("lesion_ppv")}

    @property
    def predictor_class(self):
        """The :class:`~mstools.detect.deep.predictor.Predictor` (sub)class that applies this network."""
        from mstools.detect.deep.predictor import Predictor

        return Predictor

    def validation_probability(self, predictor, case: ValidationCase, options) -> np.ndarray:
        """The new-lesion probability of one validation case on the model's grid."""
        return predictor.predict_model_grid(case.baseline, case.followup, options=options)["new"]

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume (copies: later steps do not change it)."""
        import copy

        import torch

        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration, "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "model_config": self.model_config.as_dict(), "training_config": self.config.as_dict(),
                "relation_start_iteration": self.relation_start_iteration})

    def load_state_dict(self, state: dict) -> None:
        import torch

        if state.get("model_config") != self.model_config.as_dict():
            raise ValueError("the checkpoint was written for another model configuration: "
                             f"{state.get('model_config')}")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        started = state.get("relation_start_iteration")
        if started is not None and self.iteration >= int(started):
            self._relation_started_at = int(started)
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
