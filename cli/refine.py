"""`mstools refine`: voxel-wise LightGBM refinement of any detector's candidates.

``mstools refine CASE -c PREFIX -o OUT`` (same as ``mstools refine apply ...``) refines one
detector's candidates with a trained model (the packaged default when no ``--model``);
``mstools refine train ...`` fits a model, cross-validates it by case and writes its card.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

import mstools
from cli import common
from cli.filter import DefaultApplyGroup, _candidate_maps
from cli.subtract import read_pair, resolve_case_inputs
from mstools import case_layout as layout
from mstools.errors import InputError

#: The model shipped with mstools (trained by benchmarks/bench_refine.py; its card says on what).
DEFAULT_MODEL = Path(mstools.__file__).resolve().parent / "models" / "refine" / "default.txt"
# Defaults written once, from the library (paper 001 via mstools.refine.postprocess / sampling).
THRESHOLD, MIN_VOXELS, MIN_MINOR_AXIS = 0.2, 27, 2.0   # = mstools.refine.postprocess defaults (tested)
DILATION_MM, BACKGROUND_FRACTION = 3.0, 0.005          # = mstools.refine.sampling defaults (tested)


class FeatureSet(str, Enum):
    published = "published"
    context = "context"
    lesion = "lesion"


class Region(str, Enum):
    candidates = "candidates"
    brain = "brain"


class ClassWeight(str, Enum):
    none = "none"
    balanced = "balanced"


refine_app = typer.Typer(
    cls=DefaultApplyGroup, no_args_is_help=True, add_completion=False,
    help="Refine detector candidates voxel by voxel with a LightGBM classifier (Prados & Kanber).\n\n"
         "Example: mstools refine data_samples/sim-001 --candidates out/s1 -o out/s1_refined",
)


def model_path(path: Optional[Path]) -> Path:
    return DEFAULT_MODEL if path is None else path


def load_model(path: Path):
    """The model and its card (``PATH.card.json``), checked against this version's features."""
    from mstools.refine.model import RefineModel

    card_path = Path(str(path) + ".card.json")
    if not path.is_file():
        raise InputError(f"{path}: model not found; train one with `mstools refine train`")
    if not card_path.is_file():
        raise InputError(f"{card_path}: model card not found; keep the card that `mstools refine train` "
                         "wrote beside the model")
    try:
        card = json.loads(card_path.read_text())
        text = path.read_text()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable model or card ({exc}); retrain with `mstools refine train`") from None
    if not isinstance(card, dict) or not isinstance(card.get("features"), list) \
            or not isinstance(card.get("sampling", {}), dict):
        raise InputError(f"{card_path}: not a model card (a JSON object with features and sampling was "
                         "expected); keep the card that `mstools refine train` wrote beside the model")
    from mstools.io import sha256
    from mstools.refine.trees import check_model_text

    try:
        check_model_text(text, card, sha256=sha256(path))
        return RefineModel(text, card)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: {exc}; retrain with `mstools refine train`") from None


def lesion_rows(table: Path, key: str) -> dict:
    """label -> row of a `mstools filter` feature table, keyed by its ``key`` column."""
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
              brain_mask: Optional[Path] = None, ground_truth: Optional[Path] = None, name: str = ""):
    """(CaseInputs, reference image, inputs used) for one case and one detector's candidates."""
    from mstools.io import check_same_grid, read_mask
    from mstools.refine.model import CaseInputs

    paths = resolve_case_inputs(case, baseline, followup, brain_mask)
    b_img, f_img, brain_img = read_pair(*paths)
    labels, score, used = _candidate_maps(candidates, b_img)
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
    return (CaseInputs(baseline=b_img.data, followup=f_img.data, brain=brain_img.data, candidates=labels,
                       affine=b_img.affine, score=score, lesion_rows=rows, ground_truth=gt, name=name),
            b_img, inputs)


def _postprocessing(threshold, min_voxels, min_minor_axis, min_volume_mm3, min_minor_axis_mm):
    from mstools.refine.postprocess import PostProcessing

    try:
        return PostProcessing(threshold=threshold, min_voxels=min_voxels, min_minor_axis_voxels=min_minor_axis,
                              min_volume_mm3=min_volume_mm3, min_minor_axis_mm=min_minor_axis_mm)
    except ValueError as exc:
        raise InputError(str(exc)) from None


