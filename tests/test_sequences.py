"""Optional T1/T2 inputs (papers 003 and 004): simulate's contrasts, the multi-sequence network's
mean imputation and sequence dropout, and the commands that read T1/T2 files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from mstools_cli.main import app  # noqa: E402
from mstools import case_layout as layout  # noqa: E402
from mstools.detect.deep.config import ModelConfig, TrainingConfig  # noqa: E402
from mstools.detect.deep.multisequence import (CHANNELS, MultiSequenceTrainer, MultiSequenceUNet,  # noqa: E402
                                               availability, drop_sequences, predict_sequences,
                                               prepare_multisequence_case)
from mstools.detect.deep.predictor import Predictor  # noqa: E402
from mstools.detect.deep.weights import save_weights  # noqa: E402
from mstools.simulate import SimulationConfig, simulate_case  # noqa: E402
from tests.conftest import oblique_affine, save_nifti  # noqa: E402
from tests.test_deep_cli import SHAPE, make_case  # noqa: E402

runner = CliRunner()
SUBSETS = {"flair": (), "flair+t1": ("t1",), "flair+t2": ("t2",), "all": ("t1", "t2")}
TINY = ModelConfig("multiseq", base_filters=2, patch_size=16, spacing_mm=None, norm="batch", levels=2)


# ----------------------------------------------------------------------------- simulate


@pytest.fixture(scope="module")
def simulated():
    config = dict(voxel_mm=3.0, n_stable=6, n_enlarging=1, n_shrinking=1, n_new=4, lesion_volume_mm3=(60.0, 1500.0),
                  new_volume_mm3=(100.0, 400.0), small_new_volume_mm3=(60.0, 80.0))
    return (simulate_case(SimulationConfig(seed=11, sequences=("t1", "t2"), **config)),
            simulate_case(SimulationConfig(seed=11, **config)))


def test_simulated_t1_t2_share_the_case_grid_and_leave_the_flairs_alone(simulated):
    case, flair_only = simulated
    assert set(case.sequences) == {"t1", "t2"} and flair_only.sequences == {}
    for pair in case.sequences.values():
        assert len(pair) == 2
        for image in pair:
            assert image.shape == case.baseline.shape and image.dtype == np.float32
    np.testing.assert_array_equal(case.baseline, flair_only.baseline)
    np.testing.assert_array_equal(case.followup, flair_only.followup)


def test_simulated_contrasts_order_tissues_and_lesions(simulated):
    case, _ = simulated
    lesions = case.lesions_baseline > 0
    new = case.ground_truth > 0

    def medians(image, mask_lesions):
        tissue = [float(np.median(image[(case.tissues == label) & ~lesions & ~new])) for label in (1, 2, 3)]
        return (*tissue, float(np.median(image[mask_lesions])))

    for visit, mask_lesions in ((0, lesions), (1, new)):
        csf, gm, wm, lesion = medians(case.sequences["t1"][visit], mask_lesions)
        assert csf < gm < wm and lesion < wm          # T1: lesions hypointense
        csf, gm, wm, lesion = medians(case.sequences["t2"][visit], mask_lesions)
        assert wm < gm < csf and lesion > wm          # T2: lesions hyperintense


def test_simulate_cli_writes_t1_t2_on_the_flair_grid(tmp_path):
    out = tmp_path / "case"
    result = runner.invoke(app, ["simulate", str(out), "--seed", "3", "--voxel-mm", "4", "--n-stable", "3",
                                 "--n-new", "2", "--t2", "--json"])
    assert result.exit_code == 0, result.stderr
    flair = nib.load(out / layout.BASELINE)
    assert sorted(layout.sequence_files(out)) == [("t2", 0), ("t2", 1)]
    for name in layout.SEQUENCE_FILES["t2"]:
        image = nib.load(out / name)
        assert image.shape == flair.shape
        np.testing.assert_allclose(image.affine, flair.affine)
    bad = runner.invoke(app, ["simulate", str(tmp_path / "x"), "--single-timepoint", "--t1"])
    assert bad.exit_code == 1 and "--t1/--t2" in bad.stderr and "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------- the network


def test_absent_sequences_get_the_mean_of_the_available_features():
    """Paper 004, eq. 1, checked from the outside: with the T1/T2 encoders made copies of the
    FLAIR encoder, a missing T1/T2 filled with the mean of the available features gives the
    output of feeding the FLAIR itself as T1/T2; and what an absent channel holds is ignored."""
    torch.manual_seed(0)
    model = MultiSequenceUNet(TINY).eval()
    for encoder in model.encoders[1:]:
        encoder.load_state_dict(model.encoders[0].state_dict())
    flair = torch.randn(1, 2, 16, 16, 16)
    as_flair = torch.cat([flair, flair, flair], dim=1)
    with torch.no_grad():
        everything = model(as_flair, availability({("t1", 0): True, ("t1", 1): True, ("t2", 0): True,
                                                   ("t2", 1): True}))["new"]
        flair_alone = model(flair)["new"]
        t1_only = model(as_flair, availability({("t1", 0): True, ("t1", 1): True}))["new"]
        noise = torch.cat([flair, torch.randn(1, 4, 16, 16, 16)], dim=1)
        absent_noise = model(noise, availability())["new"]
    torch.testing.assert_close(flair_alone, everything, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t1_only, everything, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(absent_noise, flair_alone, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="FLAIR"):
        model(as_flair, torch.zeros(1, 6, dtype=torch.bool))


def test_sequence_dropout_draws_every_subset_and_keeps_flair():
    rng = np.random.default_rng(0)
    drawn = [tuple(drop_sequences(np.ones(6, bool), rng, 0.5)) for _ in range(400)]
    assert all(d[0] and d[1] for d in drawn)
    counts = {subset: drawn.count(subset) for subset in set(drawn)}
    assert len(counts) == 4 and min(counts.values()) > 70      # each subset about 1/4
    assert all(not any(drop_sequences(np.ones(6, bool), rng, 1.0)[2:]) for _ in range(20))
    assert all(drop_sequences(np.ones(6, bool), rng, 0.0).all() for _ in range(20))


def synthetic_case(rng, name, *, t1=True, t2=True):
    """A head with a new lesion: bright on FLAIR and T2 at follow-up, dark on T1."""
    shape = (24, 24, 24)
    head = np.zeros(shape, np.float32)
    head[3:-3, 3:-3, 3:-3] = 1.0
    lesion = np.zeros(shape, np.uint8)
    lesion[10:14, 9:13, 11:15] = 1

    def scan(level, change):
        return (level * (head + change * lesion) + rng.normal(0, 0.05, shape)).astype(np.float32)

    flair = (scan(300, 0), scan(300, 0.6))
    return prepare_multisequence_case(name, flair, lesion, spacing_mm=(1.0,) * 3, config=TINY,
                                      t1=(scan(500, 0), scan(500, -0.3)) if t1 else (None, None),
                                      t2=(scan(200, 0), scan(200, 0.8)) if t2 else (None, None))


def test_a_model_trained_with_dropout_runs_on_every_subset():
    rng = np.random.default_rng(1)
    cases = [synthetic_case(rng, "a"), synthetic_case(rng, "b", t2=False)]
    assert list(cases[1].available) == [True, True, True, True, False, False]
    trainer = MultiSequenceTrainer(TINY, TrainingConfig(iterations=4, batch_longitudinal=2, learning_rate=1e-2,
                                                        sequence_dropout=0.5, seed=3), cases)
    seen = set()
    for _ in range(4):
        losses = trainer.step()
        assert np.isfinite(losses["loss"])
        seen |= {tuple(row) for row in trainer._available}
    assert any(not row[2] for row in seen) and any(row[2] for row in seen)   # T1 dropped and kept
    assert all(row[0] and row[1] for row in seen)
    predictor = Predictor(trainer.model, TINY)
    shape = (20, 22, 18)
    images = {key: rng.normal(100, 10, shape).astype(np.float32) for key in CHANNELS}
    maps = {}
    for name, subset in SUBSETS.items():
        given = {s: tuple(images[(s, v)] if s in subset else None for v in (0, 1)) for s in ("t1", "t2")}
        prob = predict_sequences(predictor, (images[("flair", 0)], images[("flair", 1)]), spacing_mm=(1.0,) * 3,
                                 **given)["new"]
        assert prob.shape == shape and prob.dtype == np.float32 and np.isfinite(prob).all()
        assert 0 <= prob.min() and prob.max() <= 1
        maps[name] = prob
    # one visit only (T1 at baseline): the absent follow-up T1 is mean-filled as well
    one_visit = predict_sequences(predictor, (images[("flair", 0)], images[("flair", 1)]), spacing_mm=(1.0,) * 3,
                                  t1=(images[("t1", 0)], None))["new"]
    assert one_visit.shape == shape
    assert not np.allclose(maps["flair"], maps["all"])      # the T1/T2 inputs are used


# ----------------------------------------------------------------------------- the commands


def add_sequences(folder, seed=0, affine=None):
    rng = np.random.default_rng(seed)
    affine = oblique_affine() if affine is None else affine
    base = nib.load(folder / layout.BASELINE).get_fdata().astype(np.float32)
    for sequence, names in layout.SEQUENCE_FILES.items():
        for name in names:
            save_nifti(folder / name, (base * (0.6 if sequence == "t1" else 1.4)
                                       + rng.normal(0, 5, SHAPE)).astype(np.float32), affine)


@pytest.fixture
def trained(tmp_path):
    """Two case folders with T1/T2, and a multiseq model trained on them for two iterations."""
    for n in range(2):
        add_sequences(make_case(tmp_path / "data" / f"c{n}", seed=n), seed=n)
    result = runner.invoke(app, ["train", str(tmp_path / "run"), "--model", "multiseq", "--cases",
                                 str(tmp_path / "data"), "--base-filters", "2", "--patch-size", "32",
                                 "--spacing-mm", "0", "--iterations", "2", "--batch-longitudinal", "2",
                                 "--threads", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    return tmp_path / "data", tmp_path / "run" / "model.pt"


def test_train_and_segment_multiseq_with_any_subset(trained, tmp_path):
    data, weights = trained
    card = json.loads((weights.parent / "model.card.json").read_text())
    assert card["training"]["sequence_dropout"] == 0.5
    assert card["training_data"]["sequences_available"]["t2_time02"] == 2
    case = data / "c0"
    t1 = [str(case / name) for name in layout.SEQUENCE_FILES["t1"]]
    for n, extra in enumerate(([], ["--baseline-t1", t1[0]], ["--baseline-t1", t1[0], "--followup-t1", t1[1]])):
        plain = tmp_path / f"plain{n}"
        plain.mkdir()
        for name in (layout.BASELINE, layout.FOLLOWUP):
            (plain / name).write_bytes((case / name).read_bytes())
        result = runner.invoke(app, ["segment", str(plain), "--model", "multiseq", "--weights", str(weights),
                                     "-o", str(tmp_path / f"out{n}" / "seg"), "--json", *extra])
        assert result.exit_code == 0, result.stderr
        payload = json.loads(result.stdout)
        assert len(payload["sequences"]) == 2 + len(extra) // 2
        mask = nib.load(tmp_path / f"out{n}" / "seg_mask.nii.gz")
        assert mask.shape == SHAPE and mask.get_data_dtype() == np.uint8
    # from the case folder: all four files are read
    result = runner.invoke(app, ["segment", str(case), "--model", "multiseq", "--weights", str(weights),
                                 "-o", str(tmp_path / "folder" / "seg"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sequences"][2:] == ["t1_time01", "t1_time02", "t2_time01", "t2_time02"]


def test_sequence_file_errors_are_one_line(trained, tmp_path):
    data, weights = trained
    case = data / "c1"
    other = tmp_path / "other_grid.nii.gz"
    save_nifti(other, np.ones((10, 10, 10), np.float32), oblique_affine())

    def run(*args):
        result = runner.invoke(app, ["segment", str(case), "-o", str(tmp_path / "o" / "seg"), *args])
        assert result.exit_code == 1, result.stdout
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()       # no partial output
        return result.stderr

    assert "not found" in run("--model", "multiseq", "--weights", str(weights), "--followup-t2",
                              str(tmp_path / "missing.nii.gz"))
    assert "same grid" in run("--model", "multiseq", "--weights", str(weights), "--baseline-t1", str(other))
    assert "reads FLAIR only" in run("--model", "unet", "--baseline-t1", str(case / layout.SEQUENCE_FILES["t1"][0]))
    assert "no default weights" in run("--model", "multiseq")


def test_run_reads_t1_t2_only_for_the_multisequence_segment(tmp_path):
    case = make_case(tmp_path / "case")
    result = runner.invoke(app, ["run", str(case), "-o", str(tmp_path / "run"), "--baseline-t1",
                                 str(case / layout.BASELINE)])
    assert result.exit_code == 1 and "multiseq" in result.stderr and "Traceback" not in result.stderr


def test_manifest_t1_t2_columns_go_with_a_folder_or_raw_scans(tmp_path):
    from mstools.case import input_files
    from mstools.cohort_inputs import cases_from_manifest

    case = make_case(tmp_path / "c0")
    manifest = tmp_path / "cases.tsv"
    manifest.write_text("case\tfolder\tbaseline\tfollowup\tbaseline_t1\tfollowup_t2\n"
                        f"a\t{case}\t\t\t{case / layout.BASELINE}\t\n"
                        f"b\t\t{case / layout.BASELINE}\t{case / layout.FOLLOWUP}\t\tt2.nii.gz\n")
    a, b = cases_from_manifest(manifest)
    assert a.sequences == ((("t1", 0), case / layout.BASELINE),) and not a.problem
    assert b.raw and not b.problem and b.sequences == ((("t2", 1), tmp_path / "t2.nii.gz"),)
    assert input_files(b)[-1] == tmp_path / "t2.nii.gz"     # hashed into the run's key


def test_import_open_ms_carries_a_t1_through_its_intrastudy_and_flair_transforms(tmp_path):
    """A T1W stored with the raw FLAIR's values on a grid moved by d, with an intra-study file
    saying 'FLAIR point -> T1 point = + d', must land on the common grid where the FLAIR does
    (read backwards, it would be 2 |d| = 11 mm off)."""
    from tests.test_import_open_ms import BALL_DARKENS, FLIP, RADIUS_MM, add_patient, ball

    root = tmp_path / "open_ms_data"
    raw, _ = add_patient(root, "01")
    flair = nib.load(raw / "study1_FLAIR.nii.gz")
    d = np.array([4.0, -3.0, 8.0])
    affine = flair.affine.copy()
    affine[:3, 3] += d
    save_nifti(raw / "study1_T1W.nii.gz", np.asanyarray(flair.dataobj), affine)
    lps = FLIP @ d
    (raw / "study1_T1W_intrastudy_to_FLAIR.txt").write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: MatrixOffsetTransformBase_double_3_3\n"
        f"Parameters: 1 0 0 0 1 0 0 0 1 {lps[0]:g} {lps[1]:g} {lps[2]:g}\nFixedParameters: 0 0 0\n")
    out = tmp_path / "cases"
    result = runner.invoke(app, ["import-open-ms", str(root), "-o", str(out), "--patient", "01", "--json"])
    assert result.exit_code == 0, result.stderr
    case = out / "patient01"
    assert sorted(layout.sequence_files(case)) == [("t1", 0)]
    t1 = nib.load(case / layout.SEQUENCE_FILES["t1"][0])
    reference = nib.load(case / layout.BASELINE)
    np.testing.assert_allclose(t1.affine, reference.affine, atol=1e-5)
    t1_data, flair_data = t1.get_fdata(), reference.get_fdata()
    assert t1_data[ball(BALL_DARKENS)].mean() > 140 and np.abs(t1_data - flair_data).max() < 1e-3 + 0.02 * 160
    source = json.loads((case / "source.json").read_text())
    assert list(source["sequences"]) == ["t1_time01"]
    assert RADIUS_MM < 2 * np.linalg.norm(d)


# ----------------------------------------------------------------------------- raw T1/T2


@pytest.fixture(scope="module")
def raw_visits(tmp_path_factory):
    """Raw scans of one simulated head: a sagittal baseline FLAIR moved by MOTION, an axial
    3 x 3 x 6 mm follow-up FLAIR, a baseline T1 on its own grid moved by T1_MOTION (the patient
    moved between the sequences), a follow-up T2 on the follow-up FLAIR's grid."""
    from scipy.spatial.transform import Rotation

    from mstools.preprocess.rigid import Grid, common_grid, resample, resample_mask
    from tests.test_preprocess_cli import FAST, MOTION, SAGITTAL

    folder = tmp_path_factory.mktemp("raw")
    case = simulate_case(SimulationConfig(seed=5, misalignment_mm=0.0, misalignment_deg=0.0, atrophy_mm=0.0,
                                          sequences=("t1", "t2"), **FAST))
    t1_motion = np.eye(4)
    t1_motion[:3, :3] = Rotation.from_rotvec(np.radians([-3.0, 2.0, 1.0])).as_matrix()
    t1_motion[:3, 3] = [-4.0, 3.0, 2.0]
    source = Grid(shape=case.baseline.shape, affine=case.affine)
    sagittal = common_grid([source], [MOTION], direction_ras=SAGITTAL, spacing_mm=(3.0, 3.0, 3.0))
    axial = common_grid([source], [np.eye(4)], direction_ras=np.eye(3), spacing_mm=(3.0, 3.0, 6.0))
    t1_grid = common_grid([source], [t1_motion], direction_ras=np.eye(3), spacing_mm=(2.5, 2.5, 3.5))
    paths = {
        "baseline": save_nifti(folder / "flair1.nii.gz", resample(case.baseline, case.affine, sagittal, MOTION),
                               sagittal.affine),
        "followup": save_nifti(folder / "flair2.nii.gz", resample(case.followup, case.affine, axial, np.eye(4)),
                               axial.affine),
        "baseline_t1": save_nifti(folder / "t1w1.nii.gz", resample(case.sequences["t1"][0], case.affine, t1_grid,
                                                                   t1_motion), t1_grid.affine),
        "followup_t2": save_nifti(folder / "t2w2.nii.gz", resample(case.sequences["t2"][1], case.affine, axial,
                                                                   np.eye(4)), axial.affine),
    }
    brain = resample_mask(case.brain_mask, case.affine, sagittal, MOTION)
    # FLAIR point p shows the anatomy at MOTION p, a T1 point q the anatomy at t1_motion q
    return paths, np.linalg.inv(t1_motion) @ MOTION, (brain, sagittal.affine)


