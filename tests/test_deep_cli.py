"""`mstools segment` and `mstools train` end to end on tiny oblique, anisotropic cases."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from mstools_cli.main import app  # noqa: E402
from mstools import case_layout as layout  # noqa: E402
from mstools.detect.deep import MODELS  # noqa: E402
from mstools.detect.deep.networks import NETWORKS  # noqa: E402
from mstools.detect.deep.weights import save_weights  # noqa: E402
from mstools.io import sha256 as file_sha256  # noqa: E402
from mstools.models import card_path, packaged_model, read_card  # noqa: E402
from mstools.detect.deep.config import ModelConfig  # noqa: E402
from mstools.detect.deep.networks import build_model  # noqa: E402
from tests.conftest import oblique_affine, save_nifti  # noqa: E402

runner = CliRunner()
SHAPE = (22, 18, 9)


def make_case(folder, seed=0, *, single=False, affine=None):
    """A head-like blob with a bright new lesion at follow-up (two time points) or lesions (one)."""
    rng = np.random.default_rng(seed)
    affine = oblique_affine() if affine is None else affine
    folder.mkdir(parents=True, exist_ok=True)
    head = np.zeros(SHAPE, np.float32)
    head[2:-2, 2:-2, 1:-1] = 300
    base = head + rng.normal(0, 10, SHAPE).astype(np.float32)
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[8:12, 7:10, 3:6] = 1
    follow = head + 200 * lesion + rng.normal(0, 10, SHAPE).astype(np.float32)
    if single:
        save_nifti(folder / layout.SINGLE_FLAIR, follow, affine)
        save_nifti(folder / layout.SINGLE_LESIONS, lesion, affine)
    else:
        save_nifti(folder / layout.BASELINE, base, affine)
        save_nifti(folder / layout.FOLLOWUP, follow, affine)
        save_nifti(folder / layout.GROUND_TRUTH, lesion, affine)
    return folder


def tiny_weights(path, model="coactseg", spacing_mm=1.5):
    torch.manual_seed(0)
    cfg = ModelConfig(model, base_filters=2, patch_size=16, spacing_mm=spacing_mm, norm="batch")
    save_weights(path, cfg, build_model(cfg).state_dict())
    return path


@pytest.mark.parametrize("model", MODELS)
def test_segment_keeps_the_native_oblique_grid(tmp_path, model):
    case = make_case(tmp_path / "case")
    weights = tiny_weights(tmp_path / f"{model}.pt", model)
    prefix = str(tmp_path / "out" / "seg")
    (tmp_path / "out").mkdir()
    maps = []
    if NETWORKS[model].lesion_maps:     # the cascade: both visits' all-lesion masks, here the new lesion's
        for name in (layout.LESIONS_BASELINE, layout.LESIONS_FOLLOWUP):
            (case / name).write_bytes((case / layout.GROUND_TRUTH).read_bytes())
        maps = ["--lesions", "case"]
    result = runner.invoke(app, ["segment", str(case), "--model", model, "--weights", str(weights), "-o", prefix,
                                 "--json", "--threads", "1", *maps])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["model_sha256"] == file_sha256(weights)
    reference = nib.load(case / layout.BASELINE)
    names = ["_score", "_mask", "_labels"] + (["_all_time01_score", "_all_time01_mask", "_all_time02_score",
                                                "_all_time02_mask"] if model == "coactseg" else [])
    dtypes = {"_score": np.float32, "_mask": np.uint8, "_labels": np.int32}
    for name in names:
        img = nib.load(prefix + name + ".nii.gz")
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.affine, reference.affine, atol=1e-5)
        assert img.get_data_dtype() == dtypes.get(name, np.float32 if name.endswith("score") else np.uint8)
        side = json.loads(open(prefix + name + ".json").read())
        assert side["models_sha256"] == {str(weights): file_sha256(weights)}
    score = nib.load(prefix + "_score.nii.gz").get_fdata()
    assert 0 <= score.min() and score.max() <= 1
    assert (tmp_path / "out" / "seg_lesions.tsv").is_file()
    assert len(payload["written"]) == len(names) * 2 + 2


def test_segment_keeps_its_lesions_inside_the_brain_mask(tmp_path, write_nifti):
    """The case folder's brain mask by default, a given one instead; outside it every map is 0
    and inside it nothing changes; a bad mask is a one-line error with nothing written."""
    case = make_case(tmp_path / "case")
    weights = tiny_weights(tmp_path / "unet.pt", "unet")
    affine = nib.load(case / layout.BASELINE).affine

    def segment(prefix, *extra):
        result = runner.invoke(app, ["segment", str(case), "--model", "unet", "--weights", str(weights), "-o",
                                     str(tmp_path / prefix), "--threads", "1", "--threshold", "0", *extra])
        assert result.exit_code == 0, result.stderr
        return (nib.load(tmp_path / f"{prefix}_score.nii.gz").get_fdata(),
                nib.load(tmp_path / f"{prefix}_mask.nii.gz").get_fdata(),
                json.loads((tmp_path / f"{prefix}_score.json").read_text())["parameters"]["brain_mask"])

    whole, whole_mask, recorded = segment("whole")          # no brain mask in the folder: the whole image
    assert recorded is None and (whole[:, :9] > 0).any() and (whole_mask[:, :9] > 0).any()
    brain = np.zeros(SHAPE, np.uint8)
    brain[:, 9:] = 1
    save_nifti(case / layout.BRAIN_MASK, brain, affine)
    score, mask, recorded = segment("folder")
    assert recorded == str(case / layout.BRAIN_MASK)
    assert not score[:, :9].any() and not mask[:, :9].any()
    np.testing.assert_allclose(score[:, 9:], whole[:, 9:], atol=1e-6)
    other = np.zeros(SHAPE, np.uint8)
    other[:, :9] = 1
    given = write_nifti("given.nii.gz", other, affine)
    score, _, recorded = segment("given", "--brain-mask", str(given))
    assert recorded == str(given) and not score[:, 9:].any() and score[:, :9].any()

    off_grid = write_nifti("off.nii.gz", other, oblique_affine(spacing=(1, 1, 1)))
    empty = write_nifti("empty.nii.gz", np.zeros(SHAPE, np.uint8), affine)
    for bad, says in ((off_grid, "grid"), (empty, "empty"), (tmp_path / "none.nii.gz", "not found")):
        result = runner.invoke(app, ["segment", str(case), "--model", "unet", "--weights", str(weights), "-o",
                                     str(tmp_path / "bad"), "--brain-mask", str(bad)])
        assert result.exit_code == 1 and says in result.stderr.lower() and len(result.stderr.splitlines()) == 1
        assert not list(tmp_path.glob("bad*"))


def test_multitask_thresholds_thick_grids_lower_unless_told(tmp_path):
    """0.3 for multitask on a grid with a 2 mm+ voxel edge, 0.5 on thinner grids and for the
    other networks; a given --threshold wins. The threshold used is in the sidecar."""
    from mstools.detect.deep.predictor import DEFAULT_THRESHOLD, THICK_SLICE_THRESHOLD, default_threshold

    assert default_threshold("multitask", (0.72, 0.72, 3.0)) == THICK_SLICE_THRESHOLD["multitask"] == 0.3
    assert default_threshold("multitask", (1.0, 1.0, 1.5)) == DEFAULT_THRESHOLD == 0.5
    assert default_threshold("coactseg", (0.72, 0.72, 3.0)) == DEFAULT_THRESHOLD

    def used(affine, *extra):
        case = make_case(tmp_path / f"case{len(list(tmp_path.iterdir()))}", affine=affine)
        weights = tiny_weights(tmp_path / "m.pt", "multitask")
        prefix = str(case / "m")
        result = runner.invoke(app, ["segment", str(case), "--model", "multitask", "--weights", str(weights), "-o",
                                     prefix, "--threads", "1", *extra])
        assert result.exit_code == 0, result.stderr
        return json.loads(open(prefix + "_score.json").read())["parameters"]["threshold"]

    assert used(oblique_affine()) == 0.3                            # 0.9 x 1.1 x 2.5 mm voxels
    assert used(oblique_affine(spacing=(1.0, 1.0, 1.5))) == 0.5
    assert used(oblique_affine(), "--threshold", "0.6") == 0.6


def test_segment_error_paths(tmp_path, write_nifti):
    case = make_case(tmp_path / "case")
    unet = tiny_weights(tmp_path / "unet.pt", "unet")
    out = str(tmp_path / "o")

    def run(*args):
        return runner.invoke(app, ["segment", *args])

    r = run(str(case), "--model", "coactseg", "--weights", str(unet), "-o", out)
    assert r.exit_code == 1 and "use --model unet" in r.stderr
    r = run(str(case), "--weights", str(tmp_path / "missing.pt"), "-o", out)
    assert r.exit_code == 1 and "not found" in r.stderr
    broken = tmp_path / "broken.pt"
    state = build_model(ModelConfig("unet", base_filters=2, patch_size=16)).state_dict()
    state.pop(next(iter(state)))
    save_weights(broken, ModelConfig("unet", base_filters=2, patch_size=16), state)
    r = run(str(case), "--model", "unet", "--weights", str(broken), "-o", out)
    assert r.exit_code == 1 and "do not match" in r.stderr and "Missing key" in r.stderr
    r = run(str(tmp_path / "nowhere"), "-o", out)
    assert r.exit_code == 1 and "not found" in r.stderr
    r = run("--baseline", str(case / layout.BASELINE))
    assert r.exit_code == 1 and "both --baseline and --followup" in r.stderr
    r = run("--baseline", str(case / layout.BASELINE), "--followup", str(case / layout.FOLLOWUP), "--weights", str(unet),
            "--model", "unet")
    assert r.exit_code == 1 and "--output" in r.stderr
    other = write_nifti("other.nii.gz", np.zeros(SHAPE, np.float32), oblique_affine(spacing=(1, 1, 1)))
    r = run("--baseline", str(case / layout.BASELINE), "--followup", str(other), "--weights", str(unet),
            "--model", "unet", "-o", out)
    assert r.exit_code == 1 and "grid" in r.stderr.lower()
    r = run(str(case), "--model", "unet", "--weights", str(unet), "-o", out)
    assert r.exit_code == 0, r.stderr
    r = run(str(case), "--model", "unet", "--weights", str(unet), "-o", out)   # outputs exist
    assert r.exit_code == 1 and "--force" in r.stderr
    assert run(str(case), "--model", "unet", "--weights", str(unet), "-o", out, "--force").exit_code == 0


def _train(tmp_path, run, *extra):
    return runner.invoke(app, ["train", str(run), "--model", "coactseg", "--cases", str(tmp_path / "data"),
                               "--val", str(tmp_path / "val"), "--base-filters", "2", "--patch-size", "16",
                               "--spacing-mm", "0", "--batch-longitudinal", "1", "--batch-single", "1",
                               "--threads", "1", "--checkpoint-every", "1", "--validate-every", "2", *extra])


def _training_data(tmp_path):
    """Two two-time-point and one single-time-point training cases, one validation case."""
    for n in range(2):
        make_case(tmp_path / "data" / f"two-{n}", seed=n)
    make_case(tmp_path / "data" / "one-0", seed=5, single=True)
    make_case(tmp_path / "val" / "v-0", seed=9)


def test_train_writes_weights_card_log_and_resumes(tmp_path):
    _training_data(tmp_path)
    run = tmp_path / "runs" / "new" / "run"        # parents made as run's and batch's are
    result = _train(tmp_path, run, "--iterations", "2", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["iterations"] == 2 and payload["best"]["iteration"] == 2
    card = read_card(run / "model.pt")
    assert card["sha256"] == file_sha256(run / "model.pt")
    assert card["configuration"]["base_filters"] == 2 and card["iterations"] == 2
    assert sorted(card["training_data"]["longitudinal"]) == ["two-0", "two-1"]
    log = (run / "training_log.tsv").read_text().splitlines()
    assert log[0].split("\t")[:3] == ["iteration", "seconds", "loss"] and log[-1].startswith("2\t")
    # resume to 4 iterations, and the weights work with segment
    result = _train(tmp_path, run, "--iterations", "4", "--resume")
    assert result.exit_code == 0, result.stderr
    log = (run / "training_log.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in log[1:]] == ["2", "4"]
    seg = runner.invoke(app, ["segment", str(tmp_path / "val" / "v-0"), "--weights", str(run / "model.pt"),
                              "-o", str(tmp_path / "segs" / "new" / "seg")])
    assert seg.exit_code == 0, seg.stderr
    assert (tmp_path / "segs" / "new" / "seg_mask.nii.gz").is_file()
    # a non-empty run folder is not silently reused
    again = _train(tmp_path, run, "--iterations", "2")
    assert again.exit_code == 1 and "--resume" in again.stderr


def test_train_error_paths(tmp_path):
    make_case(tmp_path / "data" / "two-0")
    make_case(tmp_path / "val" / "v-0", seed=3)

    def run(*args):
        return runner.invoke(app, ["train", str(tmp_path / "run"), *args])

    r = run()
    assert r.exit_code == 1 and "no training data" in r.stderr
    r = run("--cases", str(tmp_path / "data"))                         # coactseg without single-time-point data
    assert r.exit_code == 1 and "single-time-point" in r.stderr
    r = run("--cases", str(tmp_path / "data"), "--val", str(tmp_path / "data" / "two-0"), "--batch-single", "0")
    assert r.exit_code == 1 and "both training and validation" in r.stderr
    r = run("--cases", str(tmp_path / "nothing"))
    assert r.exit_code == 1 and "not found" in r.stderr
    r = run("--cases", str(tmp_path))                                  # a folder without any case
    assert r.exit_code == 1 and "no case folder" in r.stderr
    r = run("--cases", str(tmp_path / "data"), "--resume", "--batch-single", "0")
    assert r.exit_code == 1 and "no checkpoint" in r.stderr
    r = run("--cases", str(tmp_path / "data"), "--patch-size", "24", "--batch-single", "0")
    assert r.exit_code == 1 and "multiple of" in r.stderr
    manifest = tmp_path / "m.tsv"
    manifest.write_text("case\tsplit\ndata/two-0\ttrain\nval/v-0\tholdout\n")
    r = run("--manifest", str(manifest))
    assert r.exit_code == 1 and "split must be" in r.stderr
    manifest.write_text("path\tsplit\ndata/two-0\ttrain\n")
    r = run("--manifest", str(manifest))
    assert r.exit_code == 1 and "'case' and 'split'" in r.stderr
    r = run("--manifest", str(manifest), "--cases", str(tmp_path / "data"))
    assert r.exit_code == 1 and "either --manifest" in r.stderr
    (tmp_path / "afile").write_text("not a folder")
    r = runner.invoke(app, ["train", str(tmp_path / "afile" / "run"), "--cases", str(tmp_path / "data"),
                            "--batch-single", "0"])
    assert r.exit_code == 1 and "afile: is a file, not a folder" in r.stderr and r.stderr.count("\n") == 1


def test_train_from_a_manifest_never_reads_test_rows(tmp_path):
    make_case(tmp_path / "data" / "two-0")
    make_case(tmp_path / "val" / "v-0", seed=3)
    (tmp_path / "test" / "t-0").mkdir(parents=True)          # unreadable on purpose: must not be opened
    (tmp_path / "test" / "t-0" / layout.BASELINE).write_bytes(b"junk")
    (tmp_path / "test" / "t-0" / layout.FOLLOWUP).write_bytes(b"junk")
    manifest = tmp_path / "m.tsv"
    manifest.write_text("case\tsplit\ndata/two-0\ttrain\nval/v-0\tval\ntest/t-0\ttest\n")
    r = runner.invoke(app, ["train", str(tmp_path / "run"), "--model", "unet", "--manifest", str(manifest),
                            "--base-filters", "2", "--patch-size", "32", "--spacing-mm", "0", "--iterations", "1",
                            "--batch-longitudinal", "1", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.stderr
    card = read_card(tmp_path / "run" / "model.pt")
    assert card["training_data"]["longitudinal"] == ["two-0"] and card["validation_data"] == ["v-0"]


@pytest.mark.parametrize("model", [m for m in MODELS if NETWORKS[m].default_weights])
def test_default_weights_ship_with_a_card_and_load_strictly(model):
    from mstools.detect.deep.predictor import Predictor

    path = packaged_model("deep", model)
    assert path.is_file(), f"default weights missing: {path}"
    assert path.stat().st_size < 5 * 1024 * 1024
    card = read_card(path)
    assert card is not None and card_path(path).is_file()
    assert card["sha256"] == file_sha256(path)
    for key in ("configuration", "training", "training_data", "iterations", "held_out"):
        assert key in card
    predictor = Predictor.from_file(path, device="cpu")
    assert predictor.config.model == model and predictor.config.as_dict() == card["configuration"]


def test_segment_cli_defaults_are_the_library_defaults():
    """cli/segment.py writes its defaults as literals (mstools --help must not import the
    predictor); they must stay the predictor's and the inference module's."""
    import inspect

    from mstools_cli.segment import segment_command
    from mstools.detect.deep import inference, predictor

    options = inspect.signature(segment_command).parameters
    assert options["threshold"].default.default is None   # per model and grid: predictor.default_threshold
    assert options["min_lesion_mm3"].default.default == predictor.DEFAULT_MIN_LESION_MM3
    assert options["overlap"].default.default == inference.DEFAULT_OVERLAP
    assert options["batch_size"].default.default == predictor.PredictOptions().batch_size
    assert options["all_time02"].default.default.value == predictor.DEFAULT_ALL_TIME02


def test_time02_all_lesion_map_sources():
    import numpy as np

    from mstools.detect.deep.predictor import time02_all_lesions

    maps = {"new": np.array([0.9, 0.1, 0.0], np.float32), "all_t1": np.array([0.2, 0.7, 0.0], np.float32),
            "all_t2": np.array([0.5, 0.5, 0.5], np.float32)}
    assert np.array_equal(time02_all_lesions(maps), np.array([0.9, 0.7, 0.0], np.float32))   # union by default
    assert time02_all_lesions(maps, source="head") is maps["all_t2"]
    with pytest.raises(ValueError, match="source must be one of"):
        time02_all_lesions(maps, source="both")


def test_train_fine_tunes_from_given_weights_and_refuses_another_network(tmp_path):
    import torch

    from mstools.detect.deep.weights import load_weights

    _training_data(tmp_path)
    first = tmp_path / "first"
    assert _train(tmp_path, first, "--iterations", "2").exit_code == 0
    # one step at a negligible learning rate keeps the starting weights: they are the given ones
    tuned = tmp_path / "tuned"
    result = _train(tmp_path, tuned, "--iterations", "1", "--lr", "1e-12", "--seed", "7",
                    "--init-weights", str(first / "model.pt"))
    assert result.exit_code == 0, result.stderr
    _, start, _ = load_weights(first / "model.pt")
    _, after, _ = load_weights(tuned / "model.pt")
    weights = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    assert weights and all(torch.allclose(start[k].float(), after[k].float(), atol=1e-6) for k in weights)
    fresh = tmp_path / "fresh"
    assert _train(tmp_path, fresh, "--iterations", "1", "--lr", "1e-12", "--seed", "7").exit_code == 0
    _, random_start, _ = load_weights(fresh / "model.pt")
    assert not all(torch.allclose(start[k].float(), random_start[k].float(), atol=1e-6) for k in weights)
    assert read_card(tuned / "model.pt")["initialised_from"]["sha256"] == file_sha256(first / "model.pt")
    # weights of another configuration are refused before any training
    other = _train(tmp_path, tmp_path / "other", "--iterations", "1", "--base-filters", "4",
                   "--init-weights", str(first / "model.pt"))
    assert other.exit_code == 1 and "another configuration" in other.stderr
