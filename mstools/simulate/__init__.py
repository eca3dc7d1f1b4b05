"""Realistic longitudinal MS data with ground truth, on the MNI152 anatomy nilearn ships
or on real scans (:mod:`mstools.simulate.real_anatomy`), optionally acquired as clinical
2D multi-slice FLAIR (:mod:`mstools.simulate.acquisition`)."""

from mstools.simulate.acquisition import Acquisition, ProtocolContrast
from mstools.simulate.case import (RawScan, SimulatedCase, SimulationConfig, SingleTimepointCase, simulate_case,
                                   simulate_single_timepoint)

__all__ = ["Acquisition", "ProtocolContrast", "RawScan", "SimulationConfig", "SimulatedCase", "SingleTimepointCase",
           "simulate_case", "simulate_single_timepoint"]
