"""Report pages as HTML strings: dicts and PNG bytes in, one self-contained page out.

A page needs nothing but itself: pictures are ``data:image/png;base64`` URIs, the
stylesheet is inline, fonts are the browser's own, there is no script and no web
address, so it opens offline in any browser and can be mailed as one file. Every
value taken from a record or a table is HTML-escaped.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from html import escape
from typing import Mapping, Sequence

from mstools.report.figures import Figure

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:1.5em auto;
max-width:62em;padding:0 1em;color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#555;margin-top:0}.badge{display:inline-block;padding:.05em .5em;border-radius:.6em;
font-size:.8em;background:#e3e9f3;color:#234}.badge.complete,.badge.done,.badge.skipped{background:#dcefdc;color:#1c4d1c}
.badge.failed,.badge.error{background:#f6dcdc;color:#6b1c1c}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #d6d6d6;padding:.2em .55em;text-align:right}
th{background:#f3f4f6}td.t,th.t{text-align:left}tr.final td{font-weight:600;background:#fbf7e6}
figure{margin:1em 0}figure img{max-width:100%;height:auto;display:block;border:1px solid #ccc}
figcaption{font-size:.85em;color:#444;margin-top:.25em}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}dl.summary dt{color:#555}
dl.summary dd{margin:0;font-weight:600}pre{background:#f6f8fa;padding:.7em;overflow:auto;font-size:.85em}
details summary{cursor:pointer;color:#234}.note{color:#666;font-size:.9em}
footer{margin-top:2em;color:#888;font-size:.8em}
""".strip()

#: Columns of the final lesion table on a case page: (header, keys joined into one cell, format);
#: the score columns that follow depend on the score (:func:`score_display`).
LESION_TABLE = (("label", ("label",), "{:.0f}"), ("volume (mm3)", ("volume_mm3",), "{:.1f}"),
                ("centroid x, y, z (mm)", ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), "{:.1f}"))
SCORE_COLUMNS = (("score mean", ("score_mean",), "{:.3g}"), ("score max", ("score_max",), "{:.3g}"))
#: How a status of the run record (stage) or of cohort.tsv (case) reads on a page: a stage
#: reused from an earlier run, or a case that ``mstools batch`` found complete, was done
#: earlier (not "skipped", which reads as "not processed").
STATUS_WORDS = {"reused": "done earlier", "skipped": "done earlier"}
DONE_EARLIER_STAGE = ("done earlier: the stage's outputs were already in the run folder, made by an earlier run "
                      "with the same inputs, options and mstools version, and were reused.")
DONE_EARLIER_CASE = ("done earlier: the case's run folder already held a complete run with the same inputs and "
                     "settings, which mstools batch reused (status \"skipped\" in cohort.tsv).")
#: Metrics shown (evaluation.tsv columns, mstools.run_layout.EVALUATION_COLUMNS).
METRIC_HEADERS = {"stage": "stage", "gt_lesions": "true lesions", "pred_lesions": "detected",
                  "msseg2_detected": "true positives", "msseg2_fp": "false positives",
                  "lesion_sensitivity": "lesion sensitivity", "lesion_ppv": "lesion PPV",
                  "lesion_f1": "lesion F1", "dice": "Dice"}
COHORT_METRICS = ("lesion_sensitivity", "lesion_ppv", "lesion_f1", "dice")
#: Headers of cohort.tsv's columns (mstools.run_layout.COHORT_COLUMNS) on the cohort page.
COHORT_HEADERS = {**METRIC_HEADERS, "case": "case", "status": "status", "new_lesions": "new lesions",
                  "new_lesion_volume_mm3": "new-lesion volume (mm3)", "seconds": "seconds",
                  "enlarging_lesions": "enlarging lesions", "active": "active",
                  "activity_probability": "P(active)"}


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI (RFC 2397), for ``<img src=...>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def number(value) -> float | None:
    """A finite float from a record or TSV cell (``"n/a"``, empty, NaN -> None)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def cell(value, fmt: str = "{:.3g}") -> str:
    """A table cell's escaped text: numbers formatted, missing values as n/a."""
    if value is None or (isinstance(value, str) and value.strip() in ("", "n/a", "nan", "None")):
        return "n/a"
    if isinstance(value, str):
        parsed = number(value)
        if parsed is None or fmt == "{}":
            return escape(value)
        value = parsed
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            return "n/a"
        return escape(fmt.format(value))
    return escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: Sequence[int] = (0,),
           row_classes: Sequence[str] | None = None) -> str:
    def th(i, h):
        return f'<th class="t">{escape(h)}</th>' if i in text_columns else f"<th>{escape(h)}</th>"

    def td(i, c):
        return f'<td class="t">{c}</td>' if i in text_columns else f"<td>{c}</td>"

    head = "<tr>" + "".join(th(i, h) for i, h in enumerate(headers)) + "</tr>"
    body = []
    for n, row in enumerate(rows):
        css = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{css}>" + "".join(td(i, c) for i, c in enumerate(row)) + "</tr>")
    return "<table>\n" + head + "\n" + "\n".join(body) + "\n</table>"


