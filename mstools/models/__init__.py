"""The LightGBM models of mstools: one trainer (:mod:`~mstools.models.boosting`) and the packaged files.

``filter/default.txt`` (the learned filter) and ``refine/default.txt`` (the refine
classifier) ship here, each with its card ``<model>.card.json``.
"""
