"""elastix parameter maps: the defaults, reading user files, validating them.

A parameter map is a ``dict`` from elastix parameter name to a tuple of strings, as
the elastix Python API and the ``(Name value value ...)`` text files hold them. The
defaults are elastix's own default maps for ``rigid``, ``affine`` and ``bspline``
(itk-elastix 0.25, ``ParameterObject.GetDefaultParameterMap(name, 3)``), written out
here so that they are visible, testable without itk, and changed in one place, with
the settings we measured on simulated pairs (see ``REGISTRATION_DEFAULTS``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

ParameterMap = dict[str, tuple[str, ...]]

#: Stages run by default, in order (the issue: rigid, affine and B-spline).
STAGES = ("rigid", "affine", "bspline")

#: Transforms a user map may name (elastix component names).
KNOWN_TRANSFORMS = ("EulerTransform", "SimilarityTransform", "AffineTransform", "AffineDTITransform",
                    "BSplineTransform", "RecursiveBSplineTransform", "TranslationTransform",
                    "BSplineStackTransform", "SplineKernelTransform")

#: Transforms that keep straight lines straight (the "affine-only" part of a chain).
LINEAR_TRANSFORMS = ("EulerTransform", "SimilarityTransform", "AffineTransform", "AffineDTITransform",
                     "TranslationTransform")

#: Parameters every map must name.
REQUIRED = ("Transform", "Metric", "Registration", "Optimizer")


@dataclass(frozen=True)
class RegistrationSettings:
    """The few numbers that matter, chosen by measurement (benchmarks/bench_register.py).

    * ``resolutions``: 3 pyramid levels per stage, elastix's default (kept, not tuned).
    * ``linear_iterations`` / ``bspline_iterations``: 250 per level (elastix: 256).
    * ``spatial_samples``: 2048 random samples per iteration (elastix's default;
      8192 did not help: same correlation, 2x the time, one 2 mm pair).
    * ``grid_spacing_mm``: final B-spline control-point spacing. elastix's default is
      10 mm; smaller is more flexible and can shrink a new lesion away, larger is
      stiffer. Measured on 6 simulated 2 mm pairs (benchmarks/bench_register.py, 28 new
      lesions, MSSEG-2 rule, threshold 1.6): 10 mm detected 14/28 with 62 false-positive
      lesions and folded 0.005 % of the brain (it shrinks new lesions away); 20 mm
      detected 16/28 with 53 and did not fold; 40 mm 16/28 with 52 but hardly deforms
      (volume change 0.99-1.01 inside enlarging lesions, vs 1.00-1.13 at 20 mm).
      Default: 20 mm.
    """

    resolutions: int = 3
    linear_iterations: int = 250
    bspline_iterations: int = 250
    spatial_samples: int = 2048
    grid_spacing_mm: float = 20.0
    bending_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.resolutions <= 6:
            raise ValueError(f"resolutions must be 1..6, not {self.resolutions}")
        for name in ("linear_iterations", "bspline_iterations", "spatial_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be at least 1, not {getattr(self, name)}")
        if not (math.isfinite(self.grid_spacing_mm) and self.grid_spacing_mm > 0):
            raise ValueError(f"grid spacing must be a positive number of mm, not {self.grid_spacing_mm}")
        if not (math.isfinite(self.bending_weight) and self.bending_weight >= 0):
            raise ValueError(f"bending weight must be >= 0, not {self.bending_weight}")


_COMMON: ParameterMap = {
    "AutomaticParameterEstimation": ("true",),
    "CheckNumberOfSamples": ("true",),
    "DefaultPixelValue": ("0",),
    "FinalBSplineInterpolationOrder": ("3",),
    "FixedImagePyramid": ("FixedSmoothingImagePyramid",),
    "MovingImagePyramid": ("MovingSmoothingImagePyramid",),
    "ImageSampler": ("RandomCoordinate",),
    "Interpolator": ("LinearInterpolator",),
    "MaximumNumberOfSamplingAttempts": ("8",),
    "Metric": ("AdvancedMattesMutualInformation",),
    "NewSamplesEveryIteration": ("true",),
    "NumberOfSamplesForExactGradient": ("4096",),
    "Optimizer": ("AdaptiveStochasticGradientDescent",),
    "Registration": ("MultiResolutionRegistration",),
    "ResampleInterpolator": ("FinalBSplineInterpolator",),
    "Resampler": ("DefaultResampler",),
    "ResultImageFormat": ("nii",),
    "WriteIterationInfo": ("false",),
    "WriteResultImage": ("false",),   # mstools warps with the displacement field itself
}


def default_maps(settings: RegistrationSettings = RegistrationSettings(),
                 stages: Sequence[str] = STAGES) -> list[ParameterMap]:
    """elastix's default maps for ``stages`` with ``settings`` applied."""
    maps = []
    for stage in stages:
        m = dict(_COMMON)
        m["NumberOfResolutions"] = (str(settings.resolutions),)
        m["NumberOfSpatialSamples"] = (str(settings.spatial_samples),)
        if stage in ("rigid", "affine"):
            m["Transform"] = ("EulerTransform",) if stage == "rigid" else ("AffineTransform",)
            m["AutomaticScalesEstimation"] = ("true",)
            m["MaximumNumberOfIterations"] = (str(settings.linear_iterations),)
        elif stage == "bspline":
            m["Transform"] = ("BSplineTransform",)
            m["FinalGridSpacingInPhysicalUnits"] = (_number(settings.grid_spacing_mm),)
            # elastix's default schedule: 2, sqrt(2), 1 times the final spacing, trimmed
            # or extended to the number of resolutions.
            schedule = [2.0 ** (0.5 * n) for n in range(settings.resolutions - 1, -1, -1)]
            m["GridSpacingSchedule"] = tuple(_number(s) for s in schedule)
            m["MaximumNumberOfIterations"] = (str(settings.bspline_iterations),)
            if settings.bending_weight > 0:
                m["Registration"] = ("MultiMetricMultiResolutionRegistration",)
                m["Metric"] = ("AdvancedMattesMutualInformation", "TransformBendingEnergyPenalty")
                m["Metric0Weight"] = ("1.0",)
                m["Metric1Weight"] = (_number(settings.bending_weight),)
        else:
            raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
        maps.append(m)
    return maps


