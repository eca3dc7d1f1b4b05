"""The U-Net with the all-lesion maps as extra channels (mstools.detect.deep.cascade, paper 001)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mstools.detect.deep.cascade import (CascadePredictor, CascadeTrainer, CascadeUNet3D, prepare_cascade_case,
                                         widen_state)
from mstools.detect.deep.config import ModelConfig, TrainingConfig
from mstools.detect.deep.training import Trainer, prepare_case
from mstools.detect.deep.unet import UNet3D

CONFIG = ModelConfig("unet", base_filters=2, patch_size=16, spacing_mm=None, norm="instance", levels=2)
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
    cascade = CascadeUNet3D(CONFIG).eval()
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
    cases = [prepare_cascade_case(f"c{n}", b, f, t, maps, spacing_mm=SPACING, config=CONFIG)
             for n, (b, f, t, maps) in enumerate(data)]
    cascade = CascadeTrainer(CONFIG, training, cases)
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
    cases = [prepare_cascade_case(f"c{n}", b, f, t, maps, spacing_mm=SPACING, config=CONFIG)
             for n, (b, f, t, maps) in enumerate(data)]
    training = TrainingConfig(iterations=3, batch_longitudinal=2, batch_single=0, learning_rate=1e-2, seed=0)
    trainer = CascadeTrainer(CONFIG, training, cases, init_state=UNet3D(CONFIG).state_dict())
    losses = [trainer.step()["loss"] for _ in range(3)]
    assert all(np.isfinite(losses)) and trainer.model.state_dict()["encoder.stages.0.0.weight"][:, 2:].abs().sum() > 0
    b, f, _, maps = data[0]
    predictor = CascadePredictor(trainer.model, CONFIG)
    p = predictor.predict(b, f, maps, spacing_mm=SPACING)["new"]
    other = predictor.predict(b, f, (maps[0], np.zeros_like(maps[1])), spacing_mm=SPACING)["new"]
    assert p.shape == b.shape and p.dtype == np.float32 and not np.allclose(p, other)
    with pytest.raises(ValueError, match="one grid"):
        predictor.predict(b, f, (maps[0], maps[1][:-1]), spacing_mm=SPACING)
    with pytest.raises(ValueError, match="all-lesion map of shape"):
        prepare_cascade_case("x", b, f, data[0][2], (maps[0][:, :, :-1], maps[1]), spacing_mm=SPACING, config=CONFIG)
