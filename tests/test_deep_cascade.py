"""The U-Net with the all-lesion maps as extra channels (mstools.detect.deep.cascade, paper 001)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mstools.detect.deep.cascade import (CascadePredictor, CascadeTrainer, CascadeUNet3D, prepare_cascade_case,
                                         prepare_cascade_validation, widen_state)
from mstools.detect.deep.config import ModelConfig, TrainingConfig
from mstools.detect.deep.training import Trainer, prepare_case
from mstools.detect.deep.unet import UNet3D

CONFIG = ModelConfig("unet", base_filters=2, patch_size=16, spacing_mm=None, norm="instance", levels=2)
#: the same network with the maps' two channels: the registry's cascade
CASCADE = dataclasses.replace(CONFIG, model="cascade")
SPACING = (1.0, 1.0, 1.0)


def _case(seed):
    rng = np.random.default_rng(seed)
    shape = (24, 24, 20)
    b = rng.normal(100, 5, shape).astype(np.float32)
    f = b + rng.normal(0, 2, shape).astype(np.float32)
    truth = np.zeros(shape, np.uint8)
    truth[8:12, 8:12, 8:12] = 1
    f[truth > 0] += 60
    old = np.zeros(shape, np.uint8)
    old[15:18, 15:18, 5:8] = 1
    return b, f, truth, (old, old | truth)


def test_widened_weights_start_as_the_plain_unet():
    torch.manual_seed(0)
    plain = UNet3D(CONFIG).eval()
    cascade = CascadeUNet3D(CASCADE).eval()
    state = widen_state(plain.state_dict())
    cascade.load_state_dict(state, strict=True)
    assert state["encoder.stages.0.0.weight"].shape[1] == 4 and not state["encoder.stages.0.0.weight"][:, 2:].any()
    x = torch.randn(1, 2, 16, 16, 16)
    maps = torch.randint(0, 2, (1, 2, 16, 16, 16)).float()
    with torch.no_grad():
        assert torch.allclose(plain(x)["new"], cascade(torch.cat([x, maps], 1))["new"], atol=1e-5)
    with pytest.raises(ValueError, match="input channels"):
        widen_state(state)


def test_the_trainer_draws_the_plain_trainers_patches_plus_the_maps():
    training = TrainingConfig(iterations=2, batch_longitudinal=2, batch_single=0, learning_rate=1e-3,
                              p_random_patch=0.33, seed=3, augment=False)
    data = [_case(s) for s in range(2)]
    plain = Trainer(CONFIG, training, [prepare_case(f"c{n}", [b, f], t, spacing_mm=SPACING, config=CONFIG)
                                       for n, (b, f, t, _) in enumerate(data)])
    cases = [prepare_cascade_case(f"c{n}", b, f, t, maps, spacing_mm=SPACING, config=CASCADE)
             for n, (b, f, t, maps) in enumerate(data)]
    cascade = CascadeTrainer(CASCADE, training, cases)
    x_plain, y_plain, _ = plain.sample_batch()
    x, y, n_long = cascade.sample_batch()
    assert x.shape == (2, 4, 16, 16, 16) and n_long == 2
    np.testing.assert_allclose(x[:, :2], x_plain, atol=1e-6)
    np.testing.assert_array_equal(y, y_plain)
    # the maps' channels are the maps at the same place: the follow-up map holds every new voxel
    assert set(np.unique(x[:, 2:])) <= {0.0, 1.0} and np.all(x[:, 3][y[:, 0] > 0] == 1)
    assert np.all(x[:, 2][y[:, 0] > 0] == 0)


def test_training_and_prediction_follow_the_maps():
    data = [_case(s) for s in range(2)]
    cases = [prepare_cascade_case(f"c{n}", b, f, t, maps, spacing_mm=SPACING, config=CASCADE)
             for n, (b, f, t, maps) in enumerate(data)]
    training = TrainingConfig(iterations=3, batch_longitudinal=2, batch_single=0, learning_rate=1e-2, seed=0)
    with pytest.raises(ValueError, match="registry's 'cascade' network"):
        CascadeTrainer(CONFIG, training, cases)
    trainer = CascadeTrainer(CASCADE, training, cases, init_state=UNet3D(CONFIG).state_dict())
    losses = [trainer.step()["loss"] for _ in range(3)]
    assert all(np.isfinite(losses)) and trainer.model.state_dict()["encoder.stages.0.0.weight"][:, 2:].abs().sum() > 0
    b, f, _, maps = data[0]
    predictor = CascadePredictor(trainer.model, CASCADE)
    p = predictor.predict(b, f, maps, spacing_mm=SPACING)["new"]
    other = predictor.predict(b, f, (maps[0], np.zeros_like(maps[1])), spacing_mm=SPACING)["new"]
    assert p.shape == b.shape and p.dtype == np.float32 and not np.allclose(p, other)
    with pytest.raises(ValueError, match="one grid"):
        predictor.predict(b, f, (maps[0], maps[1][:-1]), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="all-lesion map of shape"):
        prepare_cascade_case("x", b, f, data[0][2], (maps[0][:, :, :-1], maps[1]), spacing_mm=SPACING, config=CASCADE)


def test_the_maps_are_brought_onto_the_model_grid_with_the_scans():
    """The cascade's inputs share one grid: maps resampled as the scans are (1 mm -> 1.5 mm), binary."""
    b, f, truth, maps = _case(0)
    config = dataclasses.replace(CASCADE, spacing_mm=1.5)
    case = prepare_cascade_case("c", b, f, truth, maps, spacing_mm=SPACING, config=config)
    assert case.maps.shape == (2, *case.images.shape[1:]) == (2, *case.label.shape)
    assert case.maps.dtype == np.uint8 and set(np.unique(case.maps)) <= {0, 1}
    assert case.images.shape[1] < b.shape[0]                      # resampled, then cropped to the head
    assert np.all(case.maps[1][case.label > 0] == 1)              # the follow-up map holds the new lesion
    validation = prepare_cascade_validation("c", b, f, truth, maps, spacing_mm=SPACING, config=config)
    assert validation.maps.shape == (2, *validation.baseline.shape) == (2, *validation.truth.shape)


