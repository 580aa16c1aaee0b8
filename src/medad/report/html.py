"""A single self-contained HTML report: inline CSS, figures as base64 ``data:`` URIs, no scripts.

>>> import tempfile, pathlib
>>> from medad.evaluation.records import ImageResult, ResultSet
>>> rs = ResultSet([ImageResult(id=f"{i}.png", score=float(i), label=int(i > 2)) for i in range(6)])
>>> out = pathlib.Path(tempfile.mkdtemp()) / "r.html"
>>> 'id="metrics"' in render_report(rs, {"detector": "demo", "image_auroc": 1.0}, out).read_text()
True
"""

from __future__ import annotations

import base64
import math
import numbers
from html import escape
from pathlib import Path

from medad import __version__
from medad.evaluation.checks import evaluation_warnings
from medad.evaluation.records import ImageResult, ResultSet
from medad.files import atomic_write_text
from medad.report import figures

SECTIONS = {
    "summary": "Summary",
    "metrics": "Metrics",
    "roc": "ROC curve",
    "histogram": "Score distributions",
    "gallery-anomalous": "Most anomalous images",
    "gallery-missed": "Missed abnormal images",
    "projection": "Embedding projection",
    "training": "Training",
    "method": "What the method trains on",
    "config": "Configuration",
}
LABELS = {
    "method": "Method",
    "detector": "Detector (its score drives the threshold)",
    "dataset": "Dataset",
    "n_train": "Training images (normal)",
    "n_val": "Validation normals",
    "n_test_normal": "Test images, normal",
    "n_test_abnormal": "Test images, abnormal",
    "n_predict": "Images scored",
    "n_labelled_val": "Labelled validation images",
    "image_size": "Image size",
    "channels": "Channels",
    "seed": "Seed",
    "train_seconds": "Training time",
    "image_auroc": "Image AUROC",
    "image_ap": "Image AP",
    "pixel_auroc": "Pixel AUROC",
    "sensitivity": "Sensitivity (true-positive rate)",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "threshold": "Threshold",
    "rule": "Rule",
}
SUMMARY_KEYS = ("method", "detector", "dataset", "n_train", "n_val", "n_test_normal", "n_test_abnormal",
                "n_predict", "train_seconds", "image_size", "channels", "seed")
METRIC_ORDER = ("image_auroc", "image_ap", "pixel_auroc", "sensitivity", "specificity", "accuracy")
RATE_KEYS = frozenset(METRIC_ORDER)
NOT_IN_METRICS_TABLE = frozenset({*SUMMARY_KEYS, "threshold", "threshold_rule"})

CSS = """
body{margin:0;background:#f6f7f9;color:#1d232a;line-height:1.45;
  font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:1.4rem 1.6rem 3rem}
header h1{margin:0;font-size:1.7rem}
header .meta{margin:.2rem 0 .6rem;color:#5c6670;font-size:.9rem}
nav a{margin-right:.9rem;font-size:.9rem;color:#1f5fa8;text-decoration:none}
section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:.9rem 1.3rem 1.1rem;
  margin:1.1rem 0}
h2{margin:0 0 .6rem;font-size:1.2rem;border-bottom:1px solid #eceef1;padding-bottom:.3rem}
h3{font-size:1rem;margin:1.1rem 0 .4rem}
table{border-collapse:collapse;font-size:.92rem;margin:.3rem 0}
th,td{padding:.25rem .9rem;border-bottom:1px solid #eceef1;text-align:left}
td+td,th+th{text-align:right;font-variant-numeric:tabular-nums}
table.kv td+td{text-align:left}
tr.primary td{font-weight:600}
.threshold{background:#f2f6fb;border-left:3px solid #1f5fa8;padding:.45rem .8rem}
.labelled-val{border-left:3px solid #b07d00;padding-left:.9rem;margin-top:1rem}
img.plot{max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.7rem}
figure.tile{margin:0}
figure.tile img{width:100%;height:auto;border:1px solid #e1e4e8;border-radius:4px}
figure.tile figcaption{font-size:.78rem;color:#3b444d;text-align:center;overflow-wrap:anywhere}
.note{color:#5c6670;font-style:italic}
.warning{background:#fff4e5;border-left:4px solid #e8a33d;padding:.5em .8em}
pre{background:#f3f4f6;padding:.8rem;overflow:auto;font-size:.85rem}
"""


