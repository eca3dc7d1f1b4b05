"""Held-out accuracy of learned weights on simulated test cases, with `mstools.metrics`.

Run: python benchmarks/heldout_deep.py TEST_FOLDER [--weights W.pt ...] [--update-card] [--threads 2]
Without --weights, the three default weights. Each case is segmented as `mstools segment`
does (default threshold 0.5, components > 4 mm3) and scored against its ground truth
(MSSEG-2 lesion-wise F1, Dice). With --update-card the summary is stored in the weight
file's card under "held_out".
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", type=Path)
    parser.add_argument("--weights", type=Path, nargs="*")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args()

    import torch

    from mstools import case_layout as layout
    from mstools.detect.deep import MODELS
    from mstools.models import packaged_model, read_card, write_card
    from mstools.detect.deep.predictor import Predictor, lesion_mask
    from mstools.io import read_image, read_mask
    from mstools.metrics import evaluate_case

    torch.set_num_threads(args.threads)
    from mstools.detect.deep.networks import NETWORKS

    weights = args.weights or [packaged_model("deep", m) for m in MODELS if NETWORKS[m].default_weights]
    cases = sorted(c for c in args.test.iterdir() if layout.is_longitudinal_case(c))
    keys = ("dice", "lesion_f1", "lesion_sensitivity", "lesion_ppv", "gt_lesions", "pred_lesions")
    for path in weights:
        predictor = Predictor.from_file(path, device="cpu")
        rows = []
        for case in cases:
            b = read_image(case / layout.BASELINE)
            f = read_image(case / layout.FOLLOWUP)
            truth = read_mask(case / layout.GROUND_TRUTH)
            t = time.perf_counter()
            maps = predictor.predict(b.data, f.data, spacing_mm=b.spacing_mm)
            mask = lesion_mask(maps["new"], voxel_volume_mm3=b.voxel_volume_mm3)
            m = evaluate_case(mask, truth.data, affine=b.affine, case=case.name).metrics
            rows.append({"case": case.name, "seconds": time.perf_counter() - t, **{k: m[k] for k in keys}})
            print(f"{predictor.config.model:10s} {case.name}: " + ", ".join(
                f"{k} {rows[-1][k]:.3f}" if isinstance(rows[-1][k], float) else f"{k} {rows[-1][k]}" for k in keys),
                flush=True)

        def mean(key):
            v = [r[key] for r in rows if not (isinstance(r[key], float) and math.isnan(r[key]))]
            return float(np.mean(v)) if v else float("nan")

        summary = {"cases": [r["case"] for r in rows], "mean_dice": mean("dice"), "mean_lesion_f1": mean("lesion_f1"),
                   "mean_lesion_sensitivity": mean("lesion_sensitivity"), "mean_lesion_ppv": mean("lesion_ppv"),
                   "gt_lesions": int(sum(r["gt_lesions"] for r in rows)),
                   "pred_lesions": int(sum(r["pred_lesions"] for r in rows)),
                   "rule": "MSSEG-2 (Anima) lesion-wise rule of mstools.metrics; threshold 0.5, components > 4 mm3",
                   "per_case": rows}
        print(f"{predictor.config.model}: mean Dice {summary['mean_dice']:.3f}, lesion F1 {summary['mean_lesion_f1']:.3f}, "
              f"sensitivity {summary['mean_lesion_sensitivity']:.3f}, PPV {summary['mean_lesion_ppv']:.3f} "
              f"({summary['gt_lesions']} true, {summary['pred_lesions']} predicted lesions)", flush=True)
        if args.update_card:
            card = read_card(path) or {}
            card["held_out"] = {**summary, "test_folder": str(args.test),
                                "generator_seeds": [json.loads((c / layout.TRUTH).read_text())["config"]["seed"]
                                                    for c in cases]}
            write_card(path, card)


if __name__ == "__main__":
    main()
