#!/usr/bin/env bash
# The README's main job on the bundled samples: `mstools run` (subtract -> refine ->
# filter, with the evaluation against each case's ground truth) on every two-time-point
# case, then `mstools batch` over the folder, which finds every case already done,
# writes the cohort table and the HTML reports (demo_out/cohort.html).
# Writes under demo_out/ (ignored by git); rerunning reuses what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo_out
for case in data_samples/sim-00*; do
    name=$(basename "$case")
    echo "== $name"
    mstools run "$case" -o "$out/$name"
done
echo "== cohort"
mstools -q batch data_samples -o "$out" > /dev/null
column -t -s $'\t' "$out/cohort.tsv"
