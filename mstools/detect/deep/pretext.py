"""Self-supervised pretraining by patch position (paper 003, Fenneteau et al., RFIAP 2020).

Paper 003 trains only the encoder of its segmentation network on a pretext task that
needs no annotation: predict where a 3D patch was extracted in its volume (a regression
of the three coordinates), on every training scan, MS or not. The encoder's weights are
then copied into the segmentation network, which learns the lesions with all its layers
free: of their five transfer variants, none frozen ("0CF") was the only one better than
random initialisation on every measure (Dice 67.63 % vs 66.94 %; freezing 1-6 layers
lowered Dice to 66.89-57.93 %), so nothing is frozen here.

What mstools does with it:

* **Positions.** Paper 003's volumes were registered to MNI and resampled to 128^3, so
  raw coordinates meant the same anatomy in every scan. mstools does not register the
  unlabelled scans: a scan is turned to the closest RAS orientation of its affine (array
  axes i, j, k = towards right, anterior, superior), put on the model grid, and a patch's
  label is its centre's place in the **brain's bounding box**, each axis scaled to
  [0, 1] (0 = the box's first voxel, 1 = its last). The box is the brain mask's when one
  is given, otherwise the scan's own foreground (voxels above 10 % of the 99th
  percentile, holes filled: the head of an unstripped scan, the brain of a stripped one).
* **Patches.** Paper 003: 32^3 patches, batches of 12 patches from one scan, each with
  at least 75 % brain; no augmentation. The centre is drawn uniformly in the box and
  redrawn until the patch holds 75 % brain (after ``MAX_DRAWS`` draws the most-brain one
  is kept).
* **Network.** The segmentation network itself (so that every encoder weight has its
  final name and shape), of which only the encoder runs, its deepest features averaged
  over the patch and mapped to three numbers by one linear layer. Loss: mean squared
  error (paper 003 names a multi-output regression, not its loss; MSE is the usual one).
  The model's single-time-point convention feeds one scan: baseline = follow-up
  (and a zero difference for CoactSeg), as for the all-lesion cases of paper 002.
* **Transfer.** :func:`transfer_encoder` copies every encoder weight into a segmentation
  network of the same configuration (all of them must be present with their shapes);
  the decoder keeps its random start.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mstools.detect.deep import inference
from mstools.detect.deep.config import ModelConfig
from mstools.detect.deep.sampling import extract
from mstools.errors import InputError

PRETEXT_FORMAT = "mstools-pretext-weights-1"
#: The only pretext task (paper 003).
TASKS = ("position",)
#: Paper 003: a batch is 12 patches drawn from one scan ...
BATCH = 12
#: ... each with at least 75 % brain.
MIN_BRAIN_FRACTION = 0.75
#: Centre draws before the most-brain patch is kept. Measured on the benchmark's scans on
#: the 1.5 mm grid with 32^3 patches (simulated, cross-sectional and raw longitudinal
#: FLAIRs): 20-34 % of single draws reach 75 % brain, so 20 draws all fail for at most
#: 1.2 % of the patches (0.03-0.2 % on all but the smallest, skull-stripped scan).
MAX_DRAWS = 20
#: Parameter-name prefixes of each network's encoder (the part paper 003 pretrains).
#: The 2.5D multitask network is not pretrained (paper 003's patches are 3D).
ENCODERS: dict[str, tuple[str, ...]] = {"unet": ("encoder.",),
                                        "coactseg": ("backbone.encoder.", "backbone.down.")}


def check_model(model: str) -> None:
    if model not in ENCODERS:
        raise InputError(f"--pretrain position trains a 3D encoder: one of {', '.join(ENCODERS)}, not {model!r}; "
                         "choose --model unet or coactseg")


# -- geometry and labels ----------------------------------------------------------------------------
def canonical(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``image`` turned to the closest RAS orientation of ``affine`` (axes permuted and flipped,
    no resampling) and its voxel size along the new axes."""
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(np.asarray(affine, dtype=np.float64))
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
    out_spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt):
        out_spacing[int(target)] = float(spacing[axis])
    return np.ascontiguousarray(apply_orientation(np.asarray(image), ornt)), tuple(out_spacing)  # type: ignore


def brain_region(image: np.ndarray, brain_mask: np.ndarray | None = None) -> np.ndarray:
    """Where the brain is: the mask when given, else the scan's foreground with its holes filled."""
    from scipy import ndimage

    if brain_mask is not None:
        return np.asarray(brain_mask) > 0
    image = np.asarray(image, dtype=np.float32)
    foreground = image > inference.FOREGROUND_FRACTION * float(np.percentile(image, 99))
    return ndimage.binary_fill_holes(foreground)


def bounding_box(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) voxel of ``region`` along each axis (inclusive)."""
    idx = np.argwhere(region)
    if idx.size == 0:
        raise ValueError("the brain region is empty")
    return idx.min(0), idx.max(0)


def position_label(centre, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A patch centre's place in the box, each axis in [0, 1] (float32)."""
    first, last = (np.asarray(b, dtype=np.float64) for b in box)
    extent = np.maximum(last - first, 1.0)
    return ((np.asarray(centre, dtype=np.float64) - first) / extent).astype(np.float32)


