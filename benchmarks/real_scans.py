"""Every detector and the default `mstools run` on real longitudinal pairs: the lesion-wise table.

Input: case folders written by ``mstools import-open-ms`` (their ``source.json`` says
which patients are held out). Each detector runs as its own command (``mstools
subtract``, ``refine``, ``filter``, ``segment``, ``register``, ``run``) into a work
folder; outputs already there are reused. Every final mask is scored against the
case's increase-only ground truth with the library's ``evaluate_case`` (MSSEG-2 /
Anima rule for sensitivity, PPV and F1; any-overlap LTPR and LFPR of ISBI 2015;
Dice). Development and held-out patients are summarised apart (mean over patients).

Run:
  mstools import-open-ms ~/open_ms_data -o real
  python benchmarks/real_scans.py real/patient* --work /tmp/real_work [--register]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mstools import case_layout as layout
from mstools.io import read_mask
from mstools.metrics.case import evaluate_case

#: detector name -> (command line after `mstools`, with {case} and {out}; the mask it writes).
DETECTORS: dict[str, tuple[str, str]] = {
    "subtract (prados)": ("subtract {case} -o {out}/subtract_prados --rule prados", "subtract_prados_mask"),
    "subtract (larosa)": ("subtract {case} -o {out}/subtract_larosa --rule larosa", "subtract_larosa_mask"),
    "subtract (hamzaoui)": ("subtract {case} -o {out}/subtract_hamzaoui --rule hamzaoui", "subtract_hamzaoui_mask"),
    "refine (on prados)": ("refine apply {case} -c {out}/subtract_prados -o {out}/refine", "refine_mask"),
    "filter rules (on prados)": ("filter apply {case} -c {out}/subtract_prados -o {out}/filter", "filter_mask"),
    "segment coactseg": ("segment {case} --model coactseg -o {out}/coactseg", "coactseg_mask"),
    "segment unet": ("segment {case} --model unet -o {out}/unet", "unet_mask"),
    "segment multitask": ("segment {case} --model multitask -o {out}/multitask", "multitask_mask"),
    "register": ("register {case}/" + layout.FOLLOWUP + " {case}/" + layout.BASELINE + " {out}/register "
                 "--followup-mask {case}/" + layout.BRAIN_MASK, "register_mask"),
    "run (default chain)": ("run {case} -o {out}/run", "run/new_lesions_mask"),
}

COLUMNS = ("gt_lesions", "pred_lesions", "lesion_sensitivity", "lesion_ppv", "lesion_f1", "ltpr", "lfpr", "dice")


def run_detector(name: str, case: Path, out: Path) -> tuple[Path, float]:
    command, mask = DETECTORS[name]
    mask_path = out / f"{mask}.nii.gz"
    if mask_path.is_file():
        return mask_path, float("nan")
    start = time.perf_counter()
    args = ["mstools", "-q", *command.format(case=case, out=out).split()]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return mask_path, time.perf_counter() - start


def score(mask_path: Path, case: Path) -> dict:
    prediction = read_mask(mask_path)
    truth = read_mask(case / layout.GROUND_TRUTH)
    metrics = evaluate_case(prediction.data > 0, truth.data > 0, affine=truth.affine).metrics
    return {key: metrics[key] for key in COLUMNS}


def table_row(name: str, rows: list[dict]) -> str:
    """A markdown row: lesions summed over cases, the rates and Dice as means over cases."""
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in COLUMNS}
    total = {k: int(sum(r[k] for r in rows)) for k in ("gt_lesions", "pred_lesions")}
    return (f"| {name} | {total['gt_lesions']} | {total['pred_lesions']} | {mean['lesion_sensitivity']:.3f} | "
            f"{mean['lesion_ppv']:.3f} | {mean['lesion_f1']:.3f} | {mean['ltpr']:.3f} | {mean['lfpr']:.3f} | "
            f"{mean['dice']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", type=Path, help="Case folders from mstools import-open-ms.")
    parser.add_argument("--work", type=Path, required=True, help="Folder for the detectors' outputs (reused).")
    parser.add_argument("--register", action="store_true", help="Also run register (elastix, ~1 min per pair).")
    parser.add_argument("--detectors", nargs="*", default=None, help="Detector names to run (default: all).")
    args = parser.parse_args()
    names = args.detectors or [n for n in DETECTORS if args.register or n != "register"]
    groups: dict[str, list[Path]] = {"development": [], "held-out": []}
    for case in args.cases:
        source = json.loads((case / "source.json").read_text())
        groups["held-out" if source["held_out"] else "development"].append(case)
    rows: dict[tuple[str, str], list[dict]] = {}
    for group, cases in groups.items():
        for case in cases:
            out = args.work / case.name
            out.mkdir(parents=True, exist_ok=True)
            for name in names:
                try:
                    mask, seconds = run_detector(name, case, out)
                    result = score(mask, case)
                except RuntimeError as exc:
                    print(f"{case.name} {name}: {exc}", file=sys.stderr)
                    continue
                result["seconds"] = seconds
                rows.setdefault((group, name), []).append(result)
                print(f"{case.name:12s} {name:26s} " + " ".join(f"{k}={result[k]:.3g}" for k in COLUMNS)
                      + f" t={seconds:.1f}s", file=sys.stderr, flush=True)
    for group, cases in groups.items():
        if not cases:
            continue
        print(f"\n{group}: {', '.join(c.name for c in cases)} (mean over patients; sens/PPV/F1: MSSEG-2 rule; "
              "LTPR/LFPR: any overlap)")
        print("| detector | gt | pred | sens | PPV | F1 | LTPR | LFPR | Dice |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in names:
            found = rows.get((group, name))
            if not found:
                continue
            print(table_row(name, found))


if __name__ == "__main__":
    main()
