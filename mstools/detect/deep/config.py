"""Model configurations, written once with the paper each number comes from.

A :class:`ModelConfig` fully determines a network's architecture and how its inputs
are prepared (spacing, normalisation, patch/window size); it is stored inside every
weight file so that a file is enough to rebuild its model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from mstools.detect.deep import MODELS


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input geometry of one learned model.

    ``patch_size`` is the training patch and the inference window (voxels per axis;
    for the 2.5D ``multitask`` model the in-plane size of training slices).
    ``spacing_mm`` is the isotropic grid the model works on: inputs on another grid are
    resampled to it in memory and the outputs brought back to the input's grid
    (``None``: use the input's grid as it is).
    """

    model: str
    base_filters: int
    patch_size: int
    spacing_mm: float | None = None
    norm: str = "batch"            # "batch" (VNet as in paper 002's code) or "instance" (nnU-Net)
    levels: int = 4                # number of down-samplings (paper 002's VNet: 4)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {self.model!r}")
        if self.base_filters < 1:
            raise ValueError("base_filters must be >= 1")
        if self.norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', not {self.norm!r}")
        if self.levels < 1:
            raise ValueError("levels must be >= 1")
        if self.patch_size < 2 ** self.levels or self.patch_size % (2 ** self.levels):
            raise ValueError(f"patch_size must be a multiple of 2**levels = {2 ** self.levels}, "
                             f"not {self.patch_size}")
        if self.norm == "instance" and self.patch_size < 2 ** (self.levels + 1):
            raise ValueError(f"instance normalisation needs at least 2 voxels per axis at the bottleneck: "
                             f"patch_size >= {2 ** (self.levels + 1)}")
        if self.spacing_mm is not None and not self.spacing_mm > 0:
            raise ValueError("spacing_mm must be > 0")

    @property
    def divisor(self) -> int:
        """Every spatial input size must be a multiple of this (2**levels)."""
        return 2 ** self.levels

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(payload) - names
        if unknown:
            raise ValueError(f"unknown model configuration keys {sorted(unknown)}")
        return cls(**payload)


#: Paper 002 (CoactSeg), Implementation Details: VNet with 16 base filters (the VNet of
#: their code), 80^3 patches, 20k iterations, Adam, learning rate 1e-2, batch 4 + 4.
PAPER_CONFIGS: dict[str, ModelConfig] = {
    "coactseg": ModelConfig("coactseg", base_filters=16, patch_size=80, spacing_mm=None, norm="batch", levels=4),
    # The early-fusion 3D U-Net most MSSEG-2 teams used (paper 001, e.g. Masson's nnU-Net:
    # 32 base filters, 5 poolings on 128^3); here 4 poolings on 96^3 patches.
    "unet": ModelConfig("unet", base_filters=32, patch_size=96, spacing_mm=None, norm="instance", levels=4),
    # Paper 000: 2.5D, one model for all three orientations, ~2 M parameters
    # (FC-DenseNet57); here a 2D U-Net encoder with two decoders on 224^2 slices.
    "multitask": ModelConfig("multitask", base_filters=32, patch_size=224, spacing_mm=None, norm="batch", levels=4),
    # Paper 004: nnU-Net blocks, 4 down-samplings, 32-320 channels, one encoder per sequence.
    "multiseq": ModelConfig("multiseq", base_filters=32, patch_size=96, spacing_mm=None, norm="instance", levels=4),
    # Paper 001 (McKinley's DeepSCAN): the U-Net above with the two all-lesion maps as inputs.
    "cascade": ModelConfig("cascade", base_filters=32, patch_size=96, spacing_mm=None, norm="instance", levels=4),
}

#: The reduced configurations of the shipped default weights (trainable on 2 CPU cores
#: in well under an hour, see each model card): 8 base filters, 1.5 mm grid.
SMALL_CONFIGS: dict[str, ModelConfig] = {
    "coactseg": ModelConfig("coactseg", base_filters=8, patch_size=32, spacing_mm=1.5, norm="batch", levels=4),
    "unet": ModelConfig("unet", base_filters=8, patch_size=32, spacing_mm=1.5, norm="instance", levels=4),
    "multitask": ModelConfig("multitask", base_filters=8, patch_size=64, spacing_mm=1.5, norm="batch", levels=4),
    "multiseq": ModelConfig("multiseq", base_filters=8, patch_size=32, spacing_mm=1.5, norm="instance", levels=4),
    # the packaged U-Net's configuration, so that its weights start a cascade (cascade.widen_state)
    "cascade": ModelConfig("cascade", base_filters=8, patch_size=32, spacing_mm=1.5, norm="instance", levels=4),
}


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings. Defaults are paper 002's (Implementation Details)."""

    iterations: int = 20000              # paper 002: 20k iterations
    batch_longitudinal: int = 4          # paper 002: 4 two-time-point samples per batch ...
    batch_single: int = 4                # ... and 4 single-time-point samples
    learning_rate: float = 1e-2          # paper 002: Adam, lr 1e-2
    relation_start: float = 0.5          # paper 002: lambda2 = 0 for the first 10k of 20k iterations, then 1
    lambda_new: float = 1.0              # paper 002 eq. 4: lambda1 = 1
    lambda_relation: float = 1.0         # paper 002 eq. 4: lambda2 = 1 after relation_start
    lambda_smooth: float = 0.01          # paper 000 eq. 2 diffusion weight (VoxelMorph's value for MSE)
    max_shift: int = 10                  # paper 002: patch centre shifted by up to +/-10 voxels
    p_random_patch: float = 0.0          # probability of a random patch even when the case has lesions
    augment: bool = True
    seed: int = 0
    validate_every: int = 250
    checkpoint_every: int = 100
    slices_per_patch: int = 1            # multitask: 2D slices drawn per sampled patch
    # multiseq: probability of dropping each optional sequence (T1, T2) from a training sample.
    # Paper 003 (Fenneteau et al.) drops input sequences at random without a stated rate; 1/2
    # makes the four input subsets of the missing-sequence table (FLAIR; +T1; +T2; all) equally
    # frequent in training. 1.0 trains a FLAIR-only model of the same network.
    sequence_dropout: float = 0.5
    # U-Net / multitask: lesion size reweighting of the loss (paper 001, Nichyporuk et al.;
    # mstools.detect.deep.losses.lesion_size_weights): lesions under this many voxels of a training
    # sample weigh more per voxel; 0 = off (the packaged weights' training, unless their card says).
    lesion_size_reference: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> "TrainingConfig":
        return cls(**{k: v for k, v in payload.items() if k in {f.name for f in fields(cls)}})


#: Learning rates of the default-weight runs: paper 002's 1e-2 for CoactSeg; 1e-3 for the
#: U-Nets (Adam's usual rate; paper 000 used 1e-4 with AMSGrad for 2D, too slow for a
#: short CPU run).
DEFAULT_LEARNING_RATE = {"coactseg": 1e-2, "unet": 1e-3, "multitask": 1e-3, "multiseq": 1e-3, "cascade": 1e-3}
