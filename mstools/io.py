"""Image and table files: the only module that reads or writes them.

Reading validates (exists, NIfTI, 3D, finite, binary where a mask is required) and
fails with :class:`~mstools.errors.InputError` on one line. Writing keeps the
reference image's affine, header, qform/sform codes and description, always takes
an explicit dtype, and is atomic: every file of one command is first written under a
temporary name and renamed into place only when all of them are ready
(:class:`OutputBatch`), so a failure never leaves partial output.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io as io_module
import json
import os
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np

from mstools.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Largest absolute difference between two affines' entries (mm, or mm per voxel)
#: still treated as the same grid. 1e-3 mm is far below any voxel size and above the
#: float32 rounding of affines stored in NIfTI headers (~1e-5 mm at 200 mm offsets).
GRID_TOLERANCE_MM = 1e-3

#: Largest |cosine| between two voxel axes still taken as orthogonal: 1e-3 is 0.06 degrees,
#: far above the float32 rounding of a scanner's rotation and far below any real shear.
SHEAR_TOLERANCE = 1e-3

#: Largest intensity magnitude accepted. Squares of larger values summed over a volume
#: overflow float32 (3.4e38): statistics of such an image are NaN or Inf.
MAX_INTENSITY = 1e9


@dataclass(frozen=True)
class Image:
    """A 3D image with the geometry it came with."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along array axes (i, j, k), from the affine's columns."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """|det| of the affine's linear part: the physical volume of one voxel."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else "<in memory>"

    def with_data(self, data: np.ndarray) -> "Image":
        """Same geometry, other voxels (the reference for derived images)."""
        if data.shape != self.data.shape:
            raise ValueError(f"shape {data.shape} does not match the reference grid {self.data.shape}")
        return Image(data=data, affine=self.affine, header=self.header, path=None)


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(path: str | os.PathLike) -> str:
    text = str(path)
    for suffix in NIFTI_SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


# --------------------------------------------------------------------------- reading


def _load(path: str | os.PathLike) -> tuple[nib.Nifti1Image, Path]:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found; check the path")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, an image file (.nii or .nii.gz) was expected")
    if not is_nifti(p):
        raise InputError(f"{p}: not a NIfTI file name (.nii or .nii.gz); convert it first (e.g. dcm2niix)")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: permission denied; make the file readable")
    try:
        img = nib.load(p)
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{p}: not a NIfTI image ({type(img).__name__}); convert it to NIfTI")
        img.header.get_data_shape()
    except InputError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{p}: unreadable or corrupt NIfTI ({_one_line(exc)}); re-export the image") from exc
    check_affine(np.asarray(img.affine, dtype=np.float64), p)
    return img, p


def check_affine(affine: np.ndarray, name: object) -> None:
    """Refuse a voxel-to-world matrix that is not finite, singular or sheared.

    Volumes (|det|), voxel sizes and every resampling assume a rectilinear grid: a
    singular matrix has no inverse, a sheared one makes voxel sizes meaningless.
    """
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.isfinite(affine).all():
        raise InputError(f"{name}: affine (sform/qform) is not finite; fix the header (re-export the image)")
    spacing = np.linalg.norm(linear, axis=0)
    if spacing.min() <= 1e-6 * max(spacing.max(), 1e-12) or spacing.max() == 0:
        raise InputError(f"{name}: affine is singular (voxel sizes {', '.join(f'{v:.4g}' for v in spacing)} mm); "
                         "fix the header's pixdim/sform (re-export the image from DICOM, e.g. dcm2niix)")
    axes = linear / spacing
    cosines = np.abs(axes.T @ axes - np.eye(3))
    if cosines.max() > SHEAR_TOLERANCE:
        angle = float(np.degrees(np.arcsin(min(cosines.max(), 1.0))))
        raise InputError(f"{name}: affine is sheared (voxel axes {angle:.2g} degrees from orthogonal); "
                         "reslice it onto a rectilinear grid first (e.g. FSL flirt -applyisoxfm or ANTs)")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


#: Decoded .nii.gz volumes kept in memory for the next reader in this process (the stages
#: of one `mstools run` read the same case files again, and the files the previous stage
#: wrote): gunzip cost ~0.25 s per 1 mm volume. Keyed by file identity and version
#: (:func:`_file_key`), so a rewritten file is read again; at most this many bytes are
#: kept, least recently used first out.
DECODED_CACHE_BYTES = 512 * 2 ** 20
_decoded: dict[tuple, np.ndarray] = {}
#: sha256 of files this process wrote or hashed, by :func:`_file_key` (a stage's sidecars
#: and records hash the case's 25 MB scans again in every stage of a run).
_digests: dict[tuple, str] = {}
_CACHE_LOCK = threading.Lock()


def _file_key(p: Path) -> tuple | None:
    """A file's identity and version: path, device, inode, size, modification and change
    times (any write, rename onto it or ``touch`` changes one of them); None if it is gone."""
    try:
        st = p.stat()
    except OSError:
        return None
    return (str(p.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _cache_key(p: Path, as_float: bool) -> tuple | None:
    if not str(p).endswith(".nii.gz"):
        return None                    # uncompressed files are memory-mapped, cheap to read again
    key = _file_key(p)
    return None if key is None else (*key, as_float)


def _keep_decoded(key: tuple, data: np.ndarray, *, also: tuple | None = None, copy: bool = True) -> None:
    """Keep ``data`` read-only (a copy unless ``copy`` is False: then no one else may hold it)
    for ``key`` and for ``also``; at most DECODED_CACHE_BYTES are kept, least recently used
    first out."""
    kept = data.copy() if copy else data
    kept.flags.writeable = False
    with _CACHE_LOCK:
        for k in (key, also):
            if k is not None:
                _decoded.pop(k, None)
                _decoded[k] = kept
        while sum({id(a): a.nbytes for a in _decoded.values()}.values()) > DECODED_CACHE_BYTES:
            _decoded.pop(next(iter(_decoded)))


def _remember_written(target: Path, data: np.ndarray | None, digest: str | None) -> None:
    """A file this process has just written (and renamed into place): its sha256, and its
    voxels as a reader would decode them, so that the next stage of the same run neither
    hashes nor gunzips it again. Only the stored dtype is kept (and float32 also as the
    float reading); voxels with NaN/Inf are not kept (reading them is an error). ``data``
    is the batch's own copy, kept without copying."""
    key = _file_key(target)
    if key is None:
        return
    if digest is not None:
        _digests[key] = digest
    if data is None or not str(target).endswith(".nii.gz") or data.nbytes > DECODED_CACHE_BYTES:
        return
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        return
    _keep_decoded((*key, False), data, also=(*key, True) if data.dtype == np.float32 else None, copy=False)


