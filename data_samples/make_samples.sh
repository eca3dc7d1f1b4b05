#!/usr/bin/env bash
# Regenerates data_samples/ exactly (deterministic for these seeds and options).
# 1.5 mm voxels and int16 storage keep the folder small; the recipe is the 1 mm one.
set -euo pipefail
cd "$(dirname "$0")"
common=(--voxel-mm 1.5 --dtype int16 --force)
mstools -q simulate sim-001 --seed 1 --new-volume-mm3 30 300 "${common[@]}"
mstools -q simulate sim-002 --seed 2 --followup-slice-mm 3 --bias 0.25 --snr-followup 15 \
    --misalign-mm 1.0 --misalign-deg 1.0 --n-new 6 "${common[@]}"
mstools -q simulate sim-003 --seed 3 --n-new 0 "${common[@]}"
mstools -q simulate single-001 --seed 4 --single-timepoint "${common[@]}"
