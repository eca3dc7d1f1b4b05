"""A new-lesion network that takes FLAIR and any subset of T1 and T2 of each visit.

Paper 004 (Walsh et al., "Mean Imputation"): one encoder per sequence, the features of
an absent sequence replaced by the mean of the features of the sequences that are there
(their eq. 1), the sequences' features concatenated and merged by a convolution before
one decoder. Paper 003 (Fenneteau et al.): during training, input sequences are dropped
at random ("sequence dropout") so that the model copes with any of them missing.

Here, for two visits:

* three encoders (FLAIR, T1, T2; nnU-Net blocks of :mod:`mstools.detect.deep.unet`), each
  applied to each visit alone (weights shared between the visits);
* at every resolution and for each visit, an absent sequence's features are the mean of
  the available ones (eq. 1 of paper 004), the three concatenated and merged by a 1x1x1
  convolution. Paper 004 merges at the bottleneck only and takes the skips from its main
  sequence, against residual misalignment of spinal-cord sequences; here the sequences
  are resampled onto the FLAIR's grid (simulated: the same grid; open_ms_data: through
  the database's intra-study transforms), so every skip carries all of them;
* the two visits' merged features concatenated and merged by a 1x1x1 convolution, then
  the U-Net decoder: new-lesion logits.

FLAIR is required at both visits (the model is a FLAIR new-lesion model); T1 and T2 are
optional and may differ between visits. Input channels, in :data:`CHANNELS` order:
FLAIR, T1, T2, each (baseline, follow-up); an input of 2 channels is FLAIR alone (what the
other networks' generic code passes). ``available`` (B, 6) says which channels are real.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mstools.case_layout import OPTIONAL_SEQUENCES
from mstools.detect.deep.config import ModelConfig, TrainingConfig
from mstools.detect.deep.training import Trainer, TrainingCase, prepare_case
from mstools.detect.deep.unet import Decoder, Encoder, widths

OUTPUTS = ("new",)
#: Prior probability of a new-lesion voxel in a training patch, for the output bias at
#: initialisation: 1 %, Lin et al.'s value (their pi = 0.01); a 32^3 patch on the 1.5 mm
#: grid holds 3-120 voxels of a simulated new lesion of 10-400 mm3 (0.01-0.4 %).
LESION_PRIOR = 0.01
#: Sequences in input order; FLAIR always first and required, then the case folder's optional ones.
SEQUENCES = ("flair", *OPTIONAL_SEQUENCES)
#: Input channels: each sequence's baseline then follow-up.
CHANNELS = tuple((s, v) for s in SEQUENCES for v in (0, 1))

#: Probability that training drops each optional sequence (paper 003's sequence dropout;
#: the value and its reason: :class:`mstools.detect.deep.config.TrainingConfig`).
SEQUENCE_DROPOUT = TrainingConfig.sequence_dropout


def availability(present: dict | None = None, batch: int = 1) -> torch.Tensor:
    """(batch, 6) bool: ``present`` maps (sequence, visit) -> bool; FLAIR is always there."""
    row = [s == "flair" or bool((present or {}).get((s, v), False)) for s, v in CHANNELS]
    return torch.tensor([row] * batch, dtype=torch.bool)


class MultiSequenceUNet(nn.Module):
    """Per-sequence encoders with mean-filled absent sequences (paper 004), one decoder."""

    channels_in = len(CHANNELS)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w = widths(config)
        self.encoders = nn.ModuleList(Encoder(1, w, config.norm) for _ in SEQUENCES)
        self.merge_sequences = nn.ModuleList(nn.Conv3d(len(SEQUENCES) * c, c, 1) for c in w)
        self.merge_visits = nn.ModuleList(nn.Sequential(nn.Conv3d(2 * c, c, 1), nn.LeakyReLU(0.01, inplace=True))
                                          for c in w)
        self.decoder = Decoder(w, 1, config.norm)
        # Output bias at the log-odds of a rare class (Lin et al.'s prior initialisation,
        # RetinaNet): the default U-Net spends its first ~700 iterations learning the
        # background (training curve of the packaged unet.card.json: BCE 0.51 -> 0.04 while
        # the Dice loss stays > 0.96), which a CPU run of a few hundred iterations cannot spare.
        nn.init.constant_(self.decoder.out.bias, math.log(LESION_PRIOR / (1 - LESION_PRIOR)))

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if x.shape[1] == 2:      # FLAIR alone
            x = torch.cat([x, torch.zeros_like(x).repeat(1, 2, 1, 1, 1)], dim=1)
            if available is None:
                available = availability(batch=x.shape[0]).to(x.device)
        if x.shape[1] != self.channels_in:
            raise ValueError(f"expected {self.channels_in} input channels (FLAIR, T1, T2 of two visits), "
                             f"not {x.shape[1]}")
        batch = x.shape[0]
        if available is None:
            available = torch.ones(batch, self.channels_in, dtype=torch.bool, device=x.device)
        available = available.to(x.device).bool()
        if not bool(available[:, :2].all()):
            raise ValueError("FLAIR of both visits is required")
        levels = len(self.merge_sequences)
        # features[level][visit]: (B, S, C, ...) and which of them are real
        merged_visits = []
        for visit in (0, 1):
            per_sequence = [[None] * len(SEQUENCES) for _ in range(levels)]
            for s, encoder in enumerate(self.encoders):
                have = available[:, 2 * s + visit]
                index = torch.nonzero(have).flatten()
                if index.numel() == 0:
                    continue
                outs = encoder(x[index, 2 * s + visit:2 * s + visit + 1])
                for level, out in enumerate(outs):
                    if index.numel() == batch:
                        per_sequence[level][s] = out
                    else:
                        full = out.new_zeros((batch, *out.shape[1:]))
                        per_sequence[level][s] = full.index_copy(0, index, out)
            mask = available[:, visit::2].float()                     # (B, S)
            fused = []
            for level in range(levels):
                template = next(f for f in per_sequence[level] if f is not None)
                stack = torch.stack([f if f is not None else torch.zeros_like(template)
                                     for f in per_sequence[level]], dim=1)   # (B, S, C, ...)
                m = mask.view(batch, len(SEQUENCES), *([1] * (stack.dim() - 2)))
                mean = (stack * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)   # paper 004, eq. 1
                filled = torch.where(m > 0, stack, mean)
                fused.append(self.merge_sequences[level](filled.flatten(1, 2)))
            merged_visits.append(fused)
        skips = [self.merge_visits[level](torch.cat([merged_visits[0][level], merged_visits[1][level]], dim=1))
                 for level in range(levels)]
        return {"new": self.decoder(skips)}


# --------------------------------------------------------------------------- training


def drop_sequences(available: np.ndarray, rng: np.random.Generator, p_drop: float) -> np.ndarray:
    """Sequence dropout (paper 003): each optional sequence a case has is removed at both
    visits with probability ``p_drop``; FLAIR stays."""
    out = np.array(available, dtype=bool, copy=True)
    for s in range(1, len(SEQUENCES)):
        if rng.random() < p_drop:
            out[2 * s:2 * s + 2] = False
    return out


@dataclass
class MultiSequenceCase(TrainingCase):
    """A two-time-point training case with its six channels (:data:`CHANNELS`; absent ones
    zero) and which of them are real."""

    available: np.ndarray = None  # (6,) bool

    @property
    def longitudinal(self) -> bool:
        return True


class MultiSequenceTrainer(Trainer):
    """The shared training loop (:class:`mstools.detect.deep.training.Trainer`) with batches
    that carry each sample's sequences after sequence dropout (``config.sequence_dropout``, paper 003).
    Validation cases (``--val``) are scored on FLAIR alone (the shared validation)."""

    def __init__(self, model_config, config, cases, single=(), *, device=None, **kwargs):
        if not 0 <= config.sequence_dropout <= 1:
            raise ValueError(f"sequence dropout must lie in [0, 1], not {config.sequence_dropout}")
        super().__init__(model_config, config, cases, (), device=device, **kwargs)
        self.p_drop = config.sequence_dropout
        self._available = None
        forward = self.model.forward

        def with_availability(x, available=None):   # the step's model(x) gets the batch's sequences
            if available is None and self._available is not None and self.model.training:
                available = torch.from_numpy(self._available).to(x.device)
            return forward(x, available)

        self.model.forward = with_availability

    def sample_batch(self):
        p = self.model_config.patch_size
        inputs, labels, masks = [], [], []
        plan = [self.longitudinal[i] for i in self.rng.integers(len(self.longitudinal),
                                                                size=self.config.batch_longitudinal)]
        for case in plan:
            images, label = self._sample(case, (p, p, p))
            have = drop_sequences(case.available, self.rng, self.p_drop)
            inputs.append(np.where(have[:, None, None, None], images, 0).astype(np.float32))
            labels.append(label)
            masks.append(have)
        self._available = np.stack(masks)
        return np.stack(inputs), np.stack(labels).astype(np.float32), len(plan)


def prepare_multisequence_case(name: str, flair: tuple, label: np.ndarray, *, spacing_mm, config: ModelConfig,
                               t1: tuple = (None, None), t2: tuple = (None, None)):
    """A two-time-point training case with whichever T1/T2 it has (None: absent), on the model grid."""
    present = [flair[0], flair[1], t1[0], t1[1], t2[0], t2[1]]
    available = np.array([a is not None for a in present])
    zeros = np.zeros_like(np.asarray(flair[0], dtype=np.float32))
    case = prepare_case(name, [a if a is not None else zeros for a in present], label, spacing_mm=spacing_mm,
                        config=config)
    case.stats[~available] = (0.0, 1.0)
    return MultiSequenceCase(case.name, case.images, case.label, case.stats, available=available)


# --------------------------------------------------------------------------- inference


def predict_sequences(predictor, flair: tuple, *, spacing_mm, t1: tuple = (None, None), t2: tuple = (None, None),
                      options=None, progress=None) -> dict:
    """New-lesion probabilities (float32, the input's shape) of a loaded multi-sequence
    :class:`mstools.detect.deep.predictor.Predictor` from the FLAIRs (baseline, follow-up) and
    whichever T1/T2 of each visit are given (None: absent), all on the FLAIRs' grid."""
    from mstools.detect.deep import inference
    from mstools.detect.deep.predictor import PredictOptions

    options = options or PredictOptions()
    images = [flair[0], flair[1], t1[0], t1[1], t2[0], t2[1]]
    native = np.asarray(flair[0]).shape
    for image in images:
        if image is not None and np.asarray(image).shape != native:
            raise ValueError(f"every sequence must be on the FLAIR's grid: shape {np.asarray(image).shape} "
                             f"vs {native}")
    config = predictor.config
    shape = native if config.spacing_mm is None else inference.grid_shape(native, spacing_mm, config.spacing_mm)
    channels = []
    for image in images:
        if image is None:
            channels.append(np.zeros(shape, dtype=np.float32))
            continue
        normalised = inference.normalise(np.asarray(image, dtype=np.float32))
        channels.append(normalised if config.spacing_mm is None else inference.resample(normalised, shape, order=1))
    available = torch.tensor([image is not None for image in images], dtype=torch.bool, device=predictor.device)
    model = predictor.model

    def forward(x):
        autocast = predictor.device.type == "cuda"
        with torch.autocast("cuda", enabled=autocast):
            out = model(x, available.expand(x.shape[0], -1))
        return {"new": torch.sigmoid(out["new"].float())}

    if options.tta:
        forward = inference.flip_tta(forward, (2, 3, 4))
    maps = inference.sliding_window(forward, np.stack(channels), window=config.patch_size, overlap=options.overlap,
                                    batch_size=options.batch_size, device=predictor.device, progress=progress)
    return {name: np.clip(inference.resample(p, native, order=1), 0, 1) for name, p in maps.items()}