def _array(img: nib.Nifti1Image, p: Path, *, as_float: bool) -> np.ndarray:
    key = _cache_key(p, as_float)
    with _CACHE_LOCK:
        data = _decoded.pop(key, None) if key is not None else None
        if data is not None:
            _decoded[key] = data           # most recently used last
    if data is not None:
        return data.copy()
    data = _decode(img, p, as_float=as_float)
    if key is not None and data.nbytes <= DECODED_CACHE_BYTES:
        _keep_decoded(key, data)
    return data


def _shape_3d(img: nib.Nifti1Image, p: Path) -> tuple[int, int, int]:
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            f"{p}: has shape {img.shape}, a 3D image was expected; "
            "split 4D series first (e.g. fslsplit) and pass one volume"
        )
    return tuple(int(n) for n in shape)  # type: ignore[return-value]


def _decode(img: nib.Nifti1Image, p: Path, *, as_float: bool) -> np.ndarray:
    shape = _shape_3d(img, p)
    try:
        if as_float:
            data = img.get_fdata(dtype=np.float32)
        else:
            data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(f"{p}: voxel data unreadable ({_one_line(exc)}); the file may be truncated") from exc
    data = np.asarray(data).reshape(shape)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{p}: contains {bad} NaN/Inf voxels; replace them (e.g. with 0) before use")
    return data


def _image(img: nib.Nifti1Image, p: Path, data: np.ndarray) -> Image:
    header = img.header.copy()
    return Image(data=data, affine=np.asarray(img.affine, dtype=np.float64), header=header, path=p)


