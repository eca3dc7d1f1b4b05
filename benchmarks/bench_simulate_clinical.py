"""Time and peak memory of one clinical pair (1 mm MNI, two 2D protocols) and one
real-anatomy pair (a real FLAIR with library lesions), plus the measured FLAIR ratios
that the simulator's real-anatomy and protocol-contrast defaults quote.

Usage: .venv/bin/python benchmarks/bench_simulate_clinical.py [OMD_MNI_FOLDER]
(default /work/data/omd/cross_sectional/MNI; the real-anatomy part is skipped without it).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def clinical_pair() -> None:
    from mstools.simulate import Acquisition, ProtocolContrast, SimulationConfig, simulate_case

    config = SimulationConfig(seed=1, acquisition_baseline=Acquisition(inplane_mm=0.72, slice_mm=3.0),
                              acquisition_followup=Acquisition(inplane_mm=0.57, slice_mm=3.3),
                              contrast_followup=ProtocolContrast(lesion_scale=0.9, gm_scale=1.2, csf_level=0.2))
    start = time.perf_counter()
    case = simulate_case(config)
    seconds = time.perf_counter() - start
    truth = case.truth
    print(f"clinical pair (1 mm MNI -> 0.72x0.72x3 / 0.57x0.57x3.3 mm): {seconds:.1f} s, "
          f"peak RSS {peak_rss_mb():.0f} MB; raw {case.raw_baseline.data.shape} / {case.raw_followup.data.shape}; "
          f"new-lesion volume {truth['new_lesion_volume_mm3']:.0f} mm3 on the common grid vs "
          f"{truth['new_lesion_volume_mm3_fine']:.0f} mm3 on the fine grid")


def real_pair(folder: Path) -> None:
    from mstools.io import read_image, read_mask
    from mstools.simulate import SimulationConfig
    from mstools.simulate.real_anatomy import build_lesion_library, simulate_on_real

    flair_path = next(folder.glob("patient07/FLAIR*.nii.gz"))
    lesion_path = next(folder.glob("patient07/GOLD_STANDARD*.nii.gz"))
    flair, lesions = read_image(flair_path), read_mask(lesion_path)
    start = time.perf_counter()
    masks = [(read_mask(p).data > 0, (1.0, 1.0, 1.0)) for p in sorted(folder.glob("patient*/GOLD_STANDARD*.nii.gz"))
             if "patient07" not in str(p)]
    library = build_lesion_library(masks, volume_mm3=(10.0, 400.0))
    built = time.perf_counter() - start
    case = simulate_on_real(flair.data, flair.affine, flair.data > 0, library, SimulationConfig(seed=1),
                            lesions=lesions.data)
    seconds = time.perf_counter() - start - built
    print(f"real-anatomy pair (patient07, library of {len(library)} lesions from {len(masks)} masks): "
          f"library {built:.1f} s, case {seconds:.1f} s, peak RSS {peak_rss_mb():.0f} MB; "
          f"{case.truth['n_new']} new lesions, {case.truth['new_lesion_volume_mm3']:.0f} mm3; "
          f"measured lesion contrasts (median) {np.median(case.truth['measured_lesion_contrasts']):.2f}")


def measured_ratios(folder: Path) -> None:
    """CSF level (5th brain percentile / NAWM) and lesion/NAWM ratio by depth, per patient."""
    from scipy import ndimage

    from mstools.io import read_image, read_mask
    for name in ("patient07", "patient19", "patient26"):
        flair = read_image(next(folder.glob(f"{name}/FLAIR*.nii.gz"))).data
        lesions = read_mask(next(folder.glob(f"{name}/GOLD_STANDARD*.nii.gz"))).data > 0
        brain = flair > 0
        lo, hi = np.percentile(flair[brain], (30, 70))
        wm = ndimage.binary_erosion((flair >= lo) & (flair <= hi) & brain) & ~ndimage.binary_dilation(lesions, iterations=3)
        nawm = np.median(flair[wm])
        depth = ndimage.distance_transform_edt(lesions)
        rim = np.median(flair[(depth > 0) & (depth <= 1)]) / nawm
        core = np.median(flair[depth > 1]) / nawm
        print(f"{name}: CSF level {np.percentile(flair[brain], 5) / nawm:.2f}, lesion/NAWM rim {rim:.2f}, "
              f"deeper {core:.2f}")


if __name__ == "__main__":
    clinical_pair()
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/data/omd/cross_sectional/MNI")
    if folder.is_dir():
        real_pair(folder)
        measured_ratios(folder)
    else:
        print(f"{folder}: not found; real-anatomy benchmark skipped")
