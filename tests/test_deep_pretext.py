"""Self-supervised pretraining by patch position (paper 003): labels, transfer, run folder, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from mstools_cli.main import app  # noqa: E402
from mstools import case_layout as layout  # noqa: E402
from mstools.detect.deep.config import ModelConfig  # noqa: E402
from mstools.detect.deep.pretext import (  # noqa: E402
    PretextTrainer, canonical, load_encoder, position_label, prepare_scan, sample_position)
from mstools.errors import InputError  # noqa: E402
from tests.conftest import oblique_affine, save_nifti  # noqa: E402
from tests.test_deep_cli import make_case  # noqa: E402

runner = CliRunner()
CONFIG = ModelConfig("unet", base_filters=2, patch_size=16, spacing_mm=None, norm="instance", levels=2)
SHAPE = (40, 36, 30)
BRAIN = (slice(6, 34), slice(5, 31), slice(4, 26))     # first voxels 6, 5, 4; last 33, 30, 25


def brain_mask():
    mask = np.zeros(SHAPE, np.uint8)
    mask[BRAIN] = 1
    return mask


def coordinate_scan():
    """Three channels' worth of information in one image: voxel (i, j, k) holds i*10000 + j*100 + k + 1."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (i * 10000 + j * 100 + k + 1).astype(np.float32)


def test_position_labels_are_the_patch_centres_in_the_brain_box():
    scan = prepare_scan("s", coordinate_scan(), affine=np.diag([1.0, 1.0, 1.0, 1.0]), config=CONFIG,
                        brain_mask=brain_mask())
    assert [b.tolist() for b in scan.box] == [[6, 5, 4], [33, 30, 25]]
    raw = coordinate_scan()
    rng = np.random.default_rng(0)
    for _ in range(50):
        start, label = sample_position(scan, 16, rng)
        centre = np.array(start) + 8
        # the label is the centre's place in the box, axis by axis (0 = first brain voxel, 1 = last)
        expected = (centre - np.array([6, 5, 4])) / np.array([27.0, 25.0, 21.0])
        assert np.allclose(label, expected, atol=1e-6)
        assert np.all(label >= 0) and np.all(label <= 1)
        # the patch really comes from there: its centre voxel holds the centre's coordinates
        i, j, k = centre
        assert raw[i, j, k] == i * 10000 + j * 100 + k + 1
        patch_brain = brain_mask()[tuple(slice(s, s + 16) for s in start)]
        assert patch_brain.size == 16 ** 3 and patch_brain.mean() >= 0.75   # paper 003: >= 75 % brain
    assert position_label([6, 5, 4], scan.box).tolist() == [0, 0, 0]
    assert position_label([33, 30, 25], scan.box).tolist() == [1, 1, 1]


def test_labels_are_anatomical_whatever_the_stored_orientation(affine):
    """The same anatomy stored flipped and transposed (oblique, anisotropic affine) gets the same labels."""
    image = coordinate_scan()
    stored = np.flip(image, 0).transpose(2, 0, 1)              # axes (k, -i, j) on disk
    ras = canonical(image, affine)[0]
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1
    perm = np.eye(4)[[2, 0, 1, 3]].T                            # stored axis 0 = original axis 2, ...
    stored_affine = affine @ flip @ perm
    again, spacing = canonical(stored, stored_affine)
    assert np.array_equal(again, ras)
    assert np.allclose(sorted(spacing), sorted(np.sqrt((affine[:3, :3] ** 2).sum(0))))


def test_scan_box_without_a_mask_is_the_scans_own_foreground():
    image = np.zeros(SHAPE, np.float32)
    image[BRAIN] = 500.0
    image[15:20, 15:20, 10:15] = 1.0                         # dark "ventricles": holes are filled
    scan = prepare_scan("s", image, affine=np.eye(4), config=CONFIG)
    assert [b.tolist() for b in scan.box] == [[6, 5, 4], [33, 30, 25]]
    assert scan.brain[17, 17, 12]


def _tiny_trainer(seed=0, iterations=3):
    scan = prepare_scan("s", coordinate_scan() / 1e5 + np.random.default_rng(1).normal(0, 0.01, SHAPE),
                        affine=np.eye(4), config=CONFIG, brain_mask=brain_mask())
    return PretextTrainer(CONFIG, [scan], iterations=iterations, batch=4, learning_rate=1e-3, seed=seed)


def test_pretext_batch_holds_patches_of_one_scan_with_their_labels():
    t = _tiny_trainer()
    x, y, _ = t.sample_batch()
    assert x.shape == (4, 2, 16, 16, 16) and y.shape == (4, 3)
    assert np.array_equal(x[:, 0], x[:, 1])                    # one scan: baseline = follow-up
    losses = t.step()
    assert set(losses) == {"loss", "position_error_mm"} and t.iteration == 1
    encoder = t.encoder_state_dict()
    assert encoder and all(k.startswith(("encoder.", "position.")) for k in encoder)


