"""Simulation as a job (``mstools simulate``): realistic longitudinal FLAIR pairs (or single
time points) with their ground truth, written as case folders.

The simulator is :mod:`mstools.simulate`; this module reads a real background when one is
given, draws clinical protocols, and writes the case folders with sidecars.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Optional

from mstools import case_layout as layout
from mstools.detections import add_image
from mstools.errors import InputError
from mstools.jobs import JobResult
from mstools.messages import log


class Defaults:
    """mstools.simulate.case.SimulationConfig's defaults, as literals so that `mstools --help`
    need not import the simulator (a test checks they agree)."""

    voxel_mm = 1.0
    n_stable = 15
    n_enlarging = 2
    n_shrinking = 1
    n_new = 5
    new_volume_mm3 = (10.0, 400.0)
    snr_baseline = 30.0
    snr_followup = 22.0
    bias_strength = 0.15
    gain_change = 0.12
    contrast_change = 0.06
    misalignment_mm = 0.25
    misalignment_deg = 0.25
    blur_mm = 0.4
    followup_slice_mm = 0.0
    atrophy_mm = 0.4


def _clinical_config(config, protocols: dict):
    """The --clinical preset: protocols drawn from the case's seed (a stream of its own, so
    the anatomy and lesions are those of the same seed without --clinical)."""
    from dataclasses import replace

    import numpy as np

    from mstools.simulate.acquisition import clinical_protocols

    rng = np.random.default_rng([config.seed, 2026])
    baseline, followup, contrast = clinical_protocols(rng)
    return replace(config, acquisition_baseline=baseline, acquisition_followup=followup,
                   contrast_followup=protocols["contrast_followup"] or contrast)



def background_options(flair, followup, brain_mask, lesions, library, new_lesions=None) -> dict | None:
    given = {"--background-followup": followup, "--background-brain-mask": brain_mask,
             "--background-lesions": lesions, "--lesion-library": library,
             "--background-new-lesions": new_lesions}
    if flair is None:
        extra = [name for name, value in given.items() if value is not None]
        if extra:
            raise InputError(f"{', '.join(extra)} need --background-flair")
        return None
    if brain_mask is None:
        raise InputError("--background-flair needs --background-brain-mask")
    if library is None and lesions is None and new_lesions is None:
        raise InputError("--background-flair needs --lesion-library DIR (or --background-lesions to reuse its lesions' shapes)")
    if new_lesions is not None and followup is not None:
        raise InputError("--background-new-lesions is for a single background FLAIR; drop --background-followup "
                         "(a real pair already has its new lesions)")
    for name, path in {"--background-flair": flair, **given}.items():
        if path is not None and not Path(path).exists():
            raise InputError(f"{path}: {name} does not exist")
    if library is not None and not Path(library).is_dir():
        raise InputError(f"{library}: --lesion-library must be a folder of lesion masks")
    return {"flair": flair, "followup": followup, "brain_mask": brain_mask, "lesions": lesions, "library": library,
            "new_lesions": new_lesions}



def _read_background(options: dict, volume_mm3) -> dict:
    """Read the background images (checked onto one grid) and build the lesion library."""
    from mstools.io import check_same_grid, is_nifti, read_image, read_mask
    from mstools.simulate.real_anatomy import build_lesion_library

    flair = read_image(options["flair"])
    brain = read_mask(options["brain_mask"], allow_empty=False)
    check_same_grid(flair, brain)
    followup = lesions = new_lesions = None
    if options.get("new_lesions") is not None:
        new_lesions = read_mask(options["new_lesions"], allow_empty=False)
        check_same_grid(flair, new_lesions)
    if options["followup"] is not None:
        followup = read_image(options["followup"])
        check_same_grid(flair, followup)
    if options["lesions"] is not None:
        lesions = read_mask(options["lesions"])
        check_same_grid(flair, lesions)
    masks, names = [], []
    if options["library"] is not None:
        files = sorted(p for p in Path(options["library"]).rglob("*") if p.is_file() and is_nifti(p))
        for path in files:
            try:
                mask = read_mask(path)
            except InputError:
                log(f"lesion library: {path} is not a binary mask, skipped", level=1)
                continue
            masks.append((mask.data > 0, mask.spacing_mm))
            names.append(str(path))
        where = f"{options['library']}"
    else:
        shapes = lesions if lesions is not None else new_lesions
        masks.append((shapes.data > 0, shapes.spacing_mm))
        names.append(str(options["lesions"] if lesions is not None else options["new_lesions"]))
        where = names[-1]
    try:
        library = build_lesion_library(masks, volume_mm3=tuple(volume_mm3), names=names)
    except ValueError as exc:
        raise InputError(f"{where}: {exc}") from None
    log(f"lesion library: {len(library)} lesions from {len(names)} masks")
    return {"flair": flair, "brain": brain, "followup": followup, "lesions": lesions, "library": library,
            "new_lesions": new_lesions, "options": options}



def _background_inputs(background: dict | None) -> list[Path]:
    """The files a background simulation reads (its images and the lesion library's files)."""
    if background is None:
        return []
    options = background["options"]
    paths = [Path(p) for key, p in options.items() if key != "library" and p is not None]
    if options.get("library") is not None:
        paths += [p for p in Path(options["library"]).rglob("*") if p.is_file()]
    return paths


def _simulate_one(folder: Path, config, single: bool, dtype: str, force: bool, cohort_root: Path | None,
                  background: dict | None = None):
    import numpy as np

    from mstools.io import OutputBatch, new_reference, sha256
    from mstools.provenance import sidecar
    from mstools.simulate import simulate_case, simulate_single_timepoint
    from mstools.simulate.case import RAW_BASELINE, RAW_FOLLOWUP

    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; choose another output path")
    from mstools.provenance import check_outputs

    names = ([layout.SINGLE_FLAIR, layout.SINGLE_LESIONS] if single else
             [layout.BASELINE, layout.FOLLOWUP, layout.GROUND_TRUTH, layout.LESIONS_BASELINE,
              layout.LESIONS_FOLLOWUP]) + [layout.BRAIN_MASK, layout.TISSUES]
    if config.acquisitions:
        names += [RAW_BASELINE, RAW_FOLLOWUP]
    names += [name for sequence in getattr(config, "sequences", ()) for name in layout.SEQUENCE_FILES[sequence]]
    # fail before the work, not after it (a missing folder and its parents are created);
    # the background images and lesion library are read, never written over (--force or not)
    read = _background_inputs(background)
    check_outputs([folder / name for name in names], inputs=read, force=force)
    check_outputs([folder / layout.TRUTH], inputs=read, force=force, sidecars=False)
    log(f"simulating {folder} (seed {config.seed})")
    inputs = {}
    if background is not None:
        inputs = {name: sha256(path) for name, path in background["options"].items()
                  if path is not None and Path(path).is_file()}
    parameters = {**{k: (asdict(v) if is_dataclass(v) else v) for k, v in config.__dict__.items()},
                  "single_timepoint": single, "dtype": dtype}
    if background is not None:
        parameters["background"] = {k: (str(v) if v is not None else None) for k, v in background["options"].items()}
    record = sidecar(command="simulate", parameters=parameters, inputs=inputs)
    if background is not None:
        result = _simulate_real(config, background)
    else:
        result = simulate_single_timepoint(config) if single else simulate_case(config)
    reference = new_reference(result.brain_mask.shape, result.affine, description="mstools simulate")
    if background is not None and result.brain_mask.shape == background["flair"].shape and np.allclose(
            result.affine, background["flair"].affine):
        reference = background["flair"]

    def flair(data):
        if dtype == "int16":
            return np.clip(np.round(data), -32768, 32767).astype(np.int16)
        return data

    with OutputBatch(inputs=read, force=force, create_dirs=True) as out:
        images = ([(layout.SINGLE_FLAIR, flair(result.flair), dtype),
                   (layout.SINGLE_LESIONS, (result.lesions > 0), np.uint8)] if single else
                  [(layout.BASELINE, flair(result.baseline), dtype),
                   (layout.FOLLOWUP, flair(result.followup), dtype),
                   (layout.GROUND_TRUTH, result.ground_truth, np.uint8),
                   (layout.LESIONS_BASELINE, (result.lesions_baseline > 0), np.uint8),
                   (layout.LESIONS_FOLLOWUP, (result.lesions_followup > 0), np.uint8)])
        images += [(layout.BRAIN_MASK, result.brain_mask, np.uint8), (layout.TISSUES, result.tissues, np.uint8)]
        for sequence, pair in getattr(result, "sequences", {}).items():
            images += [(name, flair(data), dtype) for name, data in zip(layout.SEQUENCE_FILES[sequence], pair)]
        for name, data, kind in images:
            add_image(out, folder / name, data, reference, kind, record)
        for name, raw in ((RAW_BASELINE, getattr(result, "raw_baseline", None)),
                          (RAW_FOLLOWUP, getattr(result, "raw_followup", None))):
            if raw is not None:
                raw_reference = new_reference(raw.data.shape, raw.affine, description="mstools simulate raw scan")
                add_image(out, folder / name, flair(raw.data), raw_reference, dtype, record)
        out.json(folder / layout.TRUTH, {**result.truth, "provenance": record})
    summary = {"case": str(folder), "seed": config.seed, "single_timepoint": single,
               "lesions": len(result.truth["lesions"]),
               "new_lesions": result.truth.get("n_new", 0),
               "new_lesion_volume_mm3": result.truth.get("new_lesion_volume_mm3", 0.0)}
    if getattr(result, "raw_followup", None) is not None:
        summary["raw"] = [str(folder / RAW_BASELINE), str(folder / RAW_FOLLOWUP)]
    return out.written, summary



def _simulate_real(config, background: dict):
    from mstools.simulate.real_anatomy import simulate_on_real

    flair = background["flair"]
    try:
        return simulate_on_real(
            flair.data, flair.affine, background["brain"].data, background["library"], config,
            followup=None if background["followup"] is None else background["followup"].data,
            lesions=None if background["lesions"] is None else background["lesions"].data,
            new_lesions=None if background.get("new_lesions") is None else background["new_lesions"].data)
    except ValueError as exc:
        raise InputError(f"{flair.name}: {exc}") from None



def simulate_job(output: Path, base_config, *, cases: int = 1, single_timepoint: bool = False, clinical: bool = False,
                 protocols: Optional[dict] = None, background: Optional[dict] = None, dtype: str = "float32",
                 force: bool = False) -> JobResult:
    """Simulate ``cases`` case folders (OUTPUT, or OUTPUT/sim-<seed> for a cohort) from
    ``base_config`` (a :class:`mstools.simulate.SimulationConfig`; seeds seed, seed+1, ...).

    ``background``: from :func:`background_options` (new lesions on a real scan);
    ``clinical``: random clinical protocols per visit from each seed.
    """
    from mstools.simulate.case import SimulationConfig

    protocols = protocols or {"contrast_followup": None}
    seed = base_config.seed
    folders = [output] if cases == 1 else [output / f"sim-{seed + n:03d}" for n in range(cases)]
    summaries = []
    written: list[Path] = []
    source = _read_background(background, base_config.new_volume_mm3) if background else None
    for n, folder in enumerate(folders):
        config = base_config if cases == 1 else SimulationConfig(**{**base_config.__dict__, "seed": seed + n})
        if clinical:
            config = _clinical_config(config, protocols)
        paths, summary = _simulate_one(folder, config, single_timepoint, dtype, force,
                                       output if cases > 1 else None, source)
        written.extend(paths)
        summaries.append(summary)
    return JobResult(written, {"cases": summaries})
