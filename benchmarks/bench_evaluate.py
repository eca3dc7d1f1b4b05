"""Time of ``mstools evaluate``'s metrics on 50 cases of 1 mm volumes, next to medpy + MONAI.

Run: python benchmarks/bench_evaluate.py [--cases 50] [--reference-cases 5] [--cli-cases 3]

Each case is a 182 x 218 x 182 grid (MNI at 1 mm) with a few dozen ellipsoidal new
lesions inside a brain-sized ellipsoid, and a prediction that shifts, grows, shrinks
or misses them and adds false positives. Cases are generated from their seed, one at
a time, in memory.

* mstools: :func:`mstools.metrics.evaluate_case` -- every metric of the per-case
  table (voxel-wise, both HD95, both ASSD, Hausdorff, three lesion-wise rules, the
  per-lesion table).
* reference: the subset medpy + MONAI can compute -- medpy ``dc``, ``hd``, ``hd95``,
  ``assd``; MONAI ``compute_hausdorff_distance(percentile=95)`` and
  ``compute_average_surface_distance(symmetric=True)``. They have no lesion-wise rule,
  so the comparison favours them. They take seconds per case (full-volume distance
  transforms), so by default they run on the first ``--reference-cases`` cases and the
  total for all cases is extrapolated; the output says so.
* optionally, the command line end to end (NIfTI reading included) on a few cases.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mstools.metrics import evaluate_case  # noqa: E402

SHAPE = (182, 218, 182)
AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
SPACING = (1.0, 1.0, 1.0)


def _ellipsoid(mask, centre, radii, value=True):
    lo = [max(int(c - r - 1), 0) for c, r in zip(centre, radii)]
    hi = [min(int(c + r + 2), s) for c, r, s in zip(centre, radii, mask.shape)]
    grid = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0
    box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if value:
        box |= inside
    else:
        box &= ~inside


def _in_brain(rng):
    centre = np.array([91.0, 109.0, 80.0])
    radii = np.array([62.0, 80.0, 55.0])
    while True:
        p = rng.uniform(-1, 1, 3)
        if (p ** 2).sum() <= 1:
            return centre + p * radii


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, ground truth), boolean, on the 1 mm MNI grid."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(SHAPE, dtype=bool)
    pred = np.zeros(SHAPE, dtype=bool)
    for _ in range(int(rng.integers(20, 45))):
        centre = _in_brain(rng)
        radii = rng.uniform(1.0, 6.0, 3)
        _ellipsoid(truth, centre, radii)
        if rng.random() < 0.3:                                  # irregular: a second lobe
            _ellipsoid(truth, centre + rng.uniform(-3, 3, 3), rng.uniform(1.0, 4.0, 3))
        if rng.random() < 0.8:                                  # found, imperfectly
            _ellipsoid(pred, centre + rng.uniform(-1.5, 1.5, 3), np.maximum(radii * rng.uniform(0.6, 1.4, 3), 0.8))
    for _ in range(int(rng.integers(5, 20))):                   # false positives
        _ellipsoid(pred, _in_brain(rng), rng.uniform(0.7, 3.5, 3))
    return pred, truth


def reference_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from medpy.metric import binary as mb
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    t = lambda a: torch.as_tensor(a[None, None])  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": mb.dc(pred, truth),
            "hd_mm": mb.hd(pred, truth, voxelspacing=SPACING),
            "hd95_pooled_mm": mb.hd95(pred, truth, voxelspacing=SPACING),
            "assd_mm": mb.assd(pred, truth, voxelspacing=SPACING),
            "hd95_max_directed_mm": float(compute_hausdorff_distance(
                t(pred), t(truth), include_background=True, percentile=95, spacing=SPACING)),
            "monai_assd_mm": float(compute_average_surface_distance(
                t(pred), t(truth), include_background=True, symmetric=True, spacing=SPACING)),
        }


def time_cli(cases: int, seed0: int) -> tuple[float, int]:
    import nibabel as nib

    from mstools.io import Image, OutputBatch

    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, gt_dir = Path(tmp, "pred"), Path(tmp, "gt")
        pred_dir.mkdir()
        gt_dir.mkdir()
        reference = Image(data=np.zeros(SHAPE, np.uint8), affine=AFFINE, header=nib.Nifti1Header())
        for n in range(cases):
            pred, truth = make_case(seed0 + n)
            with OutputBatch() as out:
                out.image(pred_dir / f"case{n:03d}_mask.nii.gz", pred, reference, np.uint8)
                out.image(gt_dir / f"case{n:03d}.nii.gz", truth, reference, np.uint8)
        command = [sys.executable, "-m", "mstools_cli.main", "evaluate",
                   "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--out-dir", str(Path(tmp, "out")),
                   "--json"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        elapsed = time.perf_counter() - start
        if done.returncode:
            print(done.stderr.strip(), file=sys.stderr)
        return elapsed, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--reference-cases", type=int, default=5,
                        help="cases the slow reference runs on; its total is extrapolated")
    parser.add_argument("--cli-cases", type=int, default=3, help="cases for the end-to-end CLI timing (0: skip)")
    parser.add_argument("--seed", type=int, default=2021)
    args = parser.parse_args()
    try:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        sys.exit("the reference needs medpy, monai and torch: pip install -e '.[test]'")

    print(f"{args.cases} cases of {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} voxels at 1 mm, {os.cpu_count()} CPU core(s)")
    warm = make_case(args.seed - 1)                              # one-off import and cache costs
    evaluate_case(*warm, affine=AFFINE)
    reference_metrics(*warm)
    ours_times, gen_times, lesion_counts, ours_metrics = [], [], [], []
    for n in range(args.cases):
        t0 = time.perf_counter()
        pred, truth = make_case(args.seed + n)
        t1 = time.perf_counter()
        result = evaluate_case(pred, truth, affine=AFFINE)
        t2 = time.perf_counter()
        gen_times.append(t1 - t0)
        ours_times.append(t2 - t1)
        lesion_counts.append((result.metrics["gt_lesions"], result.metrics["pred_lesions"]))
        if n < args.reference_cases:
            ours_metrics.append(result.metrics)
    gt_les = [g for g, _ in lesion_counts]
    pred_les = [p for _, p in lesion_counts]
    ours_total = float(np.sum(ours_times))
    print(f"lesions per case: ground truth {min(gt_les)}-{max(gt_les)} (mean {np.mean(gt_les):.1f}), "
          f"predicted {min(pred_les)}-{max(pred_les)} (mean {np.mean(pred_les):.1f})")
    print(f"mstools, all metrics:        {ours_total:8.2f} s for {args.cases} cases "
          f"({1000 * ours_total / args.cases:.0f} ms per case, median {1000 * np.median(ours_times):.0f} ms)")

    k = min(args.reference_cases, args.cases)
    ref_times, worst = [], {}
    for n in range(k):
        pred, truth = make_case(args.seed + n)
        t0 = time.perf_counter()
        ref = reference_metrics(pred, truth)
        ref_times.append(time.perf_counter() - t0)
        ours = ours_metrics[n]
        pairs = {"dice": "dice", "hd_mm": "hd_mm", "hd95_pooled_mm": "hd95_pooled_mm", "assd_mm": "assd_mm",
                 "hd95_max_directed_mm": "hd95_max_directed_mm", "monai_assd_mm": "assd_mm"}
        for ref_key, our_key in pairs.items():
            relative = abs(ref[ref_key] - ours[our_key]) / max(abs(ref[ref_key]), 1e-12)
            worst[ref_key] = max(worst.get(ref_key, 0.0), relative)
    ref_per_case = float(np.mean(ref_times))
    ref_total = ref_per_case * args.cases
    ours_subset = float(np.sum(ours_times[:k]))
    note = "measured" if k == args.cases else f"extrapolated from {k} measured case(s) x {args.cases}/{k}"
    print(f"medpy + MONAI, 6 metrics:    {ref_total:8.2f} s for {args.cases} cases "
          f"({1000 * ref_per_case:.0f} ms per case; {note})")
    print(f"speed-up: {ref_total / ours_total:.1f}x over {args.cases} cases "
          f"(on the {k} measured case(s) alone: {float(np.sum(ref_times)) / ours_subset:.1f}x)")
    print("largest relative difference on the measured cases (MONAI works in float32): "
          + ", ".join(f"{key} {value:.1e}" for key, value in worst.items()))
    print(f"(generating the synthetic cases took {float(np.sum(gen_times)):.2f} s, not counted)")

    if args.cli_cases:
        elapsed, code = time_cli(args.cli_cases, args.seed)
        print(f"command line end to end (reading {2 * args.cli_cases} gzipped NIfTI, hashing, writing tables): "
              f"{elapsed:.2f} s for {args.cli_cases} cases, exit code {code}")


if __name__ == "__main__":
    main()
