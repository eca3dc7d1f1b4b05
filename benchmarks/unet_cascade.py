"""The all-lesion -> new-lesion cascade in a deep new-lesion model (paper 001: McKinley et al.'s
four-channel DeepSCAN): the packaged U-Net fine-tuned on the same cases for the same iterations,
drawing the same patches and augmentations (same seed), once as it is (two channels: baseline,
follow-up) and once with CoactSeg's all-lesion masks of both visits as two more channels
(mstools.detect.deep.cascade; the maps' first-layer weights start at 0). Scored on held-out cases
(lesion-wise F1, Dice; `segment`'s post-processing: threshold 0.5, components > 4 mm3).

Each case folder needs CoactSeg's masks (``mstools segment CASE --model coactseg -o CASE/coactseg``).

    python benchmarks/unet_cascade.py --train EXP/sim/sim-91?? --test EXP/sim/sim-92?? \
        EXP/real/patient01 --iterations 300 --out EXP/unet

prints the training time, one row per test case and model, then the means per test group.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEGMENT_NAME = "coactseg"


def read(case: Path):
    from mstools import case_layout as layout
    from mstools.io import read_image, read_mask

    b, f = read_image(case / layout.BASELINE), read_image(case / layout.FOLLOWUP)
    maps = [read_mask(str(case / SEGMENT_NAME) + f"_all_time0{n}_mask.nii.gz").data for n in (1, 2)]
    return b, f, read_mask(case / layout.GROUND_TRUTH), maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--test", nargs="+", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import numpy as np
    import torch

    from mstools.detect.deep.cascade import CascadePredictor, CascadeTrainer, prepare_cascade_case
    from mstools.detect.deep.config import TrainingConfig
    from mstools.detect.deep.predictor import Predictor, lesion_mask
    from mstools.detect.deep.training import Trainer, prepare_case
    from mstools.detect.deep.weights import build_loaded, load_weights, save_weights
    from mstools.metrics import evaluate_case
    from mstools.models import packaged_model

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    config, packaged_state, _ = load_weights(packaged_model("deep", "unet"))
    cascade_config = dataclasses.replace(config, model="cascade")   # the registry's four-channel U-Net
    # the packaged U-Net's own training settings (its card), batch reduced for the CPU
    training = TrainingConfig(iterations=args.iterations, batch_longitudinal=args.batch, batch_single=0,
                              learning_rate=1e-3, p_random_patch=0.33, seed=args.seed)
    plain_cases, cascade_cases = [], []
    for case in args.train:
        b, f, truth, maps = read(case)
        plain_cases.append(prepare_case(case.name, [b.data, f.data], truth.data, spacing_mm=b.spacing_mm,
                                        config=config))
        cascade_cases.append(prepare_cascade_case(case.name, b.data, f.data, truth.data, maps,
                                                  spacing_mm=b.spacing_mm, config=cascade_config))
    trainers = {"unet fine-tuned": Trainer(config, training, plain_cases),
                "unet + cascade fine-tuned": CascadeTrainer(cascade_config, training, cascade_cases,
                                                            init_state=packaged_state)}
    trainers["unet fine-tuned"].model.load_state_dict(packaged_state, strict=True)
    for name, trainer in trainers.items():
        started, losses = time.perf_counter(), []
        for _ in range(args.iterations):
            losses.append(trainer.step()["loss"])
        print(f"{name}: {args.iterations} iterations in {time.perf_counter() - started:.0f} s, loss "
              f"{np.mean(losses[:25]):.3f} (first 25) -> {np.mean(losses[-25:]):.3f} (last 25)", flush=True)
        save_weights(args.out / f"{name.replace(' ', '_').replace('+', 'plus')}.pt", trainer.model_config,
                     trainer.model.state_dict(), extra={"iterations": args.iterations, "seed": args.seed})
    predictors = {"unet packaged": Predictor(build_loaded(config, packaged_state), config),
                  "unet fine-tuned": Predictor(trainers["unet fine-tuned"].model, config),
                  "unet + cascade fine-tuned": CascadePredictor(trainers["unet + cascade fine-tuned"].model,
                                                                cascade_config)}
    rows = []
    print("case".ljust(16) + "model".ljust(28) + "lesion_F1".rjust(10) + "Dice".rjust(8) + "LTPR".rjust(8)
          + "PPV".rjust(8), flush=True)
    for case in args.test:
        group = "simulated" if (case / "truth.json").is_file() else "real"
        b, f, truth, maps = read(case)
        for name, predictor in predictors.items():
            extra = (maps,) if isinstance(predictor, CascadePredictor) else ()
            p = predictor.predict(b.data, f.data, *extra, spacing_mm=b.spacing_mm)["new"]
            mask = lesion_mask(p, voxel_volume_mm3=b.voxel_volume_mm3)
            m = evaluate_case(mask, truth.data, affine=b.affine).metrics
            rows.append({"case": case.name, "group": group, "model": name,
                         **{k: m[k] for k in ("lesion_f1", "dice", "lesion_sensitivity", "lesion_ppv")}})
            print(case.name.ljust(16) + name.ljust(28) + f"{m['lesion_f1']:10.3f}{m['dice']:8.3f}"
                  f"{m['lesion_sensitivity']:8.3f}{m['lesion_ppv']:8.3f}", flush=True)
    print("\nmeans over the test cases (lesion F1 and Dice)")
    for group in ("simulated", "real"):
        for name in predictors:
            sel = [r for r in rows if r["group"] == group and r["model"] == name]
            if sel:
                print(group.ljust(12) + f"{len(sel):6d}  " + name.ljust(28)
                      + f"{np.nanmean([r['lesion_f1'] for r in sel]):10.3f}{np.nanmean([r['dice'] for r in sel]):8.3f}")
    (args.out / "rows.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                    "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
