"""Request bodies in the shapes Label Studio 1.23.2 sends (see ../shared/labelstudio-protocol.md),
and the masks our core predictor gives for the same prompts."""

import threading

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

CONFIG_BRUSH = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="Object" smart="true" background="red"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="Object" background="blue"/>
  </RectangleLabels>
  <BrushLabels name="brush" toName="image">
    <Label value="Object" background="green"/>
  </BrushLabels>
</View>"""

CONFIG_POLYGON = """<View>
  <Image name="img" value="$picture"/>
  <KeyPointLabels name="kp" toName="img" smart="true"><Label value="Cell" smart="true"/></KeyPointLabels>
  <PolygonLabels name="outline" toName="img"><Label value="Cell"/></PolygonLabels>
</View>"""

CONFIG_NO_OUTPUT = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""


def keypoint(
    x_px, y_px, width, height, positive=True, region_id="kp1", label="Object", to_name="image", from_name="kp"
):
    """A smart keypoint at pixel (x_px, y_px); positive=None leaves `is_positive` out, as non-smart tools do."""
    item = {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x_px / width * 100,
            "y": y_px / height * 100,
            "width": 0.5,
            "keypointlabels": [label],
            "labels": [label],
        },
        "id": region_id,
        "from_name": from_name,
        "to_name": to_name,
        "type": "keypointlabels",
        "origin": "manual",
    }
    if positive is not None:
        item["is_positive"] = positive
    return item


def rectangle(x0, y0, x1, y1, width, height, region_id="rect1", label="Object", rotation=0):
    """A smart rectangle with pixel corners (x0, y0), (x1, y1)."""
    return {
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": x0 / width * 100,
            "y": y0 / height * 100,
            "width": (x1 - x0) / width * 100,
            "height": (y1 - y0) / height * 100,
            "rotation": rotation,
            "rectanglelabels": [label],
        },
        "id": region_id,
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "origin": "manual",
    }


def predict_body(items, url, task_id=1, config=CONFIG_BRUSH, data_key="image"):
    """POST /predict for an interactive click (items=None: a non-interactive request, context null)."""
    context = None if items is None else {"result": items}
    task = {"id": task_id, "data": {data_key: url}, "annotations": [], "drafts": [], "predictions": []}
    return {
        "tasks": [task],
        "project": "1.1700000000",
        "label_config": config,
        "params": {"login": None, "password": None, "context": context},
    }


def decode_brush(item):
    """(H, W) bool mask of a brushlabels result item."""
    height, width = item["original_height"], item["original_width"]
    return decode_rle(item["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 127


def reference_mask(predictor, image, coords=None, labels=None, box=None, mask_input=None):
    """What the backend promises for a prompt: SamPredictor's mask, 3 candidates (best predicted IoU) for a
    single point, one mask otherwise. Returns (mask, iou, low-res logits (1, 256, 256))."""
    predictor.set_image(image)
    coords = None if coords is None else np.asarray(coords, dtype=np.float64)
    labels = None if labels is None else np.asarray(labels)
    box = None if box is None else np.asarray(box, dtype=np.float64)
    multimask = box is None and coords is not None and len(coords) == 1 and mask_input is None
    masks, iou, logits = predictor.predict(coords, labels, box, mask_input, multimask_output=multimask)
    best = int(np.argmax(iou))
    return masks[best], float(iou[best]), logits[best : best + 1]


def make_test_image(height, width, seed):
    """A distinct RGB image: textured background with a bright ellipse at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 64 * 3], axis=-1).astype(np.float64)
    image += rng.normal(0, 8, image.shape)
    cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
    image[((yy - cy) / (height / 5)) ** 2 + ((xx - cx) / (width / 6)) ** 2 < 1] = (240, 60 + 40 * seed, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


class MemoryImages:
    """Stands in for label-studio-sdk's image fetching: URL -> image, counting fetches per URL."""

    def __init__(self, images):
        self.images = images
        self.fetches = {}
        self._lock = threading.Lock()

    def __call__(self, url, hostname, access_token, max_pixels, task_id=None):
        from labelstudio_backend.images import ImageFetchError

        with self._lock:
            self.fetches[url] = self.fetches.get(url, 0) + 1
        if url not in self.images:
            raise ImageFetchError(f"could not fetch image {url}: HTTP 404 from {hostname}{url}")
        return self.images[url]
