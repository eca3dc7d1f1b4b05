"""`mstools preprocess` measured on simulated pairs.

Run: python benchmarks/bench_preprocess.py MODE [options], MODE one of

* ``timing``        -- wall and CPU time and peak memory of the whole chain on a 1 mm
                       pair (fresh process, ITK limited to 2 threads), and per step;
* ``registration``  -- recovered transform vs the simulator's known misalignment;
* ``aligned``       -- the registration's estimate on pairs without misalignment
                       (noise floor behind IDENTITY_TOLERANCE_VOXELS);
* ``harmonisation`` -- every harmonisation method on the same registered pairs: the
                       standard deviation of the difference image in the brain (lesions
                       excluded) and the mean absolute difference in normal-appearing white
                       matter, both relative to the baseline's brain standard deviation;
* ``brain``         -- Dice of otsu and deepbet masks against the simulated brain mask.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

SIMULATE_WORKER = r"""
import sys, numpy as np
from mstools.simulate import SimulationConfig, simulate_case
case = simulate_case(SimulationConfig(seed=int(sys.argv[2]), voxel_mm=float(sys.argv[1]),
                                      misalignment_mm=3.0, misalignment_deg=3.0))
np.savez(sys.argv[3], baseline=case.baseline, followup=case.followup, affine=case.affine)
"""

TIMING_WORKER = r"""
import json, resource, sys, time
import numpy as np
import SimpleITK as sitk
sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
from mstools.preprocess import PreprocessOptions, preprocess_pair
pair = np.load(sys.argv[1])
baseline, followup, affine = pair["baseline"], pair["followup"], pair["affine"]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
options = PreprocessOptions(brain_extraction=sys.argv[2])
t0, c0 = time.perf_counter(), time.process_time()
result = preprocess_pair(baseline, affine, followup, affine, options=options)
total, cpu = time.perf_counter() - t0, time.process_time() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"shape": list(baseline.shape), "brain_extraction": sys.argv[2],
                  "wall_s": round(total, 1), "cpu_s": round(cpu, 1),
                  "steps_wall_s": {k: round(v, 1) for k, v in result.report["seconds"].items()},
                  "steps_cpu_s": {k: round(v, 1) for k, v in result.report["cpu_seconds"].items()},
                  "peak_rss_mb": round(peak), "rss_after_loading_mb": round(before)}))
"""


def _true_transform(case):
    """Baseline world point -> follow-up world point, from the simulator's record."""
    import numpy as np

    affine = case.affine
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    record = case.truth["followup_misalignment"]
    rotation = direction @ np.array(record["rotation_matrix"]) @ direction.T
    centre = affine[:3, :3] @ ((np.array(case.baseline.shape) - 1) / 2) + affine[:3, 3]
    sample = np.eye(4)  # follow-up point -> baseline point it shows
    sample[:3, :3] = rotation
    sample[:3, 3] = centre - rotation @ centre + direction @ np.array(record["translation_mm"])
    return np.linalg.inv(sample)


def transform_error(case, estimate):
    """(rotation error deg, rms and max displacement error over brain voxels, mm)."""
    import numpy as np

    from mstools.preprocess.rigid import rotation_angle_deg

    error = np.linalg.inv(_true_transform(case)) @ estimate
    index = np.argwhere(case.brain_mask)[::7]
    points = index @ case.affine[:3, :3].T + case.affine[:3, 3]
    distance = np.linalg.norm(points @ error[:3, :3].T + error[:3, 3] - points, axis=1)
    return rotation_angle_deg(error), float(np.sqrt((distance ** 2).mean())), float(distance.max())