def read_image(path: str | os.PathLike) -> Image:
    """Read an intensity image as float32 (scaling applied), refusing 4D, NaN/Inf and
    intensities that overflow float32 arithmetic."""
    img, p = _load(path)
    data = _array(img, p, as_float=True)
    # the largest magnitude without a temporary |data| volume (NaN/Inf were refused when decoded)
    largest = max(float(data.max()), -float(data.min())) if data.size else 0.0
    if largest > MAX_INTENSITY:
        raise InputError(f"{p}: intensities up to {largest:.3g} (above {MAX_INTENSITY:.0e}) "
                         "overflow the arithmetic; rescale the image (e.g. fslmaths IN -div 1e6 OUT)")
    return _image(img, p, data)


def read_grid(path: str | os.PathLike) -> Image:
    """An image's grid (shape, affine) and header, checked as any read checks them, without
    decoding its voxels: for a reference that lends only its geometry. ``data`` is a read-only
    array of zeros of the image's shape that takes no memory."""
    img, p = _load(path)
    shape = _shape_3d(img, p)
    return _image(img, p, np.broadcast_to(np.zeros((), dtype=img.get_data_dtype()), shape))


def read_scan(path: str | os.PathLike, *, brain_mask: np.ndarray | None = None) -> Image:
    """Read a FLAIR scan (as :func:`read_image`), refusing a constant one (see :func:`check_scan`)."""
    scan = read_image(path)
    check_scan(scan, brain_mask=brain_mask)
    return scan


def check_scan(scan: Image, *, brain_mask: np.ndarray | None = None) -> None:
    """Refuse a scan no detector can use: constant everywhere, or inside ``brain_mask``."""
    name = scan.name
    data = scan.data
    values = data if brain_mask is None else data[np.asarray(brain_mask) > 0]
    if values.size and float(values.min()) == float(values.max()):
        where = "inside the brain mask" if brain_mask is not None else "everywhere"
        raise InputError(f"{name}: the image is empty (constant {float(values.min()):g} {where}); "
                         "give the real scan (this one is empty or was wrongly converted)")


def read_labels(path: str | os.PathLike) -> Image:
    """Read an integer label map in its stored integer dtype."""
    img, p = _load(path)
    data = _array(img, p, as_float=False)
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            raise InputError(f"{p}: label map has non-integer values; a map of integer labels was expected")
        data = data.astype(np.int32)
    elif data.dtype.kind == "b":
        data = data.astype(np.uint8)
    return _image(img, p, data)


def read_mask(path: str | os.PathLike, *, allow_empty: bool = True) -> Image:
    """Read a binary mask (values 0 and 1 only), keeping its stored integer dtype."""
    img, p = _load(path)
    data = _array(img, p, as_float=False)
    values = np.unique(data)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise InputError(
            f"{p}: not a binary mask (values {shown}); binarise it first "
            "(e.g. threshold a probability map with --threshold)"
        )
    if data.dtype.kind in "fb":
        data = data.astype(np.uint8)
    if not allow_empty and not values.any():
        raise InputError(f"{p}: mask is empty (no voxel set); a non-empty mask is required here")
    return _image(img, p, data)


