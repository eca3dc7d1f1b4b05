"""The models of mstools: one trainer for the LightGBM ones, one home for the packaged files and cards.

* :mod:`~mstools.models.boosting` -- the LightGBM trainer the learned filter and refine share;
* :mod:`~mstools.models.cards` -- packaged models (``packaged_model(kind, name)``) and their
  cards (``card_path``, ``read_card``, ``load_card``, ``write_card``), the LightGBM models'
  loaders (``load_filter_model``, ``load_refine_model``).

The packaged files are here: ``filter/default.txt``, ``refine/default.txt`` and
``deep/<network>.pt``, each with its card.
"""

from mstools.models.cards import (card_path, load_card, load_filter_model, load_refine_model, packaged_model,
                                  read_card, write_card)

__all__ = ["card_path", "load_card", "load_filter_model", "load_refine_model", "packaged_model", "read_card",
           "write_card"]
