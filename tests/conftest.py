"""Shared fixtures: tiny volumes on an oblique, anisotropic grid.

An identity affine hides geometry bugs, so every fixture image lives on a grid that
is rotated about two axes, has 0.9 x 1.1 x 2.5 mm voxels and an offset origin.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


def oblique_affine(spacing=(0.9, 1.1, 2.5), angles_deg=(12.0, -7.0, 0.0), origin=(-90.5, 100.25, -60.0)):
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def affine():
    return oblique_affine()


def save_nifti(path, data, affine, *, qform_code=1, sform_code=2, descrip=b"fixture"):
    """Write a fixture image the way a scanner converter would (both codes set)."""
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    img.header["descrip"] = descrip
    img.header.set_data_dtype(np.asarray(data).dtype)
    nib.save(img, str(path))
    return path


@pytest.fixture
def write_nifti(tmp_path, affine):
    """Factory: write_nifti(name, array, affine=None) -> path in tmp_path."""

    def _write(name, data, affine_=None, **kwargs):
        return save_nifti(tmp_path / name, data, affine if affine_ is None else affine_, **kwargs)

    return _write


@pytest.fixture
def rng():
    return np.random.default_rng(20211)
