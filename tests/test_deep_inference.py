"""Sliding windows, Gaussian blending, flip TTA, device choice, resampling, 2.5D slices."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mstools.detect.deep import inference  # noqa: E402


class Pointwise(torch.nn.Module):
    """A 1x1x1 network: its whole-volume output is known exactly at every voxel."""

    def __init__(self, dims: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(3, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return {"new": torch.sigmoid(y[:, :1]), "all_t2": torch.sigmoid(y[:, 1:])}


def test_gaussian_weights_and_window_starts():
    g = inference.gaussian_weights((16, 16, 16))
    assert g.max() == pytest.approx(1.0) and g.min() > 0 and g[8, 8, 8] == g.max()
    assert inference.window_starts(10, 16, 0.5) == [0]
    starts = inference.window_starts(50, 16, 0.5)
    assert starts[0] == 0 and starts[-1] == 34 and max(np.diff(starts)) <= 8
    with pytest.raises(ValueError):
        inference.window_starts(50, 16, 1.0)


@pytest.mark.parametrize("overlap,batch", [(0.5, 1), (0.25, 3), (0.0, 2)])
def test_sliding_window_reassembly_equals_whole_volume_forward(overlap, batch):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(3, 37, 21, 29)).astype(np.float32)
    net = Pointwise().eval()
    with torch.no_grad():
        whole = {k: v[0, 0].numpy() for k, v in net(torch.from_numpy(volume[None])).items()}
    calls = []
    out = inference.sliding_window(net, volume, window=16, overlap=overlap, batch_size=batch,
                                   progress=lambda done, total: calls.append((done, total)))
    for k in whole:
        np.testing.assert_allclose(out[k], whole[k], atol=1e-6)
    assert calls[-1][0] == calls[-1][1]


def test_sliding_window_on_a_volume_smaller_than_the_window_and_real_network():
    """One padded window over the whole volume = CoactSeg's own forward pass on the padded input."""
    from mstools.detect.deep.config import ModelConfig
    from mstools.detect.deep.networks import build_model

    rng = np.random.default_rng(1)
    net = build_model(ModelConfig("coactseg", base_filters=2, patch_size=16, levels=4)).eval()
    volume = rng.normal(size=(3, 16, 16, 16)).astype(np.float32)
    forward = lambda x: {k: torch.sigmoid(v) for k, v in net(x).items()}  # noqa: E731
    with torch.no_grad():
        whole = forward(torch.from_numpy(volume[None]))
    out = inference.sliding_window(forward, volume, window=16)
    for k in whole:
        np.testing.assert_allclose(out[k], whole[k][0, 0].numpy(), atol=1e-5)
    small = inference.sliding_window(forward, volume[:, :10, :16, :12], window=16)
    assert small["new"].shape == (10, 16, 12)
    with pytest.raises(ValueError):
        inference.sliding_window(forward, volume[0], window=16)


def test_flip_tta_of_a_flip_equivariant_network_changes_nothing():
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(2, 3, 8, 6, 4)).astype(np.float32))
    net = Pointwise().eval()
    with torch.no_grad():
        plain = net(x)
        tta = inference.flip_tta(net, (2, 3, 4))(x)
    for k in plain:
        assert torch.allclose(plain[k], tta[k], atol=1e-6)
    # a network that is not flip-equivariant: TTA = mean over the 8 mirrorings
    ramp = lambda t: {"new": t[:, :1] * 0 + torch.linspace(0, 1, t.shape[-1])}  # noqa: E731
    with torch.no_grad():
        averaged = inference.flip_tta(ramp, (2, 3, 4))(x)["new"]
    assert torch.allclose(averaged, torch.full_like(averaged, 0.5), atol=1e-6)


def test_slice_inference_averages_three_orientations():
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(3, 10, 13, 7)).astype(np.float32)
    net = Pointwise(dims=2).eval()
    out = inference.slice_inference(net, volume, divisor=16, batch_size=4)
    with torch.no_grad():
        whole = Pointwise(dims=3)
        whole.conv.weight.data = net.conv.weight.data[..., None]
        whole.conv.bias.data = net.conv.bias.data
        expected = whole(torch.from_numpy(volume[None]))["new"][0, 0].numpy()
    np.testing.assert_allclose(out["new"], expected, atol=1e-6)


def test_select_device():
    assert inference.select_device("cpu").type == "cpu"
    assert inference.select_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert inference.select_device("auto").type in ("mps", "cpu")
        with pytest.raises(ValueError, match="CUDA"):
            inference.select_device("cuda")
    with pytest.raises(ValueError):
        inference.select_device("tpu")


def test_normalisation_and_channels():
    rng = np.random.default_rng(4)
    image = np.zeros((20, 20, 20), np.float32)
    image[5:15, 5:15, 5:15] = rng.normal(300, 30, (10, 10, 10))
    mean, std = inference.normalisation_stats(image)
    assert mean == pytest.approx(image[5:15, 5:15, 5:15].mean(), rel=1e-4)
    norm = inference.normalise(image)
    assert norm[5:15, 5:15, 5:15].mean() == pytest.approx(0, abs=1e-4)
    b, f = np.ones((2, 2, 2), np.float32), np.full((2, 2, 2), 3, np.float32)
    c = inference.model_channels("coactseg", b, f)
    assert c.shape == (3, 2, 2, 2) and np.all(c[2] == 2)   # x_d = x_fu - x_b (paper 002)
    assert inference.model_channels("unet", b, f).shape == (2, 2, 2, 2)


def test_resampling_round_trip_keeps_shape_and_values():
    assert inference.grid_shape((100, 80, 40), (1.0, 1.0, 3.0), 1.5) == (67, 53, 80)
    ramp = np.broadcast_to(np.linspace(0, 1, 30)[:, None, None], (30, 20, 10)).astype(np.float32)
    there = inference.resample(ramp, (20, 13, 20), order=1)
    back = inference.resample(there, (30, 20, 10), order=1)
    assert back.shape == ramp.shape
    assert np.abs(back - ramp)[2:-2].max() < 0.02


class FollowupBrightness(torch.nn.Module):
    """Logit > 0 where the normalised follow-up exceeds 2: its answer is known at every voxel."""

    def forward(self, x):
        return {"new": 4 * (x[:, 1:2] - 2)}


def test_predictor_puts_a_lesion_back_in_place_on_an_anisotropic_grid():
    """Input grid 0.9 x 1.1 x 2.5 mm -> model grid 1.5 mm -> back: the bright follow-up blob is
    found where it is in the input's own grid (an axis swapped or flipped on the way would move it)."""
    from mstools.detect.deep.config import ModelConfig
    from mstools.detect.deep.predictor import Predictor

    rng = np.random.default_rng(5)
    shape = (40, 30, 14)
    head = np.zeros(shape, np.float32)
    head[4:-4, 4:-4, 2:-2] = 300
    head += rng.normal(0, 5, shape).astype(np.float32)
    lesion = np.zeros(shape, bool)
    lesion[10:18, 18:24, 6:10] = True                      # off-centre along every axis
    config = ModelConfig("unet", base_filters=2, patch_size=16, spacing_mm=1.5, norm="batch")
    predictor = Predictor(FollowupBrightness(), config)
    p = predictor.predict(head, head + 300 * lesion, spacing_mm=(0.9, 1.1, 2.5))["new"]
    assert p.shape == shape and p.dtype == np.float32
    found = p > 0.5
    assert 2 * (found & lesion).sum() / (found.sum() + lesion.sum()) > 0.8
    np.testing.assert_allclose(np.argwhere(found).mean(0), np.argwhere(lesion).mean(0), atol=0.5)