def _page(title: str, body: Sequence[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _figure(png: bytes, caption: str, alt: str) -> str:
    return (f'<figure><img src="{data_uri(png)}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _badge(status: str) -> str:
    return f'<span class="badge {escape(status)}">{escape(status_words(status))}</span>'


def _counting_note(metric_rows: Sequence[Mapping], final, count: int) -> str:
    """Why the evaluation's count of detected lesions can differ from the page's new lesions."""
    from mstools.metrics.defaults import CONNECTIVITY, MIN_LESION_MM3

    row = next((r for r in metric_rows if r.get("stage") == final), None)
    counted = number(row.get("pred_lesions")) if row is not None else None
    if counted is None or int(counted) == count:
        return ""
    return (f" The evaluation counts lesions as MSSEG-2's scoring does: {CONNECTIVITY}-connected components "
            f"(voxels sharing a face) larger than {MIN_LESION_MM3:g} mm3, so the final stage's {count} new "
            f"lesion{'' if count == 1 else 's'} (26-connected: voxels touching at an edge or corner are one "
            f"lesion) count as {int(counted)} there.")


def _file_name(path) -> str:
    return str(path).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def status_words(status: str) -> str:
    """A record's status as the page says it (:data:`STATUS_WORDS`)."""
    return STATUS_WORDS.get(status, status)


@dataclass(frozen=True)
class ScoreDisplay:
    """How the final lesions' score is shown: table columns, the captions' name, a note."""

    columns: tuple            # LESION_TABLE-like (header, keys, format) rows
    name: str | None          # the score's name in figure captions; None: not shown
    note: str                 # said under the table ("" for nothing)


def score_display(lesions: Sequence[Mapping], final_stage: str | None) -> ScoreDisplay:
    """Score columns that say something about the final lesions.

    The filter stage writes as each kept lesion's score its learned filter's probability,
    or 1 under La Rosa's rules (:func:`mstools.candidates.filtering.kept_detections`): constant over
    the lesion, so its mean and max are one number. Such a score gets one column (the
    filter's probability); a score that is 1 for every lesion of the filter says nothing
    and is left out, with a note. Other stages' scores vary inside a lesion: mean and max.
    """
    pairs = [(number(r.get("score_mean")), number(r.get("score_max"))) for r in lesions]
    known = [(m, x) for m, x in pairs if m is not None and x is not None]
    if not known:
        return ScoreDisplay((), None, "")
    if all(m == x for m, x in known):
        final_stage = "filter" if final_stage == "activity" else final_stage   # activity keeps filter's scores
        if final_stage == "filter" and all(x == 1.0 for _, x in known):
            return ScoreDisplay((), None, "The filter stage's rules keep or reject a lesion; every kept lesion "
                                          "scores 1, so no score column is shown.")
        name = "filter probability" if final_stage == "filter" else "score"
        note = ("filter probability: the learned filter's probability that the candidate is a new lesion "
                "(one value per lesion)." if final_stage == "filter" else "")
        return ScoreDisplay(((name, ("score_max",), "{:.4g}"),), name, note)
    return ScoreDisplay(SCORE_COLUMNS, "score", "")


# --------------------------------------------------------------------------- case page


def case_page(record: Mapping, *, name: str | None = None, lesions: Sequence[Mapping] = (),
              evaluation: Sequence[Mapping] | None = None,
              figures: Sequence[Figure] = (), qc_pictures: Sequence[tuple[str, bytes]] = (),
              config_text: str | None = None, difference_name: str = "follow-up - baseline",
              version: str = "", changes: Sequence[Mapping] | None = None,
              enlarging_figures: Sequence[Figure] = ()) -> str:
    """The page of one run (``record`` is ``run.json``, see :mod:`mstools.run_layout`).

    ``name`` titles the page (default: the record's case; see
    :func:`mstools.report.build.case_name`). ``lesions`` are the rows of the final
    lesion table, ``evaluation`` those of ``evaluation.tsv`` (None: no evaluation; the
    record's ``metrics`` are shown when present), ``qc_pictures`` (name, PNG bytes) the
    preprocessing QC pictures; ``changes`` the rows of ``lesion_changes.tsv`` and
    ``enlarging_figures`` the enlarging lesions' pictures (the activity stage; None: off).
    """
    case = str(name or record.get("case") or "case")
    status = str(record.get("status") or "unknown")
    if status == "reporting":  # `mstools run` writes the page as its last step, before marking run.json complete
        status = "complete"
    run_version = record.get("mstools_version") or record.get("version")
    subtitle = f"mstools {version}" + (f" (run made with mstools {run_version})"
                                       if run_version and str(run_version) != version else "")
    body = [f"<h1>New MS lesions: {escape(case)} {_badge(status)}</h1>", f'<p class="sub">{escape(subtitle)}</p>']

    count = record.get("new_lesions")
    count = len(lesions) if number(count) is None else int(number(count))
    volume = number(record.get("new_lesion_volume_mm3"))
    if volume is None:
        volume = sum(number(r.get("volume_mm3")) or 0.0 for r in lesions)
    final = record.get("final_stage")
    inputs = record.get("inputs") or {}
    summary = [("new lesions", f"{count}"), ("new-lesion volume", f"{volume:.1f} mm3"),
               ("final stage", escape(str(final)) if final else "n/a"),
               ("ground truth", "yes" if inputs.get("ground_truth") else "no")]
    if inputs.get("raw_baseline") and inputs.get("raw_followup"):
        summary.append(("raw scans", escape(f"{_file_name(inputs['raw_baseline'])} -> "
                                             f"{_file_name(inputs['raw_followup'])}")))
    if record.get("run_key"):
        summary.append(("run key", escape(str(record["run_key"]))))
    body.append("<h2>Summary</h2>\n<dl class=\"summary\">" + "".join(
        f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in summary) + "</dl>")
    stages = record.get("stages") or {}
    if stages:
        rows, classes = [], []
        for stage, info in stages.items():
            info = info or {}
            seconds = number(info.get("seconds"))
            rows.append([escape(str(stage)), escape(status_words(str(info.get("status", "n/a")))),
                         f"{seconds:.1f}" if seconds is not None else "n/a"])
            classes.append("final" if stage == final else "")
        body.append(_table(("stage", "status", "seconds"), rows, text_columns=(0, 1), row_classes=classes))
        if any((info or {}).get("status") == "reused" for info in stages.values()):
            body.append(f'<p class="note">{escape(DONE_EARLIER_STAGE)}</p>')

    metric_rows = list(evaluation) if evaluation else []
    if not metric_rows and isinstance(record.get("metrics"), Mapping):
        metric_rows = [{"stage": final or "final", **record["metrics"]}]
    if metric_rows:
        keys = [k for k in METRIC_HEADERS if any(k in r for r in metric_rows)]
        body.append("<h2>Evaluation against the ground truth</h2>")
        body.append(_table([METRIC_HEADERS[k] for k in keys],
                           [[cell(r.get(k), "{:.3f}" if k in COHORT_METRICS else "{:.4g}") for k in keys]
                            for r in metric_rows],
                           row_classes=["final" if r.get("stage") == final else "" for r in metric_rows]))
        body.append('<p class="note">MSSEG-2 lesion-wise detection (Anima rule) and voxel Dice; '
                    "the final stage's row is highlighted." + escape(_counting_note(metric_rows, final, count))
                    + "</p>")

    body.append(f"<h2>New lesions ({count})</h2>")
    if lesions:
        score = score_display(lesions, str(final) if final else None)
        columns = (*LESION_TABLE, *score.columns)
        body.append(_table([h for h, _, _ in columns],
                           [[", ".join(cell(r.get(k), fmt) for k in keys) for _, keys, fmt in columns]
                            for r in lesions]))
        if score.note:
            body.append(f'<p class="note">{escape(score.note)}</p>')
    else:
        body.append("<p>No new lesion was found.</p>")

    if figures:
        shown = sum(1 for f in figures if f.kind == "lesion")
        note = (f" (the {shown} largest of {count})" if 0 < shown < count else "")
        body.append(f"<h2>Images{escape(note)}</h2>")
        body.append('<p class="note">Axial slices through each lesion\'s centroid, neurological convention '
                    "(R on the right, anterior at the top); third column: "
                    f"{escape(difference_name)}."
                    + (" Under each lesion's row, the same zoomed on the yellow box (the zoomed follow-up "
                       "without outline)." if any(f.kind != "overview" for f in figures) else "") + "</p>")
        body.extend(_figure(f.png, f.caption, f"{f.kind} {f.label if f.label is not None else ''}".strip())
                    for f in figures)
    if changes is not None:
        body.extend(_activity_section(record.get("activity") or {}, changes, enlarging_figures))
    if qc_pictures:
        body.append("<h2>Preprocessing quality control</h2>")
        body.extend(_figure(png, name, "preprocessing QC") for name, png in qc_pictures)
    if config_text is not None:
        body.append("<h2>Configuration</h2>\n<details><summary>config.yaml</summary>"
                    f"<pre>{escape(config_text)}</pre></details>")
    body.append(f"<footer>Made by mstools {escape(version)} report.</footer>")
    return _page(f"{case}: new MS lesions", body)


#: Columns of the lesion activity table: (header, key, format).
CHANGE_TABLE = (("label", "label", "{}"), ("kind", "kind", "{}"), ("baseline mm3", "baseline_volume_mm3", "{:.1f}"),
                ("follow-up mm3", "followup_volume_mm3", "{:.1f}"), ("growth mm3", "growth_mm3", "{:.1f}"),
                ("growth %", "growth_percent", "{:.0f}"), ("location", "location", "{}"))


def _activity_section(activity: Mapping, changes: Sequence[Mapping], figures: Sequence[Figure]) -> list[str]:
    """Lesion activity: the patient decision, one row per change, the enlarging lesions' pictures."""
    probability = number(activity.get("activity_probability"))
    active = activity.get("active")
    decision = "n/a" if active is None else ("yes" if active else "no")
    body = ["<h2>Lesion activity</h2>", '<dl class="summary">' + "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in (
            ("radiologically active", decision + (f" (probability {probability:.2f})" if probability is not None
                                                  else "")),
            ("new / enlarging / shrinking", " / ".join(str(activity.get(f"{kind}_lesions", "n/a"))
                                                       for kind in ("new", "enlarging", "shrinking"))),
            ("baseline lesions from", _file_name(activity["baseline_lesions"]) if activity.get("baseline_lesions")
             else "none given: every change is counted as new"))) + "</dl>"]
    if changes:
        body.append(_table([h for h, _, _ in CHANGE_TABLE],
                           [[cell(r.get(key), fmt) if fmt != "{}" else escape(str(r.get(key, "")))
                             for _, key, fmt in CHANGE_TABLE] for r in changes], text_columns=(1, 6)))
    body.append('<p class="note">New: a change that wraps round no baseline lesion; enlarging: a change round '
                "a baseline lesion (its grown part); shrinking: a baseline lesion partly gone "
                "(mstools.activity). The probability is a logistic model of the top lesion score and the "
                "numbers of changes, calibrated on simulated patients.</p>")
    if figures:
        body.append(f"<h3>Enlarging lesions ({len(figures)})</h3>")
        body.extend(_figure(f.png, f.caption, f"enlarging {f.label}") for f in figures)
    return body


# --------------------------------------------------------------------------- cohort page


def mean_metrics(rows: Sequence[Mapping], keys: Sequence[str] = COHORT_METRICS) -> dict[str, tuple[float, float, int]]:
    """Key -> (mean, sample standard deviation, number of cases) over the cases where it is defined."""
    out = {}
    for key in keys:
        values = [v for v in (number(r.get(key)) for r in rows) if v is not None]
        if values:
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            out[key] = (mean, sd, len(values))
    return out


def _cohort_format(column: str) -> str:
    if column == "status":
        return "{}"
    if column in COHORT_METRICS:
        return "{:.3f}"
    return "{:.1f}" if column.endswith(("_mm3", "seconds")) else "{:.4g}"


def cohort_page(rows: Sequence[Mapping], *, title: str = "cohort", columns: Sequence[str] = (),
                links: Mapping[str, str] | None = None, errors: Sequence[Mapping] = (),
                histograms: bytes | None = None, notes: Mapping[str, str] | None = None,
                version: str = "") -> str:
    """The page of a cohort: ``rows`` of ``cohort.tsv``; ``links`` case -> relative URL of its
    page; ``errors`` rows of ``errors.tsv``; ``notes`` case -> why it has no page."""
    links = links or {}
    notes = notes or {}
    columns = [c for c in (columns or (list(rows[0]) if rows else ["case"])) if c != "run_folder"]
    statuses: dict[str, int] = {}
    for r in rows:
        status = status_words(str(r.get("status", "") or "unknown"))
        statuses[status] = statuses.get(status, 0) + 1
    by_status = ", ".join(f"{n} {escape(status)}" for status, n in statuses.items())
    body = [f"<h1>New MS lesions: cohort {escape(title)}</h1>",
            f'<p class="sub">mstools {escape(version)}; {len(rows)} cases ({by_status}), '
            f"{len(errors)} error{'' if len(errors) == 1 else 's'}</p>"]
    counts = [number(r.get("new_lesions")) for r in rows]
    volumes = [number(r.get("new_lesion_volume_mm3")) for r in rows]
    known = [c for c in counts if c is not None]
    if known:
        total_volume = sum(v for v in volumes if v is not None)
        body.append("<h2>Summary</h2>\n<dl class=\"summary\">"
                    f"<dt>new lesions</dt><dd>{int(sum(known))} in {len(known)} cases "
                    f"({sum(1 for c in known if c > 0)} cases with at least one)</dd>"
                    f"<dt>new-lesion volume</dt><dd>{total_volume:.1f} mm3</dd></dl>")
    means = mean_metrics(rows)
    if means:
        body.append("<h2>Mean metrics</h2>")
        body.append(_table(("metric", "mean", "sd", "cases"),
                           [[escape(METRIC_HEADERS.get(k, k)), f"{m:.3f}", f"{s:.3f}", f"{n}"]
                            for k, (m, s, n) in means.items()]))
        body.append('<p class="note">Over the cases where the metric is defined (a case without '
                    "ground-truth lesion has no sensitivity or Dice).</p>")
    if histograms is not None:
        body.append("<h2>Distributions</h2>")
        body.append(_figure(histograms, "New lesions per case, new-lesion volume per case and, where the "
                            "lesion tables exist, the volume of each new lesion.", "histograms"))
    body.append(f"<h2>Cases ({len(rows)})</h2>")
    table_rows = []
    for r in rows:
        case = str(r.get("case", ""))
        cells = []
        for c in columns:
            if c == "case":
                text = escape(case)
                if case in links:
                    text = f'<a href="{escape(links[case], quote=True)}">{text}</a>'
                elif case in notes:
                    text += f' <span class="note">({escape(notes[case])})</span>'
                cells.append(text)
            elif c == "status":
                cells.append(cell(status_words(str(r.get(c))) if r.get(c) not in (None, "") else None, "{}"))
            else:
                cells.append(cell(r.get(c), _cohort_format(c)))
        table_rows.append(cells)
    body.append(_table([COHORT_HEADERS.get(c, c) for c in columns], table_rows,
                       text_columns=[i for i, c in enumerate(columns) if c in ("case", "status", "active")]))
    if any(r.get("status") == "skipped" for r in rows):
        body.append(f'<p class="note">{escape(DONE_EARLIER_CASE)}</p>')
    if errors:
        body.append(f"<h2>Errors ({len(errors)})</h2>")
        error_columns = list(errors[0])
        body.append(_table(error_columns, [[cell(e.get(c), "{}") for c in error_columns] for e in errors],
                           text_columns=range(len(error_columns))))
    body.append(f"<footer>Made by mstools {escape(version)} report.</footer>")
    return _page(f"{title}: new MS lesions (cohort)", body)
