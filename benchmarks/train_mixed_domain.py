"""Retrain the default chain's learned stages (refine, learned filter) on a mixed domain.

The mixed domain: 1 mm simulated pairs, 1.5 mm and thick-slice simulated pairs,
clinical-acquisition simulations (2D multi-slice, protocol change), lesions injected
into real scans, and development real pairs. Held-out real patients (03, 12, 19)
must never be given here.

Steps, each a `mstools` command so that the models are made exactly as a user would:

1. every case folder is mirrored into WORK/<name>/ (symbolic links), so that stage
   outputs never land in the case folders;
2. ``mstools subtract`` (prados) on every case;
3. ``mstools refine train`` on the training cases' subtract candidates;
4. ``mstools refine apply`` with that model and `mstools run`'s size rule on every case;
5. ``mstools filter train`` on the training cases' refine outputs (lesion-level);
6. the chain with both new models is scored on the validation cases (and the chain
   with the packaged models beside it), lesion-wise, as `benchmarks/real_scans.py` does.

Run:
  python benchmarks/train_mixed_domain.py --train T1 T2 ... --val V1 V2 ... --work /tmp/mixed
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from real_scans import COLUMNS, score, table_row  # this folder: scored as benchmarks/real_scans.py does

#: `mstools run`'s refine sizes (mstools/pipeline/stages.py RUN_OVERRIDES), in mm3 so that they mean
#: the same on every grid: 5 voxels of 1 mm.
REFINE_MIN_MM3 = 5.0


def mstools(*args: str) -> None:
    command = ["mstools", "-q", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)}\n{done.stderr}")


def mirror(case: Path, work: Path) -> Path:
    """WORK/<case name>: links to the case's files (names made unique by the parent folder)."""
    target = work / f"{case.parent.name}-{case.name}"
    target.mkdir(parents=True, exist_ok=True)
    for item in case.iterdir():
        link = target / item.name
        if not link.exists():
            link.symlink_to(item.resolve())
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--val", nargs="*", type=Path, default=[])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--feature-set", default="context")
    parser.add_argument("--k", type=float, default=None, help="subtract --k (default: the command's).")
    parser.add_argument("--core-mm", type=float, default=None, help="subtract --core-mm (default: the command's).")
    parser.add_argument("--filter-probability", type=float, default=None,
                        help="Learned filter threshold for the validation chain (default: the card's).")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    train = [mirror(c, args.work) for c in args.train]
    val = [mirror(c, args.work) for c in args.val]
    for case in train + val:
        if not (case / "subtract_mask.nii.gz").exists():
            mstools("subtract", str(case), "-o", str(case / "subtract"), *(["--k", str(args.k)] if args.k else []),
                    *(["--core-mm", str(args.core_mm)] if args.core_mm is not None else []),
                    "--min-followup-sd", "0", "--min-peak-sd", "0")   # the run's candidates (RUN_OVERRIDES): all
        print(f"subtract: {case.name}", file=sys.stderr, flush=True)
    refine_model = args.work / "refine_mixed.txt"
    if not refine_model.exists():
        mstools("refine", "train", *map(str, train), "--candidates-name", "subtract", "--feature-set",
                args.feature_set, "--cv-folds", "0", "-o", str(refine_model))
    for case in train + val:
        if not (case / "refine_mask.nii.gz").exists():
            mstools("refine", "apply", str(case), "-c", str(case / "subtract"), "-o", str(case / "refine"),
                    "--model", str(refine_model), "--min-volume-mm3", str(REFINE_MIN_MM3), "--min-minor-axis", "0")
    filter_model = args.work / "filter_mixed.txt"
    if not filter_model.exists():
        mstools("filter", "train", *map(str, train), "--candidates-name", "refine", "-o", str(filter_model))
    subtract_filter_model = args.work / "filter_on_subtract_mixed.txt"
    if not subtract_filter_model.exists():
        mstools("filter", "train", *map(str, train), "--candidates-name", "subtract", "-o", str(subtract_filter_model))
    print(f"models: {refine_model} {filter_model} {subtract_filter_model}", file=sys.stderr)
    if not val:
        return
    rows: dict[str, list[dict]] = {}
    for case in val:
        extra = [] if args.filter_probability is None else ["--probability", str(args.filter_probability)]
        # the packaged models for comparison (with La Rosa's rules, and with the learned filter: today's default)
        if not (case / "refinepackaged_mask.nii.gz").exists():
            mstools("refine", "apply", str(case), "-c", str(case / "subtract"), "-o", str(case / "refinepackaged"),
                    "--min-volume-mm3", str(REFINE_MIN_MM3), "--min-minor-axis", "0")
        if not (case / "packagedchain_mask.nii.gz").exists():
            mstools("filter", "apply", str(case), "-c", str(case / "refinepackaged"), "-o", str(case / "packagedchain"))
        if not (case / "defaultchain_mask.nii.gz").exists():
            mstools("filter", "apply", str(case), "-c", str(case / "refinepackaged"), "-o", str(case / "defaultchain"),
                    "--learned")
        if not (case / "filtersubtract_mask.nii.gz").exists():
            mstools("filter", "apply", str(case), "-c", str(case / "subtract"), "-o", str(case / "filtersubtract"),
                    "--model", str(subtract_filter_model))
        if not (case / "rulessubtract_mask.nii.gz").exists():
            mstools("filter", "apply", str(case), "-c", str(case / "subtract"), "-o", str(case / "rulessubtract"))
        if not (case / "filterlearned_mask.nii.gz").exists():
            mstools("filter", "apply", str(case), "-c", str(case / "refine"), "-o", str(case / "filterlearned"),
                    "--model", str(filter_model), *extra)
        if not (case / "filterrules_mask.nii.gz").exists():
            mstools("filter", "apply", str(case), "-c", str(case / "refine"), "-o", str(case / "filterrules"))
        for name, mask in (("subtract", "subtract_mask"),
                           ("packaged refine > rules", "packagedchain_mask"),
                           ("packaged refine > packaged learned filter (today's default)", "defaultchain_mask"),
                           ("rules on subtract", "rulessubtract_mask"),
                           ("learned filter (mixed) on subtract", "filtersubtract_mask"),
                           ("refine (mixed)", "refine_mask"),
                           ("refine (mixed) > rules", "filterrules_mask"),
                           ("refine (mixed) > learned filter (mixed)", "filterlearned_mask")):
            result = score(case / f"{mask}.nii.gz", case)
            rows.setdefault(name, []).append(result)
            print(f"{case.name:24s} {name:34s} " + " ".join(f"{k}={result[k]:.3g}" for k in COLUMNS),
                  file=sys.stderr, flush=True)
    groups = {"all validation cases": val}
    for case in val:
        groups.setdefault(_domain(case), []).append(case)
    for group, cases in groups.items():
        print(f"\n{group} ({len(cases)} cases)")
        print("| stage | gt | pred | sens | PPV | F1 | LTPR | LFPR | Dice |\n|---|---|---|---|---|---|---|---|---|")
        for name, found in rows.items():
            picked = [r for r, c in zip(found, val) if c in cases]
            print(table_row(name, picked))


def _domain(case: Path) -> str:
    """The validation group of a case (by folder name, as the build scripts name them)."""
    name = case.name
    if name.startswith("pp_cases-"):
        return "preprocessed from raw scans (`run --baseline --followup`'s domain)"
    if name.startswith("real-") or "-real-" in name:
        return "real pairs"
    if name.startswith("filled-"):
        return "real lesions filled in at baseline"
    if name.startswith(("xs-", "single-", "pair-")):
        return "lesions injected into real scans"
    return "simulated anatomy"


if __name__ == "__main__":
    main()
