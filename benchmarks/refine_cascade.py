"""The all-lesion -> new-lesion cascade (paper 001: Basaran et al.; McKinley et al.) in `refine`:
the same LightGBM voxel classifier trained on the same cases with and without the all-lesion
masks of both visits as features, scored on held-out cases (lesion-wise F1, Dice).

Each case folder needs subtract's candidates (``CASE/subtract_*``, ``mstools subtract CASE -o
CASE/subtract --k 2.5 --core-mm 0 --min-followup-sd 0 --min-peak-sd 0``: the run's settings) and CoactSeg's
all-lesion masks
(``mstools segment CASE --model coactseg -o CASE/coactseg``: ``CASE/coactseg_all_time0{1,2}_mask``).
The cascade reads CoactSeg's masks, never the simulated cases' lesions_time01/02 (their
difference is the ground truth).

    python benchmarks/refine_cascade.py --train EXP/sim/sim-91?? --test EXP/sim/sim-92?? \
        EXP/real/patient01 --feature-set context

Both models are fitted (mstools.candidates.refine.model.fit, as `refine train`) on the same
sampled voxels of the same cases: the rows with the cascade's columns, and without them. Test
cases are refined as `mstools run` does (its refine size rule, RUN_OVERRIDES). Prints one row
per test case and detector (subtract's candidates and CoactSeg's new-lesion head for reference),
then the means per test group (simulated, real).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEGMENT_NAME = "coactseg"
CANDIDATES = "subtract"


def read(case: Path, feature_set: str, *, truth: bool):
    from mstools.jobs.refine import read_case
    from mstools.jobs.segment import cascade_entry_maps

    inputs, reference, _ = read_case(case, str(case / CANDIDATES), feature_set=feature_set,
                                     ground_truth=case / "ground_truth.nii.gz" if truth else None, name=case.name,
                                     all_lesions=cascade_entry_maps(case, SEGMENT_NAME))
    return inputs, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--test", nargs="+", type=Path, required=True)
    parser.add_argument("--feature-set", default="context")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import numpy as np

    from mstools.candidates.refine import model as rm
    from mstools.candidates.refine.features import model_feature_names
    from mstools.candidates.refine.postprocess import PostProcessing, refined_detections
    from mstools.candidates.refine.sampling import SamplingOptions, candidate_region
    from mstools.io import read_mask
    from mstools.metrics import evaluate_case
    from mstools.pipeline.stages import RUN_OVERRIDES

    started = time.perf_counter()
    # One sample per case, with the cascade's columns last: the model without the cascade is
    # trained on the same voxels, the same rows, minus those columns.
    samples = []
    for n, case in enumerate(args.train):
        inputs, _ = read(case, args.feature_set, truth=True)
        samples.append(rm.case_samples(inputs, feature_set=args.feature_set, sampling=SamplingOptions(),
                                       seed=args.seed + n, cascade=True))
        print(f"{case.name}: {len(samples[-1].truth)} voxels", file=sys.stderr, flush=True)
    features = np.concatenate([s.features for s in samples])
    truth = np.concatenate([s.truth for s in samples])
    groups = np.concatenate([np.full(len(s.truth), n) for n, s in enumerate(samples)])
    models = {}
    for cascade in (False, True):
        names = list(model_feature_names(args.feature_set, cascade=cascade))
        text, info = rm.fit(features[:, :len(names)], truth, groups, names=names, seed=args.seed)
        models[cascade] = rm.RefineModel(text, {"feature_set": args.feature_set, "cascade": cascade,
                                                "features": names})
        print(f"trained {'with' if cascade else 'without'} the cascade: {info['rounds']} rounds", flush=True)
        if cascade:
            print("cascade features' share of the gain: " + ", ".join(
                f"{k} {v:.3f}" for k, v in info["feature_importance_gain"].items() if k.startswith("lesions_")))
    print(f"training: {len(args.train)} cases, {len(truth)} voxels, {time.perf_counter() - started:.0f} s",
          flush=True)
    post = PostProcessing(min_volume_mm3=RUN_OVERRIDES["refine"]["min_volume_mm3"],
                          min_minor_axis_voxels=RUN_OVERRIDES["refine"]["min_minor_axis"])
    rows = []
    print("case".ljust(16) + "detector".ljust(26) + "lesion_F1".rjust(10) + "Dice".rjust(8) + "LTPR".rjust(8)
          + "PPV".rjust(8))
    for case in args.test:
        group = "simulated" if (case / "truth.json").is_file() else "real"
        inputs, reference = read(case, args.feature_set, truth=False)
        gt = read_mask(case / "ground_truth.nii.gz").data
        region = candidate_region(inputs.candidates, inputs.brain, spacing_mm=rm.spacing_of(inputs.affine),
                                  dilation_mm=SamplingOptions().dilation_mm)
        voxels = np.nonzero(region)
        matrix = rm._features_for(inputs, voxels, feature_set=args.feature_set, bias_sigma_mm=rm.BIAS_SIGMA_MM,
                                  cascade=True)
        masks = {"subtract candidates": inputs.candidates > 0,
                 "coactseg new-lesion head": read_mask(str(case / SEGMENT_NAME) + "_mask.nii.gz").data > 0}
        for cascade, model in models.items():
            probability = np.zeros(region.shape, np.float32)
            probability[voxels] = model.predict(matrix[:, :len(model.features)], model.features)
            masks[f"refine {'with' if cascade else 'without'} cascade"] = refined_detections(
                probability, affine=reference.affine, options=post)[0].mask > 0
        for name, mask in masks.items():
            m = evaluate_case(mask, gt, affine=reference.affine).metrics
            rows.append({"case": case.name, "group": group, "detector": name,
                         **{k: m[k] for k in ("lesion_f1", "dice", "lesion_sensitivity", "lesion_ppv")}})
            print(case.name.ljust(16) + name.ljust(26) + f"{m['lesion_f1']:10.3f}{m['dice']:8.3f}"
                  f"{m['lesion_sensitivity']:8.3f}{m['lesion_ppv']:8.3f}", flush=True)
    print("\nmeans over the test cases (lesion F1 and Dice)")
    print("group".ljust(12) + "cases".rjust(6) + "  " + "detector".ljust(26) + "lesion_F1".rjust(10) + "Dice".rjust(8))
    for group in ("simulated", "real"):
        for name in dict.fromkeys(r["detector"] for r in rows):
            sel = [r for r in rows if r["group"] == group and r["detector"] == name]
            if sel:
                print(group.ljust(12) + f"{len(sel):6d}  " + name.ljust(26)
                      + f"{np.nanmean([r['lesion_f1'] for r in sel]):10.3f}{np.nanmean([r['dice'] for r in sel]):8.3f}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
