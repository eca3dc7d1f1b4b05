"""Lesion activity (new / enlarging / shrinking, patient-level decision) on simulated cohorts.

Two cohorts of 20 simulated 1 mm pairs each: a calibration cohort (seeds 3000-3019) on which
the rule's thresholds and the activity model's coefficients are chosen, and a test cohort
(seeds 3100-3119) scored once they are. Per cohort: 10 patients with new and enlarging
lesions (3 enlarging, 2 shrinking), 5 with enlarging lesions only, 5 inactive (2 shrinking
lesions, no new, no enlarging).

  python benchmarks/lesion_activity.py --work W prepare        # simulate + `mstools run` (reused)
  python benchmarks/lesion_activity.py --work W sweep          # calibration: rim coverage sweep
  python benchmarks/lesion_activity.py --work W fit            # calibration: activity model
  python benchmarks/lesion_activity.py --work W score [--cohort test]

The baseline all-lesion map is the simulator's (``lesions_time01.nii.gz``: "a baseline
lesion mask given by the user"); ``--baseline-source coactseg`` uses CoactSeg's time-1
head instead (``mstools segment`` is run once per case and reused).

Scores: enlarging lesions detected (LTPR: a reported grown part overlaps the lesion's true
grown part), share of enlarging / shrinking lesions reported as new (a reported new lesion
overlaps the lesion at either visit), shrinking lesions found, new-lesion F1 / Dice of the
new lesions before (the run's final mask) and after the classification, and the patient
decision (sensitivity, specificity, AUC of the activity probability).
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
from pathlib import Path

import numpy as np

COHORTS = {"cal": 3000, "test": 3100}


def case_options(index: int) -> list[str]:
    if index < 10:
        return ["--n-enlarging", "3", "--n-shrinking", "2"]
    if index < 15:
        return ["--n-new", "0", "--n-enlarging", "3", "--n-shrinking", "2"]
    return ["--n-new", "0", "--n-enlarging", "0", "--n-shrinking", "2"]


def cases(work: Path, cohort: str) -> list[tuple[Path, Path]]:
    base = COHORTS[cohort]
    return [(work / cohort / f"sim-{base + i}", work / "runs" / cohort / f"sim-{base + i}") for i in range(20)]


def prepare(work: Path, cohorts: list[str], coactseg: bool) -> None:
    for cohort in cohorts:
        for index, (case, run) in enumerate(cases(work, cohort)):
            if not (case / "truth.json").is_file():
                subprocess.run(["mstools", "-q", "simulate", str(case), "--seed", str(COHORTS[cohort] + index),
                                *case_options(index), "--dtype", "int16", "--force"], check=True,
                               stdout=subprocess.DEVNULL)
            if not (run / "run.json").is_file():
                subprocess.run(["mstools", "-q", "run", str(case), "-o", str(run)], check=True,
                               stdout=subprocess.DEVNULL)
            if coactseg and not (run / "coactseg" / "coactseg_all_time01_mask.nii.gz").is_file():
                subprocess.run(["mstools", "-q", "segment", str(case), "-o", str(run / "coactseg" / "coactseg"),
                                "--model", "coactseg", "--force"], check=True, stdout=subprocess.DEVNULL)


# ----------------------------------------------------------------------------- truth


def truth_of(case: Path) -> dict:
    """The true changes (mstools.metrics.activity, as `evaluate --activity` derives them)."""
    from mstools.io import read_mask
    from mstools.metrics import activity as metrics

    l1 = read_mask(case / "lesions_time01.nii.gz")
    l2 = read_mask(case / "lesions_time02.nii.gz")
    new = read_mask(case / "ground_truth.nii.gz").data > 0
    changes = metrics.true_changes(l1.data, l2.data, new, affine=l1.affine)
    return {"changes": changes, "active": metrics.is_active(changes), "new": new}


# ----------------------------------------------------------------------------- the classification


def ingredients(case: Path, run: Path, source: str) -> dict:
    from mstools import activity as act
    from mstools import case_layout as layout
    from mstools.io import read_image, read_labels, read_mask, read_tsv

    brain = read_mask(case / layout.BRAIN_MASK).data > 0
    final = read_mask(run / "filter" / "filter_mask.nii.gz")      # the chain's new lesions before activity
    baseline_path = (case / layout.LESIONS_BASELINE if source == "user"
                     else run / "coactseg" / "coactseg_all_time01_mask.nii.gz")
    tissues = read_labels(case / layout.TISSUES).data
    return {"affine": final.affine, "brain": brain, "final": final.data > 0,
            "score": read_image(run / "filter" / "filter_score.nii.gz").data,
            "labels": read_labels(run / "filter" / "filter_labels.nii.gz").data,
            "candidates": read_mask(run / "subtract" / "subtract_mask.nii.gz").data > 0,
            "subtraction": read_image(run / "subtract" / "subtract_subtraction.nii.gz").data,
            "n_candidates": len(read_tsv(run / "subtract" / "subtract_lesions.tsv")),
            "baseline": read_mask(baseline_path).data > 0,
            "locate": act.Locator(brain, affine=final.affine, csf=tissues == 1, grey_matter=tissues == 2)}


def classify(parts: dict, *, rim: float, shrink: float, k: float = 2.5):
    from mstools import activity as act

    decrease = act.decrease_mask(parts["subtraction"], parts["brain"], k=k)
    return act.classify_changes(parts["final"], parts["candidates"], parts["baseline"], decrease,
                                affine=parts["affine"], score=parts["score"], locate=parts["locate"],
                                lesion_labels=parts["labels"],
                                rim_coverage_min=rim, shrink_fraction_min=shrink)


def score_case(truth: dict, parts: dict, result) -> dict:
    from mstools.metrics import activity as metrics
    from mstools.metrics.case import evaluate_case

    counts = metrics.score_changes(truth["changes"], result.new_labels > 0, result.enlarging_labels > 0)
    counts["reported_enlarging"] = result.count("enlarging")
    chain = metrics.score_changes(truth["changes"], parts["final"], np.zeros_like(parts["final"]))
    counts["enlarging_as_new_before"] = chain["enlarging_as_new"]
    counts["shrinking_as_new_before"] = chain["shrinking_as_new"]
    if truth["new"].any():      # new-lesion accuracy before (the run's filter) and after the classification
        before = evaluate_case(parts["final"], truth["new"], affine=parts["affine"]).metrics
        after = evaluate_case(result.new_labels > 0, truth["new"], affine=parts["affine"]).metrics
        counts.update(f1_before=before["lesion_f1"], f1_after=after["lesion_f1"], dice_before=before["dice"],
                      dice_after=after["dice"])
    return counts


def summarise(rows: list[dict]) -> dict:
    from mstools.metrics import activity as metrics

    totals = {key: sum(r[key] for r in rows) for key in rows[0] if not key.startswith(("f1", "dice"))}
    means = {key: float(np.mean([r[key] for r in rows if key in r]))
             for key in ("f1_before", "f1_after", "dice_before", "dice_after")}
    return {**totals, **metrics.rates(totals), **means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--cohort", default="cal", choices=sorted(COHORTS))
    parser.add_argument("--baseline-source", default="user", choices=("user", "coactseg"))
    parser.add_argument("action", choices=("prepare", "sweep", "fit", "score"))
    args = parser.parse_args()
    if args.action == "prepare":
        prepare(args.work, [args.cohort], args.baseline_source == "coactseg")
        return
    from mstools import activity as act

    cache = args.work / f"cache-{args.cohort}-{args.baseline_source}.pkl"   # decoding 20 cases takes minutes
    if cache.is_file():
        data = pickle.loads(cache.read_bytes())
    else:
        data = [(case.name, truth_of(case), ingredients(case, run, args.baseline_source))
                for case, run in cases(args.work, args.cohort)]
        cache.write_bytes(pickle.dumps(data))
    if args.action == "sweep":
        print("rim_coverage | enlarging LTPR | enlarging or shrinking reported as new | new F1 before -> after")
        for rim in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5):
            s = summarise([score_case(t, p, classify(p, rim=rim, shrink=act.SHRINK_FRACTION_MIN)) for _, t, p in data])
            print(f"{rim:.2f} | {s['enlarging_ltpr']:.3f} ({s['enlarging_detected']}/{s['enlarging']}) | "
                  f"{s['changed_as_new']:.3f} | {s['f1_before']:.3f} -> {s['f1_after']:.3f}")
        return
    results = [(name, t, p, classify(p, rim=act.RIM_COVERAGE_MIN, shrink=act.SHRINK_FRACTION_MIN))
               for name, t, p in data]
    features = np.array([act.patient_features(r, p["n_candidates"]) for _, _, p, r in results])
    labels = np.array([t["active"] for _, t, _, _ in results])
    if args.action == "fit":
        w = act.fit_logistic(features, labels)
        print("coefficients (intercept, top score, log1p changes, log1p candidates):",
              ", ".join(f"{v:.3f}" for v in w))
        return
    rows = [score_case(t, p, r) for _, t, p, r in results]
    probabilities = [act.probability_of(x) for x in features]
    for (name, t, p, r), row, prob in zip(results, rows, probabilities):
        print(f"{name}: active {t['active']!s:5} p {prob:.3f} | enlarging {row['enlarging_detected']}/"
              f"{row['enlarging']} (reported {row['reported_enlarging']}) | as new: enlarging "
              f"{row['enlarging_as_new']}, shrinking {row['shrinking_as_new']} of {row['shrinking']}")
    s = summarise(rows)
    from mstools.metrics.activity import patient_decision

    decision = patient_decision(probabilities, np.array(probabilities) >= 0.5, labels)
    print(f"\ncohort {args.cohort} ({len(rows)} patients, {int(labels.sum())} active), baseline lesions: "
          f"{args.baseline_source}")
    print(f"enlarging LTPR {s['enlarging_ltpr']:.3f} ({s['enlarging_detected']}/{s['enlarging']}); reported as new: "
          f"enlarging {s['enlarging_as_new']:.3f}, shrinking {s['shrinking_as_new']:.3f}, both "
          f"{s['changed_as_new']:.3f}; kind accuracy {s['kind_accuracy']:.3f}")
    print(f"before the classification (the filter's lesions): enlarging reported as new "
          f"{s['enlarging_as_new_before']}/{s['enlarging']}, shrinking {s['shrinking_as_new_before']}/{s['shrinking']}")
    print(f"new lesions (patients with new lesions): F1 {s['f1_before']:.3f} -> {s['f1_after']:.3f}, Dice "
          f"{s['dice_before']:.3f} -> {s['dice_after']:.3f}")
    print(f"patient: sensitivity {decision['sensitivity']:.3f} specificity {decision['specificity']:.3f} "
          f"AUC {decision['auc']:.3f}")


if __name__ == "__main__":
    main()
