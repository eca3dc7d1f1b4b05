"""Image I/O: exact round trips on an oblique grid, and every refusal."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mstools.errors import InputError
from mstools.io import (OutputBatch, check_same_grid, check_writable, read_image, read_labels, read_mask,
                        same_grid)
from tests.conftest import oblique_affine


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_round_trip_keeps_geometry_header_and_dtype(tmp_path, write_nifti, affine, dtype):
    data = (np.arange(6 * 7 * 5).reshape(6, 7, 5) % 2).astype(np.int16)
    ref_path = write_nifti("ref.nii.gz", data, qform_code=1, sform_code=4, descrip=b"scanner X")
    reference = read_image(ref_path)
    values = (np.arange(6 * 7 * 5).reshape(6, 7, 5) % 5).astype(dtype)
    with OutputBatch() as out:
        out.image(tmp_path / "derived.nii.gz", values, reference, dtype)
    img = nib.load(tmp_path / "derived.nii.gz")
    assert img.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), values)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert int(img.header["qform_code"]) == 1
    assert int(img.header["sform_code"]) == 4
    np.testing.assert_allclose(img.header.get_sform(), affine, atol=1e-5)
    np.testing.assert_allclose(img.header.get_qform(), affine, atol=1e-5)
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"scanner X"
    np.testing.assert_allclose(img.header.get_zooms(), (0.9, 1.1, 2.5), atol=1e-5)


def test_float_data_is_never_rescaled_into_an_integer_header(tmp_path, write_nifti):
    ref = read_image(write_nifti("ref.nii.gz", np.zeros((4, 4, 4), np.int16)))
    values = np.linspace(-1.5, 2.25, 64, dtype=np.float32).reshape(4, 4, 4)
    with OutputBatch() as out:
        out.image(tmp_path / "map.nii.gz", values, ref, np.float32)
    back = read_image(tmp_path / "map.nii.gz")
    assert back.data.dtype == np.float32
    np.testing.assert_array_equal(back.data, values)


def test_integer_image_refuses_fractional_values(tmp_path, write_nifti):
    ref = read_image(write_nifti("ref.nii.gz", np.zeros((4, 4, 4), np.float32)))
    with pytest.raises(ValueError, match="non-integer"):
        with OutputBatch() as out:
            out.image(tmp_path / "mask.nii.gz", np.full((4, 4, 4), 0.5), ref, np.uint8)
    assert not list(tmp_path.glob("*mask*"))


def test_reading_keeps_mask_and_label_dtypes(write_nifti):
    labels = np.zeros((5, 5, 5), np.int16)
    labels[1, 1, 1], labels[3, 3, 3] = 7, 300
    assert read_labels(write_nifti("labels.nii.gz", labels)).data.dtype == np.int16
    mask = (labels > 0).astype(np.uint8)
    assert read_mask(write_nifti("mask.nii", mask)).data.dtype == np.uint8
    image = read_image(write_nifti("img.nii.gz", labels))
    assert image.data.dtype == np.float32 and image.data[3, 3, 3] == 300


def test_singleton_fourth_axis_is_squeezed(write_nifti):
    image = read_image(write_nifti("img.nii.gz", np.ones((4, 5, 6, 1), np.float32)))
    assert image.shape == (4, 5, 6)


def test_physical_units_come_from_the_affine(write_nifti, affine):
    image = read_image(write_nifti("img.nii.gz", np.ones((4, 5, 6), np.float32)))
    np.testing.assert_allclose(image.spacing_mm, (0.9, 1.1, 2.5))
    assert image.voxel_volume_mm3 == pytest.approx(0.9 * 1.1 * 2.5)


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("folder", "is a folder"),
    ("not_nifti", "not a NIfTI file name"),
    ("corrupt", "unreadable or corrupt"),
    ("truncated", "voxel data unreadable"),
    ("four_d", "3D image was expected"),
    ("nan", "NaN/Inf"),
])
def test_refusals_are_one_line_input_errors(tmp_path, write_nifti, case, message):
    if case == "missing":
        path = tmp_path / "nope.nii.gz"
    elif case == "folder":
        path = tmp_path / "dir.nii.gz"
        path.mkdir()
    elif case == "not_nifti":
        path = tmp_path / "scan.mha"
        path.write_bytes(b"x")
    elif case == "corrupt":
        path = tmp_path / "bad.nii.gz"
        path.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    elif case == "truncated":
        path = write_nifti("cut.nii", np.ones((16, 16, 16), np.float32))
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "four_d":
        path = write_nifti("series.nii.gz", np.ones((4, 4, 4, 3), np.float32))
    else:
        data = np.ones((4, 4, 4), np.float32)
        data[1, 2, 3] = np.nan
        path = write_nifti("nan.nii.gz", data)
    with pytest.raises(InputError, match=message) as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_non_binary_and_empty_masks_are_refused(write_nifti):
    with pytest.raises(InputError, match="not a binary mask"):
        read_mask(write_nifti("m.nii.gz", np.arange(27, dtype=np.uint8).reshape(3, 3, 3)))
    with pytest.raises(InputError, match="not a binary mask"):
        read_mask(write_nifti("p.nii.gz", np.full((3, 3, 3), 0.4, np.float32)))
    empty = write_nifti("e.nii.gz", np.zeros((3, 3, 3), np.uint8))
    assert read_mask(empty).data.sum() == 0
    with pytest.raises(InputError, match="empty"):
        read_mask(empty, allow_empty=False)


def test_grid_check_names_both_files_and_the_fix(write_nifti, affine):
    a = read_image(write_nifti("a.nii.gz", np.zeros((4, 4, 4), np.float32)))
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    b = read_image(write_nifti("b.nii.gz", np.zeros((4, 4, 4), np.float32), shifted))
    nudged = affine.copy()
    nudged[0, 3] += 1e-4
    c = read_image(write_nifti("c.nii.gz", np.zeros((4, 4, 4), np.float32), nudged))
    assert same_grid(a, c)
    with pytest.raises(InputError) as info:
        check_same_grid(a, b)
    text = str(info.value)
    assert "a.nii.gz" in text and "b.nii.gz" in text and "mstools preprocess" in text and "\n" not in text
    d = read_image(write_nifti("d.nii.gz", np.zeros((4, 4, 5), np.float32)))
    with pytest.raises(InputError, match="not on the same grid"):
        check_same_grid(a, d)


def test_outputs_never_overwrite_inputs_and_need_force(tmp_path, write_nifti):
    source = write_nifti("in.nii.gz", np.zeros((3, 3, 3), np.float32))
    with pytest.raises(InputError, match="inputs are never modified"):
        check_writable(source, inputs=[source], force=True)
    existing = tmp_path / "out.tsv"
    existing.write_text("x\n")
    with pytest.raises(InputError, match="--force"):
        check_writable(existing)
    assert check_writable(existing, force=True) == existing
    with pytest.raises(InputError, match="does not exist"):
        check_writable(tmp_path / "missing_dir" / "x.nii.gz")


def test_a_failed_batch_leaves_no_file_behind(tmp_path, write_nifti):
    ref = read_image(write_nifti("ref.nii.gz", np.zeros((4, 4, 4), np.float32)))
    before = set(os.listdir(tmp_path))
    with pytest.raises(RuntimeError):
        with OutputBatch(create_dirs=True) as out:
            out.image(tmp_path / "new" / "a.nii.gz", np.ones((4, 4, 4)), ref, np.uint8)
            out.table(tmp_path / "new" / "b.tsv", [{"x": 1}], ["x"])
            raise RuntimeError("crash in the middle")
    assert set(os.listdir(tmp_path)) == before


def test_second_writer_to_the_same_path_is_a_bug(tmp_path, write_nifti):
    ref = read_image(write_nifti("ref.nii.gz", np.zeros((2, 2, 2), np.float32)))
    with pytest.raises(ValueError, match="twice"):
        with OutputBatch() as out:
            out.image(tmp_path / "a.nii.gz", np.zeros((2, 2, 2)), ref, np.uint8)
            out.image(tmp_path / "a.nii.gz", np.zeros((2, 2, 2)), ref, np.uint8)
    assert not (tmp_path / "a.nii.gz").exists()


def test_inputs_are_not_modified_by_reading(write_nifti):
    path = write_nifti("img.nii.gz", np.arange(8, dtype=np.float32).reshape(2, 2, 2))
    before = path.read_bytes()
    image = read_image(path)
    image.data[0, 0, 0] = 99
    assert path.read_bytes() == before


def test_oblique_fixture_is_really_oblique():
    a = oblique_affine()
    assert np.count_nonzero(np.abs(a[:3, :3]) > 1e-6) > 3


def test_a_failed_batch_removes_every_folder_it_created(tmp_path):
    from mstools.io import OutputBatch, new_reference

    reference = new_reference((2, 2, 2), np.eye(4))
    target = tmp_path / "a" / "b" / "c" / "mask.nii.gz"
    with pytest.raises(RuntimeError):
        with OutputBatch(create_dirs=True) as batch:
            batch.image(target, np.zeros((2, 2, 2)), reference, np.uint8)
            raise RuntimeError("the command failed")
    assert list(tmp_path.iterdir()) == []


def test_a_volume_read_twice_is_decoded_once_and_a_rewritten_file_is_read_again(tmp_path):
    """The in-process cache of decoded .nii.gz volumes never serves stale or shared data."""
    import mstools.io as io

    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)), path)
    first = read_image(path).data
    first[:] = -1                                   # a caller's change stays its own
    assert read_image(path).data[1, 2, 3] == 23
    assert any(key[0] == str(path.resolve()) for key in io._decoded)
    nib.save(nib.Nifti1Image(np.full((2, 3, 4), 7, dtype=np.float32), np.eye(4)), path)
    assert (read_image(path).data == 7).all()
    path.write_bytes(gzip.compress(b"not a nifti at all"))
    with pytest.raises(InputError):
        read_image(path)


def test_a_background_image_write_that_fails_is_an_error_at_commit_and_leaves_nothing(tmp_path, write_nifti,
                                                                                       monkeypatch):
    """Images are compressed in a background thread: a disk-full there must still be a
    one-line error naming the file, with no output left behind, and the caller's array
    may change after image() returns without changing the file."""
    import errno

    ref = read_image(write_nifti("ref.nii.gz", np.zeros((4, 4, 4), np.float32)))
    data = np.ones((4, 4, 4), np.float32)
    with OutputBatch() as out:
        out.image(tmp_path / "kept.nii.gz", data, ref, np.float32)
        data[:] = 5                                   # after image(): must not reach the file
    assert (read_image(tmp_path / "kept.nii.gz").data == 1).all()

    def full_disk(img, filename):
        raise OSError(errno.ENOSPC, "No space left on device")

    import mstools.io as io

    monkeypatch.setattr(io, "_save_nifti", full_disk)
    before = set(os.listdir(tmp_path))
    with pytest.raises(InputError) as error:
        with OutputBatch() as out:
            out.table(tmp_path / "t.tsv", [{"x": 1}], ["x"])
            out.image(tmp_path / "a.nii.gz", np.ones((4, 4, 4)), ref, np.uint8)
    assert "a.nii.gz" in str(error.value) and "\n" not in str(error.value)
    assert set(os.listdir(tmp_path)) == before


def test_a_missing_output_folder_is_fine_only_for_writers_that_create_it(tmp_path):
    target = tmp_path / "new" / "deeper" / "x_mask.nii.gz"
    with pytest.raises(InputError, match="output folder does not exist"):
        check_writable(target)
    assert check_writable(target, create_dirs=True) == target
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_writable(tmp_path / "file" / "sub" / "x.nii.gz", create_dirs=True)
    assert not (tmp_path / "new").exists()          # checking creates nothing


def test_written_images_are_nibabel_files_and_a_stage_reads_back_what_the_last_one_wrote(tmp_path, write_nifti):
    """Images are gzip-compressed by mstools (run-length strategy) with nibabel's exact layout;
    the voxels and sha256 of a file written in this process are remembered, and equal what a
    fresh read and a fresh hash give; a file changed afterwards is read and hashed again."""
    import hashlib

    import mstools.io as io

    ref = read_image(write_nifti("ref.nii.gz", np.zeros((5, 6, 7), np.float32)))
    rng = np.random.default_rng(0)
    images = {"score.nii.gz": (rng.normal(size=(5, 6, 7)).astype(np.float32), np.float32, read_image),
              "mask.nii.gz": ((rng.random((5, 6, 7)) > 0.7).astype(np.uint8), np.uint8, read_mask),
              "labels.nii.gz": (rng.integers(0, 9, (5, 6, 7)).astype(np.int32), np.int32, read_labels),
              "mask_as_float.nii.gz": ((rng.random((5, 6, 7)) > 0.5).astype(np.uint8), np.uint8, read_image),
              "plain.nii": (rng.normal(size=(5, 6, 7)).astype(np.float32), np.float32, read_image)}
    with OutputBatch() as out:
        for name, (data, dtype, _) in images.items():
            out.image(tmp_path / name, data, ref, dtype)
    kept = {Path(key[0]).name for key in io._decoded}
    assert {name for name in images if name.endswith(".gz")} <= kept and "plain.nii" not in kept
    for name, (data, dtype, reader) in images.items():
        path = tmp_path / name
        nib.save(io.derived_nifti(data, ref, dtype), tmp_path / f"nib_{name}")
        ours, theirs = path.read_bytes(), (tmp_path / f"nib_{name}").read_bytes()
        if name.endswith(".gz"):
            ours, theirs = gzip.decompress(ours), gzip.decompress(theirs)
        assert ours == theirs
        remembered, digest = reader(path).data, io.sha256(path)
        io._decoded.clear()
        io._digests.clear()
        fresh = reader(path).data
        assert remembered.dtype == fresh.dtype and np.array_equal(remembered, fresh)
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    path = tmp_path / "score.nii.gz"
    before = io.sha256(path)
    read_image(path)
    nib.save(nib.Nifti1Image(np.full((5, 6, 7), 3, np.float32), ref.affine), path)
    assert (read_image(path).data == 3).all() and io.sha256(path) != before


def test_read_grid_gives_an_images_geometry_without_its_voxels(tmp_path, write_nifti):
    """The grid and header equal a full read's; the voxels are a read-only zero placeholder
    (never decoded: a file whose voxel data is cut short still gives its grid); 4D is refused."""
    from mstools.io import read_grid

    path = write_nifti("scan.nii.gz", np.arange(60, dtype=np.float32).reshape(3, 4, 5) + 1)
    full, grid = read_image(path), read_grid(path)
    assert grid.shape == full.shape and np.array_equal(grid.affine, full.affine)
    assert grid.header.get_qform(coded=True)[1] == full.header.get_qform(coded=True)[1]
    assert not grid.data.any() and not grid.data.flags.writeable and grid.data.strides == (0, 0, 0)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(gzip.decompress(path.read_bytes())[:400])
    assert read_grid(cut).shape == (3, 4, 5)
    with pytest.raises(InputError):
        read_image(cut)
    with pytest.raises(InputError, match="3D image was expected"):
        read_grid(write_nifti("series.nii.gz", np.zeros((3, 4, 5, 2), np.float32)))
