#!/usr/bin/env bash
# The README's main job on the bundled samples. Writes under demo_out/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
out=demo_out
mkdir -p "$out"
# Until the detectors land, the demo simulates a fresh case and evaluates the
# all-lesion follow-up mask against the new-lesion ground truth of a sample case
# (a deliberately poor "detector": every lesion at follow-up is called new).
mstools simulate "$out/fresh-case" --seed 11 --force
mstools evaluate data_samples/sim-001/lesions_time02.nii.gz data_samples/sim-001/ground_truth.nii.gz