def bench_timing(args):
    """Simulation and preprocessing in separate processes: the peak memory is preprocessing's."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        pair = os.path.join(folder, "pair.npz")
        subprocess.run([sys.executable, "-c", SIMULATE_WORKER, str(args.voxel_mm), str(args.seed), pair], check=True)
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for method in args.methods:
            out = subprocess.run([sys.executable, "-c", TIMING_WORKER, pair, method],
                                 capture_output=True, text=True, check=True)
            print(out.stdout.strip())


def bench_registration(args):
    from mstools.preprocess.rigid import register_rigid
    from mstools.preprocess.bias_field import correct_bias
    from mstools.preprocess.brain_extraction import brain_mask
    from mstools.simulate import SimulationConfig, simulate_case

    print("seed voxel_mm true_deg rot_err_deg rms_err_mm max_err_mm")
    for seed in range(args.seed, args.seed + args.cases):
        case = simulate_case(SimulationConfig(seed=seed, voxel_mm=args.voxel_mm, misalignment_mm=args.mm,
                                              misalignment_deg=args.deg, atrophy_mm=0.0))
        images, masks = [], []
        for data in (case.baseline, case.followup):
            mask = brain_mask(data, case.affine)
            images.append(correct_bias(data, case.affine, mask=mask)[0])
            masks.append(mask)
        estimate = register_rigid(images[0], case.affine, images[1], case.affine,
                                  baseline_mask=masks[0], followup_mask=masks[1])
        rot, rms, worst = transform_error(case, estimate)
        print(f"{seed} {args.voxel_mm:g} {args.deg:g} {rot:.3f} {rms:.3f} {worst:.3f}")


def bench_aligned(args):
    from mstools.preprocess import preprocess_pair
    from mstools.simulate import SimulationConfig, simulate_case

    print("seed voxel_mm atrophy_mm box_displacement_mm rotation_deg already_aligned")
    for seed in range(args.seed, args.seed + args.cases):
        for atrophy in (0.0, 0.4):
            case = simulate_case(SimulationConfig(seed=seed, voxel_mm=args.voxel_mm, misalignment_mm=0.0,
                                                  misalignment_deg=0.0, atrophy_mm=atrophy))
            reg = preprocess_pair(case.baseline, case.affine, case.followup, case.affine).report["registration"]
            print(f"{seed} {args.voxel_mm:g} {atrophy:g} {reg['max_brain_displacement_mm']:.3f} "
                  f"{reg['rotation_deg']:.3f} {reg['already_aligned']}")


def bench_harmonisation(args):
    import numpy as np
    from scipy import ndimage

    from mstools.preprocess import PreprocessOptions, preprocess_pair
    from mstools.preprocess.harmonise import METHODS, harmonise, relative_difference_std
    from mstools.simulate import SimulationConfig, simulate_case

    rows = {m: [] for m in ("raw", *METHODS)}
    for seed in range(args.seed, args.seed + args.cases):
        case = simulate_case(SimulationConfig(seed=seed, voxel_mm=args.voxel_mm))
        carry = {"lesions1": (case.lesions_baseline > 0, "baseline"), "lesions2": (case.lesions_followup > 0, "followup"),
                 "wm": (case.tissues == 3, "baseline")}
        result = preprocess_pair(case.baseline, case.affine, case.followup, case.affine,
                                 options=PreprocessOptions(harmonisation="none"), carry=carry)
        lesions = ndimage.binary_dilation(result.carried["lesions1"] | result.carried["lesions2"], iterations=2)
        brain = result.brain_mask.astype(bool) & ~lesions
        nawm = ndimage.binary_erosion(result.carried["wm"].astype(bool)) & ~lesions
        raw_lesions = ndimage.binary_dilation((case.lesions_baseline > 0) | (case.lesions_followup > 0), iterations=2)
        raw_brain = case.brain_mask.astype(bool) & ~raw_lesions
        rows["raw"].append((relative_difference_std(case.baseline, case.followup, raw_brain), float("nan")))
        for method in METHODS:
            b, f, _ = harmonise(result.baseline, result.followup, result.brain_mask, method=method)
            mad = float(np.mean(np.abs(f[nawm] - b[nawm])) / np.std(b[brain]))
            rows[method].append((relative_difference_std(b, f, brain), mad))
    print(f"{args.cases} pairs at {args.voxel_mm:g} mm (seeds {args.seed}..{args.seed + args.cases - 1}), "
          "registered + N4; mean (min-max) over pairs")
    print("method rel_std_diff_brain mean_abs_diff_nawm_rel_brain_std")
    for method, values in rows.items():
        a = np.array(values)
        cells = [f"{np.mean(a[:, i]):.4f} ({np.min(a[:, i]):.4f}-{np.max(a[:, i]):.4f})" if np.isfinite(a[:, i]).all()
                 else "n/a" for i in range(2)]
        print(method, *cells)


def bench_brain(args):
    import time

    from mstools.metrics.voxelwise import count_voxels, voxel_metrics
    from mstools.preprocess.brain_extraction import brain_mask
    from mstools.simulate import SimulationConfig, simulate_case

    print("seed voxel_mm time_point method dice seconds")
    for seed in range(args.seed, args.seed + args.cases):
        case = simulate_case(SimulationConfig(seed=seed, voxel_mm=args.voxel_mm))
        for name, data in (("baseline", case.baseline), ("followup", case.followup)):
            for method in args.methods:
                start = time.perf_counter()
                mask = brain_mask(data, case.affine, method=method)
                seconds = time.perf_counter() - start
                dice = voxel_metrics(count_voxels(mask, case.brain_mask, voxel_volume_mm3=1.0))["dice"]
                print(f"{seed} {args.voxel_mm:g} {name} {method} {dice:.4f} {seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("timing", "registration", "aligned", "harmonisation", "brain"))
    parser.add_argument("--voxel-mm", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--mm", type=float, default=4.0, help="registration: translation (mm)")
    parser.add_argument("--deg", type=float, default=4.0, help="registration: rotation (degrees)")
    parser.add_argument("--methods", nargs="+", default=None)
    args = parser.parse_args()
    defaults = {"timing": (1.0, 1, ["otsu"]), "registration": (2.0, 5, None), "aligned": (2.0, 3, None),
                "harmonisation": (2.0, 6, None), "brain": (1.0, 2, ["otsu", "deepbet"])}[args.mode]
    args.voxel_mm = args.voxel_mm or defaults[0]
    args.cases = args.cases or defaults[1]
    args.methods = args.methods or defaults[2]
    {"timing": bench_timing, "registration": bench_registration, "aligned": bench_aligned,
     "harmonisation": bench_harmonisation, "brain": bench_brain}[args.mode](args)


if __name__ == "__main__":
    main()
