"""With and without self-supervised pretraining by patch position (paper 003), few labelled cases.

Run:
  python benchmarks/pretrain_position.py --work W --train sim/train --test sim/test --real real/patient01 \
      --unlabelled FLAIR_OR_FOLDER ... [--sizes 5 20] [--iterations 1000] [--pretrain-iterations 400] [--jobs 4]

One pretraining run (`mstools train W/pretrain --pretrain position --unlabelled ...`), then for
each training-set size N (the first N case folders of --train, sorted) two fine-tuning runs of
the same network, data, seed and iterations: from random weights, and from the pretrained
encoder (`--init-weights W/pretrain/encoder.pt`). Every run is one `mstools train` process with
one torch thread (up to --jobs at a time). Each final model.pt is then applied as `mstools
segment` does (threshold 0.5, components > 4 mm3) to the --test cases and the --real case(s),
and scored with `mstools.metrics` (MSSEG-2 lesion-wise F1, Dice); the table is printed.
Existing finished runs in W are reused (delete W to start over).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mstools_cli.main", *args]


def _done(out: Path, name: str) -> int:
    """Iterations of the model/encoder a run folder holds (0: none yet)."""
    card = out / f"{name}.card.json"
    return int(json.loads(card.read_text()).get("iterations", 0)) if card.is_file() else 0


def _plan(out: Path, cmd: list[str], name: str, target: int):
    """The command to run: none when ``out`` has reached ``target`` iterations; --resume (same
    result as one run: the loop resumes exactly) when it has a checkpoint of fewer."""
    done = _done(out, name)
    if done >= target:
        return None
    if done and (out / "checkpoint.pt").is_file():
        return out, [a for a in cmd if a != "--force"] + ["--resume"]
    return out, cmd


def _run_all(commands: list, jobs: int) -> None:
    """Run the planned commands, --jobs at a time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    pending = [c for c in commands if c is not None]
    running: list[tuple[Path, subprocess.Popen, float]] = []
    while pending or running:
        while pending and len(running) < jobs:
            out, cmd = pending.pop(0)
            out.parent.mkdir(parents=True, exist_ok=True)
            log = open(out.parent / f"{out.name}.log", "a")
            print(f"start {out}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            running.append((out, subprocess.Popen(cmd, stdout=log, stderr=log, env=env), time.time()))
        time.sleep(2)
        for item in list(running):
            out, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    raise SystemExit(f"{out}: failed (exit {proc.returncode}); see {out.parent / (out.name + '.log')}")
                print(f"done {out} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)


def _evaluate(weights: Path, cases: list[Path]) -> dict:
    """Mean lesion-wise F1 and Dice of ``weights`` over ``cases``; kept in WEIGHTS.eval-<hash>.json
    for the same weights and cases (so that a rerun only scores what changed)."""
    import hashlib

    from mstools.io import sha256

    key = hashlib.sha256(json.dumps([sha256(weights), [str(c.resolve()) for c in cases]]).encode()).hexdigest()[:12]
    cache = weights.with_name(f"{weights.stem}.eval-{key}.json")
    if cache.is_file():
        return json.loads(cache.read_text())
    result = _score(weights, cases)
    cache.write_text(json.dumps(result, indent=2, default=str))
    return result


def _score(weights: Path, cases: list[Path]) -> dict:
    import torch

    from mstools import case_layout as layout
    from mstools.detect.deep.predictor import Predictor, lesion_mask
    from mstools.io import read_image, read_mask
    from mstools.metrics import evaluate_case

    torch.set_num_threads(1)
    predictor = Predictor.from_file(weights, device="cpu")
    rows = []
    for case in cases:
        b = read_image(case / layout.BASELINE)
        f = read_image(case / layout.FOLLOWUP)
        truth = read_mask(case / layout.GROUND_TRUTH)
        maps = predictor.predict(b.data, f.data, spacing_mm=b.spacing_mm)
        mask = lesion_mask(maps["new"], voxel_volume_mm3=b.voxel_volume_mm3)
        m = evaluate_case(mask, truth.data, affine=b.affine, case=case.name).metrics
        rows.append({"case": case.name, "dice": m["dice"], "lesion_f1": m["lesion_f1"],
                     "gt_lesions": m["gt_lesions"], "pred_lesions": m["pred_lesions"]})

    def mean(key):
        v = [r[key] for r in rows if not (isinstance(r[key], float) and math.isnan(r[key]))]
        return float(np.mean(v)) if v else float("nan")

    return {"dice": mean("dice"), "lesion_f1": mean("lesion_f1"), "per_case": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True, help="folder of labelled two-time-point case folders")
    parser.add_argument("--test", type=Path, required=True, help="folder of held-out simulated case folders")
    parser.add_argument("--real", type=Path, nargs="*", default=[], help="real development case folder(s)")
    parser.add_argument("--unlabelled", type=Path, nargs="+", required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--pretrain-iterations", type=int, default=400)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--p-random-patch", default="0.33", help="as the packaged U-Net's card")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--no-train", action="store_true", help="only score the runs that are finished")
    args = parser.parse_args()

    from mstools import case_layout as layout

    work = args.work
    train = sorted(c for c in args.train.iterdir() if layout.is_longitudinal_case(c))
    test = sorted(c for c in args.test.iterdir() if layout.is_longitudinal_case(c))
    common = ["--model", args.model, "--threads", "1", "--device", "cpu", "--seed", args.seed, "--force"]
    pre = work / "pretrain"
    pre_cmd = _cli("train", str(pre), *common, "--pretrain", "position",
                   "--pretrain-iterations", str(args.pretrain_iterations),
                   *[a for u in args.unlabelled for a in ("--unlabelled", str(u))])
    arms = {}
    for n in args.sizes:
        if n > len(train):
            raise SystemExit(f"--sizes {n}: only {len(train)} training cases in {args.train}")
        cases = [a for c in train[:n] for a in ("--cases", str(c))]
        fine = ["--iterations", str(args.iterations), "--p-random-patch", args.p_random_patch, *cases]
        arms[(n, "random init")] = (work / f"n{n}-scratch", _cli("train", str(work / f"n{n}-scratch"), *common, *fine))
        arms[(n, "pretrained")] = (work / f"n{n}-pretrained", _cli(
            "train", str(work / f"n{n}-pretrained"), *common, *fine, "--init-weights", str(pre / "encoder.pt")))
    # the random-init arms do not need the encoder: they run beside the pretraining
    def fine(key):
        return _plan(*arms[key], "model", args.iterations)

    pre_plan = _plan(pre, pre_cmd, "encoder", args.pretrain_iterations)
    if args.no_train:
        arms = {k: v for k, v in arms.items() if fine(k) is None}
    elif pre_plan is None:   # the encoder is there: every arm at once
        _run_all([fine(k) for k in arms], args.jobs)
    else:
        _run_all([pre_plan] + [fine(k) for k in arms if k[1] == "random init"], args.jobs)
        _run_all([fine(k) for k in arms if k[1] == "pretrained"], args.jobs)

    pre_log = (pre / "training_log.tsv").read_text().splitlines()
    print(f"pretraining: {args.pretrain_iterations} iterations; last log row {pre_log[-1]!r} "
          f"(iteration, seconds, loss, position error mm)")
    results = {}
    print(f"{'labelled':>8} {'init':12} {'sim F1':>7} {'sim Dice':>8} {'real F1':>7} {'real Dice':>9} {'train s':>8}")
    for (n, init), (out, _) in arms.items():
        sim = _evaluate(out / "model.pt", test)
        real = _evaluate(out / "model.pt", list(args.real)) if args.real else {"dice": math.nan, "lesion_f1": math.nan}
        seconds = (out / "training_log.tsv").read_text().splitlines()[-1].split("\t")[1]
        results[f"{n} {init}"] = {"sim": sim, "real": real, "train_seconds": float(seconds)}
        print(f"{n:>8} {init:12} {sim['lesion_f1']:7.3f} {sim['dice']:8.3f} {real['lesion_f1']:7.3f} "
              f"{real['dice']:9.3f} {float(seconds):8.0f}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