# ----------------------------------------------------------------------------- the commands

from typer.testing import CliRunner  # noqa: E402

from mstools import case_layout as layout  # noqa: E402
from mstools_cli.main import app  # noqa: E402
from tests.conftest import oblique_affine, save_nifti  # noqa: E402
from tests.test_deep_cli import SHAPE, make_case  # noqa: E402

runner = CliRunner()
TINY = ["--base-filters", "2", "--patch-size", "32", "--spacing-mm", "0", "--batch-longitudinal", "1",
        "--threads", "1"]


def cascade_case(folder, seed=0):
    """A tiny case (oblique, anisotropic) with a brain mask and both visits' all-lesion masks: an old
    lesion at both visits, the new one at follow-up; also as CoactSeg's outputs named 'maps'."""
    make_case(folder, seed=seed)
    affine = oblique_affine()
    import nibabel as nib

    head = (np.asarray(nib.load(folder / layout.BASELINE).dataobj) > 150).astype(np.uint8)
    truth = np.asarray(nib.load(folder / layout.GROUND_TRUTH).dataobj) > 0
    old = np.zeros(SHAPE, bool)
    old[4:7, 4:7, 2:5] = True
    save_nifti(folder / layout.BRAIN_MASK, head, affine)
    for name, mask in ((layout.LESIONS_BASELINE, old), (layout.LESIONS_FOLLOWUP, old | truth),
                       ("maps_all_time01_mask.nii.gz", old), ("maps_all_time02_mask.nii.gz", old)):
        save_nifti(folder / name, mask.astype(np.uint8), affine)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two training cases and a validation case with their maps; a cascade trained 2 iterations."""
    root = tmp_path_factory.mktemp("cascade")
    for n in range(2):
        cascade_case(root / "data" / f"c{n}", seed=n)
    cascade_case(root / "val" / "v0", seed=7)
    result = runner.invoke(app, ["train", str(root / "run"), "--model", "cascade", "--lesions", "case", "--cases",
                                 str(root / "data"), "--val", str(root / "val"), "--iterations", "2",
                                 "--validate-every", "2", *TINY, "--json"])
    assert result.exit_code == 0, result.stderr
    return root, root / "run" / "model.pt"


def test_train_cascade_writes_weights_with_four_inputs_and_a_card_naming_the_maps(trained):
    from mstools.detect.deep.weights import load_weights
    from mstools.models import read_card

    root, weights = trained
    config, state, _ = load_weights(weights)
    assert config.model == "cascade" and state["encoder.stages.0.0.weight"].shape[1] == 4
    card = read_card(weights)
    assert card["model"] == "cascade" and card["training_data"]["lesions"] == "case"
    assert card["training_data"]["lesion_maps"]["c0"] == [str(root / "data" / "c0" / layout.LESIONS_BASELINE),
                                                          str(root / "data" / "c0" / layout.LESIONS_FOLLOWUP)]
    assert card["training_data"]["lesion_maps"]["v0"][1].endswith(layout.LESIONS_FOLLOWUP)
    assert np.isfinite(card["validation_metrics"]["val_dice"])     # validated with the maps


def test_train_cascade_starts_from_unet_weights_with_the_maps_at_zero(trained, tmp_path):
    from mstools.detect.deep.networks import build_model
    from mstools.detect.deep.weights import load_weights, save_weights
    from mstools.models import read_card

    root, _ = trained
    torch.manual_seed(3)
    unet_config = ModelConfig("unet", base_filters=2, patch_size=32, spacing_mm=None, norm="instance", levels=4)
    save_weights(tmp_path / "unet.pt", unet_config, build_model(unet_config).state_dict())
    result = runner.invoke(app, ["train", str(tmp_path / "run"), "--model", "cascade", "--lesions", "case",
                                 "--cases", str(root / "data"), "--iterations", "1", "--lr", "1e-12",
                                 "--init-weights", str(tmp_path / "unet.pt"), *TINY])
    assert result.exit_code == 0, result.stderr
    _, unet, _ = load_weights(tmp_path / "unet.pt")
    _, tuned, _ = load_weights(tmp_path / "run" / "model.pt")
    first = tuned["encoder.stages.0.0.weight"]
    torch.testing.assert_close(first[:, :2], unet["encoder.stages.0.0.weight"], atol=1e-6, rtol=0)
    assert first[:, 2:].abs().max() < 1e-6
    assert read_card(tmp_path / "run" / "model.pt")["initialised_from"]["widened_from"] == "unet"
    # a U-Net of another configuration is refused before any training
    other = runner.invoke(app, ["train", str(tmp_path / "other"), "--model", "cascade", "--lesions", "case",
                                "--cases", str(root / "data"), "--iterations", "1", "--init-weights",
                                str(tmp_path / "unet.pt"), *TINY, "--base-filters", "4"])
    assert other.exit_code == 1 and "another configuration" in other.stderr


def _segment(case, out, weights, *extra):
    return runner.invoke(app, ["segment", str(case), "--model", "cascade", "--weights", str(weights), "-o", str(out),
                               "--threads", "1", "--json", *map(str, extra)])


def test_segment_cascade_writes_the_case_grid_and_reads_the_maps(trained, tmp_path):
    import nibabel as nib

    from mstools.io import sha256

    root, weights = trained
    case = root / "data" / "c0"
    result = _segment(case, tmp_path / "a" / "seg", weights, "--lesions", "case")
    assert result.exit_code == 0, result.stderr
    reference = nib.load(case / layout.BASELINE)
    for name, dtype in (("score", np.float32), ("mask", np.uint8), ("labels", np.int32)):
        image = nib.load(tmp_path / "a" / f"seg_{name}.nii.gz")
        assert image.shape == SHAPE and image.get_data_dtype() == dtype
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-6)
        np.testing.assert_allclose(image.header.get_qform(), reference.header.get_qform(), atol=1e-5)
    sidecar = json.loads((tmp_path / "a" / "seg_mask.json").read_text())
    maps = [str(case / layout.LESIONS_BASELINE), str(case / layout.LESIONS_FOLLOWUP)]
    assert sidecar["parameters"]["lesion_maps"] == maps and sidecar["parameters"]["lesions"] == "case"
    assert {m: sha256(m) for m in maps}.items() <= sidecar["inputs_sha256"].items()
    # other maps (NAME: the case folder's NAME_all_time0X_mask), another probability
    result = _segment(case, tmp_path / "b" / "seg", weights, "--lesions", "maps")
    assert result.exit_code == 0, result.stderr
    a, b = (np.asarray(nib.load(tmp_path / x / "seg_score.nii.gz").dataobj) for x in ("a", "b"))
    assert not np.allclose(a, b)
    # a prefix with a folder part; the same maps as 'maps'
    result = _segment(case, tmp_path / "c" / "seg", weights, "--lesions", case / "maps")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(b, np.asarray(nib.load(tmp_path / "c" / "seg_score.nii.gz").dataobj))


def test_cascade_maps_off_the_case_grid_missing_or_not_binary_are_one_line_errors(trained, tmp_path):
    root, weights = trained
    case = tmp_path / "case"
    cascade_case(case)
    maps = case / "maps_all_time01_mask.nii.gz"

    def fails(message, *args, command=_segment):
        out = tmp_path / "out"
        result = command(case, out / "seg", weights, *args)
        assert result.exit_code == 1, result.stdout
        assert message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not out.exists()                                   # nothing written
        return result.stderr

    save_nifti(maps, np.zeros((22, 18, 8), np.uint8), oblique_affine())           # another shape
    assert str(maps) in fails("not on the same grid", "--lesions", "maps")
    shifted = oblique_affine()
    shifted[:3, 3] += 4.0
    save_nifti(maps, np.zeros(SHAPE, np.uint8), shifted)                            # another place
    fails("not on the same grid", "--lesions", "maps")
    save_nifti(maps, np.full(SHAPE, 0.5, np.float32), oblique_affine())             # a probability map
    fails("not a binary mask", "--lesions", "maps")
    fails("all-lesion mask of the baseline not found", "--lesions", "nothing")
    fails("give --lesions SOURCE")
    assert "reads no all-lesion maps" in runner.invoke(
        app, ["segment", str(case), "--model", "unet", "--lesions", "case", "-o", str(tmp_path / "out" / "s")]).stderr
    # training refuses them too, before any run folder is written
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(run), "--model", "cascade", "--lesions", "maps", "--cases", str(case),
                                 "--iterations", "1", *TINY])
    assert result.exit_code == 1 and "not a binary mask" in result.stderr and not run.exists()
    result = runner.invoke(app, ["train", str(run), "--model", "cascade", "--cases", str(case), "--iterations", "1",
                                 *TINY])
    assert result.exit_code == 1 and "give --lesions SOURCE" in result.stderr and not run.exists()
    result = runner.invoke(app, ["train", str(run), "--model", "unet", "--lesions", "case", "--cases", str(case),
                                 "--iterations", "1", *TINY])
    assert result.exit_code == 1 and "--lesions is read by --model cascade" in result.stderr and not run.exists()


def _config(path, segment, **top):
    import yaml

    path.write_text(yaml.safe_dump({"report": False, "refine": {"enabled": False}, "filter": {"enabled": False},
                                    "activity": {"lesions": "segment"}, "segment": {"enabled": True, **segment},
                                    **top}))
    return path


def test_run_wires_coactseg_maps_into_the_cascade_segment_stage(trained, tmp_path):
    import nibabel as nib

    from mstools import run_layout as rl

    _, weights = trained
    case = tmp_path / "case"
    cascade_case(case)
    for name in (layout.LESIONS_BASELINE, layout.LESIONS_FOLLOWUP):   # no user maps: CoactSeg's are read
        (case / name).unlink()
    config = _config(tmp_path / "cascade.yaml", {"model": "cascade", "weights": str(weights), "coactseg_maps": True,
                                                  "threads": 1})
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", str(case), "-o", str(run), "-c", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["stages"]["segment"]["status"] == "ran" and record["final_stage"] == "activity"
    maps = [run / "segment" / f"coactseg_all_time0{n}_mask.nii.gz" for n in (1, 2)]
    reference = nib.load(case / layout.BASELINE)
    for path in [*maps, run / "segment" / "segment_mask.nii.gz", run / f"{rl.FINAL_PREFIX}_mask.nii.gz"]:
        image = nib.load(path)       # every map and mask on the case grid, with its affine
        assert image.shape == SHAPE and np.allclose(image.affine, reference.affine, atol=1e-6)
    sidecar = json.loads((run / "segment" / "segment_mask.json").read_text())
    assert sidecar["parameters"]["model"] == "cascade" and sidecar["parameters"]["lesion_maps"] == list(map(str, maps))
    stage = json.loads((run / "segment" / rl.STAGE_RECORD).read_text())
    command = stage["command"]      # the equivalent command names the maps the stage made
    assert command[:3] == ["mstools", "segment", str(case)] and "cascade" in command
    assert command[command.index("--lesions") + 1] == str(run / "segment" / "coactseg")
    assert str(maps[0].relative_to(run)) in stage["outputs"]
    # activity's baseline lesions are CoactSeg's time-1 map made in the stage
    patient = json.loads(next((run / "activity").glob("*patient.json")).read_text())
    assert patient["baseline_lesions"] == str(maps[0])
    # unchanged: reused; a CoactSeg map removed: the stage runs again
    again = runner.invoke(app, ["run", str(case), "-o", str(run), "-c", str(config), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"]["segment"]["status"] == "reused"
    maps[1].unlink()
    again = runner.invoke(app, ["run", str(case), "-o", str(run), "-c", str(config), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"]["segment"]["status"] == "ran"


def test_run_cascade_reads_the_case_folders_maps_and_their_changes(trained, tmp_path):
    import nibabel as nib

    _, weights = trained
    case = cascade_case(tmp_path / "case")
    config = _config(tmp_path / "case.yaml", {"model": "cascade", "weights": str(weights), "lesions": "case",
                                              "threads": 1})
    run = tmp_path / "run"
    result = runner.invoke(app, ["run", str(case), "-o", str(run), "-c", str(config), "--json"])
    assert result.exit_code == 0, result.stderr
    sidecar = json.loads((run / "segment" / "segment_mask.json").read_text())
    assert sidecar["parameters"]["lesion_maps"] == [str(case / layout.LESIONS_BASELINE),
                                                    str(case / layout.LESIONS_FOLLOWUP)]
    assert not (run / "segment" / "coactseg_all_time01_mask.nii.gz").exists()
    before = np.asarray(nib.load(run / "segment" / "segment_score.nii.gz").dataobj)
    # new user maps: the segment stage is not reused
    save_nifti(case / layout.LESIONS_FOLLOWUP, np.zeros(SHAPE, np.uint8), oblique_affine())
    again = runner.invoke(app, ["run", str(case), "-o", str(run), "-c", str(config), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["stages"]["segment"]["status"] == "ran"
    assert not np.allclose(before, np.asarray(nib.load(run / "segment" / "segment_score.nii.gz").dataobj))


@pytest.mark.parametrize("segment, message", [
    ({"model": "cascade"}, "reads both visits' all-lesion maps"),
    ({"model": "cascade", "lesions": "case", "coactseg_maps": True}, "keep one"),
    ({"model": "unet", "coactseg_maps": True}, "model unet reads none"),
    ({"model": "coactseg", "lesions": "case"}, "model coactseg reads none"),
    ({"model": "cascade", "lesions": "case", "coactseg_maps": "yes"}, "coactseg_maps must be true or false"),
])
def test_run_refuses_a_cascade_config_without_one_source_of_maps(trained, tmp_path, segment, message):
    _, weights = trained
    case = cascade_case(tmp_path / "case")
    weights_of = {"cascade": str(weights)}
    config = _config(tmp_path / "c.yaml", {**segment, **({"weights": weights_of[segment["model"]]}
                                                          if segment["model"] in weights_of else {})})
    result = runner.invoke(app, ["run", str(case), "-o", str(tmp_path / "run"), "-c", str(config)])
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_print_config_keeps_the_cascade_off():
    from mstools import pipeline

    config = pipeline.default_config()
    # the run's segment stage is the multitask network confirming the filter's lesions, not the cascade
    assert config["segment"]["enabled"] is True and config["segment"]["coactseg_maps"] is False
    assert config["segment"]["lesions"] is None and config["segment"]["model"] == "multitask"
    assert "coactseg_maps: false" in pipeline.default_config_text()
