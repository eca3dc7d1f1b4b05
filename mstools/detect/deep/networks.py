"""The network registry: a model name -> its network class, inputs, outputs and how it learns.

One table instead of model names tested in many places: configurations, weights, the
predictor (input channels, 2D or 3D windows) and the trainer (sampling, loss, optimiser)
look a network up here. The classes and losses import torch, so they are loaded on first
use (this module stays light).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    """A network and everything that differs between networks: inputs, outputs, loss, sampling."""

    name: str
    module: str          # where the nn.Module lives
    cls: str             # its class, built from a ModelConfig
    outputs: tuple       # the probability maps it predicts ("new" always first)
    single_timepoint: bool   # learns from single-time-point cases too (paper 002)
    difference_input: bool   # a third input channel, follow-up - baseline (paper 002); else (b, f)
    slices_2d: bool          # 2.5D: trained on 2D slices of the three orientations, applied slice by slice
    loss: str                # its training objective in mstools.detect.deep.losses (see ``objective``)
    amsgrad: bool = False    # Adam with AMSGrad (paper 000)
    default_weights: bool = True   # mstools ships trained weights (mstools.models.packaged_model)
    lesion_maps: bool = False      # also reads the all-lesion masks of both visits (the cascade, paper 001)

    def load(self):
        return getattr(importlib.import_module(self.module), self.cls)

    def objective(self):
        """``f(outputs, x, y, *, n_longitudinal, config, relation_weight) -> dict`` with ``loss``."""
        return getattr(importlib.import_module("mstools.detect.deep.losses"), self.loss)


NETWORKS: dict[str, Network] = {n.name: n for n in (
    Network("coactseg", "mstools.detect.deep.coactseg", "CoactSeg", ("new", "all_t1", "all_t2"), single_timepoint=True,
            difference_input=True, slices_2d=False, loss="coactseg_objective"),
    Network("unet", "mstools.detect.deep.unet", "UNet3D", ("new",), single_timepoint=False, difference_input=False,
            slices_2d=False, loss="segmentation_objective"),
    Network("multitask", "mstools.detect.deep.multitask", "MultitaskNet2D", ("new",), single_timepoint=False,
            difference_input=False, slices_2d=True, loss="segmentation_registration_objective", amsgrad=True),
    # FLAIR with any subset of T1/T2 per visit (papers 003 and 004): its own module
    Network("multiseq", "mstools.detect.deep.multisequence", "MultiSequenceUNet", ("new",), single_timepoint=False,
            difference_input=False, slices_2d=False, loss="segmentation_objective", default_weights=False),
    # the U-Net with both visits' all-lesion maps as two more channels (paper 001: McKinley's
    # DeepSCAN, Basaran's cascade); trained by mstools train --model cascade, no default weights
    Network("cascade", "mstools.detect.deep.cascade", "CascadeUNet3D", ("new",), single_timepoint=False,
            difference_input=False, slices_2d=False, loss="segmentation_objective", default_weights=False,
            lesion_maps=True),
)}


def network(name: str) -> Network:
    if name not in NETWORKS:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(NETWORKS)}")
    return NETWORKS[name]


def build_model(config):
    """The torch network of a configuration (:class:`mstools.detect.deep.config.ModelConfig`)."""
    return network(config.model).load()(config)
