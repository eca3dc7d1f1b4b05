"""Voxel-wise refinement of any detector's candidates by a LightGBM classifier.

Prados & Kanber (paper 001, section 2.2): stage-one candidates, the two normalised
scans and the candidate mask at each voxel and its 6 face neighbours feed a
gradient-boosted tree classifier; its probability map is thresholded at 0.2 and
components smaller than 27 voxels or thinner than 2 voxels are dropped.

Modules: ``features`` (voxel features, named sets), ``sampling`` (which voxels to
train on), ``model`` (train, cross-validate, apply, model card), ``postprocess``
(threshold and component clean-up).
"""
