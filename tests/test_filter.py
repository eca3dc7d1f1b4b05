"""Candidate features, La Rosa's rules and the learned filter, on hand-made volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout
from mstools.candidates.filtering import (FilterRules, candidate_features, candidate_truth, confirm_by_score,
                                          decide_by_rules, kept_detections, rule_reasons)
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()
SHAPE = (40, 40, 28)
SPACING_AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def volumes():
    """A brain box of WM (100) with sulcal CSF (20) at i < 4 and a deep 'ventricle' pocket
    (20) touching the blob; candidates: a blob, a streak, a speck touching sulcal CSF."""
    baseline = np.full(SHAPE, 100.0, np.float32)
    baseline[:4] = 20.0
    baseline[20:23, 14:17, 13:16] = 20.0
    followup = baseline.copy()
    labels = np.zeros(SHAPE, np.int32)
    idx = np.indices(SHAPE)
    blob = ((idx[0] - 20) ** 2 + (idx[1] - 20) ** 2 + (idx[2] - 14) ** 2) <= 9          # ovoid, r = 3
    streak = (idx[0] == 30) & (idx[1] >= 5) & (idx[1] < 35) & (idx[2] == 14)            # 1-voxel-thin vessel
    speck_at_csf = (idx[0] >= 4) & (idx[0] < 7) & (idx[1] >= 10) & (idx[1] < 13) & (idx[2] >= 13) & (idx[2] < 16)
    labels[blob] = 1
    labels[streak] = 2
    labels[speck_at_csf] = 3
    followup[blob] = 180.0
    followup[streak] = 150.0
    followup[speck_at_csf] = 50.0                                                         # darker than its shell
    brain = np.zeros(SHAPE, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    baseline[~brain] = 0.0
    followup[~brain] = 0.0
    csf = brain & (baseline == 20.0)
    return baseline, followup, brain, csf, labels


@pytest.fixture(scope="module")
def rows():
    baseline, followup, brain, csf, labels = volumes()
    wm = ~csf
    lesions_t1 = np.zeros(SHAPE, np.uint8)
    lesions_t1[20:23, 24:27, 13:16] = 1        # touches the blob (which reaches j = 23)
    return candidate_features(labels, baseline=baseline, followup=followup, brain=brain, affine=SPACING_AFFINE,
                              csf=csf, white_matter=wm, baseline_lesions=lesions_t1)


def by_label(rows, label):
    return next(r for r in rows if r["label"] == label)


def test_features_are_counted_right(rows):
    blob, streak, speck = by_label(rows, 1), by_label(rows, 2), by_label(rows, 3)
    assert blob["voxels"] == 123 and blob["volume_mm3"] == 123
    assert blob["neighbour_contrast"] > 1.8          # 180 over a shell of WM (100) and the CSF pocket (20)
    assert streak["neighbour_contrast"] == pytest.approx(1.5)
    assert speck["neighbour_contrast"] < 0.9
    assert (blob["centroid_i"], blob["centroid_j"], blob["centroid_k"]) == (20, 20, 14)
    # the blob touches the deep (ventricular) CSF pocket, which La Rosa's rule spares
    assert blob["csf_distance_mm"] == pytest.approx(1.0) and blob["touches_csf"] == 0
    assert speck["touches_csf"] == 1
    assert speck["csf_distance_mm"] == pytest.approx(1.0)
    assert blob["wm_fraction"] == 1.0
    assert blob["touches_baseline_lesion"] == 1 and streak["touches_baseline_lesion"] == 0
    assert blob["edge_distance_mm"] == pytest.approx(9.0)   # k = 17 to the background at k = 26
    assert blob["shape_Sphericity"] > 0.8 > 0.4 > streak["shape_Sphericity"]
    assert streak["shape_LeastAxisLength"] < 1.2 < blob["shape_LeastAxisLength"]
    assert streak["shape_Elongation"] < 0.1 < 0.9 < blob["shape_Elongation"]


def test_la_rosa_rules_keep_the_blob_and_say_why_others_go(rows):
    rules = FilterRules()
    blob_reasons = rule_reasons(by_label(rows, 1), rules, have_tissues=True, have_baseline_lesions=False)
    assert blob_reasons == []
    streak_reasons = rule_reasons(by_label(rows, 2), rules, have_tissues=True, have_baseline_lesions=False)
    assert streak_reasons == ["least_axis<1.2"]
    speck_reasons = rule_reasons(by_label(rows, 3), rules, have_tissues=True, have_baseline_lesions=False)
    assert "touches_csf" in speck_reasons and "contrast<0.9" in speck_reasons
    # the baseline-lesion rule applies only when a baseline lesion mask is given
    assert rule_reasons(by_label(rows, 1), rules, have_tissues=True, have_baseline_lesions=True) == \
        ["touches_baseline_lesion"]
    off = FilterRules(min_least_axis_mm=None)
    assert rule_reasons(by_label(rows, 2), off, have_tissues=True, have_baseline_lesions=False) == []


def test_kept_detections_relabel_and_map(rows):
    *_, labels = volumes()
    rows = [dict(r) for r in rows]
    decide_by_rules(rows, FilterRules(), have_tissues=True, have_baseline_lesions=False)
    detections = kept_detections(labels, rows, SPACING_AFFINE)
    assert detections.mask.sum() == 123 and detections.labels.max() == 1
    assert [r["output_label"] for r in sorted(rows, key=lambda r: r["label"])] == [1, 0, 0]


def test_candidate_truth_follows_the_msseg2_rule():
    labels = np.zeros((20, 20, 20), np.int32)
    labels[2:6, 2:6, 2:6] = 1          # exactly the lesion: true
    labels[10:18, 10:18, 10:18] = 2    # covers a small lesion but mostly outside: false
    labels[0:2, 15:17, 0:2] = 3        # nowhere near: false
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    gt[11:13, 11:13, 11:13] = 1
    assert candidate_truth(labels, gt, np.eye(4)) == {1: 1, 2: 0, 3: 0}


@pytest.fixture
def case_with_candidates(tmp_path):
    """A case folder on an oblique grid plus a detector output with a blob and a streak."""
    baseline, followup, brain, csf, labels = volumes()
    affine = oblique_affine()
    rng = np.random.default_rng(0)
    folder = tmp_path / "case"
    folder.mkdir()
    save_nifti(folder / layout.BASELINE, baseline + rng.normal(0, 1, SHAPE).astype(np.float32), affine)
    save_nifti(folder / layout.FOLLOWUP, followup + rng.normal(0, 1, SHAPE).astype(np.float32), affine)
    save_nifti(folder / layout.BRAIN_MASK, brain.astype(np.uint8), affine)
    save_nifti(folder / layout.GROUND_TRUTH, (labels == 1).astype(np.uint8), affine)
    tissues = np.where(csf, 1, 3).astype(np.uint8)
    save_nifti(folder / layout.TISSUES, tissues, affine)
    save_nifti(folder / "subtract_labels.nii.gz", labels, affine)
    save_nifti(folder / "subtract_score.nii.gz", (labels > 0).astype(np.float32) * 3, affine)
    return folder


def test_filter_cli_writes_kept_candidates_and_the_feature_table(case_with_candidates, tmp_path):
    case = case_with_candidates
    out = str(tmp_path / "filtered")
    result = runner.invoke(app, ["filter", str(case), "-c", str(case / "subtract"), "-o", out,
                                 "--tissues", str(case / layout.TISSUES), "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["candidates"] == 3
    mask = nib.load(out + "_mask.nii.gz")
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, oblique_affine(), atol=1e-5)
    features = open(out + "_features.tsv").read().splitlines()
    header = features[0].split("\t")
    decisions = {line.split("\t")[0]: line.split("\t")[header.index("decision")] for line in features[1:]}
    assert decisions["1"] == "kept"
    assert decisions["2"] == "least_axis<1.2"
    assert payload["kept"] == list(decisions.values()).count("kept")
    # `filter apply` is the same command
    again = runner.invoke(app, ["filter", "apply", str(case), "-c", str(case / "subtract"), "-o", out, "--force"])
    assert again.exit_code == 0, again.stderr


def test_filter_cli_refuses_missing_candidates(case_with_candidates, tmp_path):
    result = runner.invoke(app, ["filter", str(case_with_candidates), "-c", str(tmp_path / "nothing"),
                                 "-o", str(tmp_path / "f")])
    assert result.exit_code == 1 and "not found" in result.stderr
    assert not list(tmp_path.glob("f_*"))


def test_confirmation_keeps_only_what_the_second_score_also_sees(rows):
    _, _, _, _, labels = volumes()
    decided = [dict(row, decision="kept") for row in rows]
    score = np.zeros(SHAPE, np.float32)
    score[20, 20, 14] = 0.9                  # one voxel of the blob (label 1)
    score[30, 5:35, 14] = 0.2                # the whole streak (label 2), below the minimum
    confirm_by_score(decided, labels, score, 0.3)
    assert {r["label"]: r["decision"] for r in decided} == {1: "kept", 2: "unconfirmed<0.3", 3: "unconfirmed<0.3"}
    assert by_label(decided, 1)["confirm_max"] == pytest.approx(0.9)
    assert by_label(decided, 2)["confirm_max"] == pytest.approx(0.2) and by_label(decided, 3)["confirm_max"] == 0
    # a candidate already rejected stays rejected for its own reason
    rejected = [dict(row, decision="least_axis<1.2") for row in rows]
    confirm_by_score(rejected, labels, score, 0.3)
    assert {r["decision"] for r in rejected} == {"least_axis<1.2"}


def test_filter_cli_confirms_with_another_detectors_score(case_with_candidates, tmp_path):
    case = case_with_candidates
    _, _, _, _, labels = volumes()
    affine = oblique_affine()
    score = np.where(labels == 1, 0.8, 0.0).astype(np.float32)      # the second detector sees the blob only
    save_nifti(tmp_path / "mt_score.nii.gz", score, affine)
    before = (tmp_path / "mt_score.nii.gz").read_bytes()
    out = str(tmp_path / "confirmed")
    rules_off = ["--min-least-axis-mm", "0", "--min-sphericity", "0", "--min-contrast", "0", "--keep-touching-csf"]
    result = runner.invoke(app, ["filter", str(case), "-c", str(case / "subtract"), "-o", out, *rules_off,
                                 "--confirm", str(tmp_path / "mt"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["kept"] == 1
    kept = np.asarray(nib.load(out + "_mask.nii.gz").dataobj) > 0
    assert np.array_equal(kept, labels == 1)
    lines = open(out + "_features.tsv").read().splitlines()
    header = lines[0].split("\t")
    assert "confirm_max" in header
    assert sorted(line.split("\t")[header.index("decision")] for line in lines[1:]) == [
        "kept", "unconfirmed<0.3", "unconfirmed<0.3"]
    assert json.loads(Path(out + "_mask.json").read_text())["parameters"]["confirm_min"] == 0.3
    assert (tmp_path / "mt_score.nii.gz").read_bytes() == before
    # --confirm-min 0.9: nothing reaches it
    result = runner.invoke(app, ["filter", str(case), "-c", str(case / "subtract"), "-o", out, *rules_off, "--force",
                                 "--confirm", str(tmp_path / "mt"), "--confirm-min", "0.9", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["kept"] == 0


@pytest.mark.parametrize("make, message", [
    (lambda d, labels, affine: None, "mt_score.nii.gz not found"),
    (lambda d, labels, affine: save_nifti(d / "mt_score.nii.gz", (labels > 0).astype(np.float32) * 3, affine),
     "scores outside [0, 1]"),
    (lambda d, labels, affine: save_nifti(d / "mt_score.nii.gz", np.zeros((10, 10, 10), np.float32), affine),
     "grid"),
])
def test_filter_cli_refuses_a_bad_confirming_score(case_with_candidates, tmp_path, make, message):
    _, _, _, _, labels = volumes()
    make(tmp_path, labels, oblique_affine())
    out = tmp_path / "f"
    result = runner.invoke(app, ["filter", str(case_with_candidates), "-c", str(case_with_candidates / "subtract"),
                                 "-o", str(out), "--confirm", str(tmp_path / "mt")])
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("f_*"))


def test_learned_filter_round_trip_is_deterministic_and_strict(case_with_candidates, tmp_path):
    case = case_with_candidates
    # a second case: same volumes, other noise
    second = tmp_path / "case2"
    second.mkdir()
    for item in case.iterdir():
        (second / item.name).write_bytes(item.read_bytes())
    models = []
    for n in range(2):
        model = tmp_path / f"model{n}.txt"
        result = runner.invoke(app, ["filter", "train", str(case), str(second), "-o", str(model),
                                     "--use-tissues", "--seed", "3", "--json"])
        assert result.exit_code == 0, result.stderr
        card = json.loads(result.stdout)
        assert card["positives"] == 2 and card["candidates"] == 6
        models.append(model.read_text())
    strip = lambda text: text.split("parameters:")[0]
    assert strip(models[0]) == strip(models[1])
    out = str(tmp_path / "learned")
    result = runner.invoke(app, ["filter", str(case), "-c", str(case / "subtract"), "-o", out,
                                 "--tissues", str(case / layout.TISSUES), "--model", str(tmp_path / "model0.txt"),
                                 "--probability", "0.5"])
    assert result.exit_code == 0, result.stderr
    assert "probability" in open(out + "_features.tsv").readline()
    # a card whose features differ from the model's is refused
    card_path = tmp_path / "model0.txt.card.json"
    card = json.loads(card_path.read_text())
    card["features"] = card["features"][:-1]
    card_path.write_text(json.dumps(card))
    result = runner.invoke(app, ["filter", str(case), "-c", str(case / "subtract"), "-o", str(tmp_path / "x"),
                                 "--model", str(tmp_path / "model0.txt")])
    assert result.exit_code == 1 and "retrain" in result.stderr


def test_training_needs_both_classes(case_with_candidates, tmp_path):
    gt = case_with_candidates / layout.GROUND_TRUTH
    save_nifti(gt, np.zeros(SHAPE, np.uint8), oblique_affine())
    result = runner.invoke(app, ["filter", "train", str(case_with_candidates), "-o", str(tmp_path / "m.txt")])
    assert result.exit_code == 1 and "true and false" in result.stderr
    assert not (tmp_path / "m.txt").exists()


def test_learned_filter_probabilities_are_lightgbms():
    """The packaged learned filter is applied by a NumPy tree walker; LightGBM itself must agree."""
    import lightgbm as lgb

    import mstools
    from mstools.candidates.lesion_classifier import model_feature_names, predict

    text = (Path(mstools.__file__).parent / "models" / "filter" / "default.txt").read_text()
    booster = lgb.Booster(model_str=text)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, booster.num_feature())) * rng.choice([0.1, 1, 10, 100], booster.num_feature())
    features[rng.random(features.shape) < 0.05] = np.nan
    assert np.allclose(predict(text, features), booster.predict(features), rtol=0, atol=1e-12)
    assert model_feature_names(text) == booster.feature_name()


def test_filter_cli_adds_the_confirming_detectors_lesions_on_thick_slices(case_with_candidates, tmp_path):
    """--add-confirming: the confirming detector's own lesions join the kept ones on a thick-slice
    grid (this case's 2.5 mm), with that detector's score; its P_mask is read, never written."""
    case = case_with_candidates
    _, _, _, _, labels = volumes()
    affine = oblique_affine()                                  # 0.9 x 1.1 x 2.5 mm: thick slices
    score = np.where(labels == 1, 0.8, 0.0).astype(np.float32)
    network_only = np.zeros(SHAPE, bool)
    network_only[10:13, 28:31, 20:23] = True                   # a lesion no candidate covers
    score[network_only] = 0.6
    save_nifti(tmp_path / "mt_score.nii.gz", score, affine)
    save_nifti(tmp_path / "mt_mask.nii.gz", ((labels == 1) | network_only).astype(np.uint8), affine)
    rules_off = ["--min-least-axis-mm", "0", "--min-sphericity", "0", "--min-contrast", "0", "--keep-touching-csf"]
    results = {}
    for mode in ("never", "thick", "always"):
        out = str(tmp_path / mode)
        result = runner.invoke(app, ["filter", str(case), "-c", str(case / "subtract"), "-o", out, *rules_off,
                                     "--confirm", str(tmp_path / "mt"), "--add-confirming", mode, "--json"])
        assert result.exit_code == 0, result.stderr
        results[mode] = json.loads(result.stdout)
        reported = np.asarray(nib.load(out + "_mask.nii.gz").dataobj) > 0
        expected = (labels == 1) | (network_only if mode != "never" else False)
        assert np.array_equal(reported, expected), mode
    assert [results[m]["kept"] for m in ("never", "thick", "always")] == [1, 1, 1]
    assert [results[m]["added"] for m in ("never", "thick", "always")] == [0, 1, 1]
    added_score = np.asarray(nib.load(str(tmp_path / "thick") + "_score.nii.gz").dataobj)
    assert added_score[network_only].max() == pytest.approx(0.6)
    record = json.loads(Path(str(tmp_path / "thick") + "_mask.json").read_text())["parameters"]
    assert record["add_confirming"] == "thick" and record["added_confirming"] is True


def test_added_lesions_must_have_been_tissue_at_baseline():
    """A lesion whose baseline was CSF-dark (FLAIR suppresses CSF) is not a new lesion's tissue;
    one on white matter is. The median is taken over the brain; inputs are not modified."""
    from mstools.candidates.filtering import tissue_at_baseline

    baseline, _, brain, _, _ = volumes()                      # WM 100, CSF 20 at i < 4
    mask = np.zeros(SHAPE, bool)
    mask[2:4, 30:33, 20:23] = True                            # in the sulcal CSF
    mask[10:13, 28:31, 20:23] = True                          # in white matter
    before = mask.copy(), baseline.copy()
    kept = tissue_at_baseline(mask, baseline, brain, 0.75)
    assert kept[10:13, 28:31, 20:23].all() and not kept[2:4].any()
    assert tissue_at_baseline(mask, baseline, brain, 0.0).sum() == mask.sum()
    assert not tissue_at_baseline(mask, baseline, brain, 1.01).any()          # 100 < 1.01 x median 100
    assert not tissue_at_baseline(np.zeros(SHAPE, bool), baseline, brain, 0.75).any()
    assert np.array_equal(mask, before[0]) and np.array_equal(baseline, before[1])


def test_filter_cli_adds_only_confirming_lesions_that_were_tissue_at_baseline(case_with_candidates, tmp_path):
    """--add-confirming with --added-min-baseline (default 0.75): the network's lesion where the
    baseline was CSF is left out; 0 adds it too."""
    case = case_with_candidates
    _, _, _, _, labels = volumes()
    affine = oblique_affine()                                  # 2.5 mm slices: thick
    in_wm = np.zeros(SHAPE, bool)
    in_wm[10:13, 28:31, 20:23] = True
    in_csf = np.zeros(SHAPE, bool)
    in_csf[2:4, 30:33, 20:23] = True
    score = np.where(labels == 1, 0.8, 0.0).astype(np.float32)
    score[in_wm | in_csf] = 0.6
    save_nifti(tmp_path / "mt_score.nii.gz", score, affine)
    save_nifti(tmp_path / "mt_mask.nii.gz", ((labels == 1) | in_wm | in_csf).astype(np.uint8), affine)
    rules_off = ["--min-least-axis-mm", "0", "--min-sphericity", "0", "--min-contrast", "0", "--keep-touching-csf"]
    for extra, expected in (([], (labels == 1) | in_wm), (["--added-min-baseline", "0"], (labels == 1) | in_wm | in_csf)):
        out = str(tmp_path / f"f{len(extra)}")
        result = runner.invoke(app, ["filter", str(case), "-c", str(case / "subtract"), "-o", out, *rules_off,
                                     "--confirm", str(tmp_path / "mt"), "--add-confirming", "thick", *extra])
        assert result.exit_code == 0, result.stderr
        assert np.array_equal(np.asarray(nib.load(out + "_mask.nii.gz").dataobj) > 0, expected), extra
    record = json.loads(Path(str(tmp_path / "f0") + "_mask.json").read_text())["parameters"]
    assert record["added_min_baseline"] == 0.75


def test_thick_slices_are_told_by_the_largest_voxel_edge():
    from mstools.acquisition import has_thick_slices

    assert has_thick_slices((0.72, 0.72, 3.0)) and has_thick_slices((2.0, 1.0, 1.0))
    assert not has_thick_slices((1.0, 1.0, 1.0)) and not has_thick_slices((1.5, 1.5, 1.5))


@pytest.mark.parametrize("confirm, message", [
    (False, "name that detector with --confirm P"),
    (True, "mt_mask.nii.gz not found"),
])
def test_filter_cli_refuses_to_add_without_a_confirming_mask(case_with_candidates, tmp_path, confirm, message):
    _, _, _, _, labels = volumes()
    save_nifti(tmp_path / "mt_score.nii.gz", (labels == 1).astype(np.float32), oblique_affine())
    out = tmp_path / "f"
    result = runner.invoke(app, ["filter", str(case_with_candidates), "-c", str(case_with_candidates / "subtract"),
                                 "-o", str(out), "--add-confirming", "always",
                                 *(["--confirm", str(tmp_path / "mt")] if confirm else [])])
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("f_*"))
