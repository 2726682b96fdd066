"""Large task images in the Label Studio backend: above MOBILESAM_TILE_ABOVE a click is decoded tile by
tile by the core's TiledPredictor, the result covers the whole image, tiles are reused.

The backend's encoder and decoder are the core's stand-in predictor whose masks follow the objects
(`mobilesam.tiling.testing.ComponentPredictor`): it sees only the image it is given (a tile, or the
whole image), so a piece of an object cut by a tile edge is what tiling must put back together.
Images are PNG files served with a token by a local server shaped like Label Studio's /data/upload/.
"""

import io

import numpy as np
import pytest
from ls_requests import CONFIG_POLYGON, decode_brush, keypoint, predict_body, rectangle
from ls_server import serve_wsgi

WIDTH, HEIGHT = 3000, 2000
CORNER = (768, 1536)  # (y, x): where four tile interiors meet (768 px interiors)
RADIUS = 180
TOKEN = "good-token"


def large_image():
    """(HEIGHT, WIDTH, 3): a disk centred on a tile corner and a rectangle elsewhere, on black."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    image[(yy - CORNER[0]) ** 2 + (xx - CORNER[1]) ** 2 < RADIUS**2] = (200, 80, 40)
    image[1300:1500, 300:700] = (90, 200, 60)
    return image


def disk_truth():
    yy, xx = np.ogrid[:HEIGHT, :WIDTH]
    return (yy - CORNER[0]) ** 2 + (xx - CORNER[1]) ** 2 < RADIUS**2


def small_image():
    image = np.zeros((180, 240, 3), np.uint8)
    image[40:100, 60:150] = (220, 220, 30)
    return image


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def image_server():
    from PIL import Image
    from werkzeug.wrappers import Request, Response

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    big = png(large_image())
    files = {
        "/data/upload/1/big.png": big,
        "/data/upload/1/big-prewarm.png": big,
        "/data/upload/1/small.png": png(small_image()),
    }

    @Request.application
    def app(request):
        if request.headers.get("Authorization") != f"Token {TOKEN}":
            return Response("unauthorized", status=401)
        if request.path in files:
            return Response(files[request.path], mimetype="image/png")
        return Response("not found", status=404)

    with serve_wsgi(app) as url:
        yield url


class StandIn:
    """The core's object-following stand-in, recording the shape of every image it encodes and
    taking the `mask_input` the backend's untiled path passes."""

    def __init__(self):
        from mobilesam.tiling.testing import ComponentPredictor

        encoded = []

        class Predictor(ComponentPredictor):
            def set_image(self, image, image_format="RGB"):
                encoded.append(image.shape)
                super().set_image(image, image_format)

            def predict(
                self,
                point_coords=None,
                point_labels=None,
                box=None,
                mask_input=None,
                multimask_output=True,
                **_,
            ):
                return super().predict(point_coords, point_labels, box, multimask_output=multimask_output)

        self.encoder, self.decoder = Predictor(), Predictor()
        self.encoded = encoded


@pytest.fixture()
def make_tiled_backend(image_server, tmp_path):
    """A backend whose predictors are stand-ins, fetching images from the local server."""
    from labelstudio_backend.api import create_app
    from labelstudio_backend.model import MobileSamBackend
    from labelstudio_backend.settings import Settings

    made = []

    def make(**overrides):
        stand_in = StandIn()

        class Backend(MobileSamBackend):
            def setup(self):  # nothing to load
                pass

            def _predictors(self):
                return stand_in.encoder, stand_in.decoder

        options = {
            "embedding_dir": None,
            "label_studio_url": image_server,
            "label_studio_api_key": TOKEN,
            "prewarm": False,
        }
        options.update(overrides)
        backend = Backend(Settings(**options))
        made.append(backend)
        return backend, create_app(backend).test_client(), stand_in

    yield make
    for backend in made:
        backend.close()


def click(client, items, url, config=None):
    body = (
        predict_body(items, url)
        if config is None
        else predict_body(items, url, config=config, data_key="picture")
    )
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    (prediction,) = response.get_json()["results"]
    return prediction["result"]