def new_reference(shape: tuple[int, int, int], affine: np.ndarray, *, description: str = "mstools") -> Image:
    """A reference geometry for images made from scratch (qform and sform both set, code 1)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header["descrip"] = description.encode()[:79]
    return Image(data=np.zeros(shape, dtype=np.uint8), affine=np.asarray(affine, dtype=np.float64),
                 header=header, path=None)


# --------------------------------------------------------------------------- geometry


def same_grid(a: Image, b: Image, *, tolerance_mm: float = GRID_TOLERANCE_MM) -> bool:
    return a.shape == b.shape and bool(np.max(np.abs(a.affine - b.affine)) <= tolerance_mm)


def _affine_text(affine: np.ndarray) -> str:
    rows = ("[" + " ".join(f"{v:.4g}" for v in row) + "]" for row in affine[:3])
    return "[" + " ".join(rows) + "]"


def check_same_grid(a: Image, b: Image, *, tolerance_mm: float = GRID_TOLERANCE_MM,
                    names: tuple[object, object] | None = None) -> None:
    """Refuse two images that do not share shape and affine (within ``tolerance_mm``);
    ``names`` name images held in memory (derived from files)."""
    if same_grid(a, b, tolerance_mm=tolerance_mm):
        return
    name_a, name_b = names if names is not None else (a.name, b.name)
    raise InputError(
        f"{name_a} and {name_b} are not on the same grid "
        f"(shape {a.shape} vs {b.shape}; affine {_affine_text(a.affine)} vs {_affine_text(b.affine)}); "
        "bring both into one space with `mstools preprocess` (or use files from the same case folder)"
    )


# --------------------------------------------------------------------------- writing


def derived_nifti(data: np.ndarray, reference: Image, dtype: np.dtype | type | str) -> nib.Nifti1Image:
    """A NIfTI image of ``data`` cast to ``dtype`` with the reference's geometry and header.

    qform and sform (matrices and codes), description and units are copied; scaling is
    reset so that the stored values are exactly ``data`` in ``dtype``.
    """
    dtype = np.dtype(dtype)
    if data.shape[:3] != reference.shape:
        raise ValueError(f"data shape {data.shape} does not match reference grid {reference.shape}")
    array = np.asarray(data)
    if dtype.kind in "iub":
        if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
            raise ValueError("refusing to store non-integer values in an integer image")
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"values outside the range of {dtype}")
    array = array.astype(dtype, copy=False)
    src = reference.header
    header = nib.Nifti1Header()
    for key in ("descrip", "xyzt_units", "intent_name", "dim_info", "slice_code", "slice_start",
                "slice_end", "slice_duration", "toffset", "aux_file"):
        try:
            header[key] = src[key]
        except (KeyError, ValueError):
            pass
    img = nib.Nifti1Image(array, reference.affine, header=header)
    img.header.set_data_dtype(dtype)
    q_code = int(src["qform_code"]) if "qform_code" in src else 1
    s_code = int(src["sform_code"]) if "sform_code" in src else 1
    q_affine = src.get_qform() if q_code > 0 else reference.affine
    s_affine = src.get_sform() if s_code > 0 else reference.affine
    img.set_qform(q_affine, code=q_code)
    img.set_sform(s_affine, code=s_code)
    img.header.set_slope_inter(np.nan, np.nan)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    return img


def vector_nifti(field: np.ndarray, reference: Image) -> nib.Nifti1Image:
    """A vector field ``(I, J, K, 3)`` on the reference grid as a 5D NIfTI (float32, intent 1007)."""
    field = np.asarray(field)
    if field.ndim != 4 or field.shape[3] != 3:
        raise ValueError(f"a vector field of shape (I, J, K, 3) was expected, not {field.shape}")
    img = derived_nifti(field[:, :, :, None, :], reference, np.float32)
    img.header.set_intent(1007, (), name="displacement mm")
    img.header.set_xyzt_units("mm", "sec")
    return img


def read_vector_field(path: str | os.PathLike) -> Image:
    """Read a 5D displacement field ``(I, J, K, 1, 3)`` (intent 1006 or 1007) as ``(I, J, K, 3)`` float32."""
    img, p = _load(path)
    shape = img.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] != 3:
        raise InputError(f"{p}: has shape {shape}, a displacement field of shape (I, J, K, 1, 3) was expected "
                         "(written by mstools register)")
    if int(img.header["intent_code"]) not in (1006, 1007):
        raise InputError(f"{p}: NIfTI intent code {int(img.header['intent_code'])} is not a vector field "
                         "(1006 or 1007); give a displacement field written by mstools register")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape[:3] + (3,))
    except Exception as exc:
        raise InputError(f"{p}: voxel data unreadable ({_one_line(exc)}); the file may be truncated") from exc
    if not np.isfinite(data).all():
        raise InputError(f"{p}: displacement field contains NaN/Inf values; it cannot be applied")
    return _image(img, p, data)


def check_writable(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (), force: bool = False,
                   create_dirs: bool = False) -> Path:
    """Refuse to overwrite an input, or an existing output without ``force``. With
    ``create_dirs`` (the writer makes missing folders, as ``OutputBatch(create_dirs=True)``)
    a missing parent is fine when its nearest existing ancestor is a writable folder."""
    p = Path(path)
    for source in inputs:
        s = Path(source)
        if s.exists() and p.exists() and os.path.samefile(s, p):
            raise InputError(f"{p}: is one of the inputs; choose another output path (inputs are never modified)")
        if s.resolve() == p.resolve():
            raise InputError(f"{p}: is one of the inputs; choose another output path (inputs are never modified)")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; give a file path for this output (or remove the folder)")
    if p.exists() and not force:
        raise InputError(f"{p}: already exists; pass --force to overwrite it")
    if p.parent and not p.parent.exists():
        if not create_dirs:
            raise InputError(f"{p.parent}: output folder does not exist; create it first")
        ancestor = p.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"{ancestor}: is a file, not a folder; choose another output path")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise InputError(f"{ancestor}: folder is not writable (permission denied or read-only); "
                             "choose another output folder")
        return p
    if not p.parent.is_dir():
        raise InputError(f"{p.parent}: is a file, not a folder; choose another output path")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise InputError(f"{p.parent}: output folder is not writable (permission denied or read-only); "
                         "choose another output folder or fix its permissions")
    return p


def output_error(exc: OSError, path: str | os.PathLike) -> InputError:
    """The user's environment failing a write (disk full, read-only, permissions) as one line."""
    where = Path(path)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InputError(f"{where}: no space left on the device (disk full or quota reached); "
                          "free some space or choose another output folder")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"{where}: cannot write here ({exc.strerror}); choose another output folder "
                          "or fix its permissions")
    if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        return InputError(f"{where}: cannot write ({exc.strerror}); choose another output path")
    return InputError(f"{where}: cannot write ({exc.strerror or _one_line(exc)}); check the output folder")


