"""Time and peak memory of simulating one case, and what a simulated case looks like.

Run: python benchmarks/bench_simulate.py [--voxel-mm 1] [--repeats 3]
Each repeat runs in a fresh process so that peak RSS is that of one case alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

WORKER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from mstools.simulate import SimulationConfig, simulate_case
from mstools.simulate.anatomy import load_anatomy
import numpy as np
t1 = time.perf_counter()
load_anatomy(voxel_mm=float(sys.argv[1]))          # template loading, cached afterwards
t2 = time.perf_counter()
case = simulate_case(SimulationConfig(seed=int(sys.argv[2]), voxel_mm=float(sys.argv[1])))
t3 = time.perf_counter()
stats = {}
for name, label in (("csf", 1), ("gm", 2), ("wm", 3)):
    v = case.baseline[(case.tissues == label) & (case.lesions_baseline == 0)]
    stats[name] = [float(np.mean(v)), float(np.std(v))]
v = case.baseline[case.lesions_baseline > 0]
stats["lesions_t1"] = [float(np.mean(v)), float(np.std(v))]
v = case.followup[case.ground_truth > 0]
stats["new_lesions_t2"] = [float(np.mean(v)), float(np.std(v))] if v.size else None
lesions = case.truth["lesions"]
print(json.dumps({
    "import_s": t1 - t0, "anatomy_s": t2 - t1, "simulate_s": t3 - t2,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "shape": list(case.baseline.shape), "intensity_mean_std": stats,
    "kinds": {k: sum(l["kind"] == k for l in lesions) for k in ("stable", "enlarging", "shrinking", "new")},
    "volumes_t2": [l["volume_mm3_time02"] for l in lesions],
    "new_volumes": [l["volume_mm3_time02"] for l in lesions if l["kind"] == "new"],
    "locations": {k: sum(l["location"] == k for l in lesions) for k in
                  ("periventricular", "deep_white_matter", "juxtacortical", "infratentorial")},
}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voxel-mm", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for seed in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", WORKER, str(args.voxel_mm), str(seed)],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout))
    print(f"simulate, {args.voxel_mm} mm grid {runs[0]['shape']}, {args.repeats} cases, one process each")
    for key in ("import_s", "anatomy_s", "simulate_s", "peak_rss_mb"):
        values = [r[key] for r in runs]
        print(f"  {key:12s} mean {sum(values) / len(values):8.2f}   max {max(values):8.2f}")
    print("  per-case time (anatomy + simulate) mean "
          f"{sum(r['anatomy_s'] + r['simulate_s'] for r in runs) / len(runs):.2f} s")
    print("baseline intensity mean / std per tissue (first case, lesion-free voxels):")
    for name, (mean, std) in runs[0]["intensity_mean_std"].items() if runs[0]["intensity_mean_std"] else []:
        print(f"  {name:15s} {mean:8.1f} {std:8.1f}")
    import statistics as st
    all_volumes = [v for r in runs for v in r["volumes_t2"] if v > 0]
    new_volumes = [v for r in runs for v in r["new_volumes"]]
    print(f"lesions per case by kind: {runs[0]['kinds']}; by location (all cases): "
          f"{ {k: sum(r['locations'][k] for r in runs) for k in runs[0]['locations']} }")
    q = lambda xs: [round(x, 1) for x in st.quantiles(xs, n=4)]
    print(f"lesion volume at follow-up (mm3): min {min(all_volumes):.1f}, quartiles {q(all_volumes)}, max {max(all_volumes):.1f}")
    print(f"new lesion volume (mm3): min {min(new_volumes):.1f}, quartiles {q(new_volumes)}, max {max(new_volumes):.1f}")


if __name__ == "__main__":
    main()