def test_click_near_a_tile_corner_gives_the_whole_object_and_tiles_are_reused(make_tiled_backend):
    backend, client, stand_in = make_tiled_backend()
    url = "/data/upload/1/big.png"
    (item,) = click(client, [keypoint(1520, 750, WIDTH, HEIGHT)], url)
    assert (item["original_width"], item["original_height"]) == (WIDTH, HEIGHT)
    mask = decode_brush(item)  # the RLE covers the whole image, as Label Studio decodes it
    assert dice(mask, disk_truth()) >= 0.98
    assert not mask[1300:1500, 300:700].any()  # the other object stays out
    # Full-resolution tiles (768 + 2 x 128 = the encoder's 1024 px), only the four around the corner.
    assert stand_in.encoded == [(1024, 1024, 3)] * 4
    assert backend.metrics()["counters"]["predict.tiled"] == 1

    # A second prompt on the same image (a box across all four tiles): no encoder call at all.
    (item,) = click(client, [rectangle(1340, 570, 1730, 970, WIDTH, HEIGHT)], url)
    assert dice(decode_brush(item), disk_truth()) >= 0.98
    assert len(stand_in.encoded) == 4
    assert backend.metrics()["tiled_images"]["tiles_encoded"] == 4


def test_polygon_result_is_in_percent_of_the_whole_image(make_tiled_backend):
    from skimage.draw import polygon

    _, client, _ = make_tiled_backend()
    items = click(
        client,
        [keypoint(1545, 790, WIDTH, HEIGHT, to_name="img")],
        "/data/upload/1/big.png",
        config=CONFIG_POLYGON,
    )
    assert len(items) == 1 and items[0]["type"] == "polygonlabels"
    points = np.array(items[0]["value"]["points"]) / 100 * [WIDTH, HEIGHT] - 0.5  # pixel centres
    drawn = np.zeros((HEIGHT, WIDTH), bool)
    drawn[polygon(points[:, 1], points[:, 0], drawn.shape)] = True
    assert dice(drawn, disk_truth()) >= 0.98


def test_small_images_stay_untiled(make_tiled_backend):
    backend, client, stand_in = make_tiled_backend()
    (item,) = click(client, [keypoint(100, 70, 240, 180)], "/data/upload/1/small.png")
    expected = np.zeros((180, 240), bool)
    expected[40:100, 60:150] = True
    np.testing.assert_array_equal(decode_brush(item), expected)
    assert stand_in.encoded == [(180, 240, 3)]  # the whole image, one embedding
    assert "predict.tiled" not in backend.metrics()["counters"]


def test_tile_above_setting(make_tiled_backend):
    from labelstudio_backend.settings import Settings

    assert (
        Settings.from_env({}).tile_above == 2048
        and Settings.from_env({"MOBILESAM_TILE_ABOVE": "0"}).tile_above == 0
    )
    for bad in ("-1", "big"):
        with pytest.raises(ValueError, match="MOBILESAM_TILE_ABOVE"):
            Settings.from_env({"MOBILESAM_TILE_ABOVE": bad})
    backend, _, _ = make_tiled_backend(tile_above=0)
    assert not backend.tiled.wants((HEIGHT, WIDTH)) and not backend.tiled.wants((100000, 100000))
    assert make_tiled_backend()[0].tiled.wants((HEIGHT, WIDTH))


def test_opening_a_large_task_encodes_its_centre_tile(make_tiled_backend):
    backend, client, stand_in = make_tiled_backend(prewarm=True)
    url = "/data/upload/1/big-prewarm.png"
    response = client.post("/predict", json=predict_body(None, url))
    assert response.status_code == 200 and response.get_json()["results"] == []
    assert backend.prewarmer.wait_idle(60)
    assert stand_in.encoded == [(1024, 1024, 3)]  # the centre tile, not the whole image shrunk
    (item,) = click(client, [keypoint(1300, 1450, WIDTH, HEIGHT)], url)  # background in the centre tile
    assert not decode_brush(item).any()
    assert len(stand_in.encoded) == 1  # that click found its tile ready


def test_tiles_are_stored_on_disk_for_a_restarted_server(make_tiled_backend, tmp_path):
    _, client, _ = make_tiled_backend(embedding_dir=tmp_path)
    click(client, [keypoint(1520, 750, WIDTH, HEIGHT)], "/data/upload/1/big.png")
    assert (tmp_path / "tiles").is_dir()

    restarted, client, stand_in = make_tiled_backend(embedding_dir=tmp_path)
    (item,) = click(client, [keypoint(1520, 750, WIDTH, HEIGHT)], "/data/upload/1/big.png")
    assert dice(decode_brush(item), disk_truth()) >= 0.98
    assert stand_in.encoded == []  # all four tiles came from the core's tile cache
    assert restarted.metrics()["tiled_images"]["tiles_from_disk"] == 4
