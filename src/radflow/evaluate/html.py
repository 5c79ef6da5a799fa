"""The evaluation report a clinical governance board reads: one self-contained HTML file (and a PDF) per evaluation.

:func:`render_report` turns the evaluation JSON (:func:`radflow.evaluate.report.evaluate_checkpoint`)
into one HTML page with sections of stable ids (:func:`section_ids`): summary, the per-label (or
per-structure) table, plots, subgroups, thresholds, dataset, gates and the model card. It is
task-generic because it renders what the task kind already says about its evaluation (its
``summary`` tables and lines, its headline numbers, its figures), and reads only the JSON's
kind-independent keys beyond that. The page needs nothing outside itself: the figures are PNG
data URIs, the CSS is inline, and there is no script, so it can be mailed, archived beside the
model version and opened offline years later.

The gates section shows the registry's verdicts when the version has been registered
(:func:`radflow.evaluate.report.log_gated_report`, run after ``radflow register``); before that it shows the absolute
gates registration will apply, judged on the values computed here, marked "not gated yet".
:func:`print_pdf` prints the page with Chromium when it is installed, and only says so when not.
"""

from __future__ import annotations

import base64
import html
import logging
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from radflow.config import NOT_STATED, GateConfig, ModelCardConfig
from radflow.tasks import get_task
from radflow.tasks.evaluation import ReportTable, fmt, pct

__all__ = [
    "CHROMIUM",
    "PDF_FILE",
    "REPORT_ARTIFACT",
    "REPORT_FILE",
    "print_pdf",
    "render_report",
    "section_ids",
    "write_report",
]

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PDF_FILE = "report.pdf"
REPORT_ARTIFACT = f"evaluation/{REPORT_FILE}"
"""Where the report lies in the run's MLflow artifacts (the dashboard's registry table links to it)."""
CHROMIUM = Path("/usr/bin/chromium")
_PDF_TIMEOUT_S = 120