def test_preprocess_registers_raw_t1_t2_to_their_flair_and_writes_them_on_the_common_grid(raw_visits, tmp_path):
    from mstools.preprocess.rigid import mask_box_corners, max_displacement_mm

    paths, flair_to_t1, (brain, brain_affine) = raw_visits
    out = tmp_path / "case"
    result = runner.invoke(app, ["preprocess", str(paths["baseline"]), str(paths["followup"]), str(out),
                                 "--baseline-t1", str(paths["baseline_t1"]), "--followup-t2",
                                 str(paths["followup_t2"]), "--spacing-mm", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(layout.sequence_files(out)) == [("t1", 0), ("t2", 1)]
    flair = nib.load(out / layout.BASELINE)
    for (sequence, visit), path in layout.sequence_files(out).items():
        image = nib.load(path)
        assert image.shape == flair.shape and image.get_data_dtype() == np.float32
        np.testing.assert_allclose(image.affine, flair.affine, atol=1e-6)
        assert np.asarray(image.dataobj)[np.asarray(nib.load(out / layout.BRAIN_MASK).dataobj) > 0].std() > 0
        assert json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())["inputs_sha256"]
    # the T1's 7.7 degree / ~23 mm motion against its FLAIR is found to well under a 3 mm voxel
    estimate = np.array(report["sequences"]["t1_time01"]["flair_to_sequence_ras"])
    corners = mask_box_corners(brain, brain_affine)
    assert max_displacement_mm(flair_to_t1, corners) > 15
    assert max_displacement_mm(np.linalg.inv(flair_to_t1) @ estimate, corners) < 1.5
    # a sequence of another head (a constant image) is refused in one line, nothing written
    blank = save_nifti(tmp_path / "blank.nii.gz", np.zeros((20, 20, 20), np.float32), oblique_affine())
    bad = runner.invoke(app, ["preprocess", str(paths["baseline"]), str(paths["followup"]), str(tmp_path / "x"),
                              "--followup-t1", str(blank)])
    assert bad.exit_code == 1 and "empty" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_run_from_raw_scans_gives_multiseq_the_registered_t1_t2(raw_visits, trained, tmp_path):
    import yaml

    paths, _, _ = raw_visits
    _, weights = trained
    config = tmp_path / "ms.yaml"
    config.write_text(yaml.safe_dump({"report": False, "final": "segment", "refine": {"enabled": False},
                                      "filter": {"enabled": False}, "activity": {"enabled": False},
                                      "preprocess": {"spacing_mm": "3"},
                                      "segment": {"enabled": True, "model": "multiseq", "weights": str(weights),
                                                  "overlap": 0.0, "threads": 1}}))
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", "--baseline", str(paths["baseline"]), "--followup", str(paths["followup"]),
                                 "--baseline-t1", str(paths["baseline_t1"]), "--followup-t2",
                                 str(paths["followup_t2"]), "-o", str(run), "-c", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["stages"]["preprocess"]["status"] == "ran" and record["stages"]["segment"]["status"] == "ran"
    folder = run / "case"
    flair = nib.load(folder / layout.BASELINE)
    for (sequence, visit) in (("t1", 0), ("t2", 1)):
        image = nib.load(folder / layout.SEQUENCE_FILES[sequence][visit])
        assert image.shape == flair.shape and np.allclose(image.affine, flair.affine, atol=1e-6)
    sidecar = json.loads((run / "segment" / "segment_mask.json").read_text())
    assert sidecar["parameters"]["sequences"] == ["flair_time01", "flair_time02", "t1_time01", "t2_time02"]
    stage = json.loads((run / "case" / "stage.json").read_text())
    assert "--baseline-t1" in stage["command"] and f"case/{layout.SEQUENCE_FILES['t1'][0]}" in stage["outputs"]
    # the final mask goes back onto the raw follow-up's grid
    native = nib.load(run / record["final_native"]["mask"])
    assert native.shape == nib.load(paths["followup"]).shape
    # unchanged: every stage reused; another T1 file: preprocess runs again
    again = runner.invoke(app, ["run", "--baseline", str(paths["baseline"]), "--followup", str(paths["followup"]),
                                "--baseline-t1", str(paths["baseline_t1"]), "--followup-t2",
                                str(paths["followup_t2"]), "-o", str(run), "-c", str(config), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"]["preprocess"]["status"] == "reused"
    (run / "case" / layout.SEQUENCE_FILES["t2"][1]).unlink()
    again = runner.invoke(app, ["run", "--baseline", str(paths["baseline"]), "--followup", str(paths["followup"]),
                                "--baseline-t1", str(paths["baseline_t1"]), "--followup-t2",
                                str(paths["followup_t2"]), "-o", str(run), "-c", str(config), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"]["preprocess"]["status"] == "ran"
