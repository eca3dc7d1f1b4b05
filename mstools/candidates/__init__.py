"""Candidate post-processing: what follows a detector, for any detector's candidates.

* :mod:`~mstools.candidates.filtering` -- lesion-level features and La Rosa et al.'s
  rules (or the learned filter, :mod:`~mstools.candidates.lesion_classifier`);
* :mod:`~mstools.candidates.refine` -- voxel-wise LightGBM refinement (Prados & Kanber).

Both learned models are trained by :mod:`mstools.models.boosting`. Nothing is imported
here, so that importing one stays light.
"""
