"""Packaged models and their cards (one home for the LightGBM models, issue 14).

A model file ``M`` travels with its card ``M.card.json`` (features, training data,
cross-validated scores, sha256). The refine model and the learned filter ship in
``mstools/models/``; the deep weights and their cards are in :mod:`mstools.deep.cards`.
"""

from __future__ import annotations

import json
from pathlib import Path

from mstools.errors import InputError

MODELS = Path(__file__).resolve().parent / "models"
#: The refine model shipped with mstools (trained by benchmarks/bench_refine.py; its card says on what).
REFINE_DEFAULT = MODELS / "refine" / "default.txt"
#: The learned filter shipped with mstools (benchmarks/train_mixed_domain.py).
FILTER_DEFAULT = MODELS / "filter" / "default.txt"


def card_path(model: Path) -> Path:
    return Path(str(model) + ".card.json")


def _read(path: Path, command: str) -> tuple[str, dict]:
    card_file = card_path(path)
    if not path.is_file():
        raise InputError(f"{path}: model not found; train one with `mstools {command}`")
    if not card_file.is_file():
        raise InputError(f"{card_file}: model card not found; keep the card that `mstools {command}` wrote "
                         "beside the model")
    try:
        card = json.loads(card_file.read_text())
        text = path.read_text()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable model or card ({exc}); retrain with `mstools {command}`") from None
    return text, card


def load_refine_model(path: Path):
    """The refine model (:class:`mstools.refine.model.RefineModel`), checked against its card."""
    from mstools.io import sha256
    from mstools.refine.model import RefineModel
    from mstools.refine.trees import check_model_text

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
    text, card = _read(path, "filter train")
    threshold = card.get("threshold") if isinstance(card, dict) else None
    if not isinstance(card, dict) or not isinstance(card.get("features"), list) \
            or isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise InputError(f"{card_path(path)}: not a model card (a JSON object with features and a threshold in "
                         "[0, 1] was expected); keep the card that `mstools filter train` wrote beside the model")
    from mstools.filtering import MODEL_FEATURES
    from mstools.io import sha256
    from mstools.lesion_classifier import model_feature_names
    from mstools.refine.trees import check_model_text

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