_PART = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.part")


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_parts(folder: str | os.PathLike, *, recursive: bool = False, name: str | None = None) -> list[Path]:
    """Remove the temporaries (``.NAME.PID.part*``) that a killed command left in ``folder``
    (those of a process still running are kept); returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".{name}.*.part*" if name is not None else ".*.part*"
    removed = []
    for part in (folder.rglob(pattern) if recursive else folder.glob(pattern)):
        match = _PART.match(part.name)
        if match and part.is_file() and (name is None or match["name"] == name) \
                and (int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"]))):
            try:
                part.unlink()
                removed.append(part)
            except OSError:
                pass
    return removed


class OutputBatch:
    """All the files of one command, committed together or not at all.

    Usage::

        with OutputBatch(inputs=[...], force=False) as out:
            out.image("x_mask.nii.gz", mask, reference, np.uint8)
            out.table("x_lesions.tsv", rows, columns)
        # all files renamed into place here; on an exception none is left behind.

    Paths are checked (``check_writable``) when added, before anything is written.
    """

    def __init__(self, *, inputs: Iterable[str | os.PathLike] = (), force: bool = False,
                 create_dirs: bool = False):
        self.inputs = [Path(p) for p in inputs]
        self.force = force
        self.create_dirs = create_dirs
        self._pending: list[tuple[Path, Path]] = []
        self._created_dirs: list[Path] = []
        self._compressing: list[tuple[Path, Path, object]] = []   # (target, tmp, future)
        self._images: dict[Path, np.ndarray] = {}                  # target -> voxels as stored
        self._digests: dict[Path, str] = {}                        # target -> sha256 of the file
        self.written: list[Path] = []

    def __enter__(self) -> "OutputBatch":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False

    def _claim(self, path: str | os.PathLike) -> tuple[Path, Path]:
        p = Path(path)
        if self.create_dirs and not p.parent.exists():
            missing = []
            parent = p.parent
            while not parent.exists():
                missing.append(parent)
                parent = parent.parent
            try:
                p.parent.mkdir(parents=True)
            except OSError as exc:
                raise output_error(exc, p.parent) from exc
            self._created_dirs.extend(missing)
        if any(p == target for target, _ in self._pending):
            raise ValueError(f"{p} written twice in one command")
        check_writable(p, inputs=self.inputs, force=self.force)
        remove_stale_parts(p.parent, name=p.name)
        suffix = ".nii.gz" if str(p).endswith(".nii.gz") else p.suffix
        tmp = p.with_name(f".{p.name}.{os.getpid()}.part{suffix}")
        self._pending.append((p, tmp))
        return p, tmp

    def _write(self, path: str | os.PathLike, write) -> Path:
        p, tmp = self._claim(path)
        try:
            write(tmp)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise output_error(exc, p) from exc
        return p

    def image(self, path: str | os.PathLike, data: np.ndarray, reference: Image,
              dtype: np.dtype | type | str) -> Path:
        """Checked now; written (gzip) in a background thread while the caller goes on,
        and waited for at commit: the compression of a 1 mm float image takes ~0.2 s."""
        img = derived_nifti(np.array(data, copy=True), reference, dtype)
        p, tmp = self._claim(path)
        self._compressing.append((p, tmp, _writer_pool().submit(_save_nifti, img, tmp)))
        self._images[p] = np.asanyarray(img.dataobj)     # the voxels as stored (see commit)
        return p

    def _wait_for_writes(self) -> None:
        """Wait for the background writes; the first failure is raised (as for a direct write)."""
        failure = None
        for target, tmp, future in self._compressing:
            try:
                self._digests[target] = future.result()
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                failure = failure or output_error(exc, target)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                tmp.unlink(missing_ok=True)
                failure = failure or exc
        self._compressing.clear()
        if failure is not None:
            raise failure

    def table(self, path: str | os.PathLike, rows: Sequence[Mapping[str, object]],
              columns: Sequence[str]) -> Path:
        return self._write(path, lambda tmp: write_tsv(tmp, rows, columns))

    def json(self, path: str | os.PathLike, payload: Mapping[str, object]) -> Path:
        text = json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n"
        return self._write(path, lambda tmp: tmp.write_text(text))

    def vector_image(self, path: str | os.PathLike, field: np.ndarray, reference: Image) -> Path:
        """A displacement field ``(I, J, K, 3)`` in mm as a 5D NIfTI ``(I, J, K, 1, 3)``,
        float32, intent code 1007 (NIFTI_INTENT_VECTOR, as ITK and ANTs write them)."""
        img = vector_nifti(field, reference)
        return self._write(path, lambda tmp: _save_nifti(img, tmp))

    def text(self, path: str | os.PathLike, content: str | bytes) -> Path:
        if isinstance(content, bytes):
            return self._write(path, lambda tmp: tmp.write_bytes(content))
        return self._write(path, lambda tmp: tmp.write_text(content))

    def commit(self) -> None:
        self._wait_for_writes()
        for target, tmp in self._pending:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise output_error(exc, target) from exc
            self.written.append(target)
            if target in self._digests:
                _remember_written(target, self._images.get(target), self._digests[target])
        self._pending.clear()
        self._images.clear()
        self._digests.clear()

    def abort(self) -> None:
        try:
            self._wait_for_writes()       # a write still running would recreate its file
        except BaseException:  # noqa: BLE001 - aborting anyway
            pass
        for _, tmp in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()
        self._images.clear()
        self._digests.clear()
        # deepest first: a created parent can only go once its created children are gone
        for folder in sorted(self._created_dirs, key=lambda d: len(d.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                pass


#: How .nii.gz images are compressed: zlib level 1 (nibabel's default level) with run-length
#: matching only (``Z_RLE``) instead of zlib's default search for repeated strings. Measured on
#: the images of a default run from a simulated 1 mm raw pair (2026-12-07, 2 cores, one busy):
#: a preprocessed FLAIR (float32, 25 MB) took 0.23 s instead of 0.67 s and came out 86.2 %
#: instead of 86.8 % of its size; a subtraction score map 0.10 s instead of 0.19 s, 27.9 %
#: instead of 28.5 %; masks and label maps as fast and smaller. Any gzip reader reads them
#: (the stream is ordinary deflate).
GZIP_LEVEL = 1
GZIP_STRATEGY = zlib.Z_RLE


class _HashedWriter(io_module.IOBase):
    """A write-only stream for nibabel: what it writes is deflated (``compress``) into
    ``handle`` and hashed on the way; forward seeks write zeros (as gzip files do)."""

    def __init__(self, handle, *, compress: bool):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.position = 0
        self.compressor = (zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS, 8, GZIP_STRATEGY)
                           if compress else None)

    def _out(self, block) -> None:
        if block:
            self.digest.update(block)
            self.handle.write(block)

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        self._out(self.compressor.compress(data) if self.compressor is not None else data)
        self.position += size
        return size

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.position + offset if whence == 1 else None
        if target is None or target < self.position:
            raise OSError("cannot seek backwards in a stream being written")
        if target > self.position:
            self.write(b"\x00" * (target - self.position))
        return self.position

    def finish(self) -> str:
        """The end of the stream written; the sha256 of all that ``handle`` received."""
        if self.compressor is not None:
            self._out(self.compressor.flush())
        return self.digest.hexdigest()


def _save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> str:
    """Write ``img`` to ``path`` exactly as ``nib.save`` lays it out, streamed (gzip-compressed
    as GZIP_STRATEGY says when the name ends in .gz); returns the written file's sha256."""
    with open(path, "wb") as handle:
        stream = _HashedWriter(handle, compress=str(path).endswith(".gz"))
        img.to_stream(stream)
        return stream.finish()