@refine_app.command("apply")
@common.command
def refine_apply(
    case: Optional[Path] = typer.Argument(None, help="Case folder (baseline, follow-up, brain mask)."),
    candidates: str = typer.Option(..., "--candidates", "-c", help="Output prefix of a detector (reads PREFIX_labels or PREFIX_mask, and PREFIX_score)."),
    out: str = typer.Option(..., "--out", "-o", help="Output prefix: OUT_score (probability), OUT_mask, OUT_labels, OUT_lesions.tsv."),
    baseline: Optional[Path] = typer.Option(None, help="Baseline FLAIR (overrides the case folder's)."),
    followup: Optional[Path] = typer.Option(None, help="Follow-up FLAIR."),
    brain_mask: Optional[Path] = typer.Option(None, help="Brain mask."),
    model: Optional[Path] = typer.Option(None, help="Model from `mstools refine train` (default: the packaged model)."),
    lesion_features: Optional[Path] = typer.Option(None, help="For 'lesion' models: the `mstools filter` _features.tsv of these candidates' labels (default: PREFIX_features.tsv, keyed by output_label)."),
    region: Region = typer.Option(Region.candidates, help="Voxels to classify: the dilated candidates (as in training) or the whole brain."),
    threshold: float = typer.Option(THRESHOLD, min=0, max=1, help="Probability threshold (paper 001: 0.2)."),
    min_voxels: int = typer.Option(MIN_VOXELS, min=0, help="Drop components with fewer voxels (paper 001: 27)."),
    min_minor_axis: float = typer.Option(MIN_MINOR_AXIS, min=0, help="Drop components whose minor axis is shorter, in voxels (paper 001: 2)."),
    min_volume_mm3: Optional[float] = typer.Option(None, min=0, help="Drop components smaller than this (mm3); replaces --min-voxels."),
    min_minor_axis_mm: Optional[float] = typer.Option(None, min=0, help="Minor-axis limit in mm; replaces --min-minor-axis."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the written paths."),
) -> None:
    """Refine a detector's candidates: probability map, threshold and the paper's component clean-up.

    Example: mstools refine data_samples/sim-001 --candidates out/s1 -o out/s1_refined
    """
    from mstools.io import OutputBatch, sha256
    from mstools.provenance import describe_inputs, sidecar
    from mstools.refine.postprocess import refined_detections

    options = _postprocessing(threshold, min_voxels, min_minor_axis, min_volume_mm3, min_minor_axis_mm)
    path = model_path(model)
    refiner = load_model(path)
    case_inputs, reference, inputs = read_case(case, candidates, feature_set=refiner.feature_set,
                                               lesion_features=lesion_features)
    common.log(f"refine: {refiner.feature_set} features, model {path}")
    try:
        probability = refiner.probability_map(case_inputs, region=region.value)
    except ValueError as exc:  # e.g. a constant scan inside the brain
        raise InputError(f"{inputs[0]}: {exc}; check that the scans hold the brain") from None
    detections, report = refined_detections(probability, affine=reference.affine, options=options)
    record = sidecar(command="refine", parameters={"candidates": candidates, "region": region.value,
                                                   "feature_set": refiner.feature_set, **options.as_dict()},
                     inputs=describe_inputs(inputs), models={str(path): sha256(path)}, extra={"postprocess": report})
    with OutputBatch(inputs=inputs, force=force, create_dirs=True) as batch:
        common.add_detections(batch, out, detections, reference, record)
    common.log(f"{len(detections.table)} lesions ({report['too_small']} too small, {report['too_thin']} too thin dropped)")
    common.emit(batch.written, as_json=as_json,
                payload={"lesions": len(detections.table), "postprocess": report,
                         "written": [str(p) for p in batch.written]})


def _manifest_cases(manifest: Path) -> list[tuple[Path, str, Optional[Path]]]:
    """(case folder, candidates prefix, lesion feature table) rows of a manifest TSV."""
    from mstools.io import read_tsv

    rows = read_tsv(manifest)
    if not rows or "case" not in rows[0] or "candidates" not in rows[0]:
        raise InputError(f"{manifest}: a TSV with columns case, candidates (optional lesion_features) was expected")
    base = manifest.parent

    def resolve(value: str) -> str:
        return value if Path(value).is_absolute() else str(base / value)

    return [(Path(resolve(r["case"])), resolve(r["candidates"]),
             Path(resolve(r["lesion_features"])) if r.get("lesion_features") else None) for r in rows]


def _detector_record(prefix: str) -> Optional[dict]:
    """The candidates' own sidecar (command and parameters), when the detector wrote one."""
    from mstools.provenance import sidecar_path

    for suffix in ("_labels.nii.gz", "_mask.nii.gz"):
        side = sidecar_path(prefix + suffix)
        if side.is_file():
            try:
                record = json.loads(side.read_text())
                return {"command": record.get("command"), "parameters": record.get("parameters")}
            except (OSError, json.JSONDecodeError):
                return None
    return None


def _simulation(case: Path) -> Optional[dict]:
    truth = case / layout.TRUTH
    if truth.is_file():
        try:
            return json.loads(truth.read_text()).get("config")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
    return None


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send what Python and child processes write on stdout to stderr for a while
    (stdout carries results only; Dask and LightGBM print their chatter there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _versions() -> dict:
    import lightgbm
    import scipy

    from mstools import __version__
    return {"mstools": __version__, "lightgbm": lightgbm.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}


@refine_app.command("train")
@common.command
def refine_train(
    cases: Optional[List[Path]] = typer.Argument(None, help="Case folders holding ground_truth.nii.gz (or use --manifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model file (LightGBM text); the card goes to OUT.card.json, the per-case cross-validation to OUT.cv.tsv."),
    manifest: Optional[Path] = typer.Option(None, help="TSV with columns case, candidates (prefix) and optionally lesion_features, instead of CASES."),
    candidates_name: str = typer.Option("subtract", help="Detector prefix name of each case's candidates (CASE/NAME_labels.nii.gz)."),
    candidates_root: Optional[Path] = typer.Option(None, help="Read candidates from ROOT/<case folder name>/NAME instead of the case folder."),
    feature_set: FeatureSet = typer.Option(FeatureSet.published, help="published: the paper's 21 features; context: + local statistics, score, brain-edge distance; lesion: + `mstools filter` lesion features."),
    dilation_mm: float = typer.Option(DILATION_MM, min=0, help="Candidate region = candidates dilated by this (mm)."),
    background_fraction: float = typer.Option(BACKGROUND_FRACTION, min=0, max=1, help="Share of the other brain voxels sampled as background."),
    class_weight: ClassWeight = typer.Option(ClassWeight.none, help="none (sampling only; calibrated for the 0.2 threshold) or balanced (scale_pos_weight = negatives/positives)."),
    bias_sigma_mm: float = typer.Option(15.0, min=0, help="Differential bias correction width before normalising (mm); 0 = off."),
    cv_folds: int = typer.Option(5, min=0, help="Case-grouped cross-validation folds (0 = none; >= cases = leave-one-out)."),
    loo: bool = typer.Option(False, "--loo", help="Leave-one-case-out cross-validation (the paper's)."),
    max_rounds: int = typer.Option(500, min=1, help="Boosting rounds at most (early stopping after 50 without improvement)."),
    dask: bool = typer.Option(False, "--dask", help="Train with lightgbm.dask on a local Dask cluster started and stopped here."),
    scheduler: Optional[str] = typer.Option(None, help="Train on an existing Dask cluster (scheduler address, e.g. tcp://10.0.0.5:8786)."),
    dask_workers: int = typer.Option(2, min=1, help="Workers of the local Dask cluster (one thread each)."),
    scheduler_timeout: float = typer.Option(30.0, min=0.1, help="Seconds to wait for --scheduler to answer."),
    seed: int = typer.Option(0, help="Random seed (sampling, folds, validation split, bagging)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing model."),
    as_json: bool = typer.Option(False, "--json", help="Print the model card as JSON."),
) -> None:
    """Fit a refinement model on cases with ground truth; cross-validate it by case; write it with its card.

    Example: mstools refine train sims/train/sim-* --candidates-name subtract --loo -o refine_model.txt
    """
    from mstools.io import OutputBatch
    from mstools.provenance import describe_inputs, sidecar
    from mstools.refine import model as rm
    from mstools.refine.features import CONTEXT_BOX_MM, EDGE_CAP_MM, NEIGHBOURS, feature_names
    from mstools.refine.postprocess import PostProcessing
    from mstools.refine.sampling import SamplingOptions

    if manifest is not None and cases:
        raise InputError("give case folders or --manifest, not both")
    if manifest is not None:
        entries = _manifest_cases(manifest)
    elif cases:
        root = candidates_root
        entries = [(c, str((root / c.name if root is not None else c) / candidates_name), None) for c in cases]
    else:
        raise InputError("no cases; give case folders or --manifest")
    if dask and scheduler:
        raise InputError("give --dask (local cluster) or --scheduler ADDRESS, not both")
    folds = None if loo else (cv_folds or 0)
    if (loo or cv_folds) and len(entries) < 2:
        raise InputError("cross-validation needs at least 2 cases; add cases or pass --cv-folds 0")
    from mstools.io import check_writable

    check_writable(out, force=force)  # before minutes of work, not after
    sampling = SamplingOptions(dilation_mm=dilation_mm, background_fraction=background_fraction)
    names = list(feature_names(feature_set.value))
    client, cluster = None, None
    if dask or scheduler:
        from dask.distributed import Client, LocalCluster

        if scheduler:
            try:
                client = Client(scheduler, timeout=f"{scheduler_timeout}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(f"cannot reach the Dask scheduler {scheduler} ({exc}); check the address") from None
        else:
            with _stdout_to_stderr():  # the worker processes inherit stderr as their stdout
                cluster = LocalCluster(n_workers=dask_workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, host="127.0.0.1")
            client = Client(cluster)
    if client is None:
        trainer = rm.fit
    else:
        def trainer(*args, **kwargs):
            # lightgbm.dask prints its port search on stdout, which carries results only
            with _stdout_to_stderr():
                return rm.fit_dask(*args, client=client, **kwargs)
    try:
        started = time.perf_counter()
        samples, inputs, described = [], [], []
        for n, (case, prefix, table) in enumerate(entries):
            gt_path = case / layout.GROUND_TRUTH
            case_inputs, _, used = read_case(case, prefix, feature_set=feature_set.value, lesion_features=table,
                                             ground_truth=gt_path, name=case.name)
            try:
                sample = rm.case_samples(case_inputs, feature_set=feature_set.value, sampling=sampling,
                                         bias_sigma_mm=bias_sigma_mm, seed=seed + n)
            except ValueError as exc:
                raise InputError(f"{case}: {exc}") from None
            del case_inputs
            samples.append(sample)
            inputs.extend(used)
            described.append({"case": str(case), "candidates": prefix, "detector": _detector_record(prefix),
                              "simulation": _simulation(case), "voxels": int(len(sample.truth)),
                              "positives": int(sample.truth.sum())})
            common.log(f"{case}: {len(sample.truth)} voxels, {int(sample.truth.sum())} lesion")
        features_seconds = time.perf_counter() - started
        cv = None
        if loo or cv_folds:
            try:
                cv = rm.cross_validate(samples, names=names, folds=folds, seed=seed, class_weight=class_weight.value,
                                       max_rounds=max_rounds, trainer=trainer, progress=common.log)
            except ValueError as exc:
                raise InputError(f"cannot cross-validate: {exc}") from None
            common.log("cross-validated means: " + json.dumps({k: round(v, 4) for k, v in cv["mean"].items()}))
        features = np.concatenate([s.features for s in samples])
        truth = np.concatenate([s.truth for s in samples])
        groups = np.concatenate([np.full(len(s.truth), n) for n, s in enumerate(samples)])
        try:
            text, info = trainer(features, truth, groups, names=names, seed=seed, class_weight=class_weight.value,
                                 max_rounds=max_rounds)
        except ValueError as exc:
            raise InputError(f"cannot train: {exc}; add cases whose candidates meet new lesions") from None
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    card = {
        "kind": rm.KIND, "feature_set": feature_set.value, "features": names,
        "feature_options": {"neighbours": [n for n, _ in NEIGHBOURS], "context_box_mm": list(CONTEXT_BOX_MM),
                            "edge_cap_mm": EDGE_CAP_MM},
        "sampling": sampling.as_dict(), "bias_sigma_mm": bias_sigma_mm, "class_weight": class_weight.value,
        "postprocessing_defaults": PostProcessing().as_dict(), "seed": seed,
        "training": {"backend": "none" if client is None else ("dask-local" if dask else "dask-scheduler"),
                     "max_rounds": max_rounds, **info},
        "training_cases": described,
        "cross_validation": None if cv is None else {"folds": cv["folds"], "leave_one_out": cv["leave_one_out"],
                                                     "mean": cv["mean"]},
        "versions": _versions(), "model_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "trees": text.count("\nTree="),
        "seconds": {"features": round(features_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    record = sidecar(command="refine train", parameters={"feature_set": feature_set.value, **sampling.as_dict(),
                                                        "class_weight": class_weight.value, "seed": seed,
                                                        "cv_folds": "loo" if loo else cv_folds},
                     inputs=describe_inputs(inputs))
    with OutputBatch(inputs=inputs, force=force) as batch:
        batch.text(out, text)
        batch.json(Path(str(out) + ".card.json"), {**card, "provenance": record})
        if cv is not None:
            columns = list(cv["cases"][0].keys()) if cv["cases"] else ["case"]
            batch.table(Path(str(out) + ".cv.tsv"), cv["cases"], columns)
    common.emit(batch.written, as_json=as_json, payload=card)
