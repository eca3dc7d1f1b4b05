"""Time of the report's pictures on a simulated 1 mm case: ``case_figures`` (the case
page's rows) and ``qc_png`` (the preprocessing QC picture).

Run: python benchmarks/bench_report.py [--seed 7] [--voxel-mm 1] [--repeats 3]

The case is ``mstools.simulate.simulate_case`` (cached as an .npz under the system's
temporary folder). Each measurement runs in a fresh process, so it pays for the
imports of its picture (matplotlib's, when it used it), as ``mstools preprocess`` does;
nibabel is imported before the clock starts, as the commands have read their images. The
detections are the simulated ground truth's 26-connected components, the difference
is follow-up minus baseline. Prints one JSON line per repeat and the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SIMULATE_WORKER = r"""
import sys, numpy as np
from mstools.simulate import SimulationConfig, simulate_case
case = simulate_case(SimulationConfig(seed=int(sys.argv[1]), voxel_mm=float(sys.argv[2])))
np.savez(sys.argv[3], baseline=case.baseline, followup=case.followup, truth=case.ground_truth,
         brain=case.brain_mask, affine=case.affine)
"""

TIMING_WORKER = r"""
import json, sys, time
import numpy as np
case = np.load(sys.argv[1])
baseline, followup, truth, brain, affine = (case[k] for k in ("baseline", "followup", "truth", "brain", "affine"))
from mstools.lesions import label_components
import nibabel  # already loaded by the commands that draw these pictures (they read images)
labels, _ = label_components(truth, connectivity=26)
spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
t0 = time.perf_counter()
if sys.argv[2] == "case_figures":
    from mstools.report.figures import case_figures
    png = [f.png for f in case_figures(baseline, followup, labels, affine, ground_truth=truth, brain_mask=brain)]
else:
    from mstools.preprocess.qc import qc_png
    png = [qc_png(baseline, followup, brain, spacing_mm=spacing, **({} if sys.argv[3] == "legacy" else
                                                                      {"affine": affine}))]
seconds = time.perf_counter() - t0
print(json.dumps({"shape": list(baseline.shape), "what": sys.argv[2], "seconds": round(seconds, 3),
                  "pictures": len(png), "kb": round(sum(map(len, png)) / 1024),
                  "matplotlib_imported": "matplotlib" in sys.modules}))
"""

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--voxel-mm", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--legacy-qc", action="store_true", help="call qc_png without affine (older API)")
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / f"mstools_bench_report_{args.seed}_{args.voxel_mm:g}.npz"
    if not cache.is_file():
        subprocess.run([sys.executable, "-c", SIMULATE_WORKER, str(args.seed), str(args.voxel_mm), str(cache)],
                       check=True)
    runs: dict[str, list[float]] = {"case_figures": [], "qc_png": []}
    for _ in range(args.repeats):
        for what in runs:
            out = subprocess.run([sys.executable, "-c", TIMING_WORKER, str(cache), what,
                                  "legacy" if args.legacy_qc else "affine"],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            runs[what].append(row["seconds"])
            print(json.dumps(row))
    medians = {what: statistics.median(seconds) for what, seconds in runs.items()}
    print(json.dumps({"median_s": medians, "total_s": round(sum(medians.values()), 3)}))

if __name__ == "__main__":
    main()
