"""Learned new-lesion segmentation as a job (``mstools segment``): a pair -> the detector
outputs (and CoactSeg's all-lesion maps of both time points); the cascade reads both visits'
all-lesion maps besides the pair."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mstools.detect.deep import MODELS
from mstools.detect.deep.networks import NETWORKS
from mstools.jobs import JobResult
from mstools.jobs.options import option

TIME02_SOURCES = ("union", "head")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Extra outputs of a network with all-lesion heads (CoactSeg, paper 002): maps of both time points.
ALL_LESION_OUTPUTS = {"all_t1": "_all_time01", "all_t2": "_all_time02"}


def all_lesion_source(case: Optional[Path], head: str, *, given: Optional[Path] = None,
                      segment_prefix: Optional[str] = None) -> Optional[Path]:
    """Where a visit's all-lesion mask comes from (``head``: ``all_t1`` baseline, ``all_t2``
    follow-up): ``given``, else the case folder's ``lesions_time01/02.nii.gz``, else CoactSeg's
    mask of that head written by ``segment`` at ``segment_prefix``; None when there is none.
    Read by ``activity`` (the baseline lesions) and ``refine`` (the cascade's inputs)."""
    from mstools import case_layout as layout
    from mstools.detections import MASK_SUFFIX

    if given is not None:
        return Path(given)
    case_file = {"all_t1": layout.LESIONS_BASELINE, "all_t2": layout.LESIONS_FOLLOWUP}[head]
    if case is not None and (Path(case) / case_file).is_file():
        return Path(case) / case_file
    if segment_prefix is not None:
        coactseg_map = Path(segment_prefix + ALL_LESION_OUTPUTS[head] + MASK_SUFFIX)
        if coactseg_map.is_file():
            return coactseg_map
    return None


def cascade_entry_maps(case: Optional[Path], source: str, *, root: Optional[Path] = None) -> tuple[Path, Path]:
    """A case's (baseline, follow-up) all-lesion masks named by a cascade SOURCE, the one reading of
    it (``refine train --cascade``, ``train``/``segment --model cascade --lesions``, ``run``'s
    ``segment.lesions``): ``case`` = the case folder's lesions_time01/02; a NAME without a folder
    part = the masks ``mstools segment --model coactseg -o CASE/NAME`` writes
    (``<case or ROOT/case name>/NAME_all_time01_mask.nii.gz``); a prefix with a folder part (``out/maps``,
    ``./maps``) = ``PREFIX_all_time01/02_mask.nii.gz`` itself. The files are not checked here."""
    import os

    from mstools import case_layout as layout
    from mstools.detections import MASK_SUFFIX
    from mstools.errors import InputError

    if source == "case":
        if case is None:
            raise InputError("all-lesion maps 'case' are a case folder's lesions_time01/02; give the case folder, "
                             "or a prefix of the masks (e.g. out/maps for out/maps_all_time01_mask.nii.gz)")
        return Path(case) / layout.LESIONS_BASELINE, Path(case) / layout.LESIONS_FOLLOWUP
    if "/" in source or os.sep in source or case is None:
        prefix = source
    else:
        prefix = str((Path(root) / Path(case).name if root is not None else Path(case)) / source)
    return tuple(Path(prefix + ALL_LESION_OUTPUTS[h] + MASK_SUFFIX)  # type: ignore[return-value]
                 for h in ("all_t1", "all_t2"))


def read_lesion_maps(paths: tuple[Path, Path], reference, *, model: str = "cascade") -> tuple:
    """Both visits' all-lesion masks, each a binary mask on ``reference``'s grid (Images); a
    missing, non-binary or off-grid mask is a one-line InputError."""
    from mstools.errors import InputError
    from mstools.io import check_same_grid, read_mask

    images = []
    for path, visit in zip(paths, ("baseline", "follow-up")):
        if not Path(path).is_file():
            raise InputError(f"{path}: all-lesion mask of the {visit} not found; --model {model} reads both visits' "
                             "all-lesion masks (`mstools segment --model coactseg` writes them, or use 'case' for "
                             "the case folder's lesions_time01/02)")
        image = read_mask(path)
        check_same_grid(reference, image)
        images.append(image)
    return tuple(images)


def lesion_map_source(case: Optional[Path], model: str, source: Optional[str]) -> Optional[tuple[Path, Path]]:
    """The (baseline, follow-up) all-lesion mask files a segmentation reads: None for a model
    without maps (which refuses ``--lesions``); for the cascade, SOURCE's (:func:`cascade_entry_maps`)."""
    from mstools.errors import InputError

    needs = model in NETWORKS and NETWORKS[model].lesion_maps
    if not needs:
        if source is not None:
            raise InputError(f"--model {model} reads no all-lesion maps; --lesions is read by --model cascade "
                             "(or drop it)")
        return None
    if source is None:
        raise InputError(f"--model {model} reads each visit's all-lesion mask: give --lesions SOURCE ('case' for "
                         "the case folder's lesions_time01/02, or the output name of `mstools segment --model "
                         "coactseg` in the case folder, e.g. coactseg)")
    return cascade_entry_maps(case, source)


def progress_unit(model: str) -> str:
    """What ``segment_job``'s ``progress(done, total)`` counts: slices for the 2.5D multitask
    network, windows for the 3D ones."""
    return "slices" if model == "multitask" else "windows"


@dataclass(frozen=True)
class SegmentOptions:
    # Literals or the light registry, not the predictor: `mstools --help` must not import torch.
    model: str = option("coactseg", "--model", "-m", kind="choice", choices=MODELS, help="Network (default weights ship with mstools for all but multiseq and cascade: train them, give --weights).")
    weights: Optional[str] = option(None, kind="path", help="Weight file from mstools train (model.pt) instead of the default weights.")
    threshold: Optional[float] = option(None, kind="float", min=0.0, max=1.0, help="Probability threshold of the masks (default 0.5; multitask on a grid with a voxel edge of 2 mm or more: 0.3, measured).")
    min_lesion_mm3: float = option(4.0, kind="float", min=0.0, help="Keep components larger than this (paper 001, Masson: > 4 mm3).")
    overlap: float = option(0.5, kind="float", min=0.0, max=0.95, help="Sliding-window overlap (fraction of the window).")
    batch_size: int = option(2, kind="int", min=1, help="Windows per forward pass.")
    tta: bool = option(False, kind="bool", help="Average over all flips (8x slower).")
    lesions: Optional[str] = option(None, kind="str", help="cascade: each visit's all-lesion mask, on the case grid: 'case' = the case folder's lesions_time01/02; NAME = CASE/NAME_all_time01/02_mask.nii.gz (written by `mstools segment CASE --model coactseg -o CASE/NAME`); a prefix with a folder part, e.g. out/maps = out/maps_all_time01/02_mask.nii.gz.")
    all_time02: str = option("union", kind="choice", choices=TIME02_SOURCES, help="coactseg: the time-2 all-lesion map from the time-1 head united with the new lesions (union; measured far better with the default weights) or from the network's own time-2 head.")
    device: str = option("auto", kind="choice", choices=DEVICES, help="auto = cuda, then mps, then cpu.")
    threads: Optional[int] = option(None, kind="int", min=1, help="CPU threads for torch.")


#: The network that reads T1/T2 besides FLAIR (:mod:`mstools.detect.deep.multisequence`).
MULTISEQUENCE_MODEL = "multiseq"


def sequence_paths(case: Optional[Path], model: str, given: Optional[dict] = None) -> dict:
    """{(sequence, visit): path} of the optional T1/T2 scans a segmentation reads: the given ones
    (``given``: the same keys, None for none) win, else the case folder's (:mod:`mstools.case_layout`).
    Only the multi-sequence model reads them; giving them to another model is an error."""
    from mstools import case_layout as layout
    from mstools.errors import InputError

    given = {k: Path(v) for k, v in (given or {}).items() if v is not None}
    if model != MULTISEQUENCE_MODEL:
        if given:
            raise InputError(f"--model {model} reads FLAIR only; T1/T2 scans are read by --model "
                             f"{MULTISEQUENCE_MODEL} (or drop them)")
        return {}
    found = layout.sequence_files(case) if case is not None and case.is_dir() else {}
    paths = {**found, **given}
    for (sequence, visit), path in sorted(paths.items()):
        if not path.is_file():
            raise InputError(f"{path}: {sequence.upper()} scan of time point {visit + 1} not found; check the path "
                             "or leave that sequence out (any subset of T1/T2 works)")
    return paths


def brain_mask_path(case: Optional[Path], given: Optional[Path]) -> Optional[Path]:
    """The brain mask a segmentation keeps its lesions inside: the given one, else the case
    folder's when it has one, else None (the whole image)."""
    from mstools import case_layout as layout

    if given is not None:
        return Path(given)
    if case is not None and (case / layout.BRAIN_MASK).is_file():
        return case / layout.BRAIN_MASK
    return None


def segment_job(case: Optional[Path], output: Optional[str], options: SegmentOptions = SegmentOptions(), *,
                baseline: Optional[Path] = None, followup: Optional[Path] = None, force: bool = False,
                sequences: Optional[dict] = None, brain_mask: Optional[Path] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> JobResult:
    """Segment new lesions with a learned model; ``progress(done, total)`` follows the windows
    (slices for multitask: :func:`progress_unit`). ``sequences``: {(``"t1"``/``"t2"``, visit 0/1):
    path} of optional scans on the FLAIRs' grid for the multi-sequence model (the case folder's
    are read when not given). Every map is 0 outside the brain mask (:func:`brain_mask_path`) and
    where a scan holds no data (:func:`mstools.case.imaged_in_both`)."""
    import time

    from mstools.case import imaged_in_both, read_sequences, resolve_pair
    from mstools.detections import add_detections, add_image, output_paths
    from mstools.errors import InputError
    from mstools.io import OutputBatch, check_same_grid, check_scan, read_image, read_mask
    from mstools.lesions import detections_from_mask
    from mstools.messages import log
    from mstools.models import packaged_model
    from mstools.provenance import check_outputs, describe_inputs, sidecar

    o = options
    model = o.model
    baseline_path, followup_path = resolve_pair(case, baseline, followup)
    if output is None:
        if case is None:
            raise InputError("give --output PREFIX when the images are given with --baseline/--followup")
        output = str(case / model)
    if model in NETWORKS and not NETWORKS[model].default_weights and o.weights is None:
        raise InputError(f"--model {model} ships no default weights; train them with mstools train --model {model} "
                         "and pass --weights RUN/model.pt")
    weights_path = Path(o.weights) if o.weights is not None else packaged_model("deep", model)
    outputs = NETWORKS[model].outputs if model in NETWORKS else ()

    paths = output_paths(output)
    extra = {name: {"score": output + suffix + "_score.nii.gz", "mask": output + suffix + "_mask.nii.gz"}
             for name, suffix in ALL_LESION_OUTPUTS.items() if name in outputs}
    targets = list(paths.values()) + [p for e in extra.values() for p in e.values()]
    extra_paths = sequence_paths(case, model, sequences)
    map_paths = lesion_map_source(case, model, o.lesions)
    brain_path = brain_mask_path(case, brain_mask)
    inputs = [baseline_path, followup_path, *(extra_paths[k] for k in sorted(extra_paths)), *(map_paths or ()),
              *([brain_path] if brain_path is not None else [])]
    check_outputs(targets, inputs=inputs, force=force)  # fail before the work
    base = read_image(baseline_path)
    follow = read_image(followup_path)
    check_same_grid(base, follow)
    check_scan(base)
    check_scan(follow)
    brain = None
    if brain_path is not None:
        brain = read_mask(brain_path, allow_empty=False)
        check_same_grid(base, brain)
    extra_images = read_sequences(extra_paths, base)
    lesion_maps = read_lesion_maps(map_paths, base, model=model) if map_paths is not None else None

    from mstools.detect.deep.predictor import PredictOptions, Predictor, default_threshold, inside_region, lesion_mask

    predictor_class = Predictor
    if lesion_maps is not None:   # the cascade (paper 001): the maps are two more input channels
        from mstools.detect.deep.cascade import CascadePredictor as predictor_class
    try:
        predictor = predictor_class.from_file(weights_path, device=o.device, threads=o.threads)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if predictor.config.model != model:
        raise InputError(f"{weights_path}: weights of a {predictor.config.model} model, not {model}; "
                         f"use --model {predictor.config.model}")
    predict = PredictOptions(overlap=o.overlap, batch_size=o.batch_size, tta=o.tta)
    log(f"segmenting {base.name} with {model} ({weights_path.name}, {predictor.device})")
    started = time.time()
    if model == MULTISEQUENCE_MODEL:
        from mstools.detect.deep.multisequence import predict_sequences

        def pair(sequence):
            return tuple(extra_images[(sequence, v)].data if (sequence, v) in extra_images else None for v in (0, 1))

        maps = predict_sequences(predictor, (base.data, follow.data), spacing_mm=base.spacing_mm, t1=pair("t1"),
                                 t2=pair("t2"), options=predict, progress=progress)
    elif lesion_maps is not None:
        maps = predictor.predict(base.data, follow.data, tuple(m.data for m in lesion_maps), spacing_mm=base.spacing_mm,
                                 options=predict, progress=progress)
    else:
        maps = predictor.predict(base.data, follow.data, spacing_mm=base.spacing_mm, options=predict,
                                 progress=progress)
    seconds = time.time() - started

    if "all_t2" in outputs:
        from mstools.detect.deep.predictor import time02_all_lesions

        maps = {**maps, "all_t2": time02_all_lesions(maps, source=o.all_time02)}
    maps = inside_region(maps, imaged_in_both(base.data, follow.data, within=None if brain is None else brain.data))
    threshold = default_threshold(model, base.spacing_mm) if o.threshold is None else o.threshold
    parameters = {"model": model, "weights": str(weights_path), "threshold": threshold,
                  "all_time02": o.all_time02 if "all_t2" in outputs else None,
                  "min_lesion_mm3": o.min_lesion_mm3, "overlap": o.overlap, "batch_size": o.batch_size, "tta": o.tta,
                  "device": str(predictor.device), "threads": o.threads, "model_config": predictor.config.as_dict(),
                  "brain_mask": str(brain_path) if brain_path is not None else None}
    if map_paths is not None:
        parameters["lesions"] = o.lesions
        parameters["lesion_maps"] = [str(p) for p in map_paths]
    if model == MULTISEQUENCE_MODEL:
        parameters["sequences"] = ["flair_time01", "flair_time02"] + [f"{s}_time0{v + 1}" for s, v in sorted(extra_images)]
    record = sidecar(command="segment", parameters=parameters,
                     inputs=describe_inputs(inputs),
                     models={str(weights_path): predictor.sha256}, extra={"seconds": round(seconds, 2)})
    masks = {name: lesion_mask(p, voxel_volume_mm3=base.voxel_volume_mm3, threshold=threshold,
                               min_lesion_mm3=o.min_lesion_mm3) for name, p in maps.items()}
    detections = detections_from_mask(masks["new"], maps["new"], base.affine)
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as out:
        add_detections(out, output, detections, base, record)
        for name, files in extra.items():
            add_image(out, files["score"], maps[name], base, "float32", record)
            add_image(out, files["mask"], masks[name], base, "uint8", record)
    return JobResult(list(out.written), {
        "written": [str(p) for p in out.written], "model": model, "model_sha256": predictor.sha256,
        "new_lesions": len(detections.table),
        "new_lesion_volume_mm3": float(detections.mask.sum()) * base.voxel_volume_mm3,
        "seconds": round(seconds, 2),
        **({"sequences": parameters["sequences"]} if model == MULTISEQUENCE_MODEL else {})})
