"""The elastix wrapper: the only mstools module that imports ``itk`` (inside functions).

``import itk`` and the first elastix call cost about 15-18 s per process, so nothing
else may import this module's dependencies at module level. elastix writes a log
(and, for some settings, result files); every call runs with a private temporary
output folder that is removed afterwards, so nothing is left in the working directory.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mstools.detect.registration.parameters import ParameterMap, is_linear, needs_single_thread, with_mask_sampler
from mstools.sitk_bridge import RAS_TO_LPS, affine_to_geometry


class RegistrationError(ValueError):
    """elastix could not register the images (message: elastix's own reason)."""


@dataclass
class ElastixResult:
    displacement: np.ndarray            # (I, J, K, 3) float32, RAS mm, fixed grid, all stages
    linear_displacement: np.ndarray | None  # same for the leading linear stages only (None if none)
    transform_maps: list = field(default_factory=list)   # elastix's transform parameter maps
    seconds: float = 0.0                # registration + displacement fields
    load_seconds: float = 0.0           # loading itk and elastix (the first call in a process)


def _itk_image(data: np.ndarray, affine: np.ndarray, pixel: type):
    import itk

    image = itk.image_from_array(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)).astype(pixel))
    spacing, origin, direction = affine_to_geometry(affine)
    image.SetSpacing(list(spacing))
    image.SetOrigin(list(origin))
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(np.reshape(direction, (3, 3)))))
    return image


def to_itk(data: np.ndarray, affine: np.ndarray):
    """An ``itk.Image[F, 3]`` of ``data`` (axes i, j, k) on the grid of a NIfTI affine (LPS geometry)."""
    return _itk_image(data, affine, np.float32)


def itk_mask(mask: np.ndarray, affine: np.ndarray):
    """An ``itk.Image[UC, 3]`` mask (elastix's mask type)."""
    return _itk_image(np.asarray(mask) > 0, affine, np.uint8)


def from_itk(image) -> tuple[np.ndarray, np.ndarray]:
    """(array with axes i, j, k, NIfTI affine) of an itk image (vector images keep their last axis)."""
    import itk

    from mstools.sitk_bridge import geometry_to_affine

    array = itk.array_from_image(image)
    axes = (2, 1, 0) if array.ndim == 3 else (2, 1, 0, 3)
    affine = geometry_to_affine(tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                                itk.array_from_matrix(image.GetDirection()).ravel())
    return np.ascontiguousarray(array.transpose(axes)), affine


def _parameter_object(maps: Sequence[ParameterMap]):
    import itk

    po = itk.ParameterObject.New()
    for m in maps:
        po.AddParameterMap({k: tuple(v) for k, v in m.items()})
    return po


def _log_reason(folder: Path) -> str:
    log = folder / "elastix.log"
    if not log.is_file():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for n, line in enumerate(lines):
        if "Description:" in line:
            return line.split("Description:", 1)[1].strip()
    errors = [line for line in lines if "ERROR" in line.upper()]
    return errors[-1] if errors else ""


def _displacement(moving, transform_object, folder: Path) -> np.ndarray:
    import itk

    transformix = itk.TransformixFilter.New(moving)
    transformix.SetTransformParameterObject(transform_object)
    transformix.SetComputeDeformationField(True)
    transformix.SetLogToConsole(False)
    transformix.SetOutputDirectory(str(folder))
    transformix.UpdateLargestPossibleRegion()
    field_lps, _ = from_itk(transformix.GetOutputDeformationField())
    # ITK vectors are LPS: negate x and y for RAS (the same matrix both ways).
    return (field_lps.astype(np.float64) @ RAS_TO_LPS.T).astype(np.float32)


