"""Benchmark and accuracy of `mstools refine` on simulated 1 mm cases.

Candidates must exist first (one folder per case under WORK, e.g. from
``mstools subtract CASE -o WORK/<case>/subtract --tissues CASE/tissues.nii.gz`` and
``mstools filter CASE -c WORK/<case>/subtract -o WORK/<case>/filter --tissues ...``).

    python benchmarks/bench_refine.py cv --cases /tmp/sims/train --work /tmp/refine_work \
        --candidates subtract --feature-set context --folds 5
        cross-validated Dice / smoothed Dice / lesion F1 / sensitivity / PPV of the
        candidates and of the refined masks (paper post-processing and two others),
        time and peak memory
    python benchmarks/bench_refine.py apply --case /tmp/sims/eval/sim-1000 --work /tmp/refine_work
        time and peak memory of `mstools refine` (packaged model) on one 1 mm case
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def cross_validation(args) -> None:
    from mstools.jobs.refine import read_case
    from mstools.candidates.refine import model as rm
    from mstools.candidates.refine.features import feature_names
    from mstools.candidates.refine.postprocess import PostProcessing
    from mstools.candidates.refine.sampling import SamplingOptions

    started = time.perf_counter()
    cases = sorted(p for p in Path(args.cases).iterdir() if (p / "ground_truth.nii.gz").is_file())[: args.n]
    samples = []
    for n, case in enumerate(cases):
        prefix = str(Path(args.work) / case.name / args.candidates)
        table = Path(args.work) / case.name / "filter_features.tsv" if args.candidates != "filter" else None
        inputs, _, _ = read_case(case, prefix, feature_set=args.feature_set, lesion_features=table,
                                 ground_truth=case / "ground_truth.nii.gz", name=case.name)
        samples.append(rm.case_samples(inputs, feature_set=args.feature_set, sampling=SamplingOptions(),
                                       seed=args.seed + n))
    features_s = time.perf_counter() - started
    also = {"threshold_only": PostProcessing(min_voxels=1, min_minor_axis_voxels=0),
            "t0.5_only": PostProcessing(threshold=0.5, min_voxels=1, min_minor_axis_voxels=0)}
    cv = rm.cross_validate(samples, names=feature_names(args.feature_set), folds=args.folds, seed=args.seed,
                           also=also, progress=lambda m: print(m, file=sys.stderr, flush=True))
    total_s = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"== refine CV: {len(samples)} cases from {args.cases}, candidates={args.candidates}, "
          f"features={args.feature_set}, folds={cv['folds']}, voxels={sum(len(s.truth) for s in samples)}")
    metrics = rm.CV_METRICS
    print("stage".ljust(34) + "".join(m.rjust(20) for m in metrics))
    for stage, label in (("candidates", f"{args.candidates} candidates"),
                         ("refined", "refined (paper: 0.2, >=27 vox, minor>=2)"),
                         ("threshold_only", "refined (0.2, no size rules)"),
                         ("t0.5_only", "refined (0.5, no size rules)")):
        print(label.ljust(34)[:34] + "".join(f"{cv['mean'][f'{stage}_{m}']:20.3f}" for m in metrics))
    print(f"time: features {features_s:.0f} s, total {total_s:.0f} s; peak RSS {peak_mb:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cv": cv, "seconds": total_s,
                                               "features_seconds": features_s, "peak_mb": peak_mb}, indent=1,
                                              default=str))


def apply(args) -> None:
    out = Path(args.work) / "bench_apply"
    out.mkdir(parents=True, exist_ok=True)
    command = ["/usr/bin/time", "-f", "%e s %M KB", sys.executable, "-m", "mstools_cli.main", "refine", args.case,
               "-c", str(Path(args.work) / Path(args.case).name / args.candidates), "-o", str(out / "refined"),
               "--force", "--json"]
    for repeat in range(args.repeats):
        result = subprocess.run(command, capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
        if result.returncode:
            print(result.stderr)
            raise SystemExit(1)
        lesions = json.loads(result.stdout)["lesions"]
        print(f"refine apply {args.case} ({args.candidates}): {result.stderr.strip().splitlines()[-1]} "
              f"(wall, peak RSS), {lesions} lesions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    cv = sub.add_parser("cv")
    cv.add_argument("--cases", default="/tmp/sims/train")
    cv.add_argument("--work", default="/tmp/refine_work")
    cv.add_argument("--candidates", default="subtract")
    cv.add_argument("--feature-set", default="context")
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--n", type=int, default=20)
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--json", default=None)
    ap = sub.add_parser("apply")
    ap.add_argument("--case", default="/tmp/sims/eval/sim-1000")
    ap.add_argument("--work", default="/tmp/refine_work")
    ap.add_argument("--candidates", default="subtract")
    ap.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cross_validation(args) if args.what == "cv" else apply(args)


if __name__ == "__main__":
    main()
