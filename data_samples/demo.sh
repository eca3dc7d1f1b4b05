#!/usr/bin/env bash
# The README's main job on the bundled samples: the classical detection chain on each
# two-time-point case (subtract -> filter), then the MSSEG-2 evaluation of the cohort.
# Writes under demo_out/ (ignored by git); rerunning overwrites it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo_out
rm -rf "$out" && mkdir -p "$out/pred" "$out/gt"
for case in data_samples/sim-00*; do
    name=$(basename "$case")
    mkdir -p "$out/$name"
    mstools -q subtract "$case" -o "$out/$name/subtract" > /dev/null
    mstools -q filter "$case" --candidates "$out/$name/subtract" -o "$out/$name/filter" > /dev/null
    ln -s "../$name/filter_mask.nii.gz" "$out/pred/$name.nii.gz"
    ln -s "$PWD/$case/ground_truth.nii.gz" "$out/gt/$name.nii.gz"
done
mstools evaluate --pred-dir "$out/pred" --gt-dir "$out/gt" --out-dir "$out/evaluation"
