"""The HTML report: structure, embedded figures, escaping, unlabelled results, heatmap PNGs."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medad.evaluation.records import ImageResult, ResultSet
from medad.report.figures import save_heatmap_png
from medad.report.html import SECTIONS, render_report

SIZE = 32
MALICIOUS = "<script>alert(1)</script>.png"
PNG_PREFIX = "data:image/png;base64,"


def _image(rng: np.random.Generator, lesion: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A grey disc 'organ', a bright lesion when abnormal; its anomaly map and lesion mask."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    organ = ((yy - 16) ** 2 + (xx - 16) ** 2 < 13**2) * 110.0
    cy, cx = rng.integers(9, 23, size=2)
    distance2 = (yy - cy) ** 2 + (xx - cx) ** 2
    mask = ((distance2 < 16) & lesion).astype(np.uint8)
    image = np.clip(organ + 110 * mask + rng.normal(0, 12, (SIZE, SIZE)), 0, 255).astype(np.uint8)[None]
    amap = np.exp(-distance2 / 18.0) * (2.0 if lesion else 0.4) + rng.random((SIZE, SIZE)) * 0.3
    return image, amap.astype(np.float32), mask


def synthetic_results(seed: int = 0, n_normal: int = 30, n_abnormal: int = 20, n_val: int = 15) -> ResultSet:
    """Test normals/abnormals (images kept for the first few), val normals, two scores, projections."""
    rng = np.random.default_rng(seed)
    results = []
    for i, label in enumerate([0] * n_normal + [1] * n_abnormal):
        score = float(rng.normal(2.0 + 1.5 * label, 0.8))
        image, amap, mask = _image(rng, lesion=bool(label))
        keep = i % 3 == 0
        results.append(ImageResult(
            id=MALICIOUS if i == n_normal else f"test/{'tumour' if label else 'good'}/case_{i:03d}.png",
            score=score, label=label, defect="tumour" if label else "",
            scores={"mahalanobis": score, "knn": score + float(rng.normal(0, 1.0))},
            anomaly_map=amap if keep else None, mask=mask if keep and label else None,
            prediction=int(score > 3.0), role="test", image=image if keep else None,
            projection=rng.normal(1.5 * label, 1.0, 2),
        ))
    for i in range(n_val):
        score = float(rng.normal(2.0, 0.8))
        results.append(ImageResult(
            id=f"train/good/val_{i:03d}.png", score=score, label=0, role="val",
            scores={"mahalanobis": score, "knn": score}, projection=rng.normal(0, 1.0, 2),
        ))
    return ResultSet(results)


METRICS = {
    "method": "contrastive", "detector": "mahalanobis", "dataset": "synthetic <brain>",
    "image_auroc": 0.91234, "image_ap": 0.8765, "sensitivity": 0.75, "specificity": 0.9, "accuracy": 0.84,
    "threshold": 3.14159, "threshold_rule": "val_normal_quantile_0.95", "pixel_auroc": 0.93333,
    "n_train": 120, "n_val": 15, "n_test_normal": 30, "n_test_abnormal": 20, "train_seconds": 12.345,
    "scores": {"mahalanobis": {"image_auroc": 0.91234, "image_ap": 0.8765},
               "knn": {"image_auroc": 0.80001, "image_ap": 0.7}},
    "labelled_val": {"threshold": 2.5, "rule": "youden_on_labelled_val", "sensitivity": 0.85,
                     "specificity": 0.8, "accuracy": 0.82},
}
HISTORY = [{"epoch": e, "loss": 2.0 / e, "val_loss": 2.2 / e} for e in range(1, 6)]


class _Page(HTMLParser):
    """Section ids, the images (src, alt) inside each section, and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.section: str | None = None
        self.sections: list[str] = []
        self.images: dict[str | None, list[dict]] = {}
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section":
            self.section = attributes["id"]
            self.sections.append(self.section)
        elif tag == "img":
            self.images.setdefault(self.section, []).append(attributes)

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _render(tmp_path: Path, results: ResultSet, metrics: dict, **kwargs) -> tuple[str, _Page]:
    out = render_report(results, metrics, tmp_path / "report.html", **kwargs)
    page = out.read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(page)
    return page, parser


def _decode_png(src: str) -> Image.Image:
    assert src.startswith(PNG_PREFIX)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(PNG_PREFIX):])))
    image.verify()
    return image


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, _Page]:
    config = "data:\n  path: <data & more>\ndetector:\n  name: mahalanobis\n"
    return _render(tmp_path_factory.mktemp("report"), synthetic_results(), METRICS,
                   config_yaml=config, history=HISTORY, top_k=4)