def _fmt(key: str, value: object) -> str:
    """HTML-safe text of one metric value: rates with 4 decimals, other floats with 4 digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return escape(str(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if key == "train_seconds":
        return f"{value:.1f} s"
    return f"{value:.4f}" if key in RATE_KEYS else f"{value:.4g}"


def _label(key: str) -> str:
    return LABELS.get(key, escape(key))


def _short_id(image_id: str, limit: int = 28) -> str:
    name = Path(image_id).name or image_id
    return name if len(name) <= limit else f"{name[: limit // 2 - 1]}…{name[-(limit // 2):]}"


def tile_caption(result: ImageResult) -> str:
    """``"<short id> · score 1.234 · abnormal (tumour)"`` (plain text, escape before use).

    >>> tile_caption(ImageResult(id="x/y/case_007.png", score=3.14159, label=1, defect="tumour"))
    'case_007.png · score 3.142 · abnormal (tumour)'
    """
    label = {0: "normal", 1: "abnormal", None: "unlabelled"}[result.label]
    defect = f" ({result.defect})" if result.defect else ""
    return f"{_short_id(result.id)} · score {result.score:.4g} · {label}{defect}"


def _table(header: list[str] | None, rows: list[list[str]], primary_row: int | None = None) -> str:
    """A table of already HTML-safe cells; without ``header`` a key/value table."""
    head = f"<tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>" if header else ""
    body = "".join(
        ('<tr class="primary">' if i == primary_row else "<tr>") + "".join(f"<td>{c}</td>" for c in row)
        + "</tr>"
        for i, row in enumerate(rows)
    )
    css_class = "" if header else ' class="kv"'
    return f"<table{css_class}>{head}{body}</table>"


def _img(png: bytes, alt: str, css_class: str = "plot", title: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    title_attr = f' title="{escape(title)}"' if title else ""
    return f'<img class="{css_class}" src="data:image/png;base64,{data}" alt="{escape(alt)}"{title_attr}>'


def _note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _section(section_id: str, content: str) -> str:
    return f'<section id="{section_id}">\n<h2>{SECTIONS[section_id]}</h2>\n{content}\n</section>'


def _counts(results: ResultSet) -> dict[str, int]:
    """Image counts derivable from the results; metrics.json values take precedence."""
    test_labels = results.with_role("test").labels()
    counts = {
        "n_val": len(results.with_role("val")),
        "n_test_normal": int((test_labels == 0).sum()),
        "n_test_abnormal": int((test_labels == 1).sum()),
        "n_predict": len(results.with_role("predict")),
    }
    return {k: v for k, v in counts.items() if v}


def _summary(results: ResultSet, metrics: dict) -> str:
    info = {**_counts(results), **metrics}
    rows = [[_label(k), _fmt(k, info[k])] for k in SUMMARY_KEYS if k in info]
    detector = escape(str(metrics.get("detector", "primary")))
    others = [escape(n) for n in results.score_names() if n != metrics.get("detector")]
    sentence = f"Threshold and predictions use the <b>{detector}</b> score"
    if others:
        sentence += f"; {', '.join(others)} {'is' if len(others) == 1 else 'are'} shown for comparison"
    warnings = "".join(f'<p class="warning">⚠ {escape(w)}</p>\n' for w in evaluation_warnings(metrics))
    return _section("summary", f"{warnings}<p>{sentence}.</p>\n{_table(None, rows)}")


def _threshold(metrics: dict) -> str:
    if metrics.get("threshold") is None:
        return _note("No threshold was set, so there are no predictions.")
    rule = escape(str(metrics.get("threshold_rule", "unspecified")))
    uses = "; sensitivity, specificity and accuracy use it" if "sensitivity" in metrics else ""
    return (
        f'<p class="threshold">Threshold on the <b>{escape(str(metrics.get("detector", "primary")))}</b> '
        f"score: <b>{_fmt('threshold', metrics['threshold'])}</b> — rule: <code>{rule}</code>. "
        f"Images scoring above it are predicted abnormal{uses}.</p>"
    )


def _scores_table(metrics: dict) -> str:
    per_score: dict[str, dict] = metrics.get("scores") or {}
    if not per_score:
        return ""
    keys = [k for k in METRIC_ORDER if any(k in m for m in per_score.values())]
    keys += sorted({k for m in per_score.values() for k in m} - set(keys))
    names = list(per_score)
    rows = [[escape(n), *(_fmt(k, per_score[n].get(k)) for k in keys)] for n in names]
    primary = names.index(metrics["detector"]) if metrics.get("detector") in names else None
    return "<h3>All scores compared</h3>\n" + _table(["score", *map(_label, keys)], rows, primary)


def _labelled_val(metrics: dict) -> str:
    block = metrics.get("labelled_val")
    if not block:
        return ""
    rows = [[_label(k), _fmt(k, v)] for k, v in block.items()]
    return (
        '<div class="labelled-val"><h3>Labelled-validation threshold (reported separately)</h3>\n'
        "<p>The papers' protocol: a threshold fitted with the labels of the labelled validation folder, "
        "applied to the test scores. It is not the label-free threshold used above.</p>\n"
        + _table(None, rows) + "</div>"
    )


def _metrics(metrics: dict) -> str:
    keys = [k for k in METRIC_ORDER if k in metrics]
    keys += sorted(
        k for k, v in metrics.items()
        if k not in NOT_IN_METRICS_TABLE and k not in keys and not isinstance(v, (dict, list, tuple))
    )
    table = _table(None, [[_label(k), _fmt(k, metrics[k])] for k in keys]) if keys else _note(
        "No image-level metrics: the test images have no labels."
    )
    parts = [_threshold(metrics), table, _scores_table(metrics), _labelled_val(metrics)]
    return _section("metrics", "\n".join(parts))


def _roc(results: ResultSet, metrics: dict) -> str:
    if not results.with_role("test").has_labels():
        return _section("roc", _note("Skipped: needs labelled normal and abnormal test images."))
    png = figures.roc_png(results, primary=str(metrics.get("detector", "score")))
    return _section("roc", _img(png, "ROC curve"))


def _histogram(results: ResultSet, metrics: dict) -> str:
    if not len(results):
        return _section("histogram", _note("No results."))
    png = figures.histogram_png(results, metrics.get("threshold"), str(metrics.get("threshold_rule", "")))
    return _section("histogram", _img(png, "score histograms"))


def _gallery(shown: list[ImageResult], vmin: float, vmax: float) -> str:
    tiles = [
        f'<figure class="tile">{_img(png, r.id, "tile", r.id)}\n'
        f"<figcaption>{escape(tile_caption(r))}</figcaption></figure>"
        for r, png in zip(shown, figures.tiles_png(shown, vmin, vmax))
    ]
    legend = []
    if any(r.anomaly_map is not None for r in shown):
        legend.append(f"Left: input; right: anomaly map overlay (jet, one colour scale {vmin:.3g} to "
                      f"{vmax:.3g} for all tiles, red = anomalous).")
    if any(r.mask is not None for r in shown):
        legend.append("Magenta outline: ground-truth lesion mask.")
    intro = f"<p>{' '.join(legend)}</p>\n" if legend else ""
    return intro + '<div class="gallery">\n' + "\n".join(tiles) + "\n</div>"


def _below_threshold(results: ResultSet) -> str:
    """``" 3 of 40 abnormal test images are below the threshold."`` when predictions exist."""
    abnormal = [r for r in results.with_role("test") if r.label == 1]
    if all(r.prediction is None for r in abnormal):
        return ""
    below = sum(r.prediction == 0 for r in abnormal)
    return f" {below} of {len(abnormal)} abnormal test images are below the threshold."


def _galleries(results: ResultSet, top_k: int) -> str:
    """The ``top_k`` highest-scoring images, and the ``top_k`` lowest-scoring abnormal ones."""
    candidates = [r for r in results if r.role != "val" and r.image is not None]
    vmin, vmax = figures.map_range(results)
    top = sorted(candidates, key=lambda r: r.score, reverse=True)[:top_k]
    if top:
        anomalous = f"<p>The {len(top)} highest-scoring images.</p>\n" + _gallery(top, vmin, vmax)
    else:
        anomalous = _note("No images were kept for display.")
    missed = sorted((r for r in candidates if r.label == 1), key=lambda r: r.score)[:top_k]
    labels = [r.label for r in results if r.role != "val"]
    if missed:
        intro = f"<p>The {len(missed)} lowest-scoring abnormal test images.{_below_threshold(results)}</p>\n"
        missed_html = intro + _gallery(missed, vmin, vmax)
    elif 1 in labels:
        missed_html = _note("No abnormal test images were kept for display.")
    elif 0 in labels:
        missed_html = _note("There are no abnormal test images.")
    else:
        missed_html = _note("Skipped: without labels the missed abnormal images are unknown.")
    return _section("gallery-anomalous", anomalous) + "\n" + _section("gallery-missed", missed_html)


def _projection(results: ResultSet) -> str:
    if all(r.projection is None for r in results):
        return _section("projection", _note("No 2-D projections in these results."))
    note = _note("Encoder embeddings in the plane of the two principal directions of the training normals "
                 "(one basis for every image, fitted with the model).")
    return _section("projection", note + _img(figures.projection_png(results), "2-D projection of embeddings"))


def _training(history: list[dict] | None) -> str:
    if not history or all(h.get("loss") is None for h in history):
        return _section("training", _note("No training history given."))
    rows = [
        [str(h["epoch"]), _fmt("loss", h.get("loss")), _fmt("loss", h.get("val_loss")),
         _fmt("sensitivity", h.get("sensitivity")), _fmt("sensitivity", h.get("sensitivity_se")),
         "selected" if h.get("selected") else ""]
        for h in history if h.get("sensitivity") is not None or h.get("selected")
    ]
    table = ""
    if rows:
        table = (
            "<p>Checkpoints: the <i>sensitivity score</i> (label-free; not the true-positive rate above) is "
            "the AUROC separating held-out training normals from "
            "validation normals (no abnormal image involved), with its Hanley–McNeil standard error; with "
            "<code>train.select_by: sensitivity</code> the highest-scoring checkpoint replaces the last epoch "
            "only if it scores higher by more than <code>train.select_margin</code> standard errors.</p>"
            + _table(["epoch", "training loss", "validation loss", "sensitivity score (label-free)",
                      "standard error", ""], rows)
        )
    return _section("training", _img(figures.loss_png(history), "loss per epoch") + table)


def _method_figures(figures: dict[str, bytes]) -> str:
    if not figures:
        return _section("method", _note("This method shows no example images."))
    return _section("method", "".join(f"<h3>{escape(t)}</h3>" + _img(png, t) for t, png in figures.items()))


def _config(config_yaml: str | None) -> str:
    content = f"<pre>{escape(config_yaml)}</pre>" if config_yaml else _note("No configuration given.")
    return _section("config", content)


def render_report(
    results: ResultSet,
    metrics: dict,
    out_path: Path,
    *,
    title: str = "medad report",
    config_yaml: str | None = None,
    history: list[dict] | None = None,
    top_k: int = 8,
    figures: dict[str, bytes] | None = None,
) -> Path:
    """Write the report to ``out_path`` and return it.

    ``metrics`` is the content of ``metrics.json`` (every key optional); the galleries show the
    ``top_k`` most anomalous and most normal-looking abnormal results that have ``image`` set.
    ``figures`` (title -> PNG bytes) are method-specific pictures, e.g. PMSACL's MedMix examples.
    Sections that need labels are replaced by a short sentence when the results have none.

    >>> import tempfile, pathlib
    >>> from medad.evaluation.records import ImageResult, ResultSet
    >>> rs = ResultSet([ImageResult(id="a.png", score=0.3, role="predict")])
    >>> render_report(rs, {}, pathlib.Path(tempfile.mkdtemp()) / "r.html").suffix
    '.html'
    """
    nav = " ".join(f'<a href="#{sid}">{name}</a>' for sid, name in SECTIONS.items())
    body = "\n".join([
        _summary(results, metrics),
        _metrics(metrics),
        _roc(results, metrics),
        _histogram(results, metrics),
        _galleries(results, top_k),
        _projection(results),
        _training(history),
        _method_figures(figures or {}),
        _config(config_yaml),
    ])
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<header><h1>{escape(title)}</h1><p class="meta">medad {__version__}</p>\n'
        f"<nav>{nav}</nav></header>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )
    out_path = Path(out_path)
    atomic_write_text(out_path, page)
    return out_path