_WRITER_POOL = None


def _writer_pool():
    """Two threads for image writes (zlib releases the GIL), shared by every batch."""
    global _WRITER_POOL
    if _WRITER_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _WRITER_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mstools-write")
    return _WRITER_POOL


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- tables


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return "n/a"
        return f"{float(value):.6g}"
    return str(value)


def write_tsv(path: str | os.PathLike, rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> None:
    """Tab-separated table with a header row; missing values as ``n/a`` (BIDS)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: table not found; check the path")
    try:
        with open(p, newline="") as handle:
            return list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: unreadable table ({_one_line(exc)}); a tab-separated file was expected") from exc


# --------------------------------------------------------------------------- transforms


def transform_text(matrix_ras: np.ndarray) -> str:
    """An ITK ``.tfm`` file's text for a 4x4 RAS point transform (write it with OutputBatch.text)."""
    from mstools.sitk_bridge import itk_transform_text

    return itk_transform_text(matrix_ras)


def read_transform(path: str | os.PathLike) -> np.ndarray:
    """A linear ITK transform file (.tfm/.txt/.mat, as SimpleITK, ANTs, Slicer write them)
    as a 4x4 RAS point transform (output point -> input point, ITK's convention)."""
    import SimpleITK as sitk

    from mstools.sitk_bridge import ITK_LOCK, transform_matrix

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: transform file not found; check the path")
    with ITK_LOCK:
        try:
            transform = sitk.ReadTransform(str(p))
            matrix = transform_matrix(transform)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"{p}: not a readable linear ITK transform ({_one_line(exc)}); "
                             "give a .tfm written by mstools preprocess (or another rigid/affine ITK transform)") from exc
        _check_transform_text(p, transform)
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
        raise InputError(f"{p}: transform is singular or not finite; give a rigid or affine transform")
    return matrix


