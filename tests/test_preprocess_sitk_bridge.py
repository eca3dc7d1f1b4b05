"""NumPy/NIfTI <-> SimpleITK: exact geometry, LPS/RAS flip, transforms and .tfm files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from mstools.errors import InputError
from mstools.io import read_transform, transform_text
from mstools.sitk_bridge import affine_transform, from_sitk, to_sitk, transform_matrix
from tests.conftest import oblique_affine


def _rigid(rotvec=(0.1, -0.2, 0.05), translation=(3.0, -2.0, 7.5)):
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec(rotvec).as_matrix()
    matrix[:3, 3] = translation
    return matrix


def test_round_trip_is_exact_on_an_oblique_anisotropic_grid(rng):
    affine = oblique_affine()
    data = rng.normal(size=(7, 5, 3)).astype(np.float32)
    image = to_sitk(data, affine)
    back, back_affine = from_sitk(image)
    assert np.array_equal(back, data)
    assert np.allclose(back_affine, affine, atol=1e-9)
    assert image.GetSize() == (7, 5, 3)  # ITK's (i, j, k) sizes, not the array's (k, j, i)


def test_voxel_positions_agree_after_the_lps_flip():
    affine = oblique_affine()
    image = to_sitk(np.zeros((7, 5, 3), np.uint8), affine)
    for index in [(0, 0, 0), (6, 0, 0), (2, 4, 1), (6, 4, 2)]:
        ras = affine[:3, :3] @ np.array(index, float) + affine[:3, 3]
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        assert np.allclose(lps, ras * [-1, -1, 1], atol=1e-9)
    # a voxel value lands where the affine says it is
    data = np.zeros((7, 5, 3), np.float32)
    data[2, 4, 1] = 1.0
    assert sitk.GetArrayViewFromImage(to_sitk(data, affine))[1, 4, 2] == 1.0


def test_shear_and_flat_affines_are_refused():
    sheared = oblique_affine()
    sheared[0, 1] += 0.3
    with pytest.raises(ValueError, match="shear"):
        to_sitk(np.zeros((3, 3, 3)), sheared)
    flat = np.diag([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="zero-size"):
        to_sitk(np.zeros((3, 3, 3)), flat)
    with pytest.raises(ValueError, match="3D"):
        to_sitk(np.zeros((3, 3)), np.eye(4))


def test_transforms_map_ras_points_like_their_matrix():
    matrix = _rigid()
    transform = affine_transform(matrix)
    point = np.array([10.0, -20.0, 30.0])
    moved_lps = np.array(transform.TransformPoint(tuple(point * [-1, -1, 1])))
    assert np.allclose(moved_lps * [-1, -1, 1], matrix[:3, :3] @ point + matrix[:3, 3], atol=1e-9)
    assert np.allclose(transform_matrix(transform), matrix, atol=1e-12)


def test_centred_euler_and_composite_transforms_become_matrices():
    euler = sitk.Euler3DTransform()
    euler.SetRotation(0.1, -0.05, 0.2)
    euler.SetCenter((5.0, 6.0, -7.0))
    euler.SetTranslation((1.0, 2.0, 3.0))
    matrix = transform_matrix(euler)
    point = np.array([1.0, 2.0, 3.0])
    expected = np.array(euler.TransformPoint(tuple(point * [-1, -1, 1]))) * [-1, -1, 1]
    assert np.allclose(matrix[:3, :3] @ point + matrix[:3, 3], expected, atol=1e-9)
    composite = sitk.CompositeTransform([euler, affine_transform(_rigid())])
    expected = np.array(composite.TransformPoint(tuple(point * [-1, -1, 1]))) * [-1, -1, 1]
    combined = transform_matrix(composite)
    assert np.allclose(combined[:3, :3] @ point + combined[:3, 3], expected, atol=1e-9)


def test_transform_file_round_trip_and_errors(tmp_path):
    matrix = _rigid()
    path = tmp_path / "t.tfm"
    path.write_text(transform_text(matrix))
    assert np.allclose(read_transform(path), matrix, atol=1e-12)
    # ITK itself reads the file as the same transform
    itk = sitk.ReadTransform(str(path))
    assert np.allclose(transform_matrix(itk), matrix, atol=1e-12)
    with pytest.raises(InputError, match="not found"):
        read_transform(tmp_path / "missing.tfm")
    (tmp_path / "bad.tfm").write_text("not a transform\n")
    with pytest.raises(InputError, match="not a readable linear ITK transform"):
        read_transform(tmp_path / "bad.tfm")
    singular = np.eye(4)
    singular[2, 2] = 0.0
    (tmp_path / "singular.tfm").write_text(transform_text(singular))
    with pytest.raises(InputError, match="singular"):
        read_transform(tmp_path / "singular.tfm")


def test_simpleitk_is_entered_by_one_thread_at_a_time(tmp_path, monkeypatch):
    """run carries its final mask and labels back in two threads, each reading the transform:
    SimpleITK's readers are not thread-safe (a run aborted at exit with "double free"), so two
    read_transform calls side by side must never be inside SimpleITK together."""
    import threading
    import time

    from mstools.parallel import side_by_side
    from mstools.preprocess.rigid import grid_of, resample

    path = tmp_path / "t.tfm"
    path.write_text(transform_text(np.eye(4)))
    inside, most, lock = [0], [0], threading.Lock()
    real_read, real_resample = sitk.ReadTransform, sitk.Resample

    def counted(real):
        def call(*args, **kwargs):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.1)        # long enough for the other thread to come in if it can
            try:
                return real(*args, **kwargs)
            finally:
                with lock:
                    inside[0] -= 1
        return call

    monkeypatch.setattr(sitk, "ReadTransform", counted(real_read))
    monkeypatch.setattr(sitk, "Resample", counted(real_resample))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    data = np.zeros((4, 4, 4), np.float32)

    def carry(_):
        return resample(data, np.eye(4), grid_of((4, 4, 4), np.eye(4)), read_transform(path), interpolation="linear")

    results = side_by_side(carry, [(0,), (1,)])
    assert len(results) == 2 and most[0] == 1
