"""The annotator's loop in a real browser: Debian's Chromium (driven by playwright) on a real Label
Studio 1.23.2 and our backend, all on 127.0.0.1.

Log in, open a task, switch Auto-Annotation on, pick the smart keypoint from the Auto-Detect group,
click: a brush suggestion appears; Alt-click sends a negative point and changes it; accept and
Submit store brushlabels. A polygon config stores polygonlabels. A second task, prewarmed when it
opened, answers its first click from a cached embedding. Opened tasks get no (empty) prediction.
On a rotated image the mask lands under the click. Screenshots of a failing step go to
$MOBILESAM_TEST_ARTIFACTS (default: pytest's temporary directory).

The backend runs in this process (tests look at its caches); it uses the random-weight model,
except in the rotation test, where a stand-in decoder answers with a disk around the click so that
"under the click" can be seen on screen.
"""

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from ls_requests import make_test_image
from ls_server import PASSWORD, TOKEN, USER, ThreadedBackend

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 120_000  # a loaded 2-core machine: Label Studio pages take 10-20 s, clicks up to ~10 s

CONFIG_BRUSH = """<View>
  <Image name="image" value="$image" rotateControl="true"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cell" smart="true" background="red"/></KeyPointLabels>
  <BrushLabels name="brush" toName="image"><Label value="Cell" background="#00ff00"/></BrushLabels>
</View>"""
CONFIG_POLYGON = CONFIG_BRUSH.replace("BrushLabels", "PolygonLabels").replace(
    'name="brush"', 'name="outline"'
)
IMAGES = [make_test_image(120, 160, seed=s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def backend(vit_t_model, vit_t_checkpoint, label_studio):
    """Our backend on the session's random-weight model, fetching images from Label Studio."""
    from labelstudio_backend.model import MobileSamBackend
    from labelstudio_backend.settings import Settings

    settings = Settings(
        checkpoint=str(vit_t_checkpoint),
        embedding_dir=None,
        label_studio_url=label_studio.url,
        label_studio_api_key=TOKEN,
    )
    server = ThreadedBackend(MobileSamBackend(settings, model_loader=lambda: vit_t_model))
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def annotator(browser, label_studio, tmp_path_factory):
    """A logged-in page of a fresh browser profile (Auto-Annotation is off there)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(STEP_TIMEOUT_MS)
    artifacts = Path(
        os.environ.get("MOBILESAM_TEST_ARTIFACTS") or tmp_path_factory.mktemp("browser-artifacts")
    )
    person = Annotator(page, label_studio.url, artifacts)
    page.goto(label_studio.url + "/user/login/")
    page.fill("input[name=email]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url)
    yield person
    context.close()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request):
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed and "annotator" in request.fixturenames:
        person = request.getfixturevalue("annotator")
        path = person.artifacts / f"{request.node.name}.png"
        person.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot of the failure: {path}")


class Annotator:
    """What an annotator does in Label Studio's labeling view, step by step."""

    def __init__(self, page, url, artifacts):
        self.page, self.url, self.artifacts = page, url, artifacts

    def open(self, project_id, task_id):
        self.page.goto(f"{self.url}/projects/{project_id}/data?task={task_id}")
        self.page.get_by_text("Auto-Annotation", exact=True).wait_for()
        self.page.locator(".konvajs-content canvas").first.wait_for()

    def auto_annotation_on(self):
        toggle = self.page.locator("[data-testid=bottombar-auto-annotation-toggle]")
        if not toggle.is_checked():
            self.page.get_by_text("Auto-Annotation", exact=True).click()
        assert toggle.is_checked()

    def smart_keypoint(self):
        """The smart key point of the Auto-Detect group (the last toolbar button), not the plain one."""
        group = self.page.locator(".lsf-toolbar__group > button.lsf-tool_smart").last
        tool = self.page.locator(".lsf-toolbar__smart [aria-label=key-point-tool]")
        for _ in range(4):
            if not tool.count():  # the group holds the smart key point alone (no menu)
                if "_active" in (group.get_attribute("class") or ""):
                    return
            elif "_active" in (tool.get_attribute("class") or ""):
                return
            if tool.count() and tool.is_visible():  # the group's menu (shown on hover) lists its smart tools
                tool.click()
            else:  # activates the group's current smart tool
                group.click()
            self.page.wait_for_timeout(300)
            group.hover()
        raise AssertionError("the smart key point of the Auto-Detect group could not be selected")

    def select_label(self, label="Cell"):
        """The label deselects itself after every region: select it before each click."""
        chip = self.page.locator(".lsf-label", has_text=label).first
        if "selected" not in (chip.get_attribute("class") or ""):
            chip.click()

    def stage_box(self):
        return self.page.locator(".konvajs-content canvas").first.bounding_box()

    def click(self, fx, fy, negative=False):
        """Click at (fx, fy) of the stage; (request context, response data) of the interactive call."""
        box = self.stage_box()
        x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        with self.page.expect_response(lambda r: "interactive-annotating" in r.url) as answer:
            if negative:
                self.page.keyboard.down("Alt")
            self.page.mouse.click(x, y)
            if negative:
                self.page.keyboard.up("Alt")
        response = answer.value
        assert response.status == 200, response.text()
        body = response.json()
        assert "data" in body, f"Label Studio reported {body}"
        self.page.locator("[data-testid=bottombar-accept-suggestions-button]").wait_for()
        return json.loads(response.request.post_data)["context"]["result"], body["data"], (x, y)

    def accept_and_submit(self, task_id):
        self.page.locator("[data-testid=bottombar-accept-suggestions-button]").click()
        with self.page.expect_response(
            lambda r: f"/api/tasks/{task_id}/annotations" in r.url and r.request.method == "POST"
        ) as saved:
            self.page.locator("[aria-label='Submit current annotation']").click()
        assert saved.value.status == 201, saved.value.text()

    def screenshot(self):
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")).astype(np.int16)


def rle_of(data):
    (item,) = data["result"]
    assert item["type"] == "brushlabels" and item["value"]["brushlabels"] == ["Cell"]
    return item["value"]["rle"]


def stored_types(label_studio, task_id):
    annotations = label_studio.call("GET", f"/api/tasks/{task_id}/annotations")
    return {item["type"] for annotation in annotations for item in annotation["result"]}


def test_annotator_loop_with_brush_prewarm_and_no_empty_predictions(annotator, label_studio, backend):
    project, tasks, _ = label_studio.project_with_images(
        "browser brush", CONFIG_BRUSH, IMAGES[:2], backend.url
    )
    first, second = tasks

    annotator.open(project["id"], first["id"])
    annotator.auto_annotation_on()
    annotator.smart_keypoint()
    annotator.select_label()
    sent, suggestion, _ = annotator.click(0.3, 0.6)
    assert [item.get("is_positive") for item in sent] == [True]
    first_rle = rle_of(suggestion)

    annotator.select_label()
    sent, refined, _ = annotator.click(0.8, 0.3, negative=True)
    assert [item.get("is_positive") for item in sent] == [True, False]
    assert rle_of(refined) != first_rle, "the negative point must change the suggestion"

    annotator.accept_and_submit(first["id"])
    assert "brushlabels" in stored_types(label_studio, first["id"])

    # The second task is prewarmed as it opens: its first click finds the embedding cached.
    cache_key = (second["data"]["image"], backend.backend.model_version)
    before = backend.backend.metrics()["interactive_latency_s"]
    annotator.open(project["id"], second["id"])
    deadline = time.monotonic() + 120  # the annotator clicks once the image is encoded (~1 encoder time)
    while cache_key not in backend.backend.cache and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cache_key in backend.backend.cache, backend.backend.metrics()["prewarm"]
    annotator.auto_annotation_on()
    annotator.smart_keypoint()
    annotator.select_label()
    annotator.click(0.5, 0.5)
    after = backend.backend.metrics()["interactive_latency_s"]
    assert after["cached"]["count"] == before["cached"]["count"] + 1
    assert after["uncached"]["count"] == before["uncached"]["count"]

    for task in tasks:  # opening a task stored no "mobilesam … 0.00%" prediction
        assert label_studio.call("GET", f"/api/predictions?task={task['id']}") == []


def test_polygon_config_stores_polygonlabels(annotator, label_studio, backend):
    project, (task,), _ = label_studio.project_with_images(
        "browser polygon", CONFIG_POLYGON, IMAGES[2:], backend.url
    )
    annotator.open(project["id"], task["id"])
    annotator.auto_annotation_on()
    annotator.smart_keypoint()
    annotator.select_label()
    _, suggestion, _ = annotator.click(0.5, 0.5)
    assert suggestion["result"] and {item["type"] for item in suggestion["result"]} == {"polygonlabels"}
    annotator.accept_and_submit(task["id"])
    assert "polygonlabels" in stored_types(label_studio, task["id"])


class DiskBackend:
    """Builds a backend whose decoder is a stand-in: a disk of radius `radius` (fraction of the short
    side) around the newest positive point, so where the mask lands can be checked on screen."""

    radius = 0.2

    @classmethod
    def create(cls, settings, model):
        from labelstudio_backend.model import MobileSamBackend

        class Disk(MobileSamBackend):
            def segment(self, state, prompt, image_key=""):
                height, width = state.original_size
                coords, labels, _ = prompt.in_pixels(height, width)
                x, y = coords[labels == 1][-1]
                yy, xx = np.mgrid[:height, :width]
                return (xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= (
                    cls.radius * min(height, width)
                ) ** 2, 0.99

        return Disk(settings, model_loader=lambda: model)


def test_rotated_image_mask_lands_under_the_click(annotator, label_studio, vit_t_model, vit_t_checkpoint):
    from labelstudio_backend.settings import Settings

    settings = Settings(
        checkpoint=str(vit_t_checkpoint),
        embedding_dir=None,
        label_studio_url=label_studio.url,
        label_studio_api_key=TOKEN,
    )
    disk = ThreadedBackend(DiskBackend.create(settings, vit_t_model))
    try:
        project, (task,), _ = label_studio.project_with_images(
            "browser rotated", CONFIG_BRUSH, IMAGES[:1], disk.url
        )
        annotator.open(project["id"], task["id"])
        annotator.page.locator("[aria-label=rotate-right]").click()
        annotator.auto_annotation_on()
        annotator.smart_keypoint()
        annotator.select_label()
        box = annotator.stage_box()
        before = annotator.screenshot()
        sent, suggestion, (x, y) = annotator.click(0.3, 0.7)
        annotator.page.wait_for_timeout(500)  # the suggestion is drawn after the answer arrives
        after = annotator.screenshot()
    finally:
        disk.close()
    assert sent[0]["image_rotation"] == 90
    (item,) = suggestion["result"]
    assert item["image_rotation"] == 90 and (item["original_width"], item["original_height"]) == (160, 120)
    # On screen: around the click (inside the disk, off the keypoint's marker) the suggestion tints the
    # image; beyond the disk nothing changes.
    reach = DiskBackend.radius * min(box["width"], box["height"])

    def change(dx, dy):
        row, col = int(y + dy), int(x + dx)
        return np.abs(
            after[row - 2 : row + 3, col - 2 : col + 3] - before[row - 2 : row + 3, col - 2 : col + 3]
        ).mean()

    inside = [change(0.5 * reach * cx, 0.5 * reach * cy) for cx, cy in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    outside = [change(1.6 * reach * cx, 1.6 * reach * cy) for cx, cy in ((1, 0), (0, -1))]
    assert min(inside) > 10 and max(outside) < 3, (inside, outside)
