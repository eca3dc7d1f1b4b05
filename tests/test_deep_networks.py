"""Shapes of every head of the three networks, the paper configuration, strict weight loading."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mstools.detect.deep.config import PAPER_CONFIGS, SMALL_CONFIGS, ModelConfig, TrainingConfig  # noqa: E402
from mstools.detect.deep.networks import build_model  # noqa: E402

TINY = {name: dataclasses.replace(cfg, base_filters=2, patch_size=16, spacing_mm=None, norm="batch")
        for name, cfg in SMALL_CONFIGS.items()}


def test_coactseg_has_three_heads_of_the_input_shape():
    torch.manual_seed(0)
    model = build_model(TINY["coactseg"]).eval()
    x = torch.randn(2, 3, 16, 32, 16)
    with torch.no_grad():
        out = model(x)
    assert sorted(out) == ["all_t1", "all_t2", "new"]
    for v in out.values():
        assert tuple(v.shape) == (2, 1, 16, 32, 16)


def test_coactseg_new_lesion_head_reads_both_all_lesion_heads():
    model = build_model(TINY["coactseg"])
    n = TINY["coactseg"].base_filters
    first_conv = model.head_new[0]
    assert first_conv.in_channels == 3 * n  # decoder features + the two all-lesion heads' features


def test_unet_and_multitask_shapes():
    unet = build_model(TINY["unet"]).eval()
    multi = build_model(TINY["multitask"]).eval()
    with torch.no_grad():
        u = unet(torch.randn(1, 2, 16, 16, 32))
        m = multi(torch.randn(3, 2, 32, 48))
    assert list(u) == ["new"] and tuple(u["new"].shape) == (1, 1, 16, 16, 32)
    assert sorted(m) == ["flow", "new"]
    assert tuple(m["new"].shape) == (3, 1, 32, 48) and tuple(m["flow"].shape) == (3, 2, 32, 48)


def test_multitask_registration_starts_near_identity():
    multi = build_model(TINY["multitask"]).eval()
    with torch.no_grad():
        flow = multi(torch.randn(2, 2, 32, 32))["flow"]
    assert float(flow.abs().max()) < 1e-2


def test_config_validation():
    with pytest.raises(ValueError, match="model must be"):
        ModelConfig("vnet", base_filters=8, patch_size=32)
    with pytest.raises(ValueError, match="multiple of 2"):
        ModelConfig("unet", base_filters=8, patch_size=40)
    with pytest.raises(ValueError, match="bottleneck"):
        ModelConfig("unet", base_filters=8, patch_size=16, norm="instance")
    with pytest.raises(ValueError, match="norm"):
        ModelConfig("unet", base_filters=8, patch_size=32, norm="group")
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"model": "unet", "base_filters": 8, "patch_size": 32, "depth": 3})
    assert ModelConfig.from_dict(SMALL_CONFIGS["unet"].as_dict()) == SMALL_CONFIGS["unet"]


def test_paper_configuration_values():
    """Paper 002: 16 base filters, 80^3 patches, 20k iterations, Adam lr 1e-2, batch 4 + 4, relation at 10k."""
    cfg = PAPER_CONFIGS["coactseg"]
    assert (cfg.base_filters, cfg.patch_size) == (16, 80)
    train = TrainingConfig()
    assert (train.iterations, train.learning_rate, train.batch_longitudinal, train.batch_single) == (20000, 1e-2, 4, 4)
    assert train.relation_start * train.iterations == 10000 and train.max_shift == 10


@pytest.mark.slow
def test_paper_configuration_trains_one_step_and_infers_one_window():
    """The full CoactSeg configuration (16 filters, 80^3): one training step, one inference window."""
    from mstools.detect.deep.inference import sliding_window
    from mstools.detect.deep.training import Trainer, TrainingCase

    rng = np.random.default_rng(0)
    cfg = PAPER_CONFIGS["coactseg"]
    shape = (84, 82, 80)
    label = np.zeros(shape, np.uint8)
    label[40:43, 40:43, 40:43] = 1
    images = rng.normal(100, 10, (2, *shape)).astype(np.float32)
    stats = np.array([[100.0, 10.0], [100.0, 10.0]])
    longitudinal = [TrainingCase("two", images, label, stats)]
    single = [TrainingCase("one", images[:1].copy(), label, stats[:1])]
    torch.set_num_threads(2)
    trainer = Trainer(cfg, TrainingConfig(iterations=2, batch_longitudinal=1, batch_single=1, augment=False),
                      longitudinal, single)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    losses = trainer.step()
    assert np.isfinite(losses["loss"]) and trainer.iteration == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    trainer.model.eval()
    volume = rng.normal(0, 1, (3, 80, 80, 80)).astype(np.float32)
    out = sliding_window(lambda x: {k: torch.sigmoid(v) for k, v in trainer.model(x).items()}, volume, window=80)
    assert {k: v.shape for k, v in out.items()} == {k: (80, 80, 80) for k in ("all_t1", "all_t2", "new")}


def test_weights_load_strictly(tmp_path):
    from mstools.detect.deep.weights import build_loaded, load_weights, save_weights
    from mstools.errors import InputError

    cfg = TINY["unet"]
    state = build_model(cfg).state_dict()
    path = tmp_path / "m.pt"
    save_weights(path, cfg, state)
    loaded_cfg, loaded_state, _ = load_weights(path)
    assert loaded_cfg == cfg
    model = build_loaded(loaded_cfg, loaded_state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    half = tmp_path / "half.pt"
    save_weights(half, cfg, state, half=True)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    model = build_loaded(*load_weights(half)[:2])
    assert all(torch.allclose(model.state_dict()[k].float(), v.float(), atol=1e-2, rtol=1e-3) for k, v in state.items())
    assert next(model.parameters()).dtype == torch.float32
    missing = dict(state)
    missing.pop(next(iter(missing)))
    with pytest.raises(InputError, match="do not match"):
        build_loaded(cfg, missing)
    extra = {**state, "extra.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="do not match"):
        build_loaded(cfg, extra)
    wrong_shape = build_model(dataclasses.replace(cfg, base_filters=4)).state_dict()
    with pytest.raises(InputError, match="do not match"):
        build_loaded(cfg, wrong_shape)


def test_bad_weight_files(tmp_path):
    from mstools.detect.deep.weights import load_weights
    from mstools.errors import InputError

    with pytest.raises(InputError, match="not found"):
        load_weights(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable"):
        load_weights(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(InputError, match="not an mstools weight file"):
        load_weights(other)
    bad_cfg = tmp_path / "bad.pt"
    torch.save({"format": "mstools-deep-weights-1", "config": {"model": "unet"}, "state_dict": {}}, bad_cfg)
    with pytest.raises(InputError, match="invalid model configuration"):
        load_weights(bad_cfg)