def _check_transform_text(p: Path, transform) -> None:
    """A text transform file cut short reads, without a word from ITK, as the identity or
    with its centre at 0: its Parameters and FixedParameters lines must hold every value."""
    with open(p, "rb") as handle:
        if not handle.read(32).startswith(b"#Insight Transform File"):
            return  # binary (.mat) files are ITK's own to check
    expected = {"Parameters": len(transform.GetParameters()), "FixedParameters": len(transform.GetFixedParameters())}
    found = {}
    for line in p.read_text(errors="replace").splitlines():
        tag, _, values = line.partition(":")
        if tag.strip() in expected:
            found[tag.strip()] = len(values.split())
    for tag, count in expected.items():
        if found.get(tag) != count:
            raise InputError(f"{p}: {tag} has {found.get(tag, 0)} values, {count} expected; "
                             "the transform file is cut short or damaged")


# --------------------------------------------------------------------------- hashing


def sha256(path: str | os.PathLike) -> str:
    """The file's sha256 (hex); a file this process wrote or hashed before, unchanged since
    (:func:`_file_key`), is not read again."""
    key = _file_key(Path(path))
    if key is not None and key in _digests:
        return _digests[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if key is not None and key == _file_key(Path(path)):   # not changed while it was read
        _digests[key] = digest.hexdigest()
    return digest.hexdigest()
