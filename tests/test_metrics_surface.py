"""Surface distances against medpy and MONAI on anisotropic grids, and hand-counted cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from mstools.metrics.case import evaluate_case, spacing_from_affine
from mstools.metrics.lesionwise import find_components
from mstools.metrics.surface import DEFAULT_HD95, surface_distances, surface_metrics, surface_voxels
from tests.conftest import oblique_affine

mb = pytest.importorskip("medpy.metric.binary")
torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")

SPACING = spacing_from_affine(oblique_affine())   # (0.9, 1.1, 2.5)


def _blobs(rng, shape, count, *, noise=0.0, touch_edge=False):
    mask = np.zeros(shape, dtype=np.uint8)
    for _ in range(count):
        c = rng.integers(2, np.array(shape) - 2)
        r = rng.integers(1, 4, size=3)
        mask[max(c[0] - r[0], 0):c[0] + r[0] + 1, max(c[1] - r[1], 0):c[1] + r[1] + 1,
             max(c[2] - r[2], 0):c[2] + r[2] + 1] = 1
    if noise:
        mask[rng.random(shape) < noise] = 1
    if touch_edge:
        mask[0:3, 5:9, 0:2] = 1          # a lesion cut by two faces of the volume
    return mask


def _monai(pred, truth, **kwargs):
    t = lambda a: torch.as_tensor(a[None, None].astype(np.float32))  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kwargs.pop("asd", False):
            return float(monai_metrics.compute_average_surface_distance(
                t(pred), t(truth), include_background=True, symmetric=True, spacing=SPACING, **kwargs))
        return float(monai_metrics.compute_hausdorff_distance(
            t(pred), t(truth), include_background=True, spacing=SPACING, **kwargs))


CASES = [
    # (seed, shape, blobs, noise, touch_edge)
    (0, (28, 30, 16), 4, 0.0, False),
    (1, (32, 24, 20), 6, 0.002, True),
    (2, (20, 32, 12), 3, 0.0, True),
    (3, (32, 32, 16), 2, 0.08, False),    # > 64 components: the one-box path
]


@pytest.mark.parametrize("seed,shape,blobs,noise,edge", CASES)
def test_distances_match_medpy_and_monai(seed, shape, blobs, noise, edge):
    rng = np.random.default_rng(seed)
    pred = _blobs(rng, shape, blobs, noise=noise, touch_edge=edge)
    truth = _blobs(rng, shape, blobs, touch_edge=edge)
    if seed == 3:
        assert find_components(pred, connectivity=6).count > 64
    m = surface_metrics(surface_distances(pred, truth, spacing_mm=SPACING))
    # medpy: pooled HD95, pooled ASSD (medpy >= 0.5), Hausdorff
    assert m["hd95_pooled_mm"] == pytest.approx(mb.hd95(pred, truth, voxelspacing=SPACING), rel=1e-12)
    assert m["assd_mm"] == pytest.approx(mb.assd(pred, truth, voxelspacing=SPACING), rel=1e-12)
    assert m["hd_mm"] == pytest.approx(mb.hd(pred, truth, voxelspacing=SPACING), rel=1e-12)
    legacy = (mb.asd(pred, truth, voxelspacing=SPACING) + mb.asd(truth, pred, voxelspacing=SPACING)) / 2
    assert m["assd_mean_of_directed_mm"] == pytest.approx(legacy, rel=1e-12)
    # MONAI (float32): max of the directed 95th percentiles, Hausdorff, symmetric ASD
    assert m["hd95_max_directed_mm"] == pytest.approx(_monai(pred, truth, percentile=95), rel=1e-6)
    assert m["hd_mm"] == pytest.approx(_monai(pred, truth), rel=1e-6)
    assert m["assd_mm"] == pytest.approx(_monai(pred, truth, asd=True), rel=1e-6)
    # the two HD95 definitions really differ on these masks, so the test can tell them apart
    assert m["hd95_pooled_mm"] != pytest.approx(m["hd95_max_directed_mm"], rel=1e-6)


def test_reused_components_of_any_connectivity_give_the_same_distances():
    rng = np.random.default_rng(7)
    pred = _blobs(rng, (24, 24, 16), 5, noise=0.003)
    truth = _blobs(rng, (24, 24, 16), 5)
    reference = surface_distances(pred, truth, spacing_mm=SPACING)
    for connectivity in (6, 18, 26):
        again = surface_distances(find_components(pred, connectivity=connectivity),
                                  find_components(truth, connectivity=connectivity), spacing_mm=SPACING)
        assert np.array_equal(np.sort(again.prediction_to_truth), np.sort(reference.prediction_to_truth))
        assert np.array_equal(np.sort(again.truth_to_prediction), np.sort(reference.truth_to_prediction))


def test_hand_counted_distances_use_the_spacing_of_each_axis():
    pred = np.zeros((10, 10, 10), np.uint8)
    truth = np.zeros_like(pred)
    pred[1, 1, 1] = 1
    truth[4, 1, 1] = 1                  # 3 steps along i: 3 x 0.9 mm
    m = surface_metrics(surface_distances(pred, truth, spacing_mm=SPACING))
    assert m["hd_mm"] == pytest.approx(2.7)
    truth[4, 1, 1] = 0
    truth[1, 1, 3] = 1                  # 2 steps along k: 2 x 2.5 mm
    assert surface_metrics(surface_distances(pred, truth, spacing_mm=SPACING))["hd_mm"] == pytest.approx(5.0)


def test_surface_is_the_six_connected_border_with_the_volume_edge_as_outside():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1:4, 1:4, 1:4] = 1            # 27 voxels, only the centre is interior
    assert len(surface_voxels(find_components(mask))) == 26
    full = np.ones((3, 3, 3), np.uint8)  # touches every face: all voxels but the centre are surface
    assert len(surface_voxels(find_components(full))) == 26


def test_hd95_option_selects_the_definition():
    rng = np.random.default_rng(3)
    pred = _blobs(rng, (24, 24, 16), 4, noise=0.004)
    truth = _blobs(rng, (24, 24, 16), 4)
    d = surface_distances(pred, truth, spacing_mm=SPACING)
    assert DEFAULT_HD95 == "max-directed"
    assert surface_metrics(d)["hd95_mm"] == surface_metrics(d)["hd95_max_directed_mm"]
    assert surface_metrics(d, hd95="pooled")["hd95_mm"] == surface_metrics(d)["hd95_pooled_mm"]
    with pytest.raises(ValueError, match="hd95"):
        surface_metrics(d, hd95="mean")


@pytest.mark.parametrize("empty", ["prediction", "truth", "both"])
def test_surface_distances_are_undefined_when_a_mask_is_empty(empty):
    filled = np.zeros((8, 8, 8), np.uint8)
    filled[2:5, 2:5, 2:5] = 1
    blank = np.zeros_like(filled)
    pred = blank if empty in ("prediction", "both") else filled
    truth = blank if empty in ("truth", "both") else filled
    assert surface_distances(pred, truth, spacing_mm=SPACING) is None
    m = evaluate_case(pred, truth, affine=oblique_affine()).metrics
    for key in ("hd_mm", "hd95_mm", "hd95_pooled_mm", "hd95_max_directed_mm", "assd_mm",
                "assd_mean_of_directed_mm"):
        assert math.isnan(m[key])


def test_bad_spacing_and_shapes_are_refused():
    a = np.zeros((4, 4, 4), np.uint8)
    a[1, 1, 1] = 1
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(a, a, spacing_mm=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="shapes differ"):
        surface_distances(a, np.ones((4, 4, 5), np.uint8), spacing_mm=(1.0, 1.0, 1.0))
