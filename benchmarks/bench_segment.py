"""CPU inference time and peak memory of `mstools segment` per 1 mm case, and the paper configuration's window time.

Run: python benchmarks/bench_segment.py [--threads 2] [--case CASE_FOLDER] [--models coactseg unet multitask]
Without --case, a 1 mm case is simulated (seed 77) under /tmp. Each model runs in a fresh
process (read, predict, post-process, as `mstools segment` does, without writing), so that
the peak RSS is that of one segmentation alone. Then the full CoactSeg configuration of
paper 002 (16 base filters, 80^3 window) is timed per forward window (batch 1, eval mode).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
from mstools import case_layout as layout
from mstools.models import packaged_model
from mstools.detect.deep.predictor import Predictor, PredictOptions, lesion_mask
from mstools.io import read_image
case, model = sys.argv[1], sys.argv[2]
b = read_image(f"{case}/{layout.BASELINE}"); f = read_image(f"{case}/{layout.FOLLOWUP}")
t1 = time.perf_counter()
p = Predictor.from_file(packaged_model("deep", model), device="cpu")
t2 = time.perf_counter()
maps = p.predict(b.data, f.data, spacing_mm=b.spacing_mm, options=PredictOptions(overlap=float(sys.argv[4]), batch_size=2))
mask = lesion_mask(maps["new"], voxel_volume_mm3=b.voxel_volume_mm3)
t3 = time.perf_counter()
print(json.dumps({"model": model, "shape": list(b.shape), "read_s": t1 - t0, "load_s": t2 - t1,
                  "predict_s": t3 - t2, "total_s": t3 - t0, "threads": torch.get_num_threads(),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "new_lesion_voxels": int(mask.sum())}))
"""

PAPER = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from mstools.detect.deep.config import PAPER_CONFIGS
from mstools.detect.deep.networks import build_model
model = build_model(PAPER_CONFIGS["coactseg"]).eval()
x = torch.randn(1, 3, 80, 80, 80)
times = []
with torch.inference_mode():
    model(x)
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter(); model(x); times.append(time.perf_counter() - t)
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"config": PAPER_CONFIGS["coactseg"].as_dict(), "parameters": params,
                  "forward_s_per_window": sorted(times)[len(times) // 2], "all_s": times,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": torch.get_num_threads()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", type=Path, default=None)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=["coactseg", "unet", "multitask"])
    parser.add_argument("--paper-repeats", type=int, default=3)
    args = parser.parse_args()
    case = args.case
    if case is None:
        case = Path("/tmp/bench_segment_case")
        if not (case / "flair_time01_on_middle_space.nii.gz").is_file():
            subprocess.run(["mstools", "simulate", str(case), "--seed", "77", "--voxel-mm", "1", "--force"],
                           check=True, capture_output=True)
    results = []
    for model in args.models:
        out = subprocess.run([sys.executable, "-c", WORKER, str(case), model, str(args.threads), str(args.overlap)],
                             check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout))
        r = results[-1]
        print(f"{model:10s} {r['shape']} threads {r['threads']}: predict {r['predict_s']:.1f} s, total "
              f"{r['total_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    out = subprocess.run([sys.executable, "-c", PAPER, str(args.threads), str(args.paper_repeats)],
                         check=True, capture_output=True, text=True)
    paper = json.loads(out.stdout)
    print(f"paper CoactSeg (16 filters, 80^3, {paper['parameters']} parameters): "
          f"{paper['forward_s_per_window']:.2f} s per window (median of {args.paper_repeats}), "
          f"peak RSS {paper['peak_rss_mb']:.0f} MB, threads {paper['threads']}")
    print(json.dumps({"segment": results, "paper_window": paper}, indent=2))


if __name__ == "__main__":
    main()
