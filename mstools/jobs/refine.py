"""Voxel-wise LightGBM refinement as jobs: refine a detector's candidates with a trained
model (the packaged one by default), and train a model with its card and cross-validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from mstools.jobs import JobResult
from mstools.jobs.options import option
from mstools.models import card_path

#: Defaults written once, from the library (paper 001): mstools.candidates.refine.postprocess and
#: mstools.candidates.refine.sampling hold the same figures (a test checks).
THRESHOLD, MIN_VOXELS, MIN_MINOR_AXIS = 0.2, 27, 2.0
DILATION_MM, BACKGROUND_FRACTION = 3.0, 0.005
REGIONS = ("candidates", "brain")
FEATURE_SETS = ("published", "context", "lesion")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class RefineOptions:
    model: Optional[str] = option(None, kind="path", help="Model from `mstools refine train` (default: the packaged model).")
    region: str = option("candidates", kind="choice", choices=REGIONS, help="Voxels to classify: the dilated candidates (as in training) or the whole brain.")
    threshold: float = option(THRESHOLD, kind="float", min=0, max=1, help="Probability threshold (paper 001: 0.2).")
    min_voxels: int = option(MIN_VOXELS, kind="int", min=0, help="Drop components with fewer voxels (paper 001: 27).")
    min_minor_axis: float = option(MIN_MINOR_AXIS, kind="float", min=0, help="Drop components whose minor axis is shorter, in voxels (paper 001: 2).")
    min_volume_mm3: Optional[float] = option(None, kind="float", min=0, help="Drop components smaller than this (mm3); replaces --min-voxels.")
    min_minor_axis_mm: Optional[float] = option(None, kind="float", min=0, help="Minor-axis limit in mm; replaces --min-minor-axis.")
    baseline_lesions: Optional[Path] = option(None, kind="path", help="Cascade models only: all lesions at baseline (mask on the case grid). Default: the case's lesions_time01.nii.gz, else CoactSeg's time-1 map of the run's segment stage.")
    followup_lesions: Optional[Path] = option(None, kind="path", help="Cascade models only: all lesions at follow-up (mask on the case grid). Default: the case's lesions_time02.nii.gz, else CoactSeg's time-2 map of the run's segment stage.")

    def postprocessing(self):
        from mstools.errors import InputError
        from mstools.candidates.refine.postprocess import PostProcessing

        try:
            return PostProcessing(threshold=self.threshold, min_voxels=self.min_voxels,
                                  min_minor_axis_voxels=self.min_minor_axis, min_volume_mm3=self.min_volume_mm3,
                                  min_minor_axis_mm=self.min_minor_axis_mm)
        except ValueError as exc:
            raise InputError(str(exc)) from None


def lesion_rows(table: Path, key: str) -> dict:
    """label -> row of a `mstools filter` feature table, keyed by its ``key`` column."""
    from mstools.errors import InputError
    from mstools.io import read_tsv

    rows = read_tsv(table)
    if rows and key not in rows[0]:
        raise InputError(f"{table}: no {key!r} column; give the _features.tsv that `mstools filter` wrote")
    out = {}
    for row in rows:
        try:
            label = int(float(row[key]))
        except (TypeError, ValueError):
            raise InputError(f"{table}: {key} {row[key]!r} is not a label number") from None
        if label > 0:
            out[label] = row
    return out


def read_case(case: Optional[Path], candidates: str, *, feature_set: str, lesion_features: Optional[Path] = None,
              baseline: Optional[Path] = None, followup: Optional[Path] = None,
              brain_mask: Optional[Path] = None, ground_truth: Optional[Path] = None, name: str = "",
              all_lesions: Optional[tuple[Path, Path]] = None):
    """(CaseInputs, reference image, inputs used) for one case and one detector's candidates;
    ``all_lesions``: the (baseline, follow-up) all-lesion masks of the cascade, on the case grid."""
    from mstools.case import read_pair, resolve_case_inputs
    from mstools.detections import read_candidates
    from mstools.errors import InputError
    from mstools.io import check_same_grid, read_mask
    from mstools.candidates.refine.model import CaseInputs

    paths = resolve_case_inputs(case, baseline, followup, brain_mask)
    b_img, f_img, brain_img = read_pair(*paths)
    labels, score, used = read_candidates(candidates, b_img)
    inputs = [*paths, *used]
    rows = None
    if feature_set == "lesion":
        table = lesion_features if lesion_features is not None else Path(candidates + "_features.tsv")
        if not table.is_file():
            raise InputError(f"{table}: filter feature table not found; the 'lesion' feature set needs the "
                             "_features.tsv of `mstools filter` (give --lesion-features)")
        # The detector's own table (candidates = filter output) is keyed by its output labels.
        key = "output_label" if lesion_features is None else "label"
        rows = lesion_rows(table, key)
        inputs.append(table)
    gt = None
    if ground_truth is not None:
        gt_img = read_mask(ground_truth)
        check_same_grid(b_img, gt_img)
        gt = gt_img.data
        inputs.append(ground_truth)
    maps = None
    if all_lesions is not None:
        maps = []
        for path in all_lesions:
            if not Path(path).is_file():
                raise InputError(f"{path}: all-lesion mask not found; the cascade reads both visits' all-lesion "
                                 "masks (`mstools segment --model coactseg` writes them)")
            image = read_mask(path)
            check_same_grid(b_img, image)
            maps.append(image.data > 0)
            inputs.append(Path(path))
        maps = tuple(maps)
    return (CaseInputs(baseline=b_img.data, followup=f_img.data, brain=brain_img.data, candidates=labels,
                       affine=b_img.affine, score=score, lesion_rows=rows, ground_truth=gt, name=name,
                       all_lesions=maps),
            b_img, inputs)


def refine_job(case: Optional[Path], candidates: str, out: str, options: RefineOptions = RefineOptions(), *,
               baseline: Optional[Path] = None, followup: Optional[Path] = None, brain_mask: Optional[Path] = None,
               lesion_features: Optional[Path] = None, segment_prefix: Optional[str] = None,
               force: bool = False) -> JobResult:
    """Refine a detector's candidates: probability map, threshold and the paper's component clean-up.

    A cascade model (``refine train --cascade``) also reads the all-lesion masks of both visits
    (``options.baseline_lesions`` / ``followup_lesions``, else the case's, else CoactSeg's maps
    written by ``segment`` at ``segment_prefix``: :func:`mstools.jobs.segment.all_lesion_source`)."""
    from mstools.case import resolve_case_inputs
    from mstools.detections import add_detections, output_paths
    from mstools.errors import InputError
    from mstools.io import OutputBatch, sha256
    from mstools.messages import log
    from mstools.models import load_refine_model, packaged_model
    from mstools.provenance import check_outputs, describe_inputs, sidecar
    from mstools.candidates.refine.postprocess import refined_detections

    read = [*resolve_case_inputs(case, baseline, followup, brain_mask), lesion_features,
            *output_paths(candidates).values(), options.baseline_lesions, options.followup_lesions]
    check_outputs(output_paths(out).values(), inputs=read, force=force)   # before the work, not after it
    post = options.postprocessing()
    path = packaged_model("refine") if options.model is None else Path(options.model)
    refiner = load_refine_model(path)
    all_lesions = cascade_sources(case, refiner.cascade, options, segment_prefix, model=path)
    case_inputs, reference, inputs = read_case(case, candidates, feature_set=refiner.feature_set,
                                               lesion_features=lesion_features, baseline=baseline,
                                               followup=followup, brain_mask=brain_mask, all_lesions=all_lesions)
    log(f"refine: {refiner.feature_set}{' + cascade' if refiner.cascade else ''} features, model {path}")
    try:
        probability = refiner.probability_map(case_inputs, region=options.region)
    except ValueError as exc:  # e.g. a constant scan inside the brain
        raise InputError(f"{inputs[0]}: {exc}; check that the scans hold the brain") from None
    detections, report = refined_detections(probability, affine=reference.affine, options=post)
    record = sidecar(command="refine", parameters={"candidates": candidates, "region": options.region,
                                                   "feature_set": refiner.feature_set, "cascade": refiner.cascade,
                                                   "all_lesions": [str(p) for p in all_lesions or ()],
                                                   **post.as_dict()},
                     inputs=describe_inputs(inputs), models={str(path): sha256(path)}, extra={"postprocess": report})
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        add_detections(batch, out, detections, reference, record)
    log(f"{len(detections.table)} lesions ({report['too_small']} too small, {report['too_thin']} too thin dropped)")
    return JobResult(list(batch.written), {"lesions": len(detections.table), "postprocess": report,
                                           "written": [str(p) for p in batch.written]})


def cascade_sources(case: Optional[Path], cascade: bool, options: RefineOptions, segment_prefix: Optional[str], *,
                    model: Path) -> Optional[tuple[Path, Path]]:
    """The (baseline, follow-up) all-lesion masks a model reads: None for a model without the
    cascade (which refuses maps given to it), both for a cascade model (or a one-line error)."""
    from mstools.errors import InputError
    from mstools.jobs.segment import all_lesion_source

    given = (options.baseline_lesions, options.followup_lesions)
    if not cascade:
        if any(p is not None for p in given):
            raise InputError(f"{model}: this model was trained without the cascade and reads no all-lesion maps; "
                             "drop --baseline-lesions/--followup-lesions or give a model of "
                             "`mstools refine train --cascade`")
        return None
    found = tuple(all_lesion_source(case, head, given=g, segment_prefix=segment_prefix)
                  for head, g in zip(("all_t1", "all_t2"), given))
    if any(p is None for p in found):
        raise InputError(f"{model}: a cascade model needs the all-lesion masks of both visits; give "
                         "--baseline-lesions and --followup-lesions (e.g. the _all_time01/_all_time02 masks of "
                         "`mstools segment --model coactseg`), or enable segment with model coactseg in `mstools run`")
    return found  # type: ignore[return-value]


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class RefineTrainOptions:
    feature_set: str = "published"
    dilation_mm: float = DILATION_MM
    background_fraction: float = BACKGROUND_FRACTION
    class_weight: str = "none"
    bias_sigma_mm: float = 15.0
    cv_folds: int = 5
    loo: bool = False
    max_rounds: int = 500
    seed: int = 0
    #: Paper 001's cascade: each entry's 4th item holds its (baseline, follow-up) all-lesion masks.
    cascade: bool = False


def manifest_cases(manifest: Path) -> list[tuple]:
    """(case folder, candidates prefix, lesion feature table, all-lesion masks or None) rows of a
    manifest TSV (:data:`mstools.manifest.REFINE_TRAIN`); the masks are the columns
    ``baseline_lesions`` and ``followup_lesions`` (both or neither)."""
    from mstools.errors import InputError
    from mstools.manifest import REFINE_TRAIN, read_manifest

    entries = []
    for row in read_manifest(manifest, REFINE_TRAIN):
        candidates = row.path("candidates")
        if candidates is None:
            raise InputError(f"{manifest}: line {row.line} has no candidates (a detector's output prefix)")
        maps = (row.path("baseline_lesions"), row.path("followup_lesions"))
        if (maps[0] is None) != (maps[1] is None):
            raise InputError(f"{manifest}: line {row.line} gives one all-lesion mask; give baseline_lesions and "
                             "followup_lesions both, or neither")
        entries.append((row.path("case"), str(candidates), row.path("lesion_features"),
                        maps if maps[0] is not None else None))
    return entries


def _simulation(case: Path) -> Optional[dict]:
    import json

    from mstools import case_layout as layout

    truth = case / layout.TRUTH
    if truth.is_file():
        try:
            return json.loads(truth.read_text()).get("config")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    return None


def _versions() -> dict:
    import platform

    import lightgbm
    import numpy as np
    import scipy

    from mstools import __version__
    return {"mstools": __version__, "lightgbm": lightgbm.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}


def refine_train_job(entries: Sequence[tuple[Path, str, Optional[Path]]], out: Path,
                     options: RefineTrainOptions = RefineTrainOptions(), *, dask: bool = False,
                     scheduler: Optional[str] = None, dask_workers: int = 2, scheduler_timeout: float = 30.0,
                     force: bool = False) -> JobResult:
    """Fit a refinement model on (case folder, candidates prefix, lesion table) entries with ground
    truth, cross-validate it by case, write it with its card (and OUT.cv.tsv).

    ``dask``: train with lightgbm.dask on a local cluster started and stopped here;
    ``scheduler``: on an existing cluster (left running). Otherwise in this process.
    """
    from mstools.errors import InputError
    from mstools.parallel import connect, training_cluster
    from mstools.provenance import check_outputs
    from mstools.candidates.refine.features import model_feature_names
    from mstools.candidates.refine.sampling import SamplingOptions

    o = options
    folds = None if o.loo else (o.cv_folds or 0)
    if (o.loo or o.cv_folds) and len(entries) < 2:
        raise InputError("cross-validation needs at least 2 cases; add cases or pass --cv-folds 0")
    targets = [out, card_path(out)] + ([Path(str(out) + ".cv.tsv")] if o.loo or o.cv_folds else [])
    check_outputs(targets, force=force, sidecars=False)  # before minutes of work, not after
    sampling = SamplingOptions(dilation_mm=o.dilation_mm, background_fraction=o.background_fraction)
    names = list(model_feature_names(o.feature_set, cascade=o.cascade))
    if o.cascade and any(len(entry) < 4 or entry[3] is None for entry in entries):
        missing = next(entry[0] for entry in entries if len(entry) < 4 or entry[3] is None)
        raise InputError(f"{missing}: no all-lesion masks for the cascade; give --cascade SOURCE (or the manifest "
                         "columns baseline_lesions and followup_lesions)")
    client, cluster = None, None
    if scheduler:
        client = connect(scheduler, scheduler_timeout,
                         message="cannot reach the Dask scheduler {scheduler} ({exc}); check the address")
    elif dask:
        cluster, client = training_cluster(dask_workers)
    try:
        return _train(entries, out, o, names, folds, sampling, client,
                      "none" if client is None else ("dask-local" if dask else "dask-scheduler"), force)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _train(entries, out, o, names, folds, sampling, client, backend, force) -> JobResult:
    import hashlib
    import json
    import time

    import numpy as np

    from mstools import case_layout as layout
    from mstools.detections import detector_record
    from mstools.errors import InputError
    from mstools.io import OutputBatch
    from mstools.messages import log
    from mstools.parallel import stdout_to_stderr
    from mstools.provenance import describe_inputs, sidecar
    from mstools.candidates.refine import model as rm
    from mstools.candidates.refine.features import CONTEXT_BOX_MM, EDGE_CAP_MM, NEIGHBOURS
    from mstools.candidates.refine.postprocess import PostProcessing

    trainer: Callable
    if client is None:
        trainer = rm.fit
    else:
        def trainer(*args, **kwargs):
            # lightgbm.dask prints its port search on stdout, which carries results only
            with stdout_to_stderr():
                return rm.fit_dask(*args, client=client, **kwargs)
    started = time.perf_counter()
    samples, inputs, described = [], [], []
    for n, entry in enumerate(entries):
        case, prefix, table = entry[:3]
        maps = entry[3] if o.cascade else None
        gt_path = case / layout.GROUND_TRUTH
        case_inputs, _, used = read_case(case, prefix, feature_set=o.feature_set, lesion_features=table,
                                         ground_truth=gt_path, name=case.name, all_lesions=maps)
        try:
            sample = rm.case_samples(case_inputs, feature_set=o.feature_set, sampling=sampling,
                                     bias_sigma_mm=o.bias_sigma_mm, seed=o.seed + n, cascade=o.cascade)
        except ValueError as exc:
            raise InputError(f"{case}: {exc}") from None
        del case_inputs
        samples.append(sample)
        inputs.extend(used)
        described.append({"case": str(case), "candidates": prefix, "detector": detector_record(prefix),
                          **({"all_lesions": [str(p) for p in maps]} if maps is not None else {}),
                          "simulation": _simulation(case), "voxels": int(len(sample.truth)),
                          "positives": int(sample.truth.sum())})
        log(f"{case}: {len(sample.truth)} voxels, {int(sample.truth.sum())} lesion")
    features_seconds = time.perf_counter() - started
    cv = None
    if o.loo or o.cv_folds:
        try:
            cv = rm.cross_validate(samples, names=names, folds=folds, seed=o.seed, class_weight=o.class_weight,
                                   max_rounds=o.max_rounds, trainer=trainer, progress=log)
        except ValueError as exc:
            raise InputError(f"cannot cross-validate: {exc}") from None
        log("cross-validated means: " + json.dumps({k: round(v, 4) for k, v in cv["mean"].items()}))
    features = np.concatenate([s.features for s in samples])
    truth = np.concatenate([s.truth for s in samples])
    groups = np.concatenate([np.full(len(s.truth), n) for n, s in enumerate(samples)])
    try:
        text, info = trainer(features, truth, groups, names=names, seed=o.seed, class_weight=o.class_weight,
                             max_rounds=o.max_rounds)
    except ValueError as exc:
        raise InputError(f"cannot train: {exc}; add cases whose candidates meet new lesions") from None
    card = {
        "kind": rm.KIND, "feature_set": o.feature_set, "cascade": o.cascade, "features": names,
        "feature_options": {"neighbours": [n for n, _ in NEIGHBOURS], "context_box_mm": list(CONTEXT_BOX_MM),
                            "edge_cap_mm": EDGE_CAP_MM},
        "sampling": sampling.as_dict(), "bias_sigma_mm": o.bias_sigma_mm, "class_weight": o.class_weight,
        "postprocessing_defaults": PostProcessing().as_dict(), "seed": o.seed,
        "training": {"backend": backend, "max_rounds": o.max_rounds, **info},
        "training_cases": described,
        "cross_validation": None if cv is None else {"folds": cv["folds"], "leave_one_out": cv["leave_one_out"],
                                                     "mean": cv["mean"]},
        "versions": _versions(), "model_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "trees": text.count("\nTree="),
        "seconds": {"features": round(features_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    record = sidecar(command="refine train", parameters={"feature_set": o.feature_set, "cascade": o.cascade,
                                                        **sampling.as_dict(),
                                                        "class_weight": o.class_weight, "seed": o.seed,
                                                        "cv_folds": "loo" if o.loo else o.cv_folds},
                     inputs=describe_inputs(inputs))
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        batch.text(out, text)
        batch.json(card_path(out), {**card, "provenance": record})
        if cv is not None:
            columns = list(cv["cases"][0].keys()) if cv["cases"] else ["case"]
            batch.table(Path(str(out) + ".cv.tsv"), cv["cases"], columns)
    return JobResult(list(batch.written), card)
