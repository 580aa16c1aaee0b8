"""The review page (``src/medad/review/``) in a real headless Chromium, against the real service.

A tiny spatial model is served by ``medad.service`` on a free local port; a few synthetic images
are scored through ``POST /v1/score``; Playwright drives the system's Chromium (no Playwright
browser download) through the list order, keyboard navigation, the heatmap and mask-outline layers
(down to the outline canvas's pixels), the threshold against the validation normals, refreshing,
the empty state and the error banner. Every page must run without a console error.

Skipped, with the reason, only when Playwright or Chromium is absent (``.ci/install-browser``
installs Chromium; ``$MEDAD_CHROMIUM`` names another binary). A missing ``medad.service`` fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from medad import AnomalyDetector
from medad.config import RunConfig
from medad.data.synthetic import make_phantoms

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (it is in requirements.lock: make env)"
)
CHROMIUM = os.environ.get("MEDAD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip(
        "no Chromium found on PATH (chromium, chromium-browser) nor in $MEDAD_CHROMIUM: run .ci/install-browser",
        allow_module_level=True,
    )

pytestmark = pytest.mark.browser
expect = sync_api.expect
SIZE = 32
TIMEOUT_MS = 10_000  # for each wait; a passing test waits far less, even on a busy 2-core machine
expect.set_options(timeout=TIMEOUT_MS)


@contextlib.contextmanager
def start_service(model_dir: Path, workdir: Path) -> Iterator[str]:
    """The real service for ``model_dir`` (``medad serve``'s app, run by uvicorn in a thread on a
    free local port), yielding its base URL; stopped on exit. The only place that knows how the app
    is built."""
    import uvicorn

    from medad.prediction import load_model
    from medad.service import Service, ServiceFolder, create_app

    with ServiceFolder(workdir) as folder:
        app = create_app(Service(load_model(model_dir), folder, model_path=model_dir))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start (see the log above)")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def get_mask(url: str) -> np.ndarray:
    """The lesion region of a mask PNG (0/255 by the contract; the page's rule: at least 128)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("L")) >= 128


def png(image: np.ndarray) -> bytes:
    """A ``[1, H, W]`` float image in [0, 1] as 8-bit grey PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray((image[0] * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def post_images(api, images: dict[str, bytes]) -> list[dict]:
    """Score ``images`` (name -> PNG bytes) through ``POST /v1/score``, one request each."""
    results = []
    for name, data in images.items():
        response = api.post("/v1/score", multipart={"files": {"name": name, "mimeType": "image/png", "buffer": data}})
        assert response.ok, f"POST /v1/score {name}: {response.status} {response.text()}"
        results += response.json()["results"]
    return results


def by_score(results: list[dict]) -> list[dict]:
    """Highest score first, equal scores in scoring order: the page's order."""
    return sorted(results, key=lambda r: -r["score"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A spatial model that learns nothing (intensity baseline: heatmaps and lesion masks), saved;
    ten validation normals for the threshold slider. Fitted in about a second."""
    cfg = RunConfig.model_validate({
        "data": {"image_size": SIZE, "val_fraction": 0.25}, "encoder": {"width": 4},
        "method": {"name": "none"}, "detector": {"name": "intensity", "also": []},
        "train": {"epochs": 0, "progress": False},
    })
    folder = tmp_path_factory.mktemp("model")
    AnomalyDetector(cfg).fit(make_phantoms(40, SIZE, seed=0)[0]).save(folder)
    return folder


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright):
    browser = playwright.chromium.launch(executable_path=CHROMIUM)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def service(model_dir, playwright, tmp_path_factory) -> Iterator[str]:
    """The service with three lesion phantoms and two normal ones scored: its base URL."""
    lesions = make_phantoms(3, SIZE, seed=11, lesion=True)[0].numpy()
    normals = make_phantoms(2, SIZE, seed=12)[0].numpy()
    images = {f"lesion-{i}.png": png(x) for i, x in enumerate(lesions)}
    images |= {f"normal-{i}.png": png(x) for i, x in enumerate(normals)}
    with start_service(model_dir, tmp_path_factory.mktemp("service")) as base_url:
        api = playwright.request.new_context(base_url=base_url)
        results = post_images(api, images)
        api.dispose()
        flags = {r["abnormal"] for r in results}
        assert flags == {True, False}, f"the test images should be flagged and not: {results}"
        yield base_url


@dataclass
class Review:
    """A page of the review app and every console error and uncaught exception it reported."""

    page: object
    errors: list[str] = field(default_factory=list)

    def open(self, base_url: str, poll: float = 0) -> None:
        self.page.goto(f"{base_url}/review/?poll={poll}")
        expect(self.page.locator("body")).to_have_attribute("data-state", "ready")

    def options(self):
        return self.page.get_by_role("listbox").get_by_role("option")

    def attribute(self, selector: str, name: str) -> list[str]:
        return self.page.locator(selector).evaluate_all(f"els => els.map(e => e.getAttribute({name!r}))")


@pytest.fixture
def review(browser) -> Iterator[Review]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    review = Review(page)
    page.on("console", lambda msg: review.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: review.errors.append(f"uncaught: {exc}"))
    yield review
    context.close()


def test_list_sorted_by_score_with_the_models_flags(review, service):
    results = by_score(get_json(f"{service}/v1/results")["results"])
    calibration = get_json(f"{service}/v1/calibration")
    review.open(service)
    expect(review.options()).to_have_count(len(results))
    assert review.attribute("#results [role=option]", "data-id") == [r["id"] for r in results]
    # at the default threshold (the model's) the page flags what the service flagged
    assert review.attribute("#results [role=option]", "data-flagged") == [str(r["abnormal"]).lower() for r in results]
    shown = review.page.locator("#results .cal").all_inner_texts()
    assert shown == [f"{100 * r['calibrated']:.1f} %" for r in results]
    assert float(review.page.locator("#threshold-value").get_attribute("data-value")) == calibration["threshold"]
    assert review.page.locator("#empty").is_hidden()
    assert review.errors == []


def test_keyboard_moves_the_selection_and_the_big_image(review, service):
    results = by_score(get_json(f"{service}/v1/results")["results"])
    review.open(service)
    page = review.page
    image = page.get_by_role("img", name=f"{results[0]['filename']}, as the model sees it")

    def shows(i: int) -> bytes:
        """Waits until result ``i`` is selected and drawn with its layers; a hash of the drawn pixels."""
        result = results[i]
        expect(page.locator("#viewer")).to_have_attribute("data-id", result["id"])
        expect(page.locator(f"#r-{result['id']}")).to_have_attribute("aria-selected", "true")
        expect(page.get_by_role("listbox")).to_have_attribute("aria-activedescendant", f"r-{result['id']}")
        assert page.locator("#image").get_attribute("src").endswith(result["image_url"])
        assert result["filename"] in page.locator("#image").get_attribute("alt")
        for layer in ("#image", "#heatmap"):
            expect(page.locator(layer)).to_have_js_property("complete", True)
        assert page.locator("#image").evaluate("i => i.naturalWidth") > 0
        if result["mask_url"]:
            expect(page.locator("#outline")).to_have_attribute("data-drawn", result["id"])
        return hashlib.sha256(page.locator("#image").screenshot()).digest()

    expect(image).to_be_visible()
    first = shows(0)
    page.get_by_role("listbox").focus()
    page.keyboard.press("j")
    second = shows(1)
    assert second != first, "selecting another image must change the big image"
    page.keyboard.press("ArrowDown")
    shows(2)
    page.keyboard.press("k")
    shows(1)
    page.keyboard.press("ArrowUp")
    assert shows(0) == first
    page.keyboard.press("ArrowUp")  # already at the top
    shows(0)
    page.keyboard.press("End")
    shows(len(results) - 1)
    assert review.errors == []


def outline(region: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean region: inside it, with a 4-neighbour (or the edge) outside."""
    return region & ~binary_erosion(region, border_value=0)


def test_h_and_m_toggle_the_heatmap_and_the_mask_outline(review, service):
    results = by_score(get_json(f"{service}/v1/results")["results"])
    masks = {r["id"]: get_mask(service + r["mask_url"]) for r in results if r["mask_url"] and r["heatmap_url"]}
    assert masks, "a spatial model gives heatmaps and masks"
    # the largest mask: the likeliest to touch the image's edge, where the outline closes too
    chosen = next(r for r in results if r["id"] == max(masks, key=lambda i: masks[i].sum()))
    assert masks[chosen["id"]].any(), f"no image with a lesion mask: {results}"
    review.open(service)
    page = review.page
    page.get_by_role("option").filter(has_text=chosen["filename"]).click()
    expect(page.locator("#outline")).to_have_attribute("data-drawn", chosen["id"])

    # the outline canvas holds exactly the boundary pixels of the mask's 255 region
    canvas = page.locator("#outline").evaluate(
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)")
    region = masks[chosen["id"]]
    drawn = np.array(canvas, dtype=np.uint8).reshape(*region.shape, 4)[..., 3] > 0
    np.testing.assert_array_equal(drawn, outline(region))

    heatmap = page.get_by_role("img", name=f"Anomaly heatmap of {chosen['filename']}")
    mask = page.get_by_role("img", name=f"Outline of the lesion mask of {chosen['filename']}")
    heatmap_button = page.get_by_role("button", name="Heatmap")
    mask_button = page.get_by_role("button", name="Mask outline")
    expect(heatmap).to_be_visible()
    expect(mask).to_be_visible()
    page.get_by_role("listbox").focus()

    page.keyboard.press("m")
    expect(mask).to_be_hidden()
    expect(mask_button).to_have_attribute("aria-pressed", "false")
    with_heatmap = page.locator(".stack").screenshot()
    page.keyboard.press("h")
    expect(heatmap).to_be_hidden()
    expect(heatmap_button).to_have_attribute("aria-pressed", "false")
    without = page.locator(".stack").screenshot()
    assert with_heatmap != without, "the heatmap overlay must change the drawn pixels"

    page.keyboard.press("h")
    page.keyboard.press("m")
    expect(heatmap).to_be_visible()
    expect(mask).to_be_visible()
    expect(heatmap_button).to_have_attribute("aria-pressed", "true")
    page.get_by_label("opacity").fill("0.25")
    expect(heatmap).to_have_css("opacity", "0.25")
    assert review.errors == []


def test_threshold_steps_over_the_validation_normals(review, service):
    results = get_json(f"{service}/v1/results")["results"]
    calibration = get_json(f"{service}/v1/calibration")
    normals = np.array(calibration["normal_scores"])
    candidates = np.unique(np.r_[normals, calibration["threshold"]])  # ascending, distinct
    start = int(np.flatnonzero(candidates == calibration["threshold"])[0])
    review.open(service)
    page = review.page
    slider = page.get_by_role("slider", name="Threshold")
    expect(slider).to_have_attribute("max", str(len(candidates) - 1))
    counts = set()

    def check(index: int) -> None:
        """The page is at the ``index``-th threshold and shows what the calibration implies."""
        t = candidates[index]
        expect(slider).to_have_value(str(index))
        assert float(page.locator("#threshold-value").get_attribute("data-value")) == t
        above = int((normals > t).sum())
        assert round(float(page.locator("#fpr").get_attribute("data-value")) * len(normals)) == above
        assert page.locator("#fpr").inner_text() == f"{100 * above / len(normals):.1f} %"
        flagged = {r["id"] for r in results if r["score"] > t}
        assert page.locator("#flagged").inner_text() == f"{len(flagged)} of {len(results)}"
        shown = dict(zip(review.attribute("#results [role=option]", "data-id"),
                         review.attribute("#results [role=option]", "data-flagged")))
        assert shown == {r["id"]: str(r["id"] in flagged).lower() for r in results}
        counts.add(len(flagged))

    check(start)
    page.get_by_role("listbox").focus()
    for index in range(start - 1, -1, -1):
        page.keyboard.press("-" if index % 2 else "[")
        check(index)
    page.keyboard.press("[")  # at the lowest already
    check(0)
    page.keyboard.press("+")
    check(1)
    page.keyboard.press("]")
    check(2)
    slider.fill(str(len(candidates) - 1))
    check(len(candidates) - 1)
    assert len(counts) > 1, "moving the threshold must change the flagged count"
    page.keyboard.press("0")
    check(start)
    assert review.errors == []


def test_question_mark_shows_the_help(review, service):
    review.open(service)
    page = review.page
    help_dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(help_dialog).to_be_hidden()
    selected = page.locator("#viewer").get_attribute("data-id")
    page.keyboard.press("?")
    expect(help_dialog).to_be_visible()
    page.keyboard.press("j")  # the help is modal: no navigation behind it
    assert page.locator("#viewer").get_attribute("data-id") == selected
    page.keyboard.press("Escape")
    expect(help_dialog).to_be_hidden()
    page.get_by_role("button", name="Shortcuts").click()
    expect(help_dialog).to_be_visible()
    page.keyboard.press("?")
    expect(help_dialog).to_be_hidden()
    assert review.errors == []


def test_refresh_and_polling_pick_up_newly_scored_images(review, service, playwright):
    before = len(get_json(f"{service}/v1/results")["results"])
    api = playwright.request.new_context(base_url=service)
    review.open(service)  # polling off
    later = make_phantoms(2, SIZE, seed=21, lesion=True)[0].numpy()
    [new] = post_images(api, {"later-0.png": png(later[0])})
    expect(review.options()).to_have_count(before)
    review.page.get_by_role("button", name="Refresh").click()
    expect(review.options()).to_have_count(before + 1)
    results = by_score(get_json(f"{service}/v1/results")["results"])
    assert review.attribute("#results [role=option]", "data-id") == [r["id"] for r in results]
    assert new["id"] in review.attribute("#results [role=option]", "data-id")

    review.open(service, poll=0.2)
    post_images(api, {"later-1.png": png(later[1])})
    expect(review.options()).to_have_count(before + 2)
    api.dispose()
    assert review.errors == []


def test_empty_state_before_anything_is_scored(review, model_dir, tmp_path, playwright):
    with start_service(model_dir, tmp_path) as base_url:
        review.open(base_url)
        page = review.page
        expect(page.get_by_text("No image scored yet")).to_be_visible()
        expect(review.options()).to_have_count(0)
        expect(page.locator("#viewer")).to_be_hidden()
        assert page.locator("#flagged").inner_text() == "0 of 0"
        api = playwright.request.new_context(base_url=base_url)
        post_images(api, {"one.png": png(make_phantoms(1, SIZE, seed=3)[0].numpy()[0])})
        api.dispose()
        page.get_by_role("button", name="Refresh").click()
        expect(review.options()).to_have_count(1)
        expect(page.get_by_text("No image scored yet")).to_be_hidden()
        expect(page.locator("#viewer")).to_be_visible()
    assert review.errors == []


def test_error_banner_while_the_api_is_unreachable(review, service):
    page = review.page
    page.route("**/v1/**", lambda route: route.abort())
    page.goto(f"{service}/review/?poll=0")
    banner = page.get_by_role("alert")
    expect(banner).to_contain_text("Cannot reach the medad service")
    expect(page.locator("body")).to_have_attribute("data-state", "error")
    page.unroute("**/v1/**")
    page.get_by_role("button", name="Refresh").click()
    expect(banner).to_be_hidden()
    expect(review.options()).to_have_count(len(get_json(f"{service}/v1/results")["results"]))
    # the aborted requests are the only errors reported
    assert review.errors and all("Failed to load resource" in e for e in review.errors), review.errors