def _number(value: float) -> str:
    return f"{value:.6g}"


# --------------------------------------------------------------------------- files

_ENTRY = re.compile(r"^\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*(.*?)\s*\)$")
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')


def parse_parameter_text(text: str, *, source: str = "<text>") -> ParameterMap:
    """An elastix parameter file's text as a map (``// comments`` and blank lines ignored).

    Raises ``ValueError`` naming the line for anything that is not ``(Name value ...)``.
    """
    parameters: ParameterMap = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise ValueError(f"{source}, line {number}: {raw.strip()!r} is not an elastix entry '(Name value ...)'")
        name, rest = match.groups()
        values = tuple(q if q else bare for q, bare in _TOKEN.findall(rest))
        if not values:
            raise ValueError(f"{source}, line {number}: parameter {name} has no value")
        if name in parameters:
            raise ValueError(f"{source}, line {number}: parameter {name} is given twice")
        parameters[name] = values
    if not parameters:
        raise ValueError(f"{source}: no elastix parameter found; an elastix parameter file was expected")
    return parameters


def validate_map(parameters: Mapping[str, Sequence[str]], *, source: str = "<map>") -> ParameterMap:
    """Check a user map: required names present, a known transform, positive numbers.

    Returns the map with tuple values; raises ``ValueError`` with a one-line reason.
    """
    checked: ParameterMap = {k: tuple(str(v) for v in vs) for k, vs in parameters.items()}
    missing = [name for name in REQUIRED if name not in checked]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}; start from an elastix default map "
                         "(e.g. the Parameters.*.txt files of the elastix model zoo)")
    transform = checked["Transform"][0]
    if transform not in KNOWN_TRANSFORMS:
        raise ValueError(f"{source}: Transform {transform!r} is not supported; use one of "
                         f"{', '.join(KNOWN_TRANSFORMS)}")
    for name in ("NumberOfResolutions", "MaximumNumberOfIterations", "NumberOfSpatialSamples"):
        for value in checked.get(name, ()):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{source}: {name} must be a positive integer, not {value!r}")
    for value in checked.get("FinalGridSpacingInPhysicalUnits", ()):
        try:
            ok = float(value) > 0 and math.isfinite(float(value))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{source}: FinalGridSpacingInPhysicalUnits must be a positive number, not {value!r}")
    if checked.get("Registration", ("",))[0] != "MultiMetricMultiResolutionRegistration" and len(checked["Metric"]) > 1:
        raise ValueError(f"{source}: several metrics need (Registration \"MultiMetricMultiResolutionRegistration\")")
    return checked


def is_linear(parameters: Mapping[str, Sequence[str]]) -> bool:
    """True for rigid/affine-type maps (their chain is the 'affine-only' transform)."""
    return tuple(parameters.get("Transform", ("",)))[0] in LINEAR_TRANSFORMS


def needs_single_thread(parameters: Mapping[str, Sequence[str]]) -> bool:
    """itk-elastix 0.25.4 crashes (segmentation fault) with the bending-energy penalty
    on more than one thread (measured here on 2 cores, 40^3 test volumes); such maps
    run on one thread."""
    return any(m in ("TransformBendingEnergyPenalty", "TransformRigidityPenalty")
               for m in parameters.get("Metric", ()))


#: Samplers that draw points in the fixed image's bounding region and keep those inside
#: the mask. With an oblique fixed mask they fail in itk-elastix 0.25.4 ("Could not find
#: enough image samples ... the mask is too small"; measured on a 4 mm simulated pair on
#: an oblique grid: RandomCoordinate and Random fail, RandomSparseMask works).
BOUNDING_BOX_SAMPLERS = ("RandomCoordinate", "Random")


def with_mask_sampler(parameters: Mapping[str, Sequence[str]]) -> ParameterMap:
    """The map to use with a fixed mask: bounding-box samplers become ``RandomSparseMask``
    (random voxels inside the mask), other samplers are kept."""
    out: ParameterMap = {k: tuple(v) for k, v in parameters.items()}
    if out.get("ImageSampler", ("RandomCoordinate",))[0] in BOUNDING_BOX_SAMPLERS:
        out["ImageSampler"] = ("RandomSparseMask",)
    return out


def parameter_text(parameters: Mapping[str, Sequence[str]]) -> str:
    """A map in elastix's text format (numbers bare, words quoted)."""
    lines = []
    for name, values in parameters.items():
        shown = " ".join(v if _is_number(v) else f'"{v}"' for v in values)
        lines.append(f"({name} {shown})")
    return "\n".join(lines) + "\n"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
