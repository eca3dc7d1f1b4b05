#!/usr/bin/env bash
# The packaged CoactSeg and multitask weights, fine-tuned on the mixed domain (issue "Real clinical
# scans") with the refine model's split: the 108 training cases listed in the refine card that
# benchmarks/retrain_mixed_domain.sh writes (MODELS = its WORK/models), and 3 validation cases of
# that split choosing the checkpoint. Patient 01, the validation backgrounds (longitudinal patient
# 20, cross-sectional 26) and the held-out patients 03, 12, 19 are never trained on.
#   INIT = folder with the 1 mm weights to start from, as first packaged:
#          `git show c51970b:mstools/models/deep/coactseg.pt > INIT/coactseg.pt`
#          `git show 2eba92d:mstools/deep/weights/multitask.pt > INIT/multitask.pt`
# Usage: bash benchmarks/finetune_networks.sh MODELS INIT OUT
# Then: python benchmarks/package_weights.py OUT/multitask/model.pt multitask --description ... --validation ...
# About 20 min for multitask's 3000 iterations and 10 min for CoactSeg's 300 on 2 CPU cores.
set -euo pipefail
MODELS=$1; INIT=$2; OUT=$3
mapfile -t train < <(python -c 'import json, sys
for case in json.load(open(sys.argv[1]))["training_cases"]: print(case["case"])' "$MODELS/refine_mixed.txt.card.json")
cases=(); for c in "${train[@]}"; do cases+=(--cases "$c"); done
val=(--val "$MODELS/xs-xs26-0" --val "$MODELS/single-patient20-study2-0" --val "$MODELS/val1mm-sim-1000")
common=(--lr 0.0003 --batch-longitudinal 8 --batch-single 0 --threads 1 --device cpu)
mstools train "$OUT/coactseg" --model coactseg "${cases[@]}" "${val[@]}" --init-weights "$INIT/coactseg.pt" \
    --iterations 300 --validate-every 100 --checkpoint-every 50 "${common[@]}"
mstools train "$OUT/multitask" --model multitask "${cases[@]}" "${val[@]}" --init-weights "$INIT/multitask.pt" \
    --iterations 3000 --validate-every 250 --checkpoint-every 250 "${common[@]}"
