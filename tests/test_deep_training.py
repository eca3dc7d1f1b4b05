"""The training loop: mixed batches, relation switch at half time, fixed seeds, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mstools.detect.deep.config import ModelConfig, TrainingConfig  # noqa: E402
from mstools.detect.deep.training import Trainer, TrainingCase, prepare_case, prepare_validation  # noqa: E402

SHAPE = (24, 20, 18)


def cases(rng):
    label = np.zeros(SHAPE, np.uint8)
    label[10:13, 8:11, 8:10] = 1
    images = rng.normal(300, 20, (2, *SHAPE)).astype(np.float32)
    images[1] += 150 * label
    stats = np.array([[300.0, 20.0], [300.0, 20.0]])
    longitudinal = [TrainingCase("two", images, label, stats)]
    single = [TrainingCase("one", images[1:].copy(), label, stats[1:])]
    return longitudinal, single


def trainer(model="coactseg", iterations=4, seed=0, **kw):
    longitudinal, single = cases(np.random.default_rng(0))
    cfg = ModelConfig(model, base_filters=2, patch_size=16, norm="batch")
    train = TrainingConfig(iterations=iterations, batch_longitudinal=2, batch_single=2, seed=seed, **kw)
    return Trainer(cfg, train, longitudinal, single)


def test_mixed_batch_layout():
    t = trainer()
    x, y, n_long = t.sample_batch()
    assert x.shape == (4, 3, 16, 16, 16) and y.shape == (4, 1, 16, 16, 16) and n_long == 2
    # single-time-point samples: baseline = follow-up, difference channel 0 (paper 002, eq. 1)
    assert np.array_equal(x[2:, 0], x[2:, 1]) and np.all(x[2:, 2] == 0)
    assert np.all(y.reshape(4, -1).max(1) == 1)   # lesion-centred: every patch holds lesion voxels


def test_multitask_batch_is_2d_slices():
    t = trainer("multitask")
    x, y, _ = t.sample_batch()
    assert x.shape == (2, 2, 16, 16) and y.shape == (2, 1, 16, 16)
    losses = t.step()
    assert {"registration", "similarity", "smoothness", "dice_new"} <= set(losses)


def test_lesion_size_reweighting_changes_the_step():
    """--lesion-size-reference reaches the loss: the same seed and batch, another loss."""
    plain, weighted = trainer("unet"), trainer("unet", lesion_size_reference=64.0)
    a, b = plain.step(), weighted.step()
    assert a["dice_new"] != pytest.approx(b["dice_new"], rel=1e-6)
    assert weighted.state_dict()["training_config"]["lesion_size_reference"] == 64.0


def test_relation_regulariser_switches_on_halfway():
    t = trainer(iterations=4)
    weights = [t.step()["relation_weight"] for _ in range(4)]
    assert weights == [0.0, 0.0, 1.0, 1.0]   # lambda2 = 0 for the first half (paper 002), then 1


def test_resuming_with_more_iterations_keeps_the_regulariser_on_once_it_started():
    a = trainer(iterations=4)
    for _ in range(3):
        a.step()                                  # on from iteration 2 (half of 4)
    longer = trainer(iterations=10)               # halfway would now be 5
    longer.load_state_dict(a.state_dict())
    assert longer.relation_start_iteration == 2 and longer.step()["relation_weight"] == 1.0
    early = trainer(iterations=4)
    early.step()                                  # stopped before the switch: the new plan decides
    later = trainer(iterations=10)
    later.load_state_dict(early.state_dict())
    assert later.relation_start_iteration == 5
    assert [later.step()["relation_weight"] for _ in range(5)] == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_fixed_seed_reproduces_and_resume_is_exact():
    torch.set_num_threads(1)
    a = trainer(seed=3)
    first = [a.step()["loss"] for _ in range(2)]
    state = a.state_dict()
    rest = [a.step()["loss"] for _ in range(2)]
    b = trainer(seed=3)
    assert [b.step()["loss"] for _ in range(2)] == pytest.approx(first, abs=1e-6)
    c = trainer(seed=3)
    c.load_state_dict(state)
    assert c.iteration == 2
    assert [c.step()["loss"] for _ in range(2)] == pytest.approx(rest, abs=1e-6)
    d = trainer(seed=4)
    assert [d.step()["loss"] for _ in range(2)] != pytest.approx(first, abs=1e-6)
    wrong = Trainer(ModelConfig("coactseg", base_filters=4, patch_size=16), TrainingConfig(), *cases(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="another model configuration"):
        wrong.load_state_dict(state)


def test_trainer_needs_its_data():
    longitudinal, _ = cases(np.random.default_rng(0))
    cfg = ModelConfig("coactseg", base_filters=2, patch_size=16)
    with pytest.raises(ValueError, match="two-time-point"):
        Trainer(cfg, TrainingConfig(), [], [])
    with pytest.raises(ValueError, match="single-time-point"):
        Trainer(cfg, TrainingConfig(), longitudinal, [])


def test_validation_uses_mstools_metrics():
    t = trainer()
    rng = np.random.default_rng(1)
    truth = np.zeros(SHAPE, np.uint8)
    case = prepare_validation("v", rng.normal(300, 20, SHAPE), rng.normal(300, 20, SHAPE), truth,
                              spacing_mm=(1.0, 1.0, 1.0), config=t.model_config)
    metrics = t.validate([case])
    assert set(metrics) == {"val_dice", "val_lesion_f1", "val_lesion_sensitivity", "val_lesion_ppv"}


def test_prepare_case_resamples_and_crops_to_the_head():
    image = np.zeros((40, 40, 20), np.float32)
    image[10:30, 8:32, 5:15] = 300
    label = np.zeros_like(image, dtype=np.uint8)
    label[18:22, 18:22, 9:11] = 1
    cfg = ModelConfig("unet", base_filters=2, patch_size=16, spacing_mm=2.0, norm="batch")
    case = prepare_case("c", [image, image], label, spacing_mm=(1.0, 1.0, 2.0), config=cfg)
    # 40 x 40 x 20 voxels of 1 x 1 x 2 mm -> 20 x 20 x 20 at 2 mm; head 10 x 12 x 10 + 4-voxel margins
    assert case.images.shape == (2, 18, 20, 18) and case.label.shape == (18, 20, 18)
    assert case.label.sum() == 2 * 2 * 2 and case.longitudinal
    assert case.stats[0, 0] == pytest.approx(300.0)
