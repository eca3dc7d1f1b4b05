"""The network registry: a model name -> its network class, its outputs and how it learns.

One table instead of model names tested in many places: configurations, weights, the
predictor and the trainer look a network up here. The classes import torch, so they
are loaded on first use (this module stays light).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    name: str
    module: str          # where the nn.Module lives
    cls: str             # its class, built from a ModelConfig
    outputs: tuple       # the probability maps it predicts ("new" always first)
    single_timepoint: bool   # learns from single-time-point cases too (paper 002)

    def load(self):
        return getattr(importlib.import_module(self.module), self.cls)


NETWORKS: dict[str, Network] = {n.name: n for n in (
    Network("coactseg", "mstools.deep.coactseg", "CoactSeg", ("new", "all_t1", "all_t2"), True),
    Network("unet", "mstools.deep.unet", "UNet3D", ("new",), False),
    Network("multitask", "mstools.deep.multitask", "MultitaskNet2D", ("new",), False),
)}


def network(name: str) -> Network:
    if name not in NETWORKS:
        raise ValueError(f"unknown model {name!r}; one of {', '.join(NETWORKS)}")
    return NETWORKS[name]


def build_model(config):
    """The torch network of a configuration (:class:`mstools.deep.config.ModelConfig`)."""
    return network(config.model).load()(config)
