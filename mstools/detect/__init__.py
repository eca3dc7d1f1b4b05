"""The detectors: each finds candidate new lesions in a baseline/follow-up pair.

* :mod:`~mstools.detect.subtraction` -- the subtraction image and its candidates
  (Prados & Kanber, La Rosa et al., Hamzaoui et al.);
* :mod:`~mstools.detect.registration` -- registration-based detection with elastix
  (displacement, Jacobian, registered subtraction);
* :mod:`~mstools.detect.deep` -- learned segmentation (CoactSeg, a 3D U-Net, a 2.5D
  multitask network).

Each writes the detector outputs of :mod:`mstools.detections` through its job
(:mod:`mstools.jobs`); the candidates are then post-processed by :mod:`mstools.candidates`.
Nothing is imported here, so that importing one detector stays light.
"""
