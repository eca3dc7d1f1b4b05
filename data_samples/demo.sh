#!/usr/bin/env bash
# The README's main job on the bundled samples: `mstools run` (subtract -> refine ->
# filter, with the evaluation against each case's ground truth) on every two-time-point
# case, then `mstools batch` over the folder, which finds every case already done,
# writes the cohort table and the HTML reports (demo_out/cohort.html). Last, the real
# pair (real-p01, two raw FLAIRs of one patient, Lesjak et al., CC-BY): `mstools run`
# from the raw scans, evaluated in its middle space (--ground-truth on the raw follow-up's
# grid is carried in), then the final mask it writes back on the raw follow-up's grid is
# scored there with `mstools evaluate`, against the ground truth as stored.
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
echo "== real-p01"
real=data_samples/real-p01
mstools run --baseline "$real/flair_time01_raw.nii.gz" --followup "$real/flair_time02_raw.nii.gz" \
    --ground-truth "$real/ground_truth_on_followup_raw.nii.gz" -o "$out/real-p01"
echo "-- real-p01 on the raw follow-up's grid"
mstools evaluate "$out/real-p01/new_lesions_mask_native.nii.gz" "$real/ground_truth_on_followup_raw.nii.gz" \
    --out "$out/real-p01/native" --force > /dev/null
awk -F'\t' -v OFS='\t' 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i }
    { print $col["gt_lesions"], $col["pred_lesions"], $col["lesion_sensitivity"], $col["lesion_ppv"],
            $col["lesion_f1"], $col["dice"] }' "$out/real-p01/native_cases.tsv" | column -t -s $'\t'
