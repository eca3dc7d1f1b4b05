"""Benchmark and calibration of `mstools register` (run by hand, not by the test suite).

Two parts:

``accuracy`` -- simulated pairs with misalignment, bias, atrophy and enlarging lesions:
    plain subtraction (z-scored follow-up minus z-scored baseline in the brain) versus
    the registered subtraction (the same with the warped baseline) and the
    ``affine-check`` mode, candidates from both by the same rule (threshold sweep, La
    Rosa's 5 mm3 minimum, ``mstools.detect.registration.detection.candidate_mask``); false-positive
    lesions at equal lesion sensitivity (MSSEG-2 rule, ``mstools.metrics``); new
    lesions detected at the default threshold for several B-spline grid spacings
    (flexible vs stiff); volume change inside enlarging lesions and elsewhere.

``timing`` -- the whole command (``mstools register --json``) on a 1 mm pair with
    2 threads, with its split between reading, loading itk, registration and outputs.

Usage::

    python benchmarks/bench_register.py accuracy --cases 6 --voxel-mm 2
    python benchmarks/bench_register.py timing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SWEEP = np.round(np.arange(0.8, 4.01, 0.1), 2)


def _counts(prediction, truth, affine):
    from mstools.metrics.lesionwise import ANIMA_RULE, find_components, lesion_overlap, min_voxels, msseg2_rule

    voxel = float(abs(np.linalg.det(affine[:3, :3])))
    table = lesion_overlap(find_components(truth, connectivity=ANIMA_RULE.connectivity),
                           find_components(prediction, connectivity=ANIMA_RULE.connectivity),
                           min_lesion_voxels=min_voxels(ANIMA_RULE.min_lesion_mm3, voxel))
    r = msseg2_rule(table)
    return r.gt_lesions, r.detected, r.false_positive


def _sweep(subtraction, brain, truth, affine, affine_subtraction=None):
    from mstools.detect.registration.detection import DEFAULT_MIN_MM3, candidate_mask, min_voxels_for

    size = min_voxels_for(DEFAULT_MIN_MM3, float(abs(np.linalg.det(affine[:3, :3]))))
    rows = []
    for t in SWEEP:
        mask = candidate_mask(subtraction, brain, threshold=float(t), min_voxels=size,
                              affine_subtraction=affine_subtraction)
        rows.append(_counts(mask, truth, affine))
    return np.array(rows)  # (thresholds, [gt, detected, fp])


def _subtract_sweep(case, brain, truth):
    """`mstools subtract --rule larosa --threshold t` (bias-corrected, z-scored) swept over t."""
    from mstools.detect.subtraction import LAROSA_MIN_MM3, conditioned_subtraction, min_voxels_for, select_clusters

    _, _, d, _ = conditioned_subtraction(case.baseline, case.followup, brain, case.affine, 15.0)
    return np.array([_counts(select_clusters(brain & (d > t), min_voxels=min_voxels_for(LAROSA_MIN_MM3, float(abs(np.linalg.det(case.affine[:3, :3]))))) > 0, truth, case.affine)
                     for t in SWEEP])


def accuracy(args) -> None:
    from mstools.detect.registration import deformation, detection, parameters
    from mstools.detect.registration.elastix import register
    from mstools.simulate import SimulationConfig, simulate_case

    grids = [float(g) for g in args.grids.split(",")]
    totals: dict[str, np.ndarray] = {}
    enlarging, elsewhere, folding, seconds = {}, {}, {g: [] for g in grids}, []
    for n in range(args.cases):
        case = simulate_case(SimulationConfig(
            seed=args.seed + n, voxel_mm=args.voxel_mm, misalignment_mm=args.misalign_mm,
            misalignment_deg=args.misalign_deg, bias_strength=args.bias, n_enlarging=args.enlarging,
            atrophy_mm=args.atrophy))
        brain = case.brain_mask > 0
        truth = case.ground_truth
        plain = detection.normalised_subtraction(case.followup, case.baseline, brain)
        curves = {"plain": _sweep(plain, brain, truth, case.affine)}
        curves["mstools subtract (larosa rule)"] = _subtract_sweep(case, brain, truth)
        for grid in grids:
            maps = parameters.default_maps(parameters.RegistrationSettings(grid_spacing_mm=grid))
            result = register(case.followup, case.baseline, followup_affine=case.affine,
                              baseline_affine=case.affine, maps=maps, threads=args.threads)
            seconds.append(result.seconds)
            warped = deformation.warp(case.baseline, case.affine, result.displacement, case.affine)
            registered = detection.normalised_subtraction(case.followup, warped, brain)
            affine_warped = deformation.warp(case.baseline, case.affine, result.linear_displacement, case.affine)
            affine_only = detection.normalised_subtraction(case.followup, affine_warped, brain)
            curves[f"registered grid {grid:g} mm"] = _sweep(registered, brain, truth, case.affine)
            curves[f"affine-check grid {grid:g} mm"] = _sweep(registered, brain, truth, case.affine,
                                                              affine_subtraction=affine_only)
            if grid == grids[0]:  # the linear stages do not depend on the grid spacing
                curves["affine-only"] = _sweep(affine_only, brain, truth, case.affine)
            det = deformation.jacobian_determinant(result.displacement, case.affine)
            folding[grid].append(float(np.mean(det[brain] <= 0)))
            volume = np.where(det > 0, 1.0 / np.where(det > 0, det, 1.0), 0.0)
            labels = [les["label"] for les in case.truth["lesions"] if les["kind"] == "enlarging"]
            grown = np.isin(case.lesions_followup, labels) & ~(case.lesions_baseline > 0)
            any_lesion = (case.lesions_followup > 0) | (case.lesions_baseline > 0)
            if grown.any():
                enlarging.setdefault(grid, []).append(float(np.mean(volume[grown])))
            elsewhere.setdefault(grid, []).append(volume[brain & ~any_lesion])
        for name, curve in curves.items():
            totals[name] = totals.get(name, 0) + curve
        print(f"case {n}: done ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)

    print(f"\n## {args.cases} simulated pairs at {args.voxel_mm:g} mm (seeds {args.seed}..{args.seed + args.cases - 1}; "
          f"misalignment {args.misalign_mm:g} mm / {args.misalign_deg:g} deg, bias {args.bias:g}, "
          f"{args.enlarging} enlarging lesions, atrophy {args.atrophy:g} mm)")
    gt = int(totals["plain"][0, 0])
    print(f"new lesions (MSSEG-2 counted): {gt}\n")
    print(f"### new lesions detected / false-positive lesions at threshold {args.threshold:g} (z)")
    at = int(np.argmin(np.abs(SWEEP - args.threshold)))
    for name, curve in totals.items():
        print(f"  {name:28s} detected {int(curve[at, 1]):3d}/{gt}  FP {int(curve[at, 2]):4d}")
    print("\n### fewest false-positive lesions at equal lesion sensitivity (threshold swept 0.8-4.0)")
    names = list(totals)
    print("  sensitivity  " + "  ".join(f"{n:>26s}" for n in names))
    for target in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        cells = []
        for name in names:
            curve = totals[name]
            ok = curve[:, 1] / max(gt, 1) >= target - 1e-9
            if ok.any():
                best = int(np.argmin(np.where(ok, curve[:, 2], 10 ** 9)))
                cells.append(f"{int(curve[best, 2]):4d} FP (t={SWEEP[best]:.1f})")
            else:
                cells.append("not reached")
        print(f"  >= {target:.0%}      " + "  ".join(f"{c:>26s}" for c in cells))
    print("\n### folding (share of brain voxels with det <= 0), mean over cases")
    for grid in grids:
        print(f"  grid {grid:g} mm: {np.mean(folding[grid]):.4%}")
    print("\n### volume change (1/det, follow-up volume per unit baseline volume)")
    for grid in grids:
        rest = np.concatenate(elsewhere[grid])
        inside = enlarging.get(grid, [])
        print(f"  grid {grid:g} mm: grown part of enlarging lesions, per-case means "
              f"{', '.join(f'{v:.3f}' for v in inside)} (median {np.median(inside):.3f}); "
              f"brain outside lesions: median {np.median(rest):.3f}, 5-95 % {np.percentile(rest, 5):.3f}-"
              f"{np.percentile(rest, 95):.3f}")
    print(f"\nregistration time per case: median {np.median(seconds):.1f} s ({args.threads} threads)")


def timing(args) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-register-") as tmp:
        folder = Path(tmp) / "case"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mstools_cli.main", "-q", "simulate", str(folder), "--seed", str(args.seed),
                        "--voxel-mm", "1", "--misalign-mm", str(args.misalign_mm), "--misalign-deg",
                        str(args.misalign_deg)], check=True, stdout=subprocess.DEVNULL)
        print(f"simulate 1 mm: {time.perf_counter() - start:.1f} s", file=sys.stderr)
        command = [sys.executable, "-m", "mstools_cli.main", "register",
                   str(folder / "flair_time02_on_middle_space.nii.gz"),
                   str(folder / "flair_time01_on_middle_space.nii.gz"), str(Path(tmp) / "out"),
                   "--followup-mask", str(folder / "brain_mask.nii.gz"), "--threads", str(args.threads), "--json"]
        start = time.perf_counter()
        work = Path(tmp) / "work"
        work.mkdir()
        done = subprocess.run(command, capture_output=True, text=True, cwd=work,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(done.stderr)
        summary = json.loads(done.stdout)
        rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        left = sorted(p.name for p in work.iterdir())
    print(f"## mstools register, 1 mm pair (193 x 229 x 193), {args.threads} threads")
    print(f"  whole command (wall, incl. Python start-up): {wall:.1f} s")
    for key, value in summary["seconds"].items():
        print(f"  {key:14s} {value:6.1f} s")
    print(f"  candidates {summary['candidates']}, correlation {summary['correlation']:.3f}, "
          f"folding {summary['folding']:.4%}")
    print(f"  peak memory (largest child process): {rss_kb / 1024:.0f} MB")
    print(f"  files in the working directory afterwards: {left}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("accuracy", "timing"))
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--seed", type=int, default=700)
    parser.add_argument("--voxel-mm", type=float, default=2.0)
    parser.add_argument("--misalign-mm", type=float, default=1.5)
    parser.add_argument("--misalign-deg", type=float, default=1.5)
    parser.add_argument("--bias", type=float, default=0.15)
    parser.add_argument("--enlarging", type=int, default=3)
    parser.add_argument("--atrophy", type=float, default=0.4)
    parser.add_argument("--grids", default="10,20,30", help="B-spline final grid spacings to compare (mm)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threshold", type=float, default=1.5, help="threshold of the first table")
    args = parser.parse_args()
    accuracy(args) if args.part == "accuracy" else timing(args)


if __name__ == "__main__":
    main()
