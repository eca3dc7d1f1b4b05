"""mstools report: case and cohort pages built from hand-made run folders (run_layout)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mstools_cli.main import app
from mstools import __version__
from mstools import case_layout as case_names
from mstools import run_layout as layout
from mstools.errors import InputError
from mstools.io import OutputBatch, new_reference
from mstools.lesions import LESION_COLUMNS, lesion_table
from tests.conftest import oblique_affine

runner = CliRunner()
SHAPE = (24, 28, 20)
PNG_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
#: Two new lesions: label 1 is the small one (2x2x1 voxels), label 2 the large one (3x3x2).
LESIONS = {1: (slice(6, 8), slice(18, 20), slice(12, 13)), 2: (slice(14, 17), slice(8, 11), slice(7, 9))}
EVALUATION = [{"stage": "subtract", "gt_lesions": 2, "pred_lesions": 3, "msseg2_detected": 2, "msseg2_fp": 1,
               "lesion_sensitivity": 1.0, "lesion_ppv": 0.6667, "lesion_f1": 0.8, "dice": 0.7123},
              {"stage": "filter", "gt_lesions": 2, "pred_lesions": 2, "msseg2_detected": 2, "msseg2_fp": 0,
               "lesion_sensitivity": 1.0, "lesion_ppv": 1.0, "lesion_f1": 1.0, "dice": 0.9321}]
CONFIG = "stages:\n  subtract: {method: prados}\n  filter: {rules: larosa}\n"


def brain() -> np.ndarray:
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return ((i / 0.85) ** 2 + (j / 0.85) ** 2 + (k / 0.9) ** 2 <= 1).astype(np.uint8)


def make_run(root, name="case-a", *, with_lesions=True, qc=True, evaluation=True, subtraction=True,
             ground_truth=True, seed=0):
    """A run folder as `mstools run` writes it (run_layout), on an oblique anisotropic grid.

    The case folder is RUN/case (as after preprocess, relative paths in run.json) when
    ``qc``; otherwise a separate folder named by absolute paths."""
    affine = oblique_affine()
    reference = new_reference(SHAPE, affine)
    rng = np.random.default_rng(seed)
    mask_brain = brain()
    baseline = (mask_brain * 100.0 + rng.normal(0, 3, SHAPE)).astype(np.float32)
    labels = np.zeros(SHAPE, np.int32)
    if with_lesions:
        for label, box in LESIONS.items():
            labels[box] = label
    followup = (baseline + 120.0 * (labels > 0) + rng.normal(0, 3, SHAPE)).astype(np.float32)
    run = root / name
    case = run / layout.CASE_DIR if qc else root / f"{name}-input"
    score = (labels > 0).astype(np.float32) * 0.9
    table = lesion_table(labels, affine, score=score)
    with OutputBatch(create_dirs=True) as out:
        out.image(case / case_names.BASELINE, baseline, reference, np.float32)
        out.image(case / case_names.FOLLOWUP, followup, reference, np.float32)
        out.image(case / case_names.BRAIN_MASK, mask_brain, reference, np.uint8)
        if ground_truth:
            out.image(case / case_names.GROUND_TRUTH, labels > 0, reference, np.uint8)
        prefix = layout.final_prefix(run)
        out.image(f"{prefix}_score.nii.gz", score, reference, np.float32)
        out.image(f"{prefix}_mask.nii.gz", labels > 0, reference, np.uint8)
        out.image(f"{prefix}_labels.nii.gz", labels, reference, np.int32)
        out.table(f"{prefix}_lesions.tsv", table, LESION_COLUMNS)
        if subtraction:
            out.image(f"{layout.stage_prefix(run, 'subtract')}_subtraction.nii.gz", followup - baseline,
                      reference, np.float32)
        if evaluation:
            out.table(run / layout.EVALUATION, EVALUATION, layout.EVALUATION_COLUMNS)
        if qc:
            from mstools.preprocess.qc import qc_png

            out.text(case / "qc_preprocess.png", qc_png(baseline, followup, mask_brain, n_slices=2))
        out.text(run / layout.CONFIG, CONFIG)

        def where(path):
            return str(path.relative_to(run)) if qc else str(path)

        record = {
            "case": name, "status": "complete", "run_key": "k-" + name,
            "inputs": {"case_folder": where(case), "baseline": where(case / case_names.BASELINE),
                       "followup": where(case / case_names.FOLLOWUP),
                       "brain_mask": where(case / case_names.BRAIN_MASK),
                       "ground_truth": where(case / case_names.GROUND_TRUTH) if ground_truth else None},
            "config": {}, "final_stage": "filter",
            "stages": {"preprocess": {"status": "ran" if qc else "off", "seconds": 4.5, "prefix": None},
                       "subtract": {"status": "reused", "seconds": 0.0, "prefix": "subtract/subtract"},
                       "filter": {"status": "ran", "seconds": 1.5, "prefix": "filter/filter"}},
            "final": {"score": "new_lesions_score.nii.gz", "mask": "new_lesions_mask.nii.gz",
                      "labels": "new_lesions_labels.nii.gz", "table": "new_lesions_lesions.tsv"},
            "new_lesions": len(table), "new_lesion_volume_mm3": sum(r["volume_mm3"] for r in table),
            "metrics": EVALUATION[-1] if evaluation else None,
        }
        out.json(run / layout.RUN_RECORD, record)
    return run


def images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in PNG_URI.findall(page)]


def decode(png: bytes):
    """The PNG as a Pillow RGB image (it must decode)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    image.load()
    return image.convert("RGB")