def test_every_section_once_in_order(labelled: tuple[str, _Page]) -> None:
    assert labelled[1].sections == list(SECTIONS)


def test_galleries_hold_top_k_tiles_or_fewer(labelled: tuple[str, _Page], tmp_path: Path) -> None:
    images = labelled[1].images
    assert len(images["gallery-anomalous"]) == 4
    assert len(images["gallery-missed"]) == 4
    # 7 abnormal test images keep their pixels (every third of 20): fewer than top_k = 10
    _, page = _render(tmp_path, synthetic_results(), METRICS, top_k=10)
    assert len(page.images["gallery-missed"]) == 7
    assert len(page.images["gallery-anomalous"]) == 10


def test_missed_gallery_shows_lowest_scoring_abnormal(labelled: tuple[str, _Page]) -> None:
    results = synthetic_results()
    kept = sorted((r for r in results if r.label == 1 and r.image is not None), key=lambda r: r.score)
    titles = [img["title"] for img in labelled[1].images["gallery-missed"]]
    assert titles == [r.id for r in kept[:4]]


def test_all_images_are_embedded_valid_pngs(labelled: tuple[str, _Page]) -> None:
    images = [img for section in labelled[1].images.values() for img in section]
    assert set(labelled[1].images) >= {"roc", "histogram", "projection", "training"}
    for img in images:
        _decode_png(img["src"])


def test_metrics_are_formatted(labelled: tuple[str, _Page]) -> None:
    text = " ".join(labelled[1].text)
    for expected in ("0.9123", "0.8765", "0.7500", "0.9000", "0.9333", "3.142", "val_normal_quantile_0.95",
                     "12.3 s", "0.8000", "youden_on_labelled_val", "Labelled-validation threshold"):
        assert expected in text, expected
    assert "0.91234" not in text


def test_data_strings_are_escaped_and_nothing_is_external(labelled: tuple[str, _Page]) -> None:
    page = labelled[0]
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page
    assert "&lt;data &amp; more&gt;" in page and "synthetic &lt;brain&gt;" in page
    assert "http://" not in page and "https://" not in page


def test_unlabelled_results_render_with_notes(tmp_path: Path) -> None:
    results = ResultSet([
        ImageResult(id=r.id, score=r.score, scores=r.scores, anomaly_map=r.anomaly_map, role="predict",
                    image=r.image)
        for r in synthetic_results() if r.role == "test"
    ])
    page, parser = _render(tmp_path, results, {"detector": "mahalanobis", "threshold": 3.0})
    assert parser.sections == list(SECTIONS)
    assert "roc" not in parser.images and "gallery-missed" not in parser.images
    assert "projection" not in parser.images and "training" not in parser.images
    assert len(parser.images["gallery-anomalous"]) == 8
    assert "Skipped" in page


def test_save_heatmap_png_keeps_image_size(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (3, 40, 56), dtype=np.uint8)
    path = save_heatmap_png(image, np.random.rand(20, 28), tmp_path / "heat.png", 0.0, 1.0)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (56, 40)


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({"threshold_quantile": 0.95, "specificity": 0.62, "threshold": 1.0, "n_val": 200, "image_auroc": 0.8},
         ["flags 38% of the test normals"]),
        ({"threshold_quantile": 0.95, "specificity": 0.90, "threshold": 1.0, "n_val": 200, "image_auroc": 0.45},
         ["below chance"]),
        ({"threshold_quantile": 0.95, "specificity": 0.93, "threshold": 1.0, "n_val": 8, "image_auroc": 0.9},
         ["8 validation normals only"]),
        ({"threshold_quantile": 0.95, "specificity": 0.93, "threshold": 1.0, "n_val": 200, "image_auroc": 0.9}, []),
    ],
)
def test_the_report_warns_about_a_threshold_that_does_not_transfer_chance_level_and_few_normals(
    tmp_path: Path, metrics: dict, expected: list[str]
) -> None:
    from medad.evaluation.checks import evaluation_warnings

    warnings = evaluation_warnings(metrics)
    assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings))
    page, _ = _render(tmp_path, synthetic_results(), {**METRICS, **metrics})
    assert page.count('class="warning"') == len(expected)
    assert all(e in page for e in expected)
