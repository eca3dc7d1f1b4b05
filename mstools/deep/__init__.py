"""Learned new-lesion segmentation: CoactSeg, an early-fusion 3D U-Net, a 2.5D multitask network.

Nothing here imports torch at package level (``mstools --help`` must stay light):
the networks, losses, inference and training modules import it themselves.

* :mod:`~mstools.deep.config` -- model configurations (the papers' and the small defaults);
* :mod:`~mstools.deep.networks` -- the network registry (name -> class, outputs);
* :mod:`~mstools.deep.coactseg`, :mod:`~mstools.deep.unet`, :mod:`~mstools.deep.multitask` -- networks;
* :mod:`~mstools.deep.losses` -- Dice losses (paper 002 eq. 2), relation regulariser (eq. 3),
  registration loss (paper 000 eq. 2);
* :mod:`~mstools.deep.sampling` -- lesion-centred patch sampling (paper 002);
* :mod:`~mstools.deep.augment` -- spatial, intensity and image-quality augmentation (paper 001);
* :mod:`~mstools.deep.inference` -- device choice, sliding windows with Gaussian blending, flip TTA;
* :mod:`~mstools.deep.training` -- the training loop (one step at a time, resumable);
* :mod:`~mstools.deep.predictor` -- :class:`~mstools.deep.predictor.Predictor`: load once, predict many;
* :mod:`~mstools.deep.weights` -- weight files (the packaged ones and all cards: :mod:`mstools.models`).
"""

from mstools.deep.networks import NETWORKS

#: The networks, by name (the registry: :mod:`mstools.deep.networks`).
MODELS = tuple(NETWORKS)
