"""mstools: detect new multiple sclerosis lesions in longitudinal brain MRI.

The library is plain functions on arrays (``mstools.lesions``, ``mstools.metrics``,
``mstools.simulate``, ...); ``mstools.io`` is the only module that reads or writes image
files; ``mstools.jobs`` holds each command's work as a function (files in, files out) and
``mstools.pipeline`` the whole job on a case or a cohort. The command line is the
separate package ``mstools_cli`` (sources in ``cli/``). See ARCHITECTURE.md.

The names below are loaded on first use, so ``import mstools`` stays cheap::

    import mstools

    image = mstools.read_image("case/flair_time02_on_middle_space.nii.gz")
    result = mstools.run_case(mstools.CaseInput("case", folder=Path("case")), Path("out/case"))
    scores = mstools.evaluate_case(prediction, truth, affine=image.affine).metrics
"""

from __future__ import annotations

from mstools._lazy import lazy_exports

__version__ = "0.1.0"

#: Public name -> the module it lives in (loaded on first attribute access).
_API = {
    # image files
    "Image": "mstools.io", "read_image": "mstools.io", "read_scan": "mstools.io", "read_mask": "mstools.io",
    "read_labels": "mstools.io", "check_same_grid": "mstools.io", "OutputBatch": "mstools.io",
    # cases and detections
    "CaseInput": "mstools.cohort_inputs", "discover_cases": "mstools.cohort_inputs",
    "read_pair": "mstools.case", "resolve_case_inputs": "mstools.case",
    "read_candidates": "mstools.detections", "output_paths": "mstools.detections",
    "Detections": "mstools.lesions", "detections_from_mask": "mstools.lesions",
    # algorithms
    "evaluate_case": "mstools.metrics", "EvaluationOptions": "mstools.metrics", "LesionRule": "mstools.metrics",
    "simulate_case": "mstools.simulate", "SimulationConfig": "mstools.simulate",
    "Predictor": "mstools.detect.deep.predictor",
    # jobs: one command's work, files in and files out
    "subtract_job": "mstools.jobs.subtract", "SubtractOptions": "mstools.jobs.subtract",
    "filter_job": "mstools.jobs.filter", "FilterOptions": "mstools.jobs.filter",
    "refine_job": "mstools.jobs.refine", "RefineOptions": "mstools.jobs.refine",
    "register_job": "mstools.jobs.register", "RegisterOptions": "mstools.jobs.register",
    "segment_job": "mstools.jobs.segment", "SegmentOptions": "mstools.jobs.segment",
    "preprocess_job": "mstools.jobs.preprocess", "apply_transform_job": "mstools.jobs.preprocess",
    "evaluate_job": "mstools.jobs.evaluate",
    # the pipeline
    "run_case": "mstools.pipeline.run", "RunProgress": "mstools.pipeline.run", "run_cohort": "mstools.pipeline.cohort",
    "load_config": "mstools.pipeline.config", "default_config": "mstools.pipeline.config",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _API)
__all__ = ["__version__", *__all__]