@dataclass
class PretextScan:
    """One unlabelled scan on the model grid, RAS-oriented, normalised; its brain and box."""

    name: str
    image: np.ndarray                      # float32, normalised (foreground mean 0, std 1)
    brain: np.ndarray                      # bool
    box: tuple[np.ndarray, np.ndarray]     # first and last brain voxel per axis
    spacing_mm: tuple[float, float, float]


def prepare_scan(name: str, image: np.ndarray, *, affine: np.ndarray, config: ModelConfig,
                 brain_mask: np.ndarray | None = None) -> PretextScan:
    """A FLAIR (and its brain mask, if any) as a :class:`PretextScan` (inputs not modified)."""
    from mstools.detect.deep.training import _to_model_grid

    scan, spacing = canonical(np.asarray(image, dtype=np.float32), affine)
    arrays = [scan]
    if brain_mask is not None:
        arrays.append(canonical((np.asarray(brain_mask) > 0).astype(np.uint8), affine)[0])
    arrays = _to_model_grid(arrays, spacing, config, [1] + [0] * (len(arrays) - 1))
    brain = brain_region(arrays[0], arrays[1] if brain_mask is not None else None)
    if not brain.any():
        raise InputError(f"{name}: no brain voxel (empty brain mask or constant scan); give a FLAIR with its mask")
    spacing_mm = spacing if config.spacing_mm is None else (config.spacing_mm,) * 3
    return PretextScan(name, inference.normalise(arrays[0]), brain, bounding_box(brain),
                       tuple(float(s) for s in spacing_mm))  # type: ignore[arg-type]


