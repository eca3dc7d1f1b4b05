"""Which chain should `mstools run` default to? Lesion-wise figures of each variant.

Runs the pipeline (the library behind `mstools run`) on case folders with a ground
truth, once per variant; stages shared between variants are reused, not rerun. Prints
per variant and per stage the mean lesion sensitivity, PPV, F1 (MSSEG-2 rule) and Dice
over cases with new lesions, the false-positive lesions per case over all cases, and
the time per case.

Run: python benchmarks/pipeline_chain.py --work /tmp/chain data_samples/sim-00* /tmp/sims/eval/sim-10*
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from mstools import pipeline

#: name -> config changes over the defaults.
VARIANTS = {
    "subtract>refine>filter [default]": {},
    "subtract>refine(paper sizes)>filter": {"refine": {"min_voxels": 27, "min_minor_axis": 2.0}},
    "subtract>refine": {"filter": {"candidates": "subtract"}, "final": "refine"},
    "subtract>refine(paper sizes)": {"filter": {"candidates": "subtract"}, "final": "refine",
                                     "refine": {"min_voxels": 27, "min_minor_axis": 2.0}},
    "subtract>filter>refine": {"filter": {"candidates": "subtract"}, "refine": {"candidates": "filter"},
                               "final": "refine"},
    "subtract>filter>refine(paper sizes)": {"filter": {"candidates": "subtract"}, "final": "refine",
                                            "refine": {"candidates": "filter", "min_voxels": 27,
                                                       "min_minor_axis": 2.0}},
    "subtract>filter": {"filter": {"candidates": "subtract"}, "refine": {"enabled": False}},
}


def configured(changes: dict) -> dict:
    config, _ = pipeline.load_config(None)
    config["report"] = False
    for key, value in changes.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path)
    parser.add_argument("--work", type=Path, required=True, help="Folder for the run folders (reused).")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="Variant names to run (default: all).")
    args = parser.parse_args()
    table: dict[str, dict[str, list[dict]]] = {}
    seconds: dict[str, list[float]] = {}
    for name, changes in VARIANTS.items():
        if name not in args.variants:
            continue
        config = configured(changes)
        for case in args.cases:
            start = time.perf_counter()
            result = pipeline.run_case(pipeline.CaseInput(case.name, folder=case), args.work / case.name,
                                           config, Path.cwd())
            seconds.setdefault(name, []).append(time.perf_counter() - start)
            for row in result.evaluation:
                table.setdefault(name, {}).setdefault(row["stage"], []).append(row)
    print(f"{len(args.cases)} cases; means over cases with new lesions; FP lesions per case over all cases")
    print(f"{'variant':30s} {'stage':9s} {'sens':>6s} {'ppv':>6s} {'F1':>6s} {'dice':>6s} {'FP/case':>8s} {'s/case':>7s}")
    for name, stages in table.items():
        for stage, rows in stages.items():
            with_new = [r for r in rows if int(r["gt_lesions"]) > 0]

            def mean(key: str) -> float:
                values = [float(r[key]) for r in with_new if not math.isnan(float(r[key]))]
                return float(np.mean(values)) if values else math.nan

            fp = float(np.mean([float(r["msseg2_fp"]) for r in rows]))
            print(f"{name:30s} {stage:9s} {mean('lesion_sensitivity'):6.3f} {mean('lesion_ppv'):6.3f} "
                  f"{mean('lesion_f1'):6.3f} {mean('dice'):6.3f} {fp:8.2f} {np.mean(seconds[name]):7.1f}")


if __name__ == "__main__":
    main()
