"""Realistic longitudinal MS data with ground truth, on the MNI152 anatomy nilearn ships."""

from mstools.simulate.case import (SimulatedCase, SimulationConfig, SingleTimepointCase, simulate_case,
                                   simulate_single_timepoint)

__all__ = ["SimulationConfig", "SimulatedCase", "SingleTimepointCase", "simulate_case",
           "simulate_single_timepoint"]