def _pretrain_data(tmp_path):
    affine = oblique_affine()
    for n in range(2):
        make_case(tmp_path / "data" / f"two-{n}", seed=n)
    flairs = tmp_path / "flairs"
    flairs.mkdir()
    rng = np.random.default_rng(3)
    for n in range(2):
        head = np.zeros((24, 22, 20), np.float32)
        head[3:-3, 3:-3, 2:-2] = 300
        save_nifti(flairs / f"f{n}.nii.gz", head + rng.normal(0, 10, head.shape).astype(np.float32), affine)
    return flairs


def _train(run, *extra):
    return runner.invoke(app, ["train", str(run), "--model", "unet", "--base-filters", "2", "--patch-size", "32",
                               "--spacing-mm", "0", "--batch-longitudinal", "1", "--threads", "1",
                               "--checkpoint-every", "1", "--seed", "0", *extra])


def test_pretrain_run_folder_resumes_and_its_encoder_is_transferred(tmp_path):
    flairs = _pretrain_data(tmp_path)
    pre = tmp_path / "pre"
    r = _train(pre, "--pretrain", "position", "--unlabelled", str(flairs), "--pretrain-iterations", "2",
               "--pretrain-batch", "2", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["iterations"] == 2
    assert {"encoder.pt", "encoder.card.json", "training_log.tsv", "checkpoint.pt"} <= {p.name for p in pre.iterdir()}
    # resume to 3 iterations gives what 3 iterations in one go give
    r = _train(pre, "--pretrain", "position", "--unlabelled", str(flairs), "--pretrain-iterations", "3",
               "--pretrain-batch", "2", "--resume")
    assert r.exit_code == 0, r.stderr
    straight = tmp_path / "straight"
    assert _train(straight, "--pretrain", "position", "--unlabelled", str(flairs), "--pretrain-iterations", "3",
                  "--pretrain-batch", "2").exit_code == 0
    _, resumed, extra = load_encoder(pre / "encoder.pt")
    _, direct, _ = load_encoder(straight / "encoder.pt")
    assert extra["iteration"] == 3 and resumed.keys() == direct.keys()
    assert all(torch.allclose(resumed[k], direct[k], atol=1e-6) for k in direct)
    # fine-tuning from the encoder: one step at a negligible rate keeps the encoder's weights
    tuned = tmp_path / "tuned"
    r = _train(tuned, "--cases", str(tmp_path / "data"), "--iterations", "1", "--lr", "1e-12",
               "--init-weights", str(pre / "encoder.pt"))
    assert r.exit_code == 0, r.stderr
    from mstools.detect.deep.weights import load_weights
    from mstools.models import read_card

    _, after, _ = load_weights(tuned / "model.pt")
    encoder = [k for k in resumed if k.startswith("encoder.") and resumed[k].is_floating_point()]
    assert encoder and all(torch.allclose(resumed[k], after[k].float(), atol=1e-6) for k in encoder)
    fresh = tmp_path / "fresh"
    assert _train(fresh, "--cases", str(tmp_path / "data"), "--iterations", "1", "--lr", "1e-12").exit_code == 0
    _, random_start, _ = load_weights(fresh / "model.pt")
    assert not all(torch.allclose(resumed[k], random_start[k].float(), atol=1e-6) for k in encoder)
    card = read_card(tuned / "model.pt")["initialised_from"]
    assert card["pretext"] == "position" and card["tensors"] == len([k for k in resumed if k.startswith("encoder.")])


def test_pretrain_then_fine_tune_in_one_command(tmp_path):
    flairs = _pretrain_data(tmp_path)
    run = tmp_path / "run"
    r = _train(run, "--pretrain", "position", "--unlabelled", str(flairs), "--pretrain-iterations", "2",
               "--pretrain-batch", "2", "--cases", str(tmp_path / "data"), "--iterations", "2", "--json")
    assert r.exit_code == 0, r.stderr
    payload = json.loads(r.stdout)
    assert payload["iterations"] == 2 and payload["pretrain"]["iterations"] == 2
    assert (run / "pretrain" / "encoder.pt").is_file() and (run / "model.pt").is_file()
    from mstools.models import read_card

    assert read_card(run / "model.pt")["initialised_from"]["weights"] == str(run / "pretrain" / "encoder.pt")
    # resume: pretraining is done, fine-tuning continues
    r = _train(run, "--pretrain", "position", "--unlabelled", str(flairs), "--pretrain-iterations", "2",
               "--pretrain-batch", "2", "--cases", str(tmp_path / "data"), "--iterations", "3", "--resume", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["iterations"] == 3


def test_pretrain_error_paths(tmp_path):
    flairs = _pretrain_data(tmp_path)

    def check(result, text):
        last = result.stderr.strip().splitlines()[-1]          # the error: one line (after progress logs)
        assert result.exit_code == 1 and text in last and last.startswith("mstools train: error"), result.stderr

    run = tmp_path / "run"
    check(_train(run, "--pretrain", "position"), "needs unlabelled scans")
    check(_train(run, "--unlabelled", str(flairs), "--cases", str(tmp_path / "data")), "only with --pretrain")
    check(runner.invoke(app, ["train", str(run), "--model", "multitask", "--pretrain", "position",
                              "--unlabelled", str(flairs)]), "3D encoder")
    check(_train(run, "--pretrain", "position", "--unlabelled", str(tmp_path / "missing.nii.gz")), "not found")
    (tmp_path / "empty").mkdir()
    check(_train(run, "--pretrain", "position", "--unlabelled", str(tmp_path / "empty")), "no FLAIR file")
    check(_train(run, "--pretrain", "position", "--unlabelled", str(flairs), "--resume"), "no checkpoint")
    held = make_case(tmp_path / "held" / "patient03")
    (held / "source.json").write_text(json.dumps({"held_out": True}))
    check(_train(run, "--pretrain", "position", "--unlabelled", str(tmp_path / "held")), "held-out")
    assert not run.exists()                                        # no partial output
    bad = _train(run, "--pretrain", "colour", "--unlabelled", str(flairs))
    assert bad.exit_code == 2 and "colour" in bad.stderr
    # an encoder of another configuration is refused before any training
    pre = tmp_path / "pre"
    assert _train(pre, "--pretrain", "position", "--unlabelled", str(flairs), "--pretrain-iterations", "1",
                  "--pretrain-batch", "1").exit_code == 0
    check(_train(tmp_path / "other", "--cases", str(tmp_path / "data"), "--base-filters", "4",
                 "--init-weights", str(pre / "encoder.pt")), "another configuration")
    check(_train(tmp_path / "both", "--cases", str(tmp_path / "data"), "--pretrain", "position", "--unlabelled",
                 str(flairs), "--init-weights", str(pre / "encoder.pt")), "give one of them")
    # an encoder is not a segmentation model
    seg = runner.invoke(app, ["segment", str(tmp_path / "data" / "two-0"), "--model", "unet",
                              "--weights", str(pre / "encoder.pt"), "-o", str(tmp_path / "seg" / "s")])
    assert seg.exit_code == 1 and "not an mstools weight file" in seg.stderr


def test_transfer_refuses_an_encoder_that_does_not_fit():
    from mstools.detect.deep.networks import build_model
    from mstools.detect.deep.pretext import transfer_encoder

    t = _tiny_trainer()
    state = t.encoder_state_dict()
    state.pop("encoder.stages.0.0.weight")
    with pytest.raises(InputError, match="1 weights missing"):
        transfer_encoder(build_model(CONFIG), CONFIG, CONFIG, state)
    other = ModelConfig("unet", base_filters=2, patch_size=32, spacing_mm=None, norm="instance", levels=2)
    network = build_model(other)
    copied = transfer_encoder(network, other, CONFIG, t.encoder_state_dict())   # patch size may differ
    assert copied and torch.equal(network.state_dict()[copied[0]], t.encoder_state_dict()[copied[0]])


def test_unlabelled_scans_are_files_case_folders_and_their_brain_masks(tmp_path):
    from mstools.jobs.pretrain import unlabelled_scans

    flairs = _pretrain_data(tmp_path)
    case = tmp_path / "data" / "two-0"
    save_nifti(case / layout.BRAIN_MASK, np.ones((22, 18, 9), np.uint8), oblique_affine())
    scans = unlabelled_scans([case, flairs / "f0.nii.gz", tmp_path / "data"])
    assert [s.flair.name for s in scans] == [layout.BASELINE, layout.FOLLOWUP, "f0.nii.gz",
                                             layout.BASELINE, layout.FOLLOWUP, layout.BASELINE, layout.FOLLOWUP]
    assert scans[0].brain_mask == case / layout.BRAIN_MASK and scans[2].brain_mask is None
    assert scans[5].brain_mask is None                       # two-1 has no brain mask: its own foreground
    assert all(s.flair != case / layout.GROUND_TRUTH for s in scans)   # labels are never read


def test_coactseg_encoder_pretrains_and_transfers():
    from mstools.detect.deep.networks import build_model
    from mstools.detect.deep.pretext import transfer_encoder

    config = ModelConfig("coactseg", base_filters=2, patch_size=16, spacing_mm=None, norm="batch", levels=2)
    scan = prepare_scan("s", coordinate_scan(), affine=np.eye(4), config=config, brain_mask=brain_mask())
    t = PretextTrainer(config, [scan], iterations=1, batch=2, learning_rate=1e-3, seed=0)
    x, _, _ = t.sample_batch()
    assert x.shape == (2, 3, 16, 16, 16) and np.all(x[:, 2] == 0)   # baseline = follow-up, zero difference
    t.step()
    state = t.encoder_state_dict()
    assert any(k.startswith("backbone.down.") for k in state) and not any(".up." in k for k in state)
    network = build_model(config)
    copied = transfer_encoder(network, config, config, state)
    target = network.state_dict()
    assert copied and all(torch.equal(target[k], state[k]) for k in copied)
