"""`mstools import-open-ms` and its reader on a tiny synthetic copy of open_ms_data.

The copy has the repository's layout (longitudinal/raw/patientXX, coregistered/patientXX)
with a 24 x 24 x 12 common grid (oblique, 0.9 x 1.1 x 2.5 mm) and raw FLAIRs on other
oblique grids, tied to it by hand-written ITK transform files. Every raw voxel is painted
from the common-space point the transform sends it to (computed here by hand in ITK's
LPS convention, independently of SimpleITK), so after import each ball must sit exactly
where it was drawn on the common grid.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import case_layout as layout
from mstools.datasets import open_ms_data as omd
from mstools.errors import InputError
from tests.conftest import oblique_affine, save_nifti

runner = CliRunner()

COMMON_SHAPE = (24, 24, 12)
COMMON_AFFINE = oblique_affine()
RAW_SHAPE = (32, 32, 20)
RADIUS_MM = 3.5
BALL_BRIGHTENS = (7, 8, 6)      # brighter at follow-up: an increase
BALL_DARKENS = (16, 15, 6)      # brighter at baseline: a decrease
MARKER_TARGET = (12, 17, 3)     # a 3x3x3 bright cube in the raw follow-up lands near here
FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS


def rotation_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


# ITK (LPS) parameters of "common point -> raw point": x -> M (x - c) + c + t
TRANSFORMS = {
    1: dict(matrix=np.eye(3), translation=np.array([-4.0, 3.0, 2.0]), centre=np.array([1.5, -7.0, 3.0])),
    2: dict(matrix=rotation_z(6.0), translation=np.array([5.0, -3.0, 4.0]), centre=np.array([10.0, -20.0, 5.0])),
}


def common_to_raw(points_ras, study):
    t = TRANSFORMS[study]
    lps = points_ras @ FLIP
    moved = (lps - t["centre"]) @ t["matrix"].T + t["centre"] + t["translation"]
    return moved @ FLIP


def raw_to_common(points_ras, study):
    t = TRANSFORMS[study]
    lps = points_ras @ FLIP
    back = (lps - t["centre"] - t["translation"]) @ np.linalg.inv(t["matrix"]).T + t["centre"]
    return back @ FLIP


def itk_text(study):
    t = TRANSFORMS[study]
    values = " ".join(f"{v:.10g}" for v in (*t["matrix"].ravel(), *t["translation"]))
    return ("#Insight Transform File V1.0\n#Transform 0\nTransform: MatrixOffsetTransformBase_double_3_3\n"
            f"Parameters: {values}\nFixedParameters: {' '.join(f'{v:g}' for v in t['centre'])}\n")


def world(affine, index):
    index = np.asarray(index, dtype=float)
    return index @ affine[:3, :3].T + affine[:3, 3]


def index_of(affine, point):
    inverse = np.linalg.inv(affine)
    return np.asarray(point) @ inverse[:3, :3].T + inverse[:3, 3]


def grid_points(shape, affine):
    return world(affine, np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1))


def ball(centre_index):
    """A ball of RADIUS_MM in world mm around a common-grid voxel (boolean, common grid)."""
    points = grid_points(COMMON_SHAPE, COMMON_AFFINE)
    return np.linalg.norm(points - world(COMMON_AFFINE, centre_index), axis=-1) <= RADIUS_MM


def raw_affine(study):
    """The raw grid of a study: other angles and voxels, centred on where the common grid's
    centre goes, so that the raw field of view covers the common one."""
    affine = oblique_affine(spacing=(1.0, 1.0, 2.0), angles_deg=(4.0, -3.0, 6.0 * study), origin=(0, 0, 0))
    centre = common_to_raw(world(COMMON_AFFINE, (np.array(COMMON_SHAPE) - 1) / 2.0)[None], study)[0]
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(RAW_SHAPE) - 1) / 2.0)
    return affine


def marker_raw_index():
    target = world(COMMON_AFFINE, MARKER_TARGET)[None]
    return np.round(index_of(raw_affine(2), common_to_raw(target, 2))[0]).astype(int)


def raw_flair(study, rng):
    """A raw FLAIR: 100 + noise, +60 in the ball that is bright at this visit (painted
    through raw -> common), and at follow-up a 3x3x3 raw-voxel cube of 400."""
    affine = raw_affine(study)
    common_points = raw_to_common(grid_points(RAW_SHAPE, affine), study)
    bright = BALL_DARKENS if study == 1 else BALL_BRIGHTENS
    inside = np.linalg.norm(common_points - world(COMMON_AFFINE, bright), axis=-1) <= RADIUS_MM
    data = 100.0 + rng.normal(0.0, 2.0, RAW_SHAPE) + 60.0 * inside
    if study == 2:
        i, j, k = marker_raw_index()
        data[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 400.0
    return np.round(data).astype(np.uint16), affine


def brain():
    points = index_of(COMMON_AFFINE, grid_points(COMMON_SHAPE, COMMON_AFFINE))
    centre = (np.array(COMMON_SHAPE) - 1) / 2.0
    return (np.sum(((points - centre) / (centre + 0.5)) ** 2, axis=-1) <= 1.0).astype(np.int16)


def add_patient(clone, patient, *, seed=5, raw_flairs=True):
    raw = clone / "longitudinal" / "raw" / f"patient{patient}"
    common = clone / "longitudinal" / "coregistered" / f"patient{patient}"
    raw.mkdir(parents=True)
    common.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for study in (1, 2):
        (raw / f"study{study}_FLAIR_to_common_space.txt").write_text(itk_text(study))
        if raw_flairs:
            data, affine = raw_flair(study, rng)
            save_nifti(raw / f"study{study}_FLAIR.nii.gz", data, affine)
    save_nifti(common / "brainmask.nii.gz", brain(), COMMON_AFFINE)
    change = (ball(BALL_BRIGHTENS) | ball(BALL_DARKENS)).astype(np.int16)
    save_nifti(common / "gt.nii.gz", change, COMMON_AFFINE)
    return raw, common


@pytest.fixture
def clone(tmp_path):
    """Patients 01 and 03 (held out) fully stored, 02 without raw FLAIRs (as in the real clone)."""
    root = tmp_path / "open_ms_data"
    add_patient(root, "01")
    add_patient(root, "02", raw_flairs=False)
    add_patient(root, "03", seed=6)
    return root


def values(path):
    return np.asanyarray(nib.load(path).dataobj)


# ----------------------------------------------------------------------------- the reader


def test_the_fixture_covers_what_it_tests():
    assert ball(BALL_BRIGHTENS).sum() > 20 and ball(BALL_DARKENS).sum() > 20
    assert not (ball(BALL_BRIGHTENS) & ball(BALL_DARKENS)).any()
    assert np.all(marker_raw_index() >= 1) and np.all(marker_raw_index() <= np.array(RAW_SHAPE) - 2)


def test_flairs_land_on_the_common_grid_where_the_transform_says(clone):
    reference, case = omd.read_patient(omd.locate_patient(clone, "1"))
    assert reference.shape == COMMON_SHAPE
    np.testing.assert_allclose(reference.affine, COMMON_AFFINE, atol=1e-5)
    assert case.baseline.dtype == np.float32 and case.baseline.shape == COMMON_SHAPE
    # the cube placed in raw space: its centroid on the common grid is where the transform sends it
    cube_raw = world(raw_affine(2), marker_raw_index())[None]
    expected = raw_to_common(cube_raw, 2)[0]
    wrong_way = common_to_raw(cube_raw, 2)[0]  # what reading the transform backwards would give
    weights = np.clip(case.followup - 160.0, 0, None)
    centroid = (grid_points(COMMON_SHAPE, COMMON_AFFINE) * weights[..., None]).sum((0, 1, 2)) / weights.sum()
    assert np.linalg.norm(centroid - expected) < 1.0
    assert np.linalg.norm(wrong_way - expected) > 10.0
    # the balls painted through each visit's transform sit where they were drawn
    for image, bright, dark in ((case.followup, BALL_BRIGHTENS, BALL_DARKENS),
                                (case.baseline, BALL_DARKENS, BALL_BRIGHTENS)):
        core = ball(bright) & (np.linalg.norm(grid_points(COMMON_SHAPE, COMMON_AFFINE)
                                              - world(COMMON_AFFINE, bright), axis=-1) <= RADIUS_MM - 1.5)
        assert image[core].mean() > 150 and abs(np.median(image[ball(dark)]) - 100) < 5


def test_increase_only_keeps_the_brightening_component(clone):
    _, case = omd.read_patient(omd.locate_patient(clone, "01"))
    grows, shrinks = ball(BALL_BRIGHTENS), ball(BALL_DARKENS)
    assert case.ground_truth.dtype == np.uint8
    np.testing.assert_array_equal(case.ground_truth, grows.astype(np.uint8))
    np.testing.assert_array_equal(case.change_mask, (grows | shrinks).astype(np.uint8))
    kinds = sorted((c["kind"], c["voxels"]) for c in case.components)
    assert kinds == [("decrease", int(shrinks.sum())), ("increase", int(grows.sum()))]


def test_increase_only_on_hand_made_arrays():
    change = np.zeros((6, 6, 6), dtype=np.uint8)
    change[0:2, 0:2, 0:2] = 1           # 8 voxels, brighter at follow-up, brighter than the brain
    change[4:6, 4:6, 4] = 1             # 4 voxels, darker at follow-up
    change[0:3, 5, 5] = 1               # 3 voxels, brighter at follow-up but darker than the brain
    baseline = np.full(change.shape, 10.0)
    followup = np.full(change.shape, 20.0)  # another scale: normalised by the brain medians
    followup[0:2, 0:2, 0:2] = 30.0
    followup[4:6, 4:6, 4] = 12.0
    baseline[0:3, 5, 5], followup[0:3, 5, 5] = 5.0, 16.0     # 0.5 -> 0.8 of the brain's median
    brain = np.ones(change.shape, dtype=bool)
    truth, records = omd.increase_only(change, baseline, followup, brain)
    assert int(truth.sum()) == 8 and truth[0, 0, 0] == 1 and truth[5, 5, 4] == 0 and truth[0, 5, 5] == 0
    assert [(r["voxels"], r["kind"], r["mean_difference"], r["followup_mean"]) for r in records] == [
        (8, "increase", 0.5, 1.5), (3, "not_hyperintense", 0.3, 0.8), (4, "decrease", -0.4, 0.6)]
    brightening, _ = omd.increase_only(change, baseline, followup, brain, rule="brightening")
    assert int(brightening.sum()) == 11 and brightening[0, 5, 5] == 1 and brightening[5, 5, 4] == 0
    assert change.sum() == 15  # input untouched
    with pytest.raises(InputError, match="unknown increase rule"):
        omd.increase_only(change, baseline, followup, brain, rule="bigger")


def test_available_patients_are_those_with_both_raw_flairs(clone):
    assert omd.available_patients(clone) == ["01", "03"]


# ----------------------------------------------------------------------------- the command


def test_help():
    result = runner.invoke(app, ["import-open-ms", "--help"])
    assert result.exit_code == 0 and "Example: mstools import-open-ms" in result.stdout


def test_writes_the_case_folder_on_the_common_grid(clone, tmp_path):
    out = tmp_path / "real"
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), "--patient", "01", "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["cases"] == [{"patient": "01", "case": str(out / "patient01"), "held_out": False,
                                 "change_components": 2, "increase_components": 1}]
    folder = out / "patient01"
    images = {layout.BASELINE: np.float32, layout.FOLLOWUP: np.float32, layout.BRAIN_MASK: np.uint8,
              "change_mask.nii.gz": np.uint8, layout.GROUND_TRUTH: np.uint8}
    assert layout.BASELINE == "flair_time01_on_middle_space.nii.gz"
    for name, dtype in images.items():
        img = nib.load(folder / name)
        assert img.get_data_dtype() == dtype and img.shape == COMMON_SHAPE
        np.testing.assert_allclose(img.affine, COMMON_AFFINE, atol=1e-5)
        np.testing.assert_allclose(img.get_qform(), COMMON_AFFINE, atol=1e-5)
        sidecar = json.loads((folder / name.replace(".nii.gz", ".json")).read_text())
        assert sidecar["command"] == "import-open-ms"
    np.testing.assert_array_equal(values(folder / layout.GROUND_TRUTH), ball(BALL_BRIGHTENS))
    rows = (folder / "change_components.tsv").read_text().splitlines()
    assert rows[0] == "component\tvoxels\tmean_difference\tfollowup_mean\tkind" and len(rows) == 3
    assert sorted(r.split("\t")[4] for r in rows[1:]) == ["decrease", "increase"]
    source = json.loads((folder / "source.json").read_text())
    assert source["held_out"] is False and source["patient"] == "01" and source["increase_components"] == 1
    assert source["increase_rule"] == "lesion-tissue"
    attribution = (folder / "ATTRIBUTION.txt").read_text()
    assert "CC-BY" in attribution and "Lesjak" in attribution
    assert sorted(p.name for p in out.iterdir()) == ["patient01"]


def test_plain_output_lists_the_written_paths(clone, tmp_path):
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(tmp_path / "r"), "-p", "1", "-p", "01"])
    assert result.exit_code == 0, result.stderr
    paths = result.stdout.split()
    assert len(paths) == len(set(paths)) == 13 and all((tmp_path / "r" / "patient01").joinpath(p).exists()
                                                       for p in paths)


def test_held_out_patient_is_marked(clone, tmp_path):
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(tmp_path / "r"), "--patient", "3", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["cases"][0]["held_out"] is True
    assert json.loads((tmp_path / "r" / "patient03" / "source.json").read_text())["held_out"] is True


def test_default_imports_every_stored_patient(clone, tmp_path):
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.stderr
    assert [c["patient"] for c in json.loads(result.stdout)["cases"]] == ["01", "03"]


# ----------------------------------------------------------------------------- errors


def _no_longitudinal(clone):
    import shutil

    shutil.rmtree(clone / "longitudinal")
    return ["--patient", "01"]


def _raw_flair_absent(clone):
    return ["--patient", "02"]


def _raw_flair_stub(clone):
    (clone / "longitudinal/raw/patient01/study2_FLAIR.nii.gz").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 2468393\n")
    return ["--patient", "01"]


def _garbage_transform(clone):
    (clone / "longitudinal/raw/patient01/study1_FLAIR_to_common_space.txt").write_text("not a transform\n")
    return ["--patient", "01"]


def _truncated_transform(clone):
    path = clone / "longitudinal/raw/patient01/study2_FLAIR_to_common_space.txt"
    text = path.read_text()
    # cut inside the Parameters line, as an interrupted copy would: ITK reads it as the identity
    path.write_text(text[:text.index("Parameters:") + len("Parameters: 0.99")])
    return ["--patient", "01"]


def _centre_missing(clone):
    path = clone / "longitudinal/raw/patient01/study2_FLAIR_to_common_space.txt"
    path.write_text(path.read_text().split("FixedParameters")[0])
    return ["--patient", "01"]


def _second_patient_broken(clone):
    # found only while reading (after patient 01 is done): nothing of patient 01 may stay either
    save_nifti(clone / "longitudinal/coregistered/patient03/gt.nii.gz", 2 * ball(BALL_BRIGHTENS).astype(np.int16),
               COMMON_AFFINE)
    return ["--patient", "01", "--patient", "03"]


@pytest.mark.parametrize("damage, message", [
    (_no_longitudinal, "no longitudinal/ folder"),
    (_raw_flair_absent, "patient02/study1_FLAIR.nii.gz: missing or not stored"),
    (_raw_flair_stub, "study2_FLAIR.nii.gz: missing or not stored"),
    (_garbage_transform, "study1_FLAIR_to_common_space.txt: not a readable ITK transform"),
    (_truncated_transform, "Parameters has 1 values, 12 expected"),
    (_centre_missing, "FixedParameters has 0 values, 3 expected"),
    (_second_patient_broken, "not a binary mask"),
])
def test_bad_clone_is_one_line_and_no_output(clone, tmp_path, damage, message):
    options = damage(clone)
    out = tmp_path / "real"
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), *options])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("mstools import-open-ms: error: ") and message in lines[-1]
    assert not any(line.startswith(("Traceback", "  File")) for line in lines)
    assert result.stdout == "" and not out.exists()


def test_increase_rule_is_checked_and_the_old_rule_kept(clone, tmp_path):
    out = tmp_path / "real"
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), "--increase-rule", "bigger"])
    assert result.exit_code == 1 and "--increase-rule 'bigger': choose one of lesion-tissue, brightening" in result.stderr
    assert not out.exists()
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), "-p", "01", "--increase-rule",
                                 "brightening"])
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "patient01" / "source.json").read_text())["increase_rule"] == "brightening"
    np.testing.assert_array_equal(values(out / "patient01" / layout.GROUND_TRUTH), ball(BALL_BRIGHTENS))


def test_stub_patient_is_not_available(clone):
    _raw_flair_stub(clone)
    assert omd.available_patients(clone) == ["03"]


def test_missing_folders_are_made_and_a_file_on_the_way_is_refused_at_once(clone, tmp_path):
    out = tmp_path / "data" / "new" / "real"
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), "-p", "01"])
    assert result.exit_code == 0, result.stderr
    assert (out / "patient01" / layout.GROUND_TRUTH).is_file()
    (tmp_path / "afile").write_text("not a folder")
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(tmp_path / "afile" / "real"), "-p", "01"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1   # no 'patient 01 ->' line
    assert "afile: is a file, not a folder" in result.stderr


def test_existing_output_needs_force(clone, tmp_path):
    out = tmp_path / "real"
    assert runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), "-p", "01"]).exit_code == 0
    truth = out / "patient01" / layout.GROUND_TRUTH
    truth.write_bytes(b"kept")
    before = sorted(p.name for p in (out / "patient01").iterdir())
    result = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), "-p", "01", "-p", "03"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "already exists; pass --force" in result.stderr
    assert truth.read_bytes() == b"kept" and sorted(p.name for p in (out / "patient01").iterdir()) == before
    assert not (out / "patient03").exists()
    again = runner.invoke(app, ["import-open-ms", str(clone), "-o", str(out), "-p", "01", "--force"])
    assert again.exit_code == 0, again.stderr
    np.testing.assert_array_equal(values(truth), ball(BALL_BRIGHTENS))