class _LogWatcher:
    """Reads elastix's log while it runs and reports each stage and resolution it starts.

    elastix writes one log for the whole chain; every stage restarts at "Resolution: 0".
    A daemon thread polls the file every :data:`LOG_POLL_SECONDS`; it only reads.
    """

    def __init__(self, path: Path, maps: Sequence[ParameterMap], progress):
        import threading

        self.path, self.progress = path, progress
        self.names = [str(m.get("Transform", ("?",))[0]).removesuffix("Transform") for m in maps]
        self.levels = [str(m.get("NumberOfResolutions", ("?",))[0]) for m in maps]
        self.offset, self.stage, self.partial = 0, 0, ""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mstools-elastix-log", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(LOG_POLL_SECONDS):
            self._read()

    def _read(self) -> None:
        try:
            with open(self.path, "r", errors="replace") as handle:
                handle.seek(self.offset)
                text = handle.read()
                self.offset = handle.tell()
        except OSError:
            return
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        for line in lines:
            if not line.startswith("Resolution: "):
                continue
            level = int(line.split(":")[1].strip() or 0)
            if level == 0:
                self.stage += 1
            n = min(max(self.stage, 1), len(self.names))
            self.progress(f"elastix stage {n}/{len(self.names)} ({self.names[n - 1]}), "
                          f"resolution {level + 1}/{self.levels[n - 1]}")

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


#: How often the elastix log is read for progress (seconds).
LOG_POLL_SECONDS = 1.0


def register(followup: np.ndarray, baseline: np.ndarray, *, followup_affine: np.ndarray,
             baseline_affine: np.ndarray, maps: Sequence[ParameterMap],
             followup_mask: np.ndarray | None = None, baseline_mask: np.ndarray | None = None,
             threads: int | None = None, progress=None) -> ElastixResult:
    """Register the baseline (moving) onto the follow-up (fixed) with elastix.

    Returns the displacement field of the whole chain on the follow-up grid and that of
    its leading linear (rigid/affine) stages. With a follow-up mask, samplers that
    miss oblique masks are replaced (:func:`~mstools.detect.registration.parameters.with_mask_sampler`).
    Raises :class:`RegistrationError` when
    elastix fails (e.g. too few samples inside both images). ``progress(message)`` hears
    each stage and resolution as elastix's log reports them, and the loading of ITK.
    """
    if not maps:
        raise ValueError("at least one parameter map is needed")
    start = time.perf_counter()
    if progress is not None:
        progress("loading ITK / elastix (about 15 s the first time)")
    import itk

    itk.ParameterObject.New()  # itk loads its modules lazily: this is where the cost is
    itk.elastix_registration_method  # noqa: B018
    load_seconds = time.perf_counter() - start
    if any(needs_single_thread(m) for m in maps):
        threads = 1
    fixed = to_itk(followup, followup_affine)
    moving = to_itk(baseline, baseline_affine)
    options = {}
    if followup_mask is not None:
        options["fixed_mask"] = itk_mask(followup_mask, followup_affine)
        maps = [with_mask_sampler(m) for m in maps]
    if baseline_mask is not None:
        options["moving_mask"] = itk_mask(baseline_mask, baseline_affine)
    if threads is not None:
        options["number_of_threads"] = int(threads)
    n_linear = 0
    while n_linear < len(maps) and is_linear(maps[n_linear]):
        n_linear += 1
    with tempfile.TemporaryDirectory(prefix="mstools-elastix-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        watcher = _LogWatcher(folder / "elastix.log", maps, progress) if progress is not None else None
        try:
            _, transform = itk.elastix_registration_method(
                fixed, moving, parameter_object=_parameter_object(maps), log_to_console=False,
                log_to_file=True, output_directory=str(folder), **options)
        except RuntimeError as exc:
            reason = _log_reason(folder) or str(exc).strip().splitlines()[-1]
            raise RegistrationError(f"elastix failed: {reason}") from None
        finally:
            if watcher is not None:
                watcher.stop()
        transform_maps = [{k: tuple(v) for k, v in dict(transform.GetParameterMap(n)).items()}
                          for n in range(transform.GetNumberOfParameterMaps())]
        displacement = _displacement(moving, transform, folder)
        linear = None
        if 0 < n_linear < len(maps):
            linear = _displacement(moving, _parameter_object(transform_maps[:n_linear]), folder)
        elif n_linear == len(maps):
            linear = displacement
        seconds = time.perf_counter() - start
    return ElastixResult(displacement=displacement, linear_displacement=linear,
                         transform_maps=transform_maps, seconds=seconds, load_seconds=load_seconds)
