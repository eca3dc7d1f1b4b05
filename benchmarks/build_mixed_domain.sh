#!/usr/bin/env bash
# The mixed-domain cases the default chain's learned stages are trained and validated on
# (issue "Real clinical scans"): simulated 1 mm, 1.5 mm and thick-slice pairs, clinical
# 2D acquisitions with protocol changes, and new lesions injected into real scans
# (cross-sectional MNI FLAIRs acquired as 2D, single longitudinal visits, the development
# pair 01). Real backgrounds come from benchmarks/real_backgrounds.py (BG). Held-out
# longitudinal patients 03, 12, 19 are never used.
# Usage: bash benchmarks/build_mixed_domain.sh BG OUT
set -euo pipefail
BG=$1; OUT=$2
S="mstools -q simulate --dtype int16"
lib=(--lesion-library "$BG/lesion_library")
mkdir -p "$OUT"/{sim1mm,sim15,thick,clinical,xs,single,pair}
one() { local dir=$1; shift; [ -e "$dir/ground_truth.nii.gz" ] || $S "$dir" "$@" > /dev/null; }
for s in 3000 3001 3002 3003 3004 3005 3006 3007; do one "$OUT/sim1mm/sim-$s" --seed $s; done
for s in 3100 3101 3102 3103; do one "$OUT/sim15/sim-$s" --seed $s --voxel-mm 1.5; done
for s in 3104 3105 3106 3107; do one "$OUT/sim15/sim-$s" --seed $s --voxel-mm 1.5 --followup-slice-mm 3 --bias 0.25 \
    --snr-followup 15 --misalign-mm 1.0 --misalign-deg 1.0 --n-new 6; done
for s in 3200 3201 3202 3203; do one "$OUT/thick/sim-$s" --seed $s --followup-slice-mm 3 --misalign-mm 0.5 --misalign-deg 0.5; done
for s in 3300 3301 3302 3303 3304 3305; do one "$OUT/clinical/sim-$s" --seed $s --clinical; done
# Protocol pairs of the Ljubljana database's 2D FLAIRs (baseline -> follow-up voxel sizes).
protocols=("2d:0.72x0.72x4,axial 2d:0.72x0.72x3,axial" "2d:0.57x0.57x3.3,axial 2d:0.72x0.72x3,axial"
           "2d:0.9x0.9x3,axial 2d:0.9x0.9x3,axial,gap=0.3")
for p in 07 19 26; do
  for n in 0 1 2; do
    read -r acq_b acq_f <<< "${protocols[$n]}"
    one "$OUT/xs/xs$p-$n" --seed $((4000 + 10#$p * 10 + n)) --n-new 8 --background-flair "$BG/xs-patient$p/flair.nii.gz" \
        --background-brain-mask "$BG/xs-patient$p/brain_mask.nii.gz" --background-lesions "$BG/xs-patient$p/lesions.nii.gz" \
        "${lib[@]}" --baseline-acquisition "$acq_b" --followup-acquisition "$acq_f"
  done
done
for v in patient04-study1 patient09-study2 patient20-study2; do
  for n in 0 1; do
    one "$OUT/single/$v-$n" --seed $((5000 + n + ${#OUT})) --n-new 8 --background-flair "$BG/single-$v/flair.nii.gz" \
        --background-brain-mask "$BG/single-$v/brain_mask.nii.gz" "${lib[@]}"
  done
done
# The development pair: new lesions added to its follow-up; its own increases stay in the truth.
for n in 0 1 2; do
  dir="$OUT/pair/patient01-$n"
  if [ ! -e "$dir/ground_truth.nii.gz" ]; then
    $S "$dir" --seed $((6000 + n)) --n-new 8 --background-flair "$BG/real-patient01/flair_time01_on_middle_space.nii.gz" \
        --background-followup "$BG/real-patient01/flair_time02_on_middle_space.nii.gz" \
        --background-brain-mask "$BG/real-patient01/brain_mask.nii.gz" "${lib[@]}" > /dev/null
    python - "$dir" "$BG/real-patient01/ground_truth.nii.gz" <<'PY'
import sys
import numpy as np
from mstools.io import OutputBatch, read_mask
case, real = sys.argv[1], sys.argv[2]
injected, increases = read_mask(f"{case}/ground_truth.nii.gz"), read_mask(real)
with OutputBatch(force=True) as batch:
    batch.image(f"{case}/ground_truth.nii.gz", (injected.data > 0) | (increases.data > 0), injected, np.uint8)
PY
  fi
done
# Real new lesions: a real scan with some of its own lesions filled in at baseline
# (simulate --background-new-lesions), the baseline re-acquired on another protocol (with
# its own noise); the follow-up is the real scan with no noise added (its own is real).
# Single longitudinal visits use the database's change mask (their real new / changing
# lesions); cross-sectional scans a seeded third of their consensus lesions.
mkdir -p "$OUT/filled"
for v in patient04-study1 patient09-study2 patient20-study2; do
  p=${v:7:2}
  for n in 0 1 2; do
    read -r acq_b _ <<< "${protocols[$n]}"
    one "$OUT/filled/$v-$n" --seed $((7000 + 10#$p * 10 + n)) --n-new 2 --background-flair "$BG/single-$v/flair.nii.gz" \
        --background-brain-mask "$BG/single-$v/brain_mask.nii.gz" --background-new-lesions "$BG/changes/patient$p.nii.gz" \
        "${lib[@]}" --baseline-acquisition "$acq_b" --snr-followup 0
  done
done
for p in 07 19 26; do
  for n in 0 1 2; do
    read -r acq_b acq_f <<< "${protocols[$n]}"
    seed=$((8000 + 10#$p * 10 + n))
    masks="$OUT/filled/masks/xs$p-$n"
    [ -e "$masks/new.nii.gz" ] || python benchmarks/lesion_subsets.py "$BG/xs-patient$p/lesions.nii.gz" "$masks" --seed $seed
    one "$OUT/filled/xs$p-$n" --seed $seed --n-new 2 --background-flair "$BG/xs-patient$p/flair.nii.gz" \
        --background-brain-mask "$BG/xs-patient$p/brain_mask.nii.gz" --background-lesions "$masks/stable.nii.gz" \
        --background-new-lesions "$masks/new.nii.gz" "${lib[@]}" --baseline-acquisition "$acq_b" --followup-acquisition "$acq_f"
  done
done
echo "cases in $OUT"
