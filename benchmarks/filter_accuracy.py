"""Detection figures of `subtract`, rule filtering and the learned filter on simulated cases.

For every evaluation case: candidates from `subtract` (default rule), then La Rosa's
rules, then the learned filter trained on separate training cases; each scored with
`mstools evaluate`'s MSSEG-2 rule. Two settings: no anatomical maps (CSF from FLAIR
intensity), and with the case's tissue map and baseline lesion mask (as La Rosa et al.
had from SAMSEG).

Run: python benchmarks/filter_accuracy.py --train sims/train/sim-* --eval sims/eval/sim-* data_samples/sim-00*
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mstools import case_layout as layout
from mstools.candidates.filtering import (MODEL_FEATURES, FilterRules, candidate_features, candidate_truth,
                                          csf_and_white_matter, decide_by_model, decide_by_rules, feature_matrix,
                                          kept_detections)
from mstools.io import read_image, read_labels, read_mask
from mstools.candidates.lesion_classifier import train
from mstools.metrics import evaluate_case
from mstools.detect.subtraction import detect


#: The variant measured here: enlarging-lesion rims (sphericity <= 0.45 on our cases) go
#: by shape instead of by contact with a baseline lesion, which also removed new
#: lesions touching an old one (sphericity >= 0.47).
MEASURED_RULES = FilterRules(min_sphericity=0.5, drop_touching_baseline_lesion=False)


def load(case: Path, with_maps: bool):
    baseline = read_image(case / layout.BASELINE)
    followup = read_image(case / layout.FOLLOWUP).data
    brain = read_mask(case / layout.BRAIN_MASK).data > 0
    gt = read_mask(case / layout.GROUND_TRUTH).data
    tissues = read_labels(case / layout.TISSUES).data if with_maps else None
    lesions = read_mask(case / layout.LESIONS_BASELINE).data if with_maps else None
    return baseline, followup, brain, gt, tissues, lesions


def candidates(case: Path, with_maps: bool, rule: str):
    baseline, followup, brain, gt, tissues, lesions = load(case, with_maps)
    t0 = time.perf_counter()
    result = detect(baseline.data, followup, brain, affine=baseline.affine, rule=rule)
    t1 = time.perf_counter()
    csf, wm = csf_and_white_matter(baseline.data, brain, tissues)
    rows = candidate_features(result.detections.labels, baseline=baseline.data, followup=followup, brain=brain,
                              affine=baseline.affine, csf=csf, score=result.detections.score, white_matter=wm,
                              baseline_lesions=lesions)
    t2 = time.perf_counter()
    return baseline.affine, gt, result.detections, rows, (t1 - t0, t2 - t1)


def score(mask, gt, affine) -> dict:
    m = evaluate_case(mask, gt, affine=affine).metrics
    return {k: m[k] for k in ("lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice", "msseg2_detected",
                              "gt_lesions", "msseg2_fp", "pred_lesions")}


def summarise(name: str, results: list[dict]) -> str:
    with_gt = [r for r in results if r["gt_lesions"] > 0]
    mean = lambda key: np.nanmean([r[key] for r in with_gt])
    det = sum(r["msseg2_detected"] for r in results)
    gt = sum(r["gt_lesions"] for r in results)
    fp = sum(r["msseg2_fp"] for r in results)
    return (f"{name:34s} {mean('lesion_sensitivity'):6.3f} {mean('lesion_ppv'):6.3f} {mean('lesion_f1'):6.3f} "
            f"{mean('dice'):6.3f}   {det:4d}/{gt:<4d} {fp / len(results):8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--eval", nargs="+", type=Path, required=True)
    parser.add_argument("--rule", default="prados", help="subtract rule")
    args = parser.parse_args()
    print(f"subtract rule: {args.rule}")
    for with_maps in (False, True):
        setting = "with tissue map + baseline lesions" if with_maps else "no maps (CSF from FLAIR)"
        rows_all, truth, groups = [], [], []
        for n, case in enumerate(args.train):
            affine, gt, detections, rows, _ = candidates(case, with_maps, args.rule)
            verdict = candidate_truth(detections.labels, gt, affine)
            rows_all += rows
            truth += [verdict.get(r["label"], 0) for r in rows]
            groups += [n] * len(rows)
        model = train(feature_matrix(rows_all), np.array(truth), np.array(groups), feature_names=list(MODEL_FEATURES))
        top = sorted(model.card["feature_importance_gain"].items(), key=lambda kv: -kv[1])[:6]
        print(f"\n== {setting}: learned filter trained on {len(args.train)} cases, {len(truth)} candidates "
              f"({sum(truth)} true), {model.card['rounds']} rounds, threshold {model.threshold:.2f}")
        print("   top features (gain): " + ", ".join(f"{k} {v:.0f}" for k, v in top))
        results = {"subtract": [], "subtract + rules": [], "subtract + rules (sph>=0.5)": [],
                   "subtract + learned filter": []}
        times = []
        for case in args.eval:
            affine, gt, detections, rows, timing = candidates(case, with_maps, args.rule)
            times.append(timing)
            results["subtract"].append(score(detections.mask, gt, affine))
            decide_by_rules(rows, FilterRules(), have_tissues=with_maps, have_baseline_lesions=with_maps)
            results["subtract + rules"].append(score(kept_detections(detections.labels, rows, affine).mask, gt, affine))
            decide_by_rules(rows, MEASURED_RULES, have_tissues=with_maps, have_baseline_lesions=with_maps)
            results["subtract + rules (sph>=0.5)"].append(
                score(kept_detections(detections.labels, rows, affine).mask, gt, affine))
            decide_by_model(rows, model.model_text, model.features, model.threshold)
            results["subtract + learned filter"].append(
                score(kept_detections(detections.labels, rows, affine).mask, gt, affine))
        print(f"   {len(args.eval)} evaluation cases; mean over cases with new lesions; pooled detected/gt; FP per case")
        print(f"{'stage':34s} {'sens':>6s} {'ppv':>6s} {'F1':>6s} {'dice':>6s}   {'det/gt':9s} {'fp/case':>8s}")
        for name, res in results.items():
            print(summarise(name, res))
        base = sum(r["msseg2_detected"] for r in results["subtract"])
        for name in list(results)[1:]:
            lost = base - sum(r["msseg2_detected"] for r in results[name])
            print(f"   {name}: detected lesions lost {lost}/{base} ({100 * lost / max(base, 1):.1f} %)")
        t = np.array(times)
        print(f"   time per case: subtract {t[:, 0].mean():.2f} s, features {t[:, 1].mean():.2f} s")


if __name__ == "__main__":
    main()
