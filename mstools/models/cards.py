"""Packaged models and their cards: one home for the LightGBM models and the deep weights.

A model file travels with its card (JSON: features or configuration, training data,
scores, sha256): ``M.card.json`` beside a LightGBM text model ``M``, ``<name>.card.json``
beside a weight file ``<name>.pt``. The packaged ones are in this folder:
``filter/default.txt`` (the learned filter), ``refine/default.txt`` (the refine
classifier) and ``deep/<network>.pt`` (the networks' default weights; their format is
:mod:`mstools.detect.deep.weights`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mstools.errors import InputError

PACKAGED = Path(__file__).resolve().parent
#: kind -> (folder, file suffix) of the packaged models.
KINDS = {"filter": ("filter", ".txt"), "refine": ("refine", ".txt"), "deep": ("deep", ".pt")}


def packaged_model(kind: str, name: str = "default") -> Path:
    """The packaged model of ``kind`` (filter, refine, deep) called ``name`` (for deep: the network)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "deep":
        from mstools.detect.deep import MODELS

        if name not in MODELS:
            raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    folder, suffix = KINDS[kind]
    return PACKAGED / folder / f"{name}{suffix}"


def card_path(model: str | os.PathLike) -> Path:
    """The card of a model file: ``M.card.json``; a weight file ``X.pt`` has ``X.card.json``."""
    p = Path(model)
    return p.with_name(p.name.removesuffix(".pt") + ".card.json")


def read_card(model: str | os.PathLike) -> dict | None:
    """The card of ``model`` if it has one (None otherwise); an unreadable one is an InputError."""
    p = card_path(model)
    if not p.is_file():
        return None
    try:
        with open(p, encoding="utf-8") as handle:
            card = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{p}: unreadable model card ({' '.join(str(exc).split())}); keep the card that "
                         "mstools wrote beside the model, or remove it") from None
    if not isinstance(card, dict):
        raise InputError(f"{p}: not a model card (a JSON object was expected); keep the card that mstools "
                         "wrote beside the model, or remove it")
    return card


def write_card(model: str | os.PathLike, card: dict) -> Path:
    """Write the card of ``model`` atomically (temporary name, then rename)."""
    p = card_path(model)
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(card, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, p)
    return p


def load_card(model: str | os.PathLike, *, command: str) -> dict:
    """The card a model must have; every defect is an InputError naming ``mstools <command>``, its writer."""
    path, card_file = Path(model), card_path(model)
    if not path.is_file():
        raise InputError(f"{path}: model not found; train one with `mstools {command}`")
    if not card_file.is_file():
        raise InputError(f"{card_file}: model card not found; keep the card that `mstools {command}` wrote "
                         "beside the model")
    try:
        return json.loads(card_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable model or card ({exc}); retrain with `mstools {command}`") from None


def _read(path: Path, command: str) -> tuple[str, dict]:
    card = load_card(path, command=command)
    try:
        return path.read_text(), card
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable model or card ({exc}); retrain with `mstools {command}`") from None


def load_refine_model(path: Path):
    """The refine model (:class:`~mstools.candidates.refine.model.RefineModel`), checked against its card."""
    from mstools.candidates.refine.model import RefineModel
    from mstools.candidates.refine.trees import check_model_text
    from mstools.io import sha256

    path = Path(path)
    text, card = _read(path, "refine train")
    if not isinstance(card, dict) or not isinstance(card.get("features"), list) \
            or not isinstance(card.get("sampling", {}), dict):
        raise InputError(f"{card_path(path)}: not a model card (a JSON object with features and sampling was "
                         "expected); keep the card that `mstools refine train` wrote beside the model")
    try:
        check_model_text(text, card, sha256=sha256(path))
        return RefineModel(text, card)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: {exc}; retrain with `mstools refine train`") from None


def load_filter_model(path: Path) -> tuple[str, dict]:
    """The learned filter's LightGBM text and card, checked against this version's features."""
    path = Path(path)
    text, card = _read(path, "filter train")
    threshold = card.get("threshold") if isinstance(card, dict) else None
    if not isinstance(card, dict) or not isinstance(card.get("features"), list) \
            or isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise InputError(f"{card_path(path)}: not a model card (a JSON object with features and a threshold in "
                         "[0, 1] was expected); keep the card that `mstools filter train` wrote beside the model")
    from mstools.candidates.filtering import MODEL_FEATURES
    from mstools.candidates.lesion_classifier import model_feature_names
    from mstools.candidates.refine.trees import check_model_text
    from mstools.io import sha256

    try:  # before LightGBM reads it: a malformed tree crashes LightGBM's reader
        check_model_text(text, card, sha256=sha256(path))
    except ValueError as exc:
        raise InputError(f"{path}: {exc}; retrain with `mstools filter train`") from None
    try:
        names = model_feature_names(text)
    except Exception as exc:
        raise InputError(f"{path}: not a LightGBM model ({str(exc).splitlines()[0]}); retrain with "
                         "`mstools filter train`") from None
    if names != card.get("features") or not set(names) <= set(MODEL_FEATURES):
        raise InputError(f"{path}: the model's features {names} are not this version's candidate features; "
                         "retrain with `mstools filter train`")
    return text, card
