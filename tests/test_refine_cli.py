"""`mstools refine` (apply, train) end to end on tiny oblique cases."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools.models import packaged_model

DEFAULT_MODEL = packaged_model("refine")
from mstools import case_layout as layout
from mstools.candidates.refine.features import CONTEXT, PUBLISHED
from tests.conftest import oblique_affine, save_nifti
from tests.test_refine import _toy_case

runner = CliRunner()


def _write_case(folder, seed):
    case = _toy_case(seed)
    folder.mkdir()
    affine = oblique_affine()
    save_nifti(folder / layout.BASELINE, case.baseline, affine)
    save_nifti(folder / layout.FOLLOWUP, case.followup, affine)
    save_nifti(folder / layout.BRAIN_MASK, case.brain.astype(np.uint8), affine)
    save_nifti(folder / layout.GROUND_TRUTH, case.ground_truth, affine)
    save_nifti(folder / "subtract_labels.nii.gz", case.candidates, affine)
    save_nifti(folder / "subtract_score.nii.gz", (case.candidates > 0).astype(np.float32) * 4, affine)
    return folder


@pytest.fixture
def cases(tmp_path):
    return [_write_case(tmp_path / f"case{n}", n) for n in range(2)]


def _train(cases, model, *extra):
    return runner.invoke(app, ["refine", "train", *map(str, cases), "-o", str(model), "--seed", "1",
                               "--background-fraction", "0.2", "--bias-sigma-mm", "0", "--max-rounds", "40",
                               *extra])


def test_help_of_every_refine_command():
    for args in (["refine", "--help"], ["refine", "apply", "--help"], ["refine", "train", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Example: mstools refine" in result.stdout


def test_train_apply_round_trip_is_deterministic(cases, tmp_path):
    models = [tmp_path / "m1.txt", tmp_path / "m2.txt"]
    for model in models:
        result = _train(cases, model, "--loo", "--json")
        assert result.exit_code == 0, result.stderr
    card = json.loads(result.stdout)
    assert models[0].read_text() == models[1].read_text()
    assert card["feature_set"] == "published" and card["features"] == list(PUBLISHED)
    assert card["cross_validation"]["leave_one_out"] and card["cross_validation"]["folds"] == 2
    assert card["model_sha256"] == hashlib.sha256(models[0].read_text().encode()).hexdigest()
    assert [c["case"] for c in card["training_cases"]] == [str(c) for c in cases]
    assert (tmp_path / "m1.txt.cv.tsv").read_text().count("\n") == 3
    outputs = []
    for n in range(2):
        out = str(tmp_path / f"r{n}")
        result = runner.invoke(app, ["refine", str(cases[0]), "-c", str(cases[0] / "subtract"), "-o", out,
                                     "--model", str(models[0]), "--min-voxels", "8", "--json"])
        assert result.exit_code == 0, result.stderr
        outputs.append(nib.load(out + "_mask.nii.gz"))
    payload = json.loads(result.stdout)
    assert payload["lesions"] >= 1 and len(payload["written"]) == 8
    mask = outputs[0]
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, oblique_affine(), atol=1e-5)
    assert np.array_equal(np.asarray(mask.dataobj), np.asarray(outputs[1].dataobj))
    score = nib.load(str(tmp_path / "r0_score.nii.gz"))
    assert score.get_data_dtype() == np.float32 and 0 <= score.get_fdata().min() and score.get_fdata().max() <= 1
    sidecar = json.loads((tmp_path / "r0_mask.json").read_text())
    assert sidecar["parameters"]["threshold"] == 0.2 and sidecar["parameters"]["min_voxels"] == 8
    # `refine apply` is the same command; existing outputs need --force
    again = runner.invoke(app, ["refine", "apply", str(cases[0]), "-c", str(cases[0] / "subtract"),
                                "-o", str(tmp_path / "r0"), "--model", str(models[0])])
    assert again.exit_code == 1 and "--force" in again.stderr


def test_a_model_whose_card_names_other_features_is_refused(cases, tmp_path):
    model = tmp_path / "m.txt"
    assert _train(cases, model, "--cv-folds", "0").exit_code == 0
    card_path = tmp_path / "m.txt.card.json"
    card = json.loads(card_path.read_text())
    card["feature_set"] = "context"
    card_path.write_text(json.dumps(card))
    result = runner.invoke(app, ["refine", str(cases[0]), "-c", str(cases[0] / "subtract"),
                                 "-o", str(tmp_path / "x"), "--model", str(model)])
    assert result.exit_code == 1 and "retrain" in result.stderr
    assert not list(tmp_path.glob("x_*"))
    card_path.write_text("[1, 2]")
    result = runner.invoke(app, ["refine", str(cases[0]), "-c", str(cases[0] / "subtract"),
                                 "-o", str(tmp_path / "x"), "--model", str(model)])
    assert result.exit_code == 1 and "not a model card" in result.stderr


def test_apply_errors(cases, tmp_path):
    case = str(cases[0])
    result = runner.invoke(app, ["refine", case, "-c", case + "/subtract", "-o", str(tmp_path / "x"),
                                 "--model", str(tmp_path / "none.txt")])
    assert result.exit_code == 1 and "model not found" in result.stderr
    (tmp_path / "lonely.txt").write_text("tree")
    result = runner.invoke(app, ["refine", case, "-c", case + "/subtract", "-o", str(tmp_path / "x"),
                                 "--model", str(tmp_path / "lonely.txt")])
    assert result.exit_code == 1 and "card not found" in result.stderr
    result = runner.invoke(app, ["refine", case, "-c", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "not found" in result.stderr
    result = runner.invoke(app, ["refine", case, "-c", case + "/subtract", "-o", str(tmp_path / "x"),
                                 "--threshold", "1.5"])
    assert result.exit_code == 2


def test_train_errors(cases, tmp_path):
    result = runner.invoke(app, ["refine", "train", "-o", str(tmp_path / "m.txt")])
    assert result.exit_code == 1 and "no cases" in result.stderr
    (tmp_path / "afile").write_text("not a folder")      # a missing folder is made; a file on the way is refused
    result = _train(cases, tmp_path / "afile" / "m.txt")
    assert result.exit_code == 1 and "afile: is a file, not a folder" in result.stderr
    result = _train(cases[:1], tmp_path / "m.txt")
    assert result.exit_code == 1 and "at least 2 cases" in result.stderr
    result = _train(cases, tmp_path / "m.txt", "--dask", "--scheduler", "tcp://127.0.0.1:1")
    assert result.exit_code == 1 and "not both" in result.stderr
    result = _train(cases, tmp_path / "m.txt", "--cv-folds", "0", "--scheduler", "tcp://127.0.0.1:1",
                    "--scheduler-timeout", "1")
    assert result.exit_code == 1 and "cannot reach the Dask scheduler" in result.stderr
    for case in cases:
        save_nifti(case / layout.GROUND_TRUTH, np.zeros((16, 16, 10), np.uint8), oblique_affine())
    result = _train(cases, tmp_path / "m.txt", "--cv-folds", "0")
    assert result.exit_code == 1 and "both classes" in result.stderr
    assert not (tmp_path / "m.txt").exists()


def test_manifest_and_lesion_feature_set(cases, tmp_path):
    for case in cases:  # a `mstools filter` feature table for the candidates, keyed by input label
        rows = ["label\tvolume_mm3\tshape_Sphericity\toutput_label"] + [f"{n}\t{10 * n}\t0.{n}\t{n}" for n in (1, 2, 3, 4)]
        (case / "subtract_features.tsv").write_text("\n".join(rows) + "\n")
    manifest = tmp_path / "cases.tsv"
    manifest.write_text("case\tcandidates\tlesion_features\n" + "".join(
        f"{c.name}\t{c.name}/subtract\t{c.name}/subtract_features.tsv\n" for c in cases))
    model = tmp_path / "lesion.txt"
    result = runner.invoke(app, ["refine", "train", "--manifest", str(manifest), "-o", str(model),
                                 "--feature-set", "lesion", "--cv-folds", "0", "--background-fraction", "0.2",
                                 "--max-rounds", "20", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["features"][-1] == "lesion_wm_fraction"
    # applied to candidates that are a filter output: PREFIX_features.tsv keyed by output_label
    result = runner.invoke(app, ["refine", str(cases[0]), "-c", str(cases[0] / "subtract"),
                                 "-o", str(tmp_path / "l"), "--model", str(model)])
    assert result.exit_code == 0, result.stderr
    (cases[0] / "subtract_features.tsv").unlink()
    result = runner.invoke(app, ["refine", str(cases[0]), "-c", str(cases[0] / "subtract"),
                                 "-o", str(tmp_path / "l2"), "--model", str(model)])
    assert result.exit_code == 1 and "feature table not found" in result.stderr
    manifest.write_text("folder\tprefix\n")
    result = runner.invoke(app, ["refine", "train", "--manifest", str(manifest), "-o", str(model), "--force"])
    assert result.exit_code == 1 and "columns case, candidates" in result.stderr


def test_packaged_default_model_is_used_without_model_and_says_what_it_learnt(cases, tmp_path):
    card = json.loads((DEFAULT_MODEL.parent / (DEFAULT_MODEL.name + ".card.json")).read_text())
    assert card["features"] == list(CONTEXT) and card["feature_set"] == "context"
    assert len(card["training_cases"]) >= 20
    # every training case says where its candidates came from; simulated ones carry their seed
    assert all(c["detector"]["command"] == "subtract" for c in card["training_cases"])
    simulated = [c for c in card["training_cases"] if c["simulation"] is not None]
    assert len(simulated) >= 20 and all(c["simulation"]["seed"] is not None for c in simulated)
    assert "Held-out longitudinal patients 03, 12, 19 were never used" in card["summary"]
    assert DEFAULT_MODEL.stat().st_size < 2_000_000
    result = runner.invoke(app, ["refine", str(cases[1]), "-c", str(cases[1] / "subtract"),
                                 "-o", str(tmp_path / "d"), "--json"])
    assert result.exit_code == 0, result.stderr
    sidecar = json.loads((tmp_path / "d_labels.json").read_text())
    assert list(sidecar["models_sha256"]) == [str(DEFAULT_MODEL)]


@pytest.mark.slow
def test_training_on_a_local_dask_cluster(cases, tmp_path):
    model = tmp_path / "dask.txt"
    result = _train(cases, model, "--dask", "--cv-folds", "0", "--json")
    assert result.exit_code == 0, result.stderr
    card = json.loads(result.stdout)
    assert card["training"]["backend"] == "dask-local" and card["training"]["dask_workers"] == 2
    result = runner.invoke(app, ["refine", str(cases[0]), "-c", str(cases[0] / "subtract"),
                                 "-o", str(tmp_path / "dk"), "--model", str(model), "--min-voxels", "8"])
    assert result.exit_code == 0, result.stderr
    assert nib.load(str(tmp_path / "dk_mask.nii.gz")).get_fdata().sum() > 0


@pytest.mark.slow
def test_training_on_an_existing_dask_cluster_leaves_it_running(cases, tmp_path):
    from dask.distributed import Client, LocalCluster

    from mstools.candidates.refine.trees import TreeEnsemble

    model = tmp_path / "sched.txt"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = _train(cases, model, "--scheduler", cluster.scheduler_address, "--cv-folds", "0", "--json")
        assert result.exit_code == 0, result.stderr
        # the command closes its client only: a cluster it did not start keeps serving
        with Client(cluster.scheduler_address, timeout="10s") as client:
            assert client.submit(sum, [1, 2]).result(timeout=10) == 3
    card = json.loads(result.stdout)
    assert card["training"]["backend"] == "dask-scheduler" and card["training"]["dask_workers"] == 1
    assert TreeEnsemble.from_text(model.read_text()).feature_names == tuple(PUBLISHED)


def test_cli_defaults_are_the_library_defaults():
    from mstools.jobs import refine as cli_refine
    from mstools.candidates.refine import postprocess, sampling

    assert (cli_refine.THRESHOLD, cli_refine.MIN_VOXELS, cli_refine.MIN_MINOR_AXIS) == (
        postprocess.PROBABILITY_THRESHOLD, postprocess.MIN_VOXELS, postprocess.MIN_MINOR_AXIS_VOXELS)
    assert (cli_refine.DILATION_MM, cli_refine.BACKGROUND_FRACTION) == (sampling.DILATION_MM,
                                                                       sampling.BACKGROUND_FRACTION)