_CAPTIONS = {
    "roc.png": "ROC curves: sensitivity against 1 - specificity at every threshold, one curve per label.",
    "pr.png": "Precision-recall curves: positive predictive value against sensitivity, one curve per label.",
    "calibration.png": "Reliability diagram: the observed share of positives against the mean predicted probability.",
    "confusion.png": "Confusion matrices at the chosen operating points (rows: truth, columns: prediction).",
    "scatter.png": "Predicted against true values; the dotted line is a perfect prediction.",
    "error_by_band.png": "Mean absolute error by band of the true value, with the number of images in each.",
    "worst_cases.png": "Worst cases: the test images of lowest mean Dice, truth outlined and prediction filled.",
}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;max-width:1100px;margin:0 auto;
padding:24px;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#57606a}section{break-inside:avoid-page}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}caption{text-align:left;font-weight:600;
padding:.3em 0}th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}tbody.group{border-top:3px double #8c959f}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#116329;font-weight:600}.fail{color:#a40e26;font-weight:600}.pending{color:#7d4e00;font-weight:600}
.note{background:#fff8c5;border-left:4px solid #d4a72c;padding:.4em .8em;margin:.4em 0}
figure{margin:1em 0;break-inside:avoid}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#57606a;font-size:.9em}dt{font-weight:600;margin-top:.6em}dd{margin-left:1.2em}
.stated-not{color:#57606a;font-style:italic}
@media print{body{max-width:none;padding:0}h2{break-after:avoid}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def section_ids(task: str) -> tuple[str, ...]:
    """The report's section ids, in page order; a dense kind (segmentation) has ``per-structure``."""
    table = "per-structure" if get_task(task).network == "dense" else "per-label"
    return ("summary", table, "plots", "subgroups", "thresholds", "dataset", "gates", "model-card")


# ---------------------------------------------------------------------------------------------
# Building blocks


def _numeric(cell: str) -> bool:
    head = cell.split(" ", 1)[0].rstrip("%")
    try:
        float(head)
    except ValueError:
        return False
    return True


def _table(spec: ReportTable) -> str:
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in spec.columns)
    caption = f"<caption>{_e(spec.title)}</caption>" if spec.title else ""
    groups = []
    for i, rows in enumerate(spec.sections):
        cells = "".join(
            "<tr>"
            + "".join(
                f'<td class="num">{_e(c)}</td>' if j and _numeric(c) else f"<td>{_e(c)}</td>" for j, c in enumerate(row)
            )
            + "</tr>"
            for row in rows
        )
        groups.append(f"<tbody{' class=group' if i else ''}>{cells}</tbody>")
    return f"<table>{caption}<thead><tr>{head}</tr></thead>{''.join(groups)}</table>"


def _facts(rows: Sequence[tuple[str, str]], title: str) -> str:
    cells = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in rows)
    return f"<table><caption>{_e(title)}</caption><tbody>{cells}</tbody></table>"


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{_e(item)}</li>" for item in items) + "</ul>" if items else ""


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _p(text: str, cls: str | None = None) -> str:
    return f'<p class="{cls}">{_e(text)}</p>' if cls else f"<p>{_e(text)}</p>"


def _is_subgroup_table(block: str | ReportTable) -> bool:
    # The classification kinds print their subgroup table in the summary; here it has a section of its own.
    return isinstance(block, ReportTable) and block.title == "subgroups"


# ---------------------------------------------------------------------------------------------
# Sections


def _summary(result: Mapping[str, Any], blocks: list[str | ReportTable]) -> str:
    kind = get_task(result["task"])
    headline = result.get("headline", {})
    split = result["split"]
    rows = []
    for name in kind.gate_metrics:
        if "<label>" in name:
            continue
        key = f"{split}_{name.removeprefix('test_')}"
        if key not in headline:
            continue
        low, high = headline.get(f"{key}_ci_low"), headline.get(f"{key}_ci_high")
        ci = f"{fmt(low)}-{fmt(high)}" if low is not None and high is not None else "-"
        rows.append([key, fmt(headline[key]), ci])
    ci_pct = f"{result['config']['ci']:.0%}"
    model = result["model"]
    parts = [
        _p(
            f"{result['task']} model {model['arch']} (epoch {model['epoch']}, run {model.get('run_id') or 'none'}), "
            f"evaluated on the {split} split of dataset version {result['dataset']['version']}: "
            f"{result['n']} images."
        )
    ]
    if rows:
        parts.append(_table(ReportTable(["metric", "value", f"{ci_pct} CI"], [rows], title="headline")))
    parts += [_p(block) for block in blocks if isinstance(block, str)]
    warnings = result.get("warnings", [])
    if warnings:
        parts.append("<h3>Notes</h3>" + "".join(f'<p class="note">{_e(w)}</p>' for w in warnings))
    return "".join(parts)


def _per_label(blocks: list[str | ReportTable]) -> str:
    tables = [_table(b) for b in blocks if isinstance(b, ReportTable) and not _is_subgroup_table(b)]
    return "".join(tables) or _p("This task kind reports no per-label table.")


def _plots(result: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    shown = []
    for name in result.get("plots", []):
        data = figures.get(name)
        if data is None:
            continue
        caption = _CAPTIONS.get(name, name)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        shown.append(f'<figure><img src="{uri}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>')
    return "".join(shown) or _p("No figures were drawn for this evaluation.")


def _subgroup_tables(result: Mapping[str, Any]) -> list[tuple[str, ReportTable, bool]]:
    """(grouping, table, higher is better) per subgroup grouping computed; column 2 is the pooled metric."""
    out: list[tuple[str, ReportTable, bool]] = []
    for grouping, groups in (result.get("subgroups") or {}).items():
        first: dict[str, Any] = next(iter(groups.values()), {})
        macro = next((k for k in first if k.startswith("macro_")), None)
        inner_key = next((k for k in ("per_label", "per_structure") if k in first), None)
        if macro is None:
            continue
        metric = macro.removeprefix("macro_")
        names = list(first.get(inner_key, {})) if inner_key else []
        rows = [
            [value, str(entry["n"]), fmt(entry[macro]), *(fmt(entry[inner_key][n].get(metric)) for n in names)]
            for value, entry in groups.items()
        ]
        label = metric.upper() if metric == "auroc" else metric.capitalize()
        columns = [grouping, "n", f"macro {label}", *(f"{n} {label}" for n in names)]
        out.append((grouping, ReportTable(columns, [rows], title=f"by {grouping}"), True))
    by_sex = (result.get("metrics") or {}).get("by_sex")
    if by_sex:
        rows = [[value, str(entry["n"]), fmt(entry["mae"], 2)] for value, entry in by_sex.items()]
        out.append(("sex", ReportTable(["sex", "n", "MAE"], [rows], title="by sex"), False))
    return out


def _subgroups(result: Mapping[str, Any]) -> str:
    tables = _subgroup_tables(result)
    if not tables:
        return _p("No subgroup breakdown is computed for this task kind, or the manifest holds no subgroup columns.")
    return "".join(_table(t) for _, t, _ in tables)


def _thresholds(result: Mapping[str, Any]) -> str:
    kind = get_task(result["task"])
    how = result.get("thresholds")
    if how:
        per = result["metrics"].get(getattr(kind, "per_label_key", "per_label"), {})
        rows = [
            [
                label,
                fmt(entry.get("threshold")),
                str(entry.get("source", "")),
                fmt(per.get(label, {}).get("sensitivity")),
                fmt(per.get(label, {}).get("specificity")),
            ]
            for label, entry in how["per_label"].items()
        ]
        split = result["split"]
        columns = ["label", "threshold", "chosen by", f"{split} sensitivity", f"{split} specificity"]
        method = how["method"] + (
            f" (target sensitivity {how['target_sensitivity']:g})" if how.get("target_sensitivity") else ""
        )
        intro = _p(
            f"Operating points: {method}, chosen on the {how['chosen_on']} split, so the {result['split']} "
            "metrics are not tuned on the images they are measured on. A label without a threshold is never "
            "called positive."
        )
        return intro + _table(ReportTable(columns, [rows]))
    if "threshold" in result:
        return _p(f"A pixel belongs to a structure's predicted mask at probability >= {result['threshold']:g}.")
    if kind.family == "regression":
        return _p("The model outputs a value; there is no operating point to choose.")
    return _p("The predicted class is the one of highest probability (arg-max); no per-class threshold is applied.")


def _dataset(result: Mapping[str, Any]) -> str:
    ds = result["dataset"]
    model = result["model"]
    facts = [
        ("dataset version", str(ds["version"])),
        ("source format", str(ds.get("source_format") or "unknown")),
        ("task", str(result["task"])),
        ("labels", ", ".join(result["labels"])),
        ("evaluated split", f"{ds['split']} ({ds['n']} images)"),
        ("model trained on version", str(model.get("trained_on_dataset_version") or "unknown")),
    ]
    parts = [_facts(facts, "dataset")]
    splits = ds.get("splits")
    if splits:
        rows = [[name, str(s["images"]), str(s["patients"])] for name, s in splits.items()]
        total = [["all", str(sum(s["images"] for s in splits.values())), str(ds.get("patients", "-"))]]
        parts.append(_table(ReportTable(["split", "images", "patients"], [rows, total], title="split sizes")))
        parts.append(_p("Splits are by patient: no patient has images in more than one split."))
    return "".join(parts)


def _gate_rows(checks: Sequence[Mapping[str, Any]], verdict: tuple[str, str]) -> list[list[str]]:
    return [
        [
            str(c["gate"]),
            str(c["metric"]),
            "-" if c["value"] is None else f"{c['value']:.4f}",
            f"{c['limit']:.4f}",
            verdict[0] if c["passed"] else verdict[1],
            str(c["message"]),
        ]
        for c in checks
    ]


def _verdict_table(rows: list[list[str]]) -> str:
    columns = ["gate", "metric", "value", "limit", "verdict", "detail"]
    body = _table(ReportTable(columns, [rows]))
    # The verdict cell gets its colour class; the text stays the same for a reader without colour.
    for word, cls in (("passed", "pass"), ("failed", "fail"), ("would pass", "pending"), ("would fail", "fail")):
        body = body.replace(f"<td>{word}</td>", f'<td class="{cls}">{word}</td>')
    return body


def _gates(result: Mapping[str, Any], gates: Mapping[str, Any] | None, config: GateConfig) -> str:
    if gates is not None:
        status = "passed" if gates["passed"] else "failed"
        where = f"@{gates['alias']}" if gates.get("alias") else "no alias (stays registered, not served)"
        champion = f"champion version {gates['champion']}" if gates.get("champion") else "no champion"
        head = (
            f"<p>Registered as <strong>{_e(gates['name'])}</strong> version {_e(gates['version'])}: "
            f'<span class="{"pass" if gates["passed"] else "fail"}">gates {status}</span> -> {_e(where)}; '
            f"compared with {_e(champion)}.</p>"
        )
        rows = _gate_rows(gates.get("checks", []), ("passed", "failed"))
        return head + _verdict_table(rows) + _list(list(gates.get("notes", [])))
    from radflow.registry.gates import check_gates

    metrics = {k: float(v) for k, v in result.get("headline", {}).items() if v is not None}
    # Before registration: the absolute gates on the values computed here; the champion comparison needs the registry.
    preview = check_gates(metrics, {"radflow.task": result["task"]}, config)
    intro = _p(
        "Not gated yet: this evaluation has not been through `radflow register`. These are the absolute gates "
        "registration will apply, judged on the values computed here; the comparison with the champion (same test "
        "split) is made at registration, and this report is then written again with the verdicts.",
        "note",
    )
    return intro + _verdict_table(_gate_rows(preview["checks"], ("would pass", "would fail")))


def _stated(text: str) -> str:
    return f'<span class="stated-not">{_e(text)}</span>' if text == NOT_STATED else _e(text)


def _worst_subgroups(result: Mapping[str, Any]) -> list[str]:
    out = []
    for grouping, table, higher in _subgroup_tables(result):
        scored = [(row[0], row[1], row[2]) for row in table.sections[0] if row[2] != "-"]
        if len(scored) < 2:
            continue
        worst = (min if higher else max)(scored, key=lambda r: float(r[2]))
        out.append(
            f"weakest {grouping} subgroup: {worst[0]} ({table.columns[2]} {worst[2]}, n={worst[1]}) "
            f"of {', '.join(f'{v} {s}' for v, _, s in scored)}."
        )
    return out


def _auto_limitations(result: Mapping[str, Any], config: GateConfig) -> list[str]:
    """What the evaluation itself shows the model cannot be relied on for."""
    out: list[str] = []
    kind = get_task(result["task"])
    per = result.get("metrics", {}).get(getattr(kind, "per_label_key", "per_label"), {})
    for label, entry in per.items():
        positives, n = entry.get("positives"), entry.get("n")
        if positives is None or n is None:
            continue
        if positives < config.min_positives or n - positives < config.min_negatives:
            out.append(
                f"{label}: not gated against the champion: {positives} positive and {n - positives} negative "
                f"{result['split']} images (gates need {config.min_positives} and {config.min_negatives}); its "
                "metrics are too uncertain to compare."
            )
    for label in result.get("untrained_labels") or []:
        out.append(f"{label}: no positive image in the training split; the model never learned it and never calls it.")
    for label, entry in result.get("metrics", {}).get("per_structure", {}).items():
        if entry.get("dice") is None:
            out.append(f"{label}: in no true or predicted {result['split']} mask; its Dice is unknown.")
    out += _worst_subgroups(result)
    ds = result["dataset"]
    trained = result["model"].get("trained_on_dataset_version")
    if trained and trained != ds["version"]:
        out.append(f"evaluated on dataset version {ds['version']}, trained on {trained}.")
    return out


def _failure_cases(result: Mapping[str, Any]) -> list[str]:
    out = []
    kind = get_task(result["task"])
    per = result.get("metrics", {}).get(getattr(kind, "per_label_key", "per_label"), {})
    for label, entry in per.items():
        confusion = entry.get("confusion")
        if confusion:
            out.append(
                f"{label}: {confusion['fn']} missed finding(s) and {confusion['fp']} false alarm(s) among "
                f"{entry['n']} {result['split']} images at the chosen threshold."
            )
    by_band = result.get("metrics", {}).get("by_band")
    if by_band and kind.family == "regression":
        scored = [(band, e) for band, e in by_band.items() if e.get("mae") is not None]
        if scored:
            band, entry = max(scored, key=lambda item: item[1]["mae"])
            out.append(f"largest error for true values {band}: MAE {fmt(entry['mae'], 2)} over {entry['n']} images.")
    if "worst_cases.png" in result.get("plots", []):
        out.append("the lowest-Dice test images are shown in the worst-cases gallery (plots).")
    return out


def _training_data(result: Mapping[str, Any]) -> str:
    ds = result["dataset"]
    splits = ds.get("splits") or {}
    train = splits.get("train")
    size = f"{train['images']} images of {train['patients']} patients" if train else "unknown size"
    text = f"Dataset version {ds['version']} ({ds.get('source_format') or 'unknown'} source); training split: {size}."
    prevalence = ds.get("train_prevalence") or {}
    rows = [
        [label, str(p["positive"]), str(p["known"]), pct(p["positive"] / p["known"] if p["known"] else None)]
        for label, p in prevalence.items()
        if isinstance(p, Mapping) and "positive" in p
    ]
    if rows:
        table = _table(ReportTable(["label", "positive", "known", "prevalence"], [rows], title="training labels"))
    elif "mean" in prevalence:
        table = _p(f"training target: mean {fmt(prevalence['mean'], 2)}, sd {fmt(prevalence.get('std'), 2)}.")
    else:
        table = ""
    return _e(text) + table


def _model_card(result: Mapping[str, Any], card: ModelCardConfig, config: GateConfig) -> str:
    limitations = _auto_limitations(result, config)
    failures = _failure_cases(result)
    entries = [
        ("Intended use", _stated(card.intended_use)),
        ("Out of scope", _stated(card.out_of_scope)),
        ("Owner", _stated(card.owner)),
        ("Training data", _training_data(result)),
        (
            "Limitations",
            _stated(card.limitations) + ("<br>Found by this evaluation:" + _list(limitations) if limitations else ""),
        ),
        (
            "Known failure cases",
            _stated(card.known_failure_cases) + ("<br>Found by this evaluation:" + _list(failures) if failures else ""),
        ),
    ]
    return "<dl>" + "".join(f"<dt>{_e(title)}</dt><dd>{body}</dd>" for title, body in entries) + "</dl>"


# ---------------------------------------------------------------------------------------------
# The page


def render_report(
    result: Mapping[str, Any],
    figures: Mapping[str, bytes] | None = None,
    *,
    gates: Mapping[str, Any] | None = None,
    gate_config: GateConfig | None = None,
    model_card: ModelCardConfig | None = None,
) -> str:
    """The evaluation ``result`` (the evaluation JSON) as one self-contained HTML page.

    ``figures`` maps the names in ``result["plots"]`` to their PNG bytes; ``gates`` is a
    :func:`radflow.registry.register` result when the version has been registered (else the
    absolute gates of ``gate_config`` are previewed on the values computed here); ``model_card``
    defaults to the one the evaluation stored (``result["model_card"]``), else to statements "not
    stated by the model's owner".
    """
    config = gate_config or GateConfig()
    card = model_card or ModelCardConfig(**(result.get("model_card") or {}))
    blocks = get_task(result["task"]).summary(result)
    ids = section_ids(result["task"])
    table_title = "Per-structure results" if ids[1] == "per-structure" else "Per-label results"
    body = [
        _section(ids[0], "Summary", _summary(result, blocks)),
        _section(ids[1], table_title, _per_label(blocks)),
        _section(ids[2], "Plots", _plots(result, figures or {})),
        _section(ids[3], "Subgroups", _subgroups(result)),
        _section(ids[4], "Thresholds", _thresholds(result)),
        _section(ids[5], "Dataset", _dataset(result)),
        _section(ids[6], "Quality gates", _gates(result, gates, config)),
        _section(ids[7], "Model card", _model_card(result, card, config)),
    ]
    model = result["model"]
    title = f"{result['task']} model evaluation: {model['arch']}"
    meta = (
        f"created {result.get('created_at', '')} · run {model.get('run_id') or 'none'} · split {result['split']} · "
        f"dataset {result['dataset']['version']}"
    )
    nav = " · ".join(f'<a href="#{sid}">{_e(sid.replace("-", " "))}</a>' for sid in ids)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<header><h1>{_e(title)}</h1><p class="meta">{_e(meta)}</p><nav>{nav}</nav></header>'
        f"<main>{''.join(body)}</main></body></html>\n"
    )


def print_pdf(html_path: Path, pdf_path: Path, chromium: Path = CHROMIUM) -> Path | None:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium; None (and one log line) when it cannot.

    A missing or failing renderer never fails the evaluation: the HTML is the report, the PDF a copy.
    """
    if not chromium.exists():
        log.info("report.pdf not written: no PDF renderer (Chromium is not installed at %s).", chromium)
        return None
    pdf_path.unlink(missing_ok=True)
    # A profile of its own: another Chromium (a browser test, a second evaluation) may hold the default one.
    with tempfile.TemporaryDirectory(prefix="radflow-pdf-") as profile:
        cmd = [
            str(chromium),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf_path}",
            html_path.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_PDF_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("report.pdf not written: Chromium failed (%s).", exc)
            return None
    if done.returncode != 0 or not pdf_path.is_file():
        log.warning("report.pdf not written: Chromium exited %s: %s", done.returncode, done.stderr[-300:].strip())
        return None
    return pdf_path


def write_report(
    result: Mapping[str, Any],
    out_dir: Path,
    *,
    gates: Mapping[str, Any] | None = None,
    gate_config: GateConfig | None = None,
    model_card: ModelCardConfig | None = None,
    pdf: bool = True,
) -> list[Path]:
    """Write ``report.html`` (and ``report.pdf`` when Chromium is there) into ``out_dir``, beside the figures."""
    out_dir = Path(out_dir)
    figures = {name: (out_dir / name).read_bytes() for name in result.get("plots", []) if (out_dir / name).is_file()}
    page = render_report(result, figures, gates=gates, gate_config=gate_config, model_card=model_card)
    path = out_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    written = [path]
    if pdf and (printed := print_pdf(path, out_dir / PDF_FILE)) is not None:
        written.append(printed)
    return written
