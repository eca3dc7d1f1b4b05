"""Connected lesions and the common detector table, on counted examples."""

from __future__ import annotations

import numpy as np
import pytest

from mstools.lesions import detections_from_mask, label_components, lesion_table, output_paths, remove_small
from tests.conftest import oblique_affine


def test_edge_touching_cubes_are_two_lesions_under_6_one_under_26():
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[1:3, 1:3, 1:3] = 1
    mask[3:5, 3:5, 1:3] = 1          # shares only an edge (along k) with the first cube
    assert label_components(mask, connectivity=6)[1] == 2
    assert label_components(mask, connectivity=18)[1] == 1
    assert label_components(mask, connectivity=26)[1] == 1
    with pytest.raises(ValueError):
        label_components(mask, connectivity=8)


def test_remove_small_relabels_consecutively():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[0, 0, 0] = 1
    mask[5:7, 5:7, 5:7] = 1
    labels, n = label_components(mask, connectivity=6)
    kept, m = remove_small(labels, n, 2)
    assert m == 1 and set(np.unique(kept)) == {0, 1} and kept.sum() == 8


def test_table_volumes_and_centroids_use_the_affine():
    affine = oblique_affine()
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[1:3, 2:4, 3:5] = 1
    score = np.zeros((6, 6, 6), np.float32)
    score[1:3, 2:4, 3:5] = [[[0.5, 1.0], [0.5, 1.0]], [[0.5, 1.0], [0.5, 1.0]]]
    detections = detections_from_mask(mask, score, affine)
    (row,) = detections.table
    assert row["voxels"] == 8
    assert row["volume_mm3"] == pytest.approx(8 * 0.9 * 1.1 * 2.5)
    assert (row["centroid_i"], row["centroid_j"], row["centroid_k"]) == (1.5, 2.5, 3.5)
    expected = affine[:3, :3] @ [1.5, 2.5, 3.5] + affine[:3, 3]
    assert (row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]) == pytest.approx(tuple(expected))
    assert (row["score_mean"], row["score_max"], row["score_min"]) == (0.75, 1.0, 0.5)
    assert detections.mask.dtype == np.uint8 and detections.labels.dtype == np.int32
    assert lesion_table(np.zeros((3, 3, 3), np.int32), affine) == []


def test_output_names_share_one_prefix():
    names = output_paths("out/subtract")
    assert names == {"score": "out/subtract_score.nii.gz", "mask": "out/subtract_mask.nii.gz",
                     "labels": "out/subtract_labels.nii.gz", "table": "out/subtract_lesions.tsv"}
