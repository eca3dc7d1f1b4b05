"""Weight files of the networks: their format, writing, strict loading.

A weight file (``.pt``) is a plain dictionary saved by torch: ``format``, the model
``config`` (:class:`~mstools.detect.deep.config.ModelConfig` as a dict) and the network's
``state_dict``; it is read with ``weights_only=True`` (no code runs on loading) and the
state dict is loaded strictly: a missing or unexpected key is an error. The default
weights are packaged models (``mstools.models.packaged_model("deep", network)``); their
cards (configuration, training data and its generator seeds, iterations, held-out
metrics) are read and written by :mod:`mstools.models.cards`, as the LightGBM models' are.
"""

from __future__ import annotations

import os
from pathlib import Path

from mstools.detect.deep.config import ModelConfig
from mstools.errors import InputError

WEIGHT_FORMAT = "mstools-deep-weights-1"


def save_weights(path: str | os.PathLike, config: ModelConfig, state_dict: dict, *, extra: dict | None = None,
                 half: bool = False) -> None:
    """Write a weight file atomically (temporary name, then rename).

    ``half`` stores floating-point tensors as float16 (half the size; the default weights
    are shipped so to stay under 5 MB); they are cast back to float32 on loading.
    """
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().cpu() for k, v in state_dict.items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"format": WEIGHT_FORMAT, "config": config.as_dict(), "state_dict": state,
                "storage": "float16" if half else "float32", "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def load_weights(path: str | os.PathLike) -> tuple[ModelConfig, dict, dict]:
    """(config, state_dict, extra) of a weight file; every defect is an InputError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: weight file not found; train one with mstools train or omit --weights")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise InputError(f"{path}: not a readable mstools weight file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHT_FORMAT:
        raise InputError(f"{path}: not an mstools weight file (no format {WEIGHT_FORMAT!r}); "
                         "use a model.pt written by mstools train")
    try:
        config = ModelConfig.from_dict(dict(payload["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: invalid model configuration: {exc}") from None
    return config, payload["state_dict"], dict(payload.get("extra") or {})


def as_float32(state_dict: dict) -> dict:
    """Floating-point tensors cast to float32 (packaged weights are stored as float16)."""
    return {k: v.float() if hasattr(v, "is_floating_point") and v.is_floating_point() else v
            for k, v in state_dict.items()}


def build_loaded(config: ModelConfig, state_dict: dict, *, source: str = "weights"):
    """The network with ``state_dict`` loaded strictly (key or shape mismatch -> InputError)."""
    from mstools.detect.deep.networks import build_model

    model = build_model(config)
    state_dict = as_float32(state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise InputError(f"{source}: weights do not match the {config.model} network: {first}") from None
    return model
