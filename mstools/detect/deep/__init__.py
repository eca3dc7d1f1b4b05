"""Learned new-lesion segmentation: CoactSeg, an early-fusion 3D U-Net, a 2.5D multitask network.

Nothing here imports torch at package level (``mstools --help`` must stay light):
the networks, losses, inference and training modules import it themselves.

* :mod:`~mstools.detect.deep.config` -- model configurations (the papers' and the small defaults);
* :mod:`~mstools.detect.deep.networks` -- the network registry (name -> class, outputs);
* :mod:`~mstools.detect.deep.coactseg`, :mod:`~mstools.detect.deep.unet`,
  :mod:`~mstools.detect.deep.multitask` -- networks;
* :mod:`~mstools.detect.deep.losses` -- Dice losses (paper 002 eq. 2), relation regulariser (eq. 3),
  registration loss (paper 000 eq. 2);
* :mod:`~mstools.detect.deep.sampling` -- lesion-centred patch sampling (paper 002);
* :mod:`~mstools.detect.deep.augment` -- spatial, intensity and image-quality augmentation (paper 001);
* :mod:`~mstools.detect.deep.inference` -- device choice, sliding windows with Gaussian blending, flip TTA;
* :mod:`~mstools.detect.deep.training` -- the training loop (one step at a time, resumable);
* :mod:`~mstools.detect.deep.pretext` -- self-supervised pretraining by patch position (paper 003);
* :mod:`~mstools.detect.deep.predictor` -- :class:`~mstools.detect.deep.predictor.Predictor`: load once, predict many;
* :mod:`~mstools.detect.deep.weights` -- weight files (the packaged ones and all cards: :mod:`mstools.models`).
"""

from mstools.detect.deep.networks import NETWORKS

#: The networks, by name (the registry: :mod:`mstools.detect.deep.networks`).
MODELS = tuple(NETWORKS)
