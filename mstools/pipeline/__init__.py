"""The whole job on a case or a cohort, as library functions.

* :mod:`~mstools.pipeline.stages` -- the stages (a job, its options dataclass, what it
  reads and writes), ``RUN_OVERRIDES`` (where ``run`` departs from a command's default).
* :mod:`~mstools.pipeline.config` -- defaults, ``--print-config``, reading and checking
  a configuration.
* :mod:`~mstools.pipeline.run` -- :func:`run_case`: run or reuse each stage, write the
  final result, the evaluation, the record and the report.
* :mod:`~mstools.pipeline.cohort` -- :func:`run_cohort`: ``run_case`` over a cohort on Dask.

Example::

    from mstools.pipeline import CaseInput, load_config, run_case

    config, base = load_config(None)          # the defaults (or a YAML file)
    result = run_case(CaseInput("sim-001", folder=Path("data_samples/sim-001")), Path("out/sim-001"), config, base)
    print(result.record["new_lesions"], result.evaluation)
"""

from mstools.cohort_inputs import CaseInput, discover_cases
from mstools.case import check_case_input
from mstools.pipeline.cohort import MEMORY_PER_WORKER, CohortProgress, CohortResult, cohort_row, run_cohort
from mstools.pipeline.config import (check_config, check_config_files, default_config, default_config_text,
                                     load_config, stage_options, stage_options_args)
from mstools.pipeline.run import RunProgress, RunResult, StageFailed, run_case, run_key
from mstools.pipeline.stages import PATH_OPTIONS, RUN_OVERRIDES, STAGES, TOP_LEVEL, Stage, stage_order

__all__ = ["CaseInput", "discover_cases", "check_case_input", "run_case", "run_cohort", "run_key", "RunResult",
           "RunProgress", "CohortProgress", "CohortResult", "StageFailed", "cohort_row", "MEMORY_PER_WORKER",
           "load_config", "default_config", "default_config_text", "check_config", "check_config_files",
           "stage_options", "stage_options_args", "STAGES", "Stage", "RUN_OVERRIDES", "TOP_LEVEL", "PATH_OPTIONS",
           "stage_order"]