def sample_position(scan: PretextScan, patch: int, rng: np.random.Generator, *,
                    min_brain: float = MIN_BRAIN_FRACTION, max_draws: int = MAX_DRAWS
                    ) -> tuple[tuple[int, int, int], np.ndarray]:
    """(first voxel of a ``patch``^3 patch, its centre's position label): the centre uniform in
    the brain's box, redrawn until the patch is ``min_brain`` brain (the most-brain draw after
    ``max_draws``). Voxels outside the volume count as not brain (and read as 0)."""
    first, last = scan.box
    best, best_fraction = None, -1.0
    for _ in range(max_draws):
        centre = np.array([rng.integers(a, b + 1) for a, b in zip(first, last)])
        start = tuple(int(c - patch // 2) for c in centre)
        fraction = float(extract(scan.brain, start, (patch,) * 3).mean())
        if fraction > best_fraction:
            best, best_fraction = (start, centre), fraction
        if fraction >= min_brain:
            break
    start, centre = best  # type: ignore[misc]
    return start, position_label(centre, scan.box)  # type: ignore[return-value]


# -- the network -------------------------------------------------------------------------------------
def encoder_keys(model_name: str, state_dict: dict) -> list[str]:
    return [k for k in state_dict if k.startswith(ENCODERS[model_name])]


def _encode(network, model_name: str, x):
    """The encoder's deepest features of a segmentation network."""
    if model_name == "unet":
        return network.encoder(x)[-1]
    backbone = network.backbone   # coactseg: VNet encoder path (blocks and down-samplings)
    for n, block in enumerate(backbone.encoder):
        x = block(x)
        if n < len(backbone.down):
            x = backbone.down[n](x)
    return x


def _position_net(config: ModelConfig):
    import torch
    from torch import nn

    from mstools.detect.deep.networks import build_model
    from mstools.detect.deep.unet import widths

    class PositionNet(nn.Module):
        """The segmentation network's encoder + global average pooling + a linear layer -> 3 numbers."""

        def __init__(self):
            super().__init__()
            self.segmentation = build_model(config)
            deepest = widths(config)[-1] if config.model == "unet" else config.base_filters * 2 ** config.levels
            self.position = nn.Linear(deepest, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = _encode(self.segmentation, config.model, x)
            return self.position(features.mean(dim=tuple(range(2, features.ndim))))

    return PositionNet()


class PretextTrainer:
    """The position network, Adam and the generators; :meth:`step` runs one batch (resumable)."""

    def __init__(self, model_config: ModelConfig, scans: list[PretextScan], *, iterations: int,
                 batch: int = BATCH, learning_rate: float, seed: int = 0, device=None):
        import torch

        check_model(model_config.model)
        if not scans:
            raise ValueError("pretraining needs at least one scan")
        self.model_config, self.scans = model_config, list(scans)
        self.iterations, self.batch, self.learning_rate, self.seed = iterations, batch, learning_rate, seed
        self.device = device or torch.device("cpu")
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.model = _position_net(model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=learning_rate)
        self.iteration = 0

    def settings(self) -> dict:
        return {"task": "position", "iterations": self.iterations, "batch": self.batch,
                "learning_rate": self.learning_rate, "seed": self.seed, "min_brain_fraction": MIN_BRAIN_FRACTION}

    def sample_batch(self) -> tuple[np.ndarray, np.ndarray, PretextScan]:
        """(inputs, position labels, the scan): ``batch`` patches of one scan (paper 003)."""
        scan = self.scans[int(self.rng.integers(len(self.scans)))]
        p = self.model_config.patch_size
        inputs, labels = [], []
        for _ in range(self.batch):
            start, label = sample_position(scan, p, self.rng)
            patch = extract(scan.image, start, (p, p, p))
            inputs.append(inference.model_channels(self.model_config.model, patch, patch))
            labels.append(label)
        return np.stack(inputs), np.stack(labels), scan

    def step(self) -> dict[str, float]:
        import torch

        self.model.train()
        x_np, y_np, scan = self.sample_batch()
        x, y = torch.from_numpy(x_np).to(self.device), torch.from_numpy(y_np).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        predicted = self.model(x)
        loss = torch.nn.functional.mse_loss(predicted, y)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        extent_mm = (scan.box[1] - scan.box[0]) * np.asarray(scan.spacing_mm)
        error = (predicted.detach().cpu().numpy() - y_np) * extent_mm
        return {"loss": float(loss.detach()), "position_error_mm": float(np.linalg.norm(error, axis=1).mean())}

    def encoder_state_dict(self) -> dict:
        """The encoder's weights under the segmentation network's names, and the position layer."""
        state = self.model.state_dict()
        seg = {k.removeprefix("segmentation."): v for k, v in state.items() if k.startswith("segmentation.")}
        out = {k: seg[k] for k in encoder_keys(self.model_config.model, seg)}
        out.update({k: v for k, v in state.items() if k.startswith("position.")})
        return out

    def state_dict(self) -> dict:
        import torch

        return copy.deepcopy({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                              "iteration": self.iteration, "numpy_rng": self.rng.bit_generator.state,
                              "torch_rng": torch.get_rng_state(), "model_config": self.model_config.as_dict(),
                              "pretext": self.settings()})

    def load_state_dict(self, state: dict) -> None:
        import torch

        if state.get("model_config") != self.model_config.as_dict():
            raise ValueError(f"the checkpoint was written for another model configuration: {state.get('model_config')}")
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])


# -- encoder files and the transfer ------------------------------------------------------------------
def save_encoder(path: str | os.PathLike, config: ModelConfig, state_dict: dict, *, extra: dict | None = None) -> None:
    """Write a pretrained encoder file atomically (its own format: segment cannot load it by mistake)."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": PRETEXT_FORMAT, "task": "position", "config": config.as_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def is_encoder_file(path: str | os.PathLike) -> bool:
    """True for a file written by :func:`save_encoder` (read without running code)."""
    import torch

    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all: the weight loader reports it
        return False
    return isinstance(payload, dict) and payload.get("format") == PRETEXT_FORMAT


def load_encoder(path: str | os.PathLike) -> tuple[ModelConfig, dict, dict]:
    """(config, encoder state dict, extra) of an encoder file; defects are InputErrors."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: encoder file not found; pretrain one with mstools train --pretrain position")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        config = ModelConfig.from_dict(dict(payload["config"]))
        state = dict(payload["state_dict"])
    except Exception as exc:
        raise InputError(f"{path}: not a readable pretrained encoder ({type(exc).__name__}); "
                         "use an encoder.pt written by mstools train --pretrain position") from None
    if payload.get("format") != PRETEXT_FORMAT:
        raise InputError(f"{path}: not a pretrained encoder (format {payload.get('format')!r})")
    return config, state, dict(payload.get("extra") or {})


def transfer_encoder(network, config: ModelConfig, encoder_config: ModelConfig, encoder_state: dict,
                     *, source: str = "encoder") -> list[str]:
    """Copy a pretrained encoder into ``network`` (a segmentation network of ``config``); the
    names of the copied tensors. The configurations must agree except for the patch size
    (the encoder's weights do not depend on it)."""
    import torch

    mine = {k: v for k, v in config.as_dict().items() if k != "patch_size"}
    theirs = {k: v for k, v in encoder_config.as_dict().items() if k != "patch_size"}
    if mine != theirs:
        raise InputError(f"{source}: encoder pretrained for another configuration ({theirs}) than the one trained "
                         f"({mine}); pretrain with the same --model, --base-filters, --spacing-mm and preset")
    target = network.state_dict()
    wanted = encoder_keys(config.model, target)
    missing = [k for k in wanted if k not in encoder_state]
    wrong = [k for k in wanted if k in encoder_state and tuple(encoder_state[k].shape) != tuple(target[k].shape)]
    if missing or wrong:
        raise InputError(f"{source}: encoder does not match the {config.model} network "
                         f"({len(missing)} weights missing, {len(wrong)} of another shape); pretrain it again")
    with torch.no_grad():
        for k in wanted:
            target[k].copy_(encoder_state[k].to(target[k].dtype))
    return wanted