class _TagBalance(HTMLParser):
    """Every non-void element closed, in order: a well-formed page renders the same everywhere."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors = [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def well_formed(page: str) -> bool:
    parser = _TagBalance()
    parser.feed(page)
    return not parser.errors and not parser.stack and page.startswith("<!DOCTYPE html>")


def invoke(*args):
    return runner.invoke(app, ["report", *map(str, args)])


# --------------------------------------------------------------------------- case page


def test_case_page_shows_lesions_metrics_figures_qc_and_config(tmp_path):
    run = make_run(tmp_path)
    result = invoke(run)
    assert result.exit_code == 0, result.stderr
    page_path = run / layout.REPORT
    assert result.stdout.split() == [str(page_path)]
    page = page_path.read_text()

    assert "New MS lesions: case-a" in page and "complete" in page and f"mstools {__version__}" in page
    voxel = abs(np.linalg.det(oblique_affine()[:3, :3]))
    small, large = 4 * voxel, 18 * voxel
    summary = re.search(r"<dt>new lesions</dt><dd>(\d+)</dd><dt>new-lesion volume</dt><dd>([\d.]+) mm3", page)
    assert summary[1] == "2" and float(summary[2]) == pytest.approx(small + large, abs=0.051)
    for label, volume in ((1, small), (2, large)):
        shown = re.search(rf'<td class="t">{label}</td><td>([\d.]+)</td>', page)
        assert float(shown[1]) == pytest.approx(volume, abs=0.051)
    # stage list with ran / done earlier (reused) and seconds; metrics of every stage, the final one highlighted
    assert '<td class="t">subtract</td><td class="t">done earlier</td><td>0.0</td>' in page
    assert ">reused<" not in page and "made by an earlier run with the same inputs" in page
    assert '<td class="t">preprocess</td><td class="t">ran</td><td>4.5</td>' in page
    assert re.search(r'<tr><td class="t">subtract</td><td>2</td><td>3</td><td>2</td><td>1</td><td>1.000</td>'
                     r"<td>0.667</td><td>0.800</td><td>0.712</td></tr>", page)
    assert '<tr class="final"><td class="t">filter</td>' in page and "<td>0.932</td>" in page

    pictures = images(page)
    assert len(pictures) == 3  # two lesion rows + the QC picture
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 1000 for p in pictures)
    assert all(decode(p).size[0] > 500 for p in pictures)
    # the preprocessing QC picture is redrawn from the pair in the display orientation, not the stored file
    assert (run / "case" / "qc_preprocess.png").read_bytes() not in pictures
    assert "case/qc_preprocess.png, redrawn from the preprocessed pair (anterior at the top" in page
    assert not any(b"http" in p or b"tEXt" in p or b"iTXt" in p for p in pictures)  # no metadata text at all
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert captions[0].startswith("New lesion 2 (1 of 2 by size)")  # largest first
    assert captions[1].startswith("New lesion 1 (2 of 2 by size)")
    # the filter's score is one probability per lesion: one column, not a mean and a max that always agree
    assert "<th>filter probability</th>" in page and "score mean" not in page
    assert "filter probability 0.9;" in captions[0]
    assert "third column: subtraction (subtract stage, z-scored)" in page and "cyan: ground truth" in captions[0]
    assert "<details><summary>config.yaml</summary><pre>stages:" in page
    assert not re.search(r"https?://", page)  # offline: no web address at all
    assert "<script" not in page and "<link" not in page
    assert well_formed(page)


def test_max_lesions_limits_the_pictures_not_the_table(tmp_path):
    run = make_run(tmp_path, qc=False)
    out = tmp_path / "elsewhere.html"
    result = invoke(run, "-o", out, "--max-lesions", "1", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["kind"] == "case" and payload["new_lesions"] == 2 and payload["figures"] == 1
    assert payload["written"] == [str(out)] and not (run / layout.REPORT).exists()
    page = out.read_text()
    assert len(images(page)) == 1 and "the 1 largest of 2" in page
    assert '<td class="t">1</td>' in page and '<td class="t">2</td>' in page
    assert "Preprocessing quality control" not in page


def test_case_without_new_lesion(tmp_path):
    run = make_run(tmp_path, "quiet", with_lesions=False, qc=False, evaluation=False, subtraction=False,
                   ground_truth=False)
    result = invoke(run)
    assert result.exit_code == 0, result.stderr
    page = (run / layout.REPORT).read_text()
    assert len(images(page)) == 1
    assert "No new lesion was found; middle axial slice" in page
    assert "<dd>0</dd>" in page and "<dd>0.0 mm3</dd>" in page
    assert "Evaluation against the ground truth" not in page and "third column: follow-up - baseline" in page
    assert "cyan" not in page and well_formed(page)


def test_subtraction_of_a_stage_that_is_off_is_not_shown(tmp_path):
    run = make_run(tmp_path, qc=False)
    record = json.loads((run / layout.RUN_RECORD).read_text())
    record["stages"]["subtract"]["status"] = "off"
    (run / layout.RUN_RECORD).write_text(json.dumps(record))
    assert invoke(run).exit_code == 0
    page = (run / layout.REPORT).read_text()
    assert "third column: follow-up - baseline" in page and "subtraction (subtract stage" not in page


def test_existing_page_needs_force(tmp_path):
    run = make_run(tmp_path, qc=False)
    (run / layout.REPORT).write_text("old")
    result = invoke(run)
    assert result.exit_code == 1 and "--force" in result.stderr
    assert (run / layout.REPORT).read_text() == "old"
    assert invoke(run, "--force").exit_code == 0
    assert (run / layout.REPORT).read_text().startswith("<!DOCTYPE html>")


def test_values_from_records_are_escaped(tmp_path):
    from mstools.report.html import case_page

    page = case_page({"case": "<script>x</script>", "status": "complete"}, config_text="a: <b>", version="1")
    assert "<script>" not in page and "&lt;script&gt;" in page and "a: &lt;b&gt;" in page


def test_metrics_of_the_record_stand_in_for_a_missing_evaluation_table():
    from mstools.report.html import case_page

    record = {"case": "c", "status": "complete", "final_stage": "refine",
              "metrics": {"lesion_f1": 0.625, "dice": None, "gt_lesions": 4}}
    page = case_page(record, version="1")
    assert re.search(r'<tr class="final"><td class="t">refine</td><td>4</td><td>0.625</td><td>n/a</td></tr>', page)
    assert "Evaluation against the ground truth" not in case_page({**record, "metrics": None}, version="1")


# --------------------------------------------------------------------------- figures (library)


def test_display_orientation_puts_right_anterior_superior_up_the_axes():
    from mstools.report.figures import display_spacing, to_display

    # array axes: i runs to the patient's left, j to inferior, k to anterior (an "LIA" grid), oblique
    permute = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], float)
    affine = oblique_affine(spacing=(1.0, 1.5, 3.0), angles_deg=(8.0, -5.0, 4.0))
    affine[:3, :3] = permute @ affine[:3, :3]
    volume = np.zeros((10, 12, 8))
    marks = {(2, 3, 4): 1.0, (7, 3, 4): 2.0, (2, 9, 4): 3.0, (2, 3, 6): 4.0}
    for ijk, value in marks.items():
        volume[ijk] = value
    before = volume.copy()
    shown = to_display(volume, affine)
    where = {value: np.argwhere(shown == value)[0] for value in marks.values()}
    world = {value: affine[:3, :3] @ np.array(ijk) + affine[:3, 3] for ijk, value in marks.items()}
    for a, b in ((1.0, 2.0), (1.0, 3.0), (1.0, 4.0)):
        moved = np.flatnonzero(where[a] != where[b])
        assert moved.size == 1  # one display axis changes
        axis = int(moved[0])
        # the display axis that changed runs the way the dominant world axis (R, A, S) does
        assert np.sign(where[b][axis] - where[a][axis]) == np.sign((world[b] - world[a])[axis])
    assert shown.shape == (10, 8, 12)
    assert np.allclose(display_spacing(affine), (1.0, 3.0, 1.5))
    assert np.array_equal(volume, before)  # input untouched


def test_case_figures_order_slices_and_missed_truth():
    from mstools.report.figures import case_figures, to_display

    affine = oblique_affine()
    rng = np.random.default_rng(3)
    baseline = rng.normal(100, 5, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.int32)
    for label, box in LESIONS.items():
        labels[box] = label
    truth = labels > 0
    missed_box = (slice(3, 5), slice(4, 6), slice(3, 5))
    truth[missed_box] = True
    before = labels.copy()
    figures = case_figures(baseline, baseline + 50 * (labels > 0), labels, affine, ground_truth=truth,
                           brain_mask=brain(), max_lesions=5)
    assert [(f.kind, f.label) for f in figures][:2] == [("lesion", 2), ("lesion", 1)]
    assert [f.kind for f in figures] == ["lesion", "lesion", "missed"]
    shown = to_display(labels, affine)
    for f in figures[:2]:
        ks = np.argwhere(shown == f.label)[:, 2]
        assert f.slice_index == int(round(ks.mean()))
    missed = np.zeros(SHAPE, bool)
    missed[missed_box] = True
    assert figures[2].slice_index == int(round(np.argwhere(to_display(missed, affine))[:, 2].mean()))
    assert np.array_equal(labels, before)
    only = case_figures(baseline, baseline, labels, affine, ground_truth=truth, max_lesions=1, show_missed=False)
    assert [(f.kind, f.label) for f in only] == [("lesion", 2)]
    with pytest.raises(ValueError, match="followup has shape"):
        case_figures(baseline, baseline[:-1], labels, affine)


RED = (255, 32, 32)
CYAN = (0, 229, 255)
YELLOW = (255, 210, 0)


def colour_pixels(image, colour) -> np.ndarray:
    """(row, column) of every pixel of exactly ``colour``."""
    return np.argwhere(np.all(np.asarray(image) == np.array(colour, np.uint8), axis=-1))


def panel_box(image, column_stop: int) -> tuple[slice, slice]:
    """Rows and columns of the top panel in columns 0..column_stop: the topmost large connected
    non-white region there (titles and labels are small black glyphs on white)."""
    from scipy import ndimage

    filled = (np.asarray(image)[:, :column_stop] != 255).any(axis=-1)
    blobs, count = ndimage.label(filled)
    assert count > 0
    sizes = np.bincount(blobs.ravel())[1:]
    boxes = [box for box, size in zip(ndimage.find_objects(blobs), sizes) if size >= sizes.max() / 2]
    return min(boxes, key=lambda box: box[0].start)


def test_row_keeps_the_physical_aspect_of_an_anisotropic_grid():
    from mstools.report.figures import case_figures, display_spacing, to_display

    affine = oblique_affine(spacing=(0.8, 2.4, 1.6), angles_deg=(6.0, -4.0, 3.0))
    shape = (30, 12, 16)
    volume = np.full(shape, 100.0, np.float32)  # one grey: the panels are black rectangles on white
    labels = np.zeros(shape, np.int32)
    figures = case_figures(volume, volume, labels, affine, zoom_mm=0)
    assert [f.kind for f in figures] == ["overview"]
    image = decode(figures[0].png)
    assert image.size[0] == 810  # FIGURE_WIDTH_IN x DPI
    shown = to_display(volume, affine).shape
    spacing = display_spacing(affine)
    rows, columns = panel_box(image, 270)
    width, height = columns.stop - columns.start, rows.stop - rows.start
    expected = (shown[0] * spacing[0]) / (shown[1] * spacing[1])
    assert width / height == pytest.approx(expected, rel=0.03)
    assert abs(expected - shown[0] / shown[1]) > 0.3  # voxel counts alone would give another shape


def test_lesion_panels_show_the_scan_and_outline_the_detection_where_it_is():
    from mstools.report.figures import case_figures

    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # RAS: display = storage, so where the lesion is can be counted
    shape = (40, 40, 10)
    rng = np.random.default_rng(5)
    baseline = (100 + rng.normal(0, 5, shape)).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    labels[28:32, 28:32, 4:6] = 1  # right (high i) and anterior (high j)
    truth = labels > 0
    followup = baseline + 80 * truth
    figures = case_figures(baseline, followup, labels, affine, ground_truth=truth, zoom_mm=0)
    assert [f.kind for f in figures] == ["lesion"]
    image = decode(figures[0].png)
    rows, columns = panel_box(image, image.size[0] // 3)
    panel = np.asarray(image)[rows, columns]
    grey = panel[(panel[..., 0] == panel[..., 1]) & (panel[..., 1] == panel[..., 2])][:, 0]
    assert grey.std() > 20  # the scan, not a blank panel
    red, cyan = colour_pixels(panel, RED), colour_pixels(panel, CYAN)
    assert len(red) > 20 and len(cyan) > 20
    height, width = rows.stop - rows.start, columns.stop - columns.start
    centre_row, centre_column = red.mean(axis=0)
    # lesion centre at i = 30 of 40 (right), j = 30 of 40 (anterior: near the top)
    assert centre_column / width == pytest.approx(30 / 40, abs=0.05)
    assert centre_row / height == pytest.approx(1 - 30 / 40, abs=0.05)
    # without ground truth, no cyan; without detection, no red
    assert len(colour_pixels(decode(case_figures(baseline, followup, labels, affine, zoom_mm=0)[0].png), CYAN)) == 0
    none = case_figures(baseline, followup, np.zeros(shape, np.int32), affine, zoom_mm=0, show_missed=False)
    assert len(colour_pixels(decode(none[0].png), RED)) == 0


def test_pictures_are_deterministic_and_carry_no_text_chunk():
    from mstools.report.figures import case_figures

    baseline = np.random.default_rng(2).normal(100, 5, SHAPE).astype(np.float32)
    labels = np.zeros(SHAPE, np.int32)
    labels[LESIONS[2]] = 2
    first = case_figures(baseline, baseline + 50 * (labels > 0), labels, oblique_affine(), brain_mask=brain())
    again = case_figures(baseline, baseline + 50 * (labels > 0), labels, oblique_affine(), brain_mask=brain())
    assert [f.png for f in first] == [f.png for f in again]
    assert not any(chunk in first[0].png for chunk in (b"tEXt", b"zTXt", b"iTXt"))


def test_missed_lesions_are_those_the_evaluation_misses():
    from mstools.metrics.case import evaluate_case
    from mstools.metrics.defaults import MIN_LESION_MM3
    from mstools.report.figures import case_figures

    affine = np.diag([1.0, 1.0, 1.0, 1.0])  # 1 mm3 voxels
    shape = (30, 30, 20)
    baseline = np.random.default_rng(4).normal(100, 5, shape).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    labels[5:8, 5:8, 5:8] = 1
    truth = labels > 0
    truth[20:22, 20, 10] = True          # a 2 mm3 fragment: not a lesion for the metrics (<= 3 mm3)
    truth[15:18, 22:25, 14:17] = True    # 27 mm3, not detected: missed
    truth[10:13, 25:27, 4:5] = True      # two 6 mm3 parts touching by an edge only: one lesion of 12 mm3
    truth[13:16, 27:29, 4:5] = True      # for 26-connectivity, two lesions for the evaluation's 6: both missed
    figures = case_figures(baseline, baseline, labels, affine, ground_truth=truth, max_lesions=10)
    missed = [f for f in figures if f.kind == "missed"]
    metrics = evaluate_case(labels > 0, truth, affine=affine).metrics
    assert metrics["lesion_sensitivity"] < 1
    assert len(missed) == metrics["msseg2_missed"] == 3
    assert [round(float(re.search(r"\(([\d.]+) mm3", f.caption)[1])) for f in missed] == [27, 6, 6]
    assert all(f"larger than {MIN_LESION_MM3:g} mm3" in f.caption for f in missed)
    # the fragment alone: the table says sensitivity 1.0, and the page shows no missed lesion
    fragment = labels > 0
    fragment[20:22, 20, 10] = True
    assert evaluate_case(labels > 0, fragment, affine=affine).metrics["lesion_sensitivity"] == 1.0
    assert [f.kind for f in case_figures(baseline, baseline, labels, affine, ground_truth=fragment)] == ["lesion"]


def test_qc_picture_puts_anterior_at_the_top_of_an_lpi_scan():
    from mstools.preprocess.qc import qc_png
    from mstools.report.figures import display_spacing

    # LPI storage: i runs to the patient's left, j to posterior, k to inferior
    affine = np.diag([-1.0, -1.2, -2.0, 1.0])
    shape = (24, 30, 12)
    volume = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[4:20, 4:26, 2:10] = 1
    volume[mask > 0] = 100.0
    volume[10:14, 5:8, 2:10] = 1000.0  # marker at the anterior end of the brain: low j in LPI
    before = volume.copy()
    for drawn_with, marker_at_top in ((dict(affine=affine), True), (dict(spacing_mm=(1.0, 1.2, 2.0)), False)):
        image = decode(qc_png(volume, volume, mask, n_slices=2, **drawn_with))
        assert image.size == (2 * 220, 660)  # 2.2 in per slice x 6.6 in at 100 dpi, as it always was
        rows, columns = panel_box(image, image.size[0] // 2)
        panel = np.asarray(image)[rows, columns]
        white = np.argwhere((panel == 255).all(axis=-1))
        assert len(white) > 0
        top_half = white[:, 0].mean() < (rows.stop - rows.start) / 2
        assert top_half == marker_at_top
        assert len(colour_pixels(image, YELLOW)) > 0  # the brain mask's outline
    assert np.array_equal(volume, before)
    # aspect on the display grid: width / height = (24 x 1 mm) / (30 x 1.2 mm)
    image = decode(qc_png(volume, volume, mask, n_slices=1, affine=affine))
    rows, columns = panel_box(image, image.size[0])
    spacing = display_spacing(affine)
    assert (columns.stop - columns.start) / (rows.stop - rows.start) == pytest.approx(
        24 * spacing[0] / (30 * spacing[1]), rel=0.03)
    with pytest.raises(ValueError, match="followup has shape"):
        qc_png(volume, volume[:-1], mask)


def test_lesions_per_case_histogram_has_integer_ticks():
    from mstools.report.figures import _histogram_figure, count_ticks

    for counts in ([0, 0, 0], [0, 1, 1], [2, 5, 0, 3], list(range(40))):
        figure = _histogram_figure(counts, [float(c) for c in counts])
        figure.canvas.draw()
        ticks = figure.axes[0].get_xticks()
        lo, hi = figure.axes[0].get_xlim()
        shown = [t for t in ticks if lo <= t <= hi]
        assert shown and all(float(t).is_integer() and t >= 0 for t in shown), shown
        assert shown[0] == 0 and max(shown) <= max(counts) and len(shown) <= 10
    assert list(count_ticks(0)) == [0] and list(count_ticks(25)) == [0, 3, 6, 9, 12, 15, 18, 21, 24]


def test_score_columns_say_something():
    from mstools.report.html import case_page, score_display

    rules = [{"label": 1, "score_mean": 1.0, "score_max": 1.0}, {"label": 2, "score_mean": 1.0, "score_max": 1.0}]
    learned = [{"label": 1, "score_mean": 0.999611, "score_max": 0.999611},
               {"label": 2, "score_mean": 0.205006, "score_max": 0.205006}]
    voxelwise = [{"label": 1, "score_mean": 0.61, "score_max": 0.93}]
    assert score_display(rules, "filter").columns == () and score_display(rules, "filter").name is None
    assert [c[0] for c in score_display(learned, "filter").columns] == ["filter probability"]
    assert [c[0] for c in score_display(voxelwise, "refine").columns] == ["score mean", "score max"]
    assert score_display([{"label": 1, "score_mean": "n/a"}], "refine").columns == ()
    record = {"case": "c", "status": "complete", "final_stage": "filter", "new_lesions": 2}
    page = case_page(record, lesions=rules, version="1")
    assert "score" not in re.sub(r"<p class=\"note\">.*?</p>", "", page.split("<h2>New lesions")[1])
    assert "every kept lesion scores 1" in page
    page = case_page(record, lesions=learned, version="1")
    assert "<td>0.9996</td>" in page and "<td>0.205</td>" in page and "score max" not in page


def test_a_count_that_differs_between_the_evaluation_and_the_lesion_table_is_explained():
    from mstools.report.html import case_page

    record = {"case": "c", "status": "complete", "final_stage": "filter", "new_lesions": 2}
    rows = [{"stage": "filter", "gt_lesions": 3, "pred_lesions": 3, "msseg2_detected": 3}]
    page = html.unescape(case_page(record, evaluation=rows, version="1"))
    assert "6-connected components (voxels sharing a face) larger than 3 mm3" in page
    assert "final stage's 2 new lesions (26-connected" in page and "count as 3 there" in page
    assert "count as" not in case_page({**record, "new_lesions": 3}, evaluation=rows, version="1")


def test_a_run_from_raw_scans_is_named_by_its_folder(tmp_path):
    from mstools.report.build import case_name
    from mstools.report.html import case_page

    raw = {"raw_baseline": "/data/p01/flair_time01_raw.nii.gz", "raw_followup": "/data/p01/flair_time02_raw.nii.gz"}
    record = {"case": "flair_time02_raw", "inputs": raw}
    assert case_name(record, tmp_path / "real-p01") == "real-p01"
    assert case_name({"case": "sim-001", "inputs": {}}, tmp_path / "elsewhere") == "sim-001"
    assert case_name({"case": "patient-7", "inputs": raw}, tmp_path / "x") == "patient-7"  # named by the user
    page = case_page({**record, "status": "complete"}, name="real-p01", version="1")
    assert "<h1>New MS lesions: real-p01" in page and "<title>real-p01: new MS lesions</title>" in page
    assert "flair_time01_raw.nii.gz -&gt; flair_time02_raw.nii.gz" in page


def test_windows_come_from_the_brain():
    from mstools.report.figures import difference_window, intensity_window

    volume = np.zeros((20, 20, 20), np.float32)
    inside = np.zeros_like(volume, bool)
    inside[5:15, 5:15, 5:15] = True
    volume[inside] = np.linspace(0, 1000, inside.sum())
    volume[0, 0, 0] = 1e6  # outside the brain: ignored
    lo, hi = intensity_window(volume, volume, inside)
    assert 5 <= lo <= 15 and 985 <= hi <= 995
    assert difference_window(volume - 500, inside) == pytest.approx(499, abs=2)


# --------------------------------------------------------------------------- cohort page


def make_cohort(tmp_path):
    deriv = tmp_path / "deriv"
    deriv.mkdir()
    make_run(deriv, "case-a", qc=False)
    make_run(deriv, "case b", with_lesions=False, qc=False, evaluation=False, seed=1)
    rows = [{"case": "case-a", "status": "done", "new_lesions": 2, "new_lesion_volume_mm3": 54.5,
             "seconds": 12.0, "gt_lesions": 2, "lesion_sensitivity": 1.0, "lesion_ppv": 1.0,
             "lesion_f1": 1.0, "dice": 0.9, "run_folder": "case-a"},
            {"case": "case b", "status": "skipped", "new_lesions": 0, "new_lesion_volume_mm3": 0.0,
             "seconds": 9.0, "gt_lesions": 1, "lesion_sensitivity": 0.0, "lesion_ppv": None,
             "lesion_f1": 0.0, "dice": 0.5, "run_folder": str(deriv / "case b")},
            {"case": "case-c", "status": "failed", "run_folder": "case-c"}]
    with OutputBatch() as out:
        out.table(deriv / layout.COHORT_TABLE, rows, layout.COHORT_COLUMNS)
        out.table(deriv / layout.ERRORS_TABLE, [{"case": "case-c", "stage": "subtract",
                                                  "message": "baseline.nii.gz: file not found"}],
                  layout.ERROR_COLUMNS)
    return deriv


def test_cohort_page_links_case_pages_histograms_metrics_and_errors(tmp_path):
    deriv = make_cohort(tmp_path)
    result = invoke(deriv)
    assert result.exit_code == 0, result.stderr
    written = result.stdout.split("\n")[:-1]
    cohort = deriv / layout.COHORT_REPORT
    assert written[0] == str(cohort)
    assert sorted(written[1:]) == sorted([str(deriv / "case-a" / layout.REPORT), str(deriv / "case b" / layout.REPORT)])
    page = cohort.read_text()
    assert '<a href="case-a/report.html">case-a</a>' in page and '<a href="case%20b/report.html">case b</a>' in page
    assert "case-c" in page and 'href="case-c' not in page
    assert len(images(page)) == 1 and images(page)[0].startswith(b"\x89PNG")  # the histograms
    assert "3 cases (1 done, 1 done earlier, 1 failed), 1 error" in page
    assert '<td class="t">done earlier</td>' in page and '<td class="t">skipped</td>' not in page
    assert "which mstools batch reused" in page
    assert re.search(r"<td class=\"t\">lesion F1</td><td>0.500</td><td>0.707</td><td>2</td>", page)
    assert re.search(r"<td class=\"t\">lesion PPV</td><td>1.000</td><td>0.000</td><td>1</td>", page)
    assert "Errors (1)" in page and "baseline.nii.gz: file not found" in page
    assert "run_folder" not in page and not re.search(r"https?://", page)
    assert well_formed(page)
    assert "No new lesion was found" in (deriv / "case b" / layout.REPORT).read_text()

    # existing case pages are linked, not rewritten; the cohort page needs --force
    (deriv / "case-a" / layout.REPORT).write_text("kept")
    again = invoke(deriv)
    assert again.exit_code == 1 and "--force" in again.stderr
    again = invoke(deriv, "--force", "--no-case-pages", "-o", tmp_path / "c.html")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.split() == [str(tmp_path / "c.html")]
    assert (deriv / "case-a" / layout.REPORT).read_text() == "kept"
    assert 'href="deriv/case-a/report.html"' in (tmp_path / "c.html").read_text()


def test_cohort_without_case_pages_links_nothing_missing(tmp_path):
    from mstools.report import write_cohort_report

    deriv = make_cohort(tmp_path)
    page_path = write_cohort_report(deriv, case_pages=False)
    assert page_path == deriv / layout.COHORT_REPORT
    page = page_path.read_text()
    assert "<a href" not in page and not (deriv / "case-a" / layout.REPORT).exists()


def test_cohort_names_a_case_whose_page_cannot_be_made(tmp_path):
    from mstools.report import write_cohort_reports

    deriv = make_cohort(tmp_path)
    for name in ("labels", "mask"):
        (deriv / "case b" / f"new_lesions_{name}.nii.gz").unlink()
    heard = []
    written = write_cohort_reports(deriv, on_case=lambda case, message: heard.append(case))
    assert written == [deriv / layout.COHORT_REPORT, deriv / "case-a" / layout.REPORT]
    assert heard == ["case-a", "case b", "case-c"]
    page = written[0].read_text()
    assert "case b <span class=\"note\">(no page: " in page and "new_lesions_labels.nii.gz" in page
    assert 'href="case%20b' not in page


def test_library_writes_a_case_page(tmp_path):
    from mstools.report import write_case_report

    run = make_run(tmp_path, qc=False)
    path = write_case_report(run, max_lesions=0)
    assert path == run / layout.REPORT and len(images(path.read_text())) == 0
    with pytest.raises(InputError, match="--force"):
        write_case_report(run)


# --------------------------------------------------------------------------- errors and help


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "folder not found"),
    (lambda p: p, "holds neither run.json"),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "is a file"),
])
def test_bad_folders_are_one_line_errors(tmp_path, setup, message):
    folder = setup(tmp_path)
    result = invoke(folder)
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.strip().count("\n") == 0
    assert result.stdout == ""


def test_broken_run_folders_are_one_line_errors(tmp_path):
    run = make_run(tmp_path, qc=False)
    (run / layout.RUN_RECORD).write_text("{not json")
    result = invoke(run)
    assert result.exit_code == 1 and "unreadable run record" in result.stderr
    run = make_run(tmp_path, "case-x", qc=False)
    (tmp_path / "case-x-input" / case_names.BASELINE).unlink()
    result = invoke(run)
    assert result.exit_code == 1 and case_names.BASELINE in result.stderr and "not found" in result.stderr
    assert not (run / layout.REPORT).exists()
    assert result.stderr.strip().count("\n") == 0


def test_help():
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0
    text = result.stdout.replace("\n", " ")
    assert "mstools report" in text and "--max-lesions" in text and "--no-case-pages" in text


# --------------------------------------------------------------------------- in a browser


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless_shell"):
        path = shutil.which(name)
        if path:
            return path
    return None


#: Set to a folder to keep the browser's screenshots there (.ci/run sets .ci/screenshots).
SCREENSHOT_DIR = "MSTOOLS_SCREENSHOT_DIR"


def _screenshot(page, name, tmp_path):
    """A page as headless Chromium draws it, decoded to RGB (kept in $MSTOOLS_SCREENSHOT_DIR when set)."""
    import os

    shot = tmp_path / name
    subprocess.run([_browser(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    if os.environ.get(SCREENSHOT_DIR):
        keep = Path(os.environ[SCREENSHOT_DIR])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep / name)
    return np.asarray(decode(data)).astype(int)


@pytest.mark.skipif(_browser() is None, reason="no Chromium/Chrome binary on PATH (chromium, chromium-browser, "
                                               "google-chrome, headless_shell); the page content is tested above")
def test_pages_render_in_headless_chromium(tmp_path):
    run = make_run(tmp_path)
    assert invoke(run).exit_code == 0
    rgb = _screenshot(run / layout.REPORT, "case_page.png", tmp_path)
    # the browser decoded and drew the lesion rows: their red and cyan outlines are on screen
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    cyan = (rgb[..., 0] < 60) & (rgb[..., 1] > 190) & (rgb[..., 2] > 220)
    assert red.sum() > 100 and cyan.sum() > 100
    # and the panels are scans, not blank: many grey levels where each lesion's row is drawn
    rows = np.flatnonzero(red.any(axis=1))
    starts = [rows[0], *rows[1:][np.diff(rows) > 100]]
    assert len(starts) == len(LESIONS)
    for start in starts:
        band = rgb[start:start + 100]
        assert len(np.unique(band[(band[..., 0] == band[..., 1]) & (band[..., 1] == band[..., 2])][:, 0])) > 20

    # the cohort page: its histograms decoded and drawn, each panel's bar colour on screen
    (tmp_path / "cohort").mkdir()
    deriv = make_cohort(tmp_path / "cohort")
    assert invoke(deriv).exit_code == 0
    page = (deriv / layout.COHORT_REPORT).read_text()
    histogram = np.asarray(decode(images(page)[0])).reshape(-1, 3).astype(int)
    colours, counts = np.unique(histogram[histogram.max(axis=1) - histogram.min(axis=1) > 60], axis=0,
                                return_counts=True)
    bars = colours[np.argsort(counts)[::-1][:3]]           # blue, brown, green: thousands of pixels each
    rgb = _screenshot(deriv / layout.COHORT_REPORT, "cohort_page.png", tmp_path)
    for colour in bars:
        assert (np.abs(rgb - colour).max(axis=-1) <= 8).sum() > 2000, colour


def test_a_page_written_by_run_before_its_record_is_marked_complete_says_complete():
    from mstools.report.html import case_page

    page = case_page({"case": "c", "status": "reporting"}, config_text="", version="1")
    assert "reporting" not in page and "complete" in page
