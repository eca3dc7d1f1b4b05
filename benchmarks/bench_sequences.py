"""Missing sequences (papers 003 and 004): one multi-sequence model trained once with sequence
dropout, evaluated with every input subset, and the FLAIR-only model of the same network,
data and iterations.

Run: python benchmarks/bench_sequences.py [--dropout RUN_A/model.pt] [--flair-only RUN_B/model.pt]
     --cases HELD_OUT_FOLDER [--cases REAL_CASE_FOLDER ...] [--overlap 0.25] [--threads 1]

Each case folder needs both FLAIRs, the ground truth and the T1/T2 files of
:data:`mstools.case_layout.SEQUENCE_FILES`. Every case is segmented as `mstools segment
--model multiseq` does (threshold 0.5, components > 4 mm3) with FLAIR only, FLAIR+T1,
FLAIR+T2 and all (the dropout model; ``--no-dropout``: a model trained with every sequence
always there, mean imputation without sequence dropout), and FLAIR only (the FLAIR-only
model), and scored
with `mstools.metrics` (MSSEG-2 lesion-wise F1, Dice). Prints one table per group of cases
(mean over its cases) and the per-case rows. ``--contrast CASE`` also prints the realised
median T1/T2 intensities of tissues and lesions relative to white matter of a simulated
case (its tissues.nii.gz and lesions_time01.nii.gz); ``--lesion-contrast CASE`` the new
lesions' median over the brain's at follow-up of FLAIR, T1 and T2 (simulated or real).

The README's figures (single thread each, OMP_NUM_THREADS=1):

    mstools simulate train --seed 9000 --cases 16 --t1 --t2 --voxel-mm 1.5 --dtype int16
    mstools simulate heldout --seed 9100 --cases 6 --t1 --t2 --dtype int16          # 1 mm
    mstools import-open-ms open_ms_data -o real --patient 01                        # with its T1W/T2W
    for p in 0.5 0 1; do   # dropout (the default), no dropout, FLAIR only
      mstools train runs/p$p --model multiseq --cases train --iterations 500 --batch-longitudinal 2 \
          --p-random-patch 0.33 --sequence-dropout $p --threads 1 --seed 0
    done
    python benchmarks/bench_sequences.py --dropout runs/p0.5/model.pt --no-dropout runs/p0/model.pt \
        --flair-only runs/p1/model.pt --cases heldout --cases real/patient01 --overlap 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SUBSETS = {"FLAIR": (), "FLAIR+T1": ("t1",), "FLAIR+T2": ("t2",), "FLAIR+T1+T2": ("t1", "t2")}


def contrast(case: Path) -> None:
    from mstools import case_layout as layout
    from mstools.io import read_image, read_mask

    tissues = np.rint(read_image(case / layout.TISSUES).data).astype(int)   # labels 0-3
    lesions = read_mask(case / layout.LESIONS_BASELINE).data > 0
    print(f"\nrealised medians relative to WM, {case.name} (time 1)")
    print("| sequence | CSF | GM | WM | lesions |\n| --- | --- | --- | --- | --- |")
    for name, path in (("FLAIR", layout.BASELINE), ("T1", layout.SEQUENCE_FILES["t1"][0]),
                       ("T2", layout.SEQUENCE_FILES["t2"][0])):
        data = read_image(case / path).data
        wm = float(np.median(data[(tissues == 3) & ~lesions]))
        cells = [float(np.median(data[(tissues == label) & ~lesions])) / wm for label in (1, 2, 3)]
        cells.append(float(np.median(data[lesions])) / wm)
        print(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")


def new_lesion_contrast(case: Path) -> str:
    """Median follow-up intensity inside the new lesions over the brain's median, per sequence
    (a measure that needs no tissue map, so that simulated and real cases compare)."""
    from mstools import case_layout as layout
    from mstools.io import read_image, read_mask

    brain = read_mask(case / layout.BRAIN_MASK).data > 0
    new = read_mask(case / layout.GROUND_TRUTH).data > 0
    cells = []
    for path in (layout.FOLLOWUP, layout.SEQUENCE_FILES["t1"][1], layout.SEQUENCE_FILES["t2"][1]):
        data = read_image(case / path).data
        cells.append(float(np.median(data[new])) / float(np.median(data[brain])))
    return f"| {case.name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dropout", type=Path, help="model.pt trained with sequence dropout")
    parser.add_argument("--flair-only", type=Path, help="model.pt trained on FLAIR only")
    parser.add_argument("--no-dropout", type=Path, help="model.pt trained with every sequence, no dropout")
    parser.add_argument("--cases", type=Path, action="append", required=True,
                        help="a case folder or a folder of case folders (one table each)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contrast", type=Path)
    parser.add_argument("--lesion-contrast", type=Path, action="append", default=[],
                        help="print new lesions / brain medians of FLAIR, T1, T2 at follow-up for these cases")
    args = parser.parse_args()
    if args.lesion_contrast:
        print("new lesions / brain, medians at follow-up\n| case | FLAIR | T1 | T2 |\n| --- | --- | --- | --- |")
        for case in args.lesion_contrast:
            print(new_lesion_contrast(case))

    import torch

    from mstools import case_layout as layout
    from mstools.detect.deep.multisequence import predict_sequences
    from mstools.detect.deep.predictor import PredictOptions, Predictor, lesion_mask
    from mstools.io import read_image, read_mask
    from mstools.case import read_sequences
    from mstools.metrics import evaluate_case

    torch.set_num_threads(args.threads)
    given = (("dropout", args.dropout), ("no-dropout", args.no_dropout), ("flair-only", args.flair_only))
    models = {name: Predictor.from_file(path, device="cpu") for name, path in given if path is not None}
    runs = [(name, subset) for name in ("dropout", "no-dropout") if name in models for subset in SUBSETS]
    runs += [("flair-only", "FLAIR")] if "flair-only" in models else []
    options = PredictOptions(overlap=args.overlap, batch_size=2)
    for group in args.cases:
        cases = [group] if layout.is_longitudinal_case(group) else layout.case_folders(group)
        rows = []
        for case in cases:
            baseline = read_image(case / layout.BASELINE)
            followup = read_image(case / layout.FOLLOWUP)
            truth = read_mask(case / layout.GROUND_TRUTH).data
            sequences = read_sequences(layout.sequence_files(case), baseline)
            for model, subset in runs:
                chosen = SUBSETS[subset]

                def pair(sequence):
                    return tuple(sequences[(sequence, v)].data if sequence in chosen else None for v in (0, 1))

                started = time.time()
                prob = predict_sequences(models[model], (baseline.data, followup.data),
                                         spacing_mm=baseline.spacing_mm, t1=pair("t1"), t2=pair("t2"),
                                         options=options)["new"]
                mask = lesion_mask(prob, voxel_volume_mm3=baseline.voxel_volume_mm3)
                m = evaluate_case(mask, truth, affine=baseline.affine).metrics
                rows.append({"case": case.name, "model": model, "subset": subset, "f1": m["lesion_f1"],
                             "dice": m["dice"], "sens": m["lesion_sensitivity"], "ppv": m["lesion_ppv"],
                             "seconds": time.time() - started})
                print(f"{case.name}\t{model}\t{subset}\tF1 {m['lesion_f1']:.3f}\tDice {m['dice']:.3f}\t"
                      f"sens {m['lesion_sensitivity']:.3f}\tppv {m['lesion_ppv']:.3f}\t{time.time() - started:.0f} s",
                      flush=True)
        print(f"\n{group} ({len(cases)} case{'s' if len(cases) > 1 else ''}), mean over cases")
        print("| model | inputs | lesion F1 | Dice | lesion sensitivity | lesion PPV |")
        print("| --- | --- | --- | --- | --- | --- |")
        for model, subset in runs:
            sel = [r for r in rows if r["model"] == model and r["subset"] == subset]

            def mean(key):
                return float(np.nanmean([r[key] for r in sel]))

            print(f"| {model} | {subset} | {mean('f1'):.3f} | {mean('dice'):.3f} | {mean('sens'):.3f} | "
                  f"{mean('ppv'):.3f} |")
        print(flush=True)
    if args.contrast is not None:
        contrast(args.contrast)


if __name__ == "__main__":
    main()
