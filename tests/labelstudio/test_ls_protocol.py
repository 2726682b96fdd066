"""The ML-backend protocol with the request shapes Label Studio 1.23.2 sends (Flask test client)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ls_requests import (
    CONFIG_BRUSH,
    CONFIG_NO_OUTPUT,
    CONFIG_POLYGON,
    decode_brush,
    keypoint,
    predict_body,
    rectangle,
    reference_mask,
)

A = "/data/upload/1/a.png"  # 48 x 64
B = "/data/upload/1/b.png"  # 60 x 40
C = "/data/local-files/?d=images/c.png"  # 72 x 96


def post_predict(client, body):
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert len(results) == len(body["tasks"])
    return results


def test_health_setup_versions(client, backend):
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "UP"
    setup = client.post(
        "/setup",
        json={
            "project": "1.1700000000",
            "schema": CONFIG_BRUSH,
            "hostname": "http://localhost:8080",
            "access_token": "tok",
            "extra_params": None,
        },
    )
    assert setup.status_code == 200
    assert setup.get_json() == {"model_version": backend.model_version}
    assert backend.model_version.startswith("mobilesam-vit_t-")
    versions = client.get("/versions")
    assert versions.status_code == 200 and versions.get_json()["versions"] == [backend.model_version]


def test_keypoint_gives_core_predictor_mask(client, ls_images, reference_predictor):
    body = predict_body([keypoint(28, 21, 64, 48)], A)
    prediction = post_predict(client, body)[0]
    (item,) = prediction["result"]
    assert (item["type"], item["from_name"], item["to_name"]) == ("brushlabels", "brush", "image")
    assert (item["original_width"], item["original_height"], item["image_rotation"]) == (64, 48, 0)
    assert item["value"]["format"] == "rle" and item["value"]["brushlabels"] == ["Object"]
    expected, iou, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    np.testing.assert_array_equal(decode_brush(item), expected)
    assert prediction["score"] == pytest.approx(iou, abs=1e-6)
    assert prediction["model_version"].startswith("mobilesam-")


def test_rle_is_0_255_so_label_studio_draws_it(client):
    """0/1 RLE would decode to an invisible alpha of 1 in Label Studio."""
    from label_studio_sdk.converter.brush import decode_rle

    (item,) = post_predict(client, predict_body([rectangle(8, 8, 40, 40, 64, 48)], A))[0]["result"]
    alpha = decode_rle(item["value"]["rle"]).reshape(48, 64, 4)[:, :, 3]
    assert set(np.unique(alpha)) <= {0, 255}


def test_missing_is_positive_counts_as_positive_and_false_as_negative(client, ls_images, reference_predictor):
    without_flag = post_predict(client, predict_body([keypoint(28, 21, 64, 48, positive=None)], A))[0]
    explicit = post_predict(client, predict_body([keypoint(28, 21, 64, 48, positive=True)], A))[0]
    np.testing.assert_array_equal(
        decode_brush(without_flag["result"][0]), decode_brush(explicit["result"][0])
    )

    items = [keypoint(28, 21, 64, 48, region_id="p"), keypoint(10, 40, 64, 48, positive=False, region_id="n")]
    mixed = post_predict(client, predict_body(items, A))[0]
    expected, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21], [10, 40]], [1, 0])
    np.testing.assert_array_equal(decode_brush(mixed["result"][0]), expected)


def test_rectangle_gives_box_mask(client, ls_images, reference_predictor):
    prediction = post_predict(client, predict_body([rectangle(4, 6, 30, 36, 40, 60)], B))[0]
    expected, iou, _ = reference_mask(reference_predictor, ls_images[B], box=[4, 6, 30, 36])
    (item,) = prediction["result"]
    assert (item["original_width"], item["original_height"]) == (40, 60)
    np.testing.assert_array_equal(decode_brush(item), expected)
    assert prediction["score"] == pytest.approx(iou, abs=1e-6)


def test_rotated_rectangle_uses_its_bounding_box(client, ls_images, reference_predictor):
    # 90 degrees clockwise about the top-left corner (10, 5): a 20 x 10 box becomes x 0..10, y 5..25
    item = rectangle(10, 5, 30, 15, 40, 60, rotation=90)
    prediction = post_predict(client, predict_body([item], B))[0]
    expected, _, _ = reference_mask(reference_predictor, ls_images[B], box=[0, 5, 10, 25])
    np.testing.assert_array_equal(decode_brush(prediction["result"][0]), expected)


def test_second_click_reuses_the_embedding(client, backend, memory_images):
    before = backend.cache.stats()
    fetches = memory_images.fetches.get(C, 0)
    post_predict(client, predict_body([keypoint(50, 30, 96, 72)], C))
    post_predict(client, predict_body([keypoint(20, 60, 96, 72, region_id="kp9")], C))
    after = backend.cache.stats()
    assert memory_images.fetches[C] == fetches + 1  # the image was fetched and encoded once
    assert after["hits"] >= before["hits"] + 1
    metrics = client.get("/metrics").get_json()
    assert metrics["interactive_latency_s"]["cached"]["count"] >= 1
    assert metrics["embedding_cache"]["items"] == len(backend.cache)


def test_refinement_click_feeds_previous_mask(client, ls_images, reference_predictor):
    first = keypoint(28, 21, 64, 48, region_id="r1")
    post_predict(client, predict_body([first], A))
    second = keypoint(40, 30, 64, 48, positive=False, region_id="r2")
    refined = post_predict(client, predict_body([first, second], A))[0]

    _, _, previous_logits = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    expected, _, _ = reference_mask(
        reference_predictor, ls_images[A], [[28, 21], [40, 30]], [1, 0], mask_input=previous_logits
    )
    without_previous, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21], [40, 30]], [1, 0])
    np.testing.assert_array_equal(decode_brush(refined["result"][0]), expected)
    assert not np.array_equal(expected, without_previous), "test needs mask_input to change the mask"


def test_polygon_output_when_config_has_polygonlabels(client, ls_images, reference_predictor):
    from skimage.draw import polygon as fill_polygon

    item = keypoint(28, 21, 64, 48, label="Cell", to_name="img")
    body = predict_body([item], A, config=CONFIG_POLYGON, data_key="picture")
    prediction = post_predict(client, body)[0]
    expected, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    assert prediction["result"], "a non-empty mask gives at least one polygon"
    drawn = np.zeros_like(expected)
    for region in prediction["result"]:
        assert (region["type"], region["from_name"], region["to_name"]) == ("polygonlabels", "outline", "img")
        assert region["value"]["polygonlabels"] == ["Cell"] and region["value"]["closed"] is True
        points = np.array(region["value"]["points"])
        assert points.shape[1] == 2 and (points >= 0).all() and (points <= 100).all()
        rr, cc = fill_polygon(points[:, 1] * 48 / 100 - 0.5, points[:, 0] * 64 / 100 - 0.5, expected.shape)
        drawn[rr, cc] = True
    iou = (drawn & expected).sum() / (drawn | expected).sum()
    assert iou > 0.8, iou


def test_non_interactive_predict_stores_nothing(client, backend):
    """Opening a task: `{"results": []}` (Label Studio stores no empty prediction tab)."""
    body = predict_body(None, A)
    body["tasks"] = [{"id": i, "data": {"image": f"/data/upload/1/{i}.png"}} for i in range(3)]
    body["tasks"].append({"id": 9, "data": {}})  # even a task without an image must not break task opening
    response = client.post("/predict", json=body)
    assert response.status_code == 200 and response.get_json() == {"results": []}
    assert backend.prewarmer.wait_idle(60)


def with_context(context):
    body = predict_body([], A)
    body["params"]["context"] = context
    return body


@pytest.mark.parametrize(
    "body, status, words",
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        ({"project": "1.1"}, 400, "tasks"),
        (predict_body([keypoint(28, 21, 64, 48)], A) | {"tasks": "nope"}, 400, "tasks"),
        (predict_body([keypoint(70, 21, 64, 48)], A), 400, "outside the image"),
        (predict_body([{"type": "keypointlabels", "value": {"x": "a", "y": 3}}], A), 400, "value.x"),
        (predict_body([{"type": "polygonlabels", "value": {}}], A), 400, "polygonlabels"),
        (with_context({"result": []}), 400, "non-empty list"),
        (with_context("click"), 400, "params.context must be an object"),
        (predict_body([keypoint(28, 21, 64, 48)], A, config=CONFIG_NO_OUTPUT), 422, "BrushLabels"),
        (predict_body([keypoint(28, 21, 64, 48)], A, config="<View><Image"), 422, "not valid"),
        (predict_body([keypoint(28, 21, 64, 48)], "/data/upload/1/missing.png"), 502, "missing.png"),
    ],
)
def test_bad_input_gets_json_error_and_server_keeps_serving(client, body, status, words):
    response = (
        client.post("/predict", json=body)
        if isinstance(body, dict)
        else client.post("/predict", data=body, content_type="application/json")
    )
    assert response.status_code == status, response.get_json()
    payload = response.get_json()
    assert payload["status"] == "error" and words in payload["error"]
    assert client.get("/health").status_code == 200
    post_predict(client, predict_body([keypoint(28, 21, 64, 48)], A))  # still answers good requests


def test_setup_rejects_unsupported_config(client):
    response = client.post("/setup", json={"project": "2.1", "schema": CONFIG_NO_OUTPUT})
    assert response.status_code == 422
    assert "BrushLabels" in response.get_json()["error"]


def test_webhook(client):
    ok = client.post(
        "/webhook",
        json={
            "action": "ANNOTATION_CREATED",
            "project": {"id": 1},
            "task": {"id": 1},
            "annotation": {"id": 3},
        },
    )
    assert ok.status_code == 200 and ok.get_json()["event"] == "ANNOTATION_CREATED"
    assert client.post("/webhook", json={"project": {}}).status_code == 400


def test_concurrent_clicks_on_different_images_never_mix_embeddings(client, ls_images, reference_predictor):
    prompts = {A: (28, 21, 64, 48), B: (20, 30, 40, 60), C: (48, 36, 96, 72)}
    expected = {
        url: reference_mask(reference_predictor, ls_images[url], [[x, y]], [1])[0]
        for url, (x, y, _, _) in prompts.items()
    }
    assert len({e.shape for e in expected.values()}) == 3

    def click(i):
        url = list(prompts)[i % 3]
        x, y, w, h = prompts[url]
        response = client.post("/predict", json=predict_body([keypoint(x, y, w, h, region_id=f"c{i}")], url))
        return url, response

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(click, range(18)))
    for url, response in outcomes:
        assert response.status_code == 200, response.get_json()
        np.testing.assert_array_equal(
            decode_brush(response.get_json()["results"][0]["result"][0]), expected[url]
        )


def test_health_answers_while_model_loads(make_backend, memory_images, vit_t_model):
    from labelstudio_backend.api import create_app

    release = threading.Event()

    def slow_loader():
        release.wait(30)
        return vit_t_model

    slow = make_backend(image_loader=memory_images, model_loader=slow_loader, load_timeout=0.2)
    client = create_app(slow).test_client()
    started = time.perf_counter()
    health = client.get("/health")
    assert time.perf_counter() - started < 0.5
    assert health.status_code == 200 and health.get_json()["model_state"] == "loading"
    too_early = client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A))
    assert too_early.status_code == 503 and "still loading" in too_early.get_json()["error"]
    release.set()
    assert slow._model_ready.wait(30)
    assert client.get("/health").get_json()["model_state"] == "ready"
    assert client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A)).status_code == 200


def test_model_load_failure_is_reported(make_backend, memory_images, tmp_path):
    from labelstudio_backend.api import create_app

    broken = make_backend(image_loader=memory_images, checkpoint=str(tmp_path / "nope.pt"))
    client = create_app(broken).test_client()
    client.get("/health")
    assert broken._model_ready.wait(60)
    assert client.get("/health").get_json()["model_state"] == "error"
    response = client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A))
    assert response.status_code == 503 and "nope.pt" in response.get_json()["error"]


def test_basic_auth_and_loading_from_checkpoint(make_backend, memory_images, ls_images, reference_predictor):
    from labelstudio_backend.api import create_app

    secured = make_backend(image_loader=memory_images, basic_auth_user="ann", basic_auth_pass="s3cret")
    client = create_app(secured).test_client()
    assert client.get("/health").status_code == 401
    wrong = {"Authorization": "Basic " + __import__("base64").b64encode(b"ann:wrong").decode()}
    assert client.get("/health", headers=wrong).status_code == 401
    good = {"Authorization": "Basic " + __import__("base64").b64encode(b"ann:s3cret").decode()}
    assert client.get("/health", headers=good).status_code == 200
    response = client.post("/predict", json=predict_body([keypoint(28, 21, 64, 48)], A), headers=good)
    assert response.status_code == 200, response.get_json()
    expected, _, _ = reference_mask(reference_predictor, ls_images[A], [[28, 21]], [1])
    np.testing.assert_array_equal(decode_brush(response.get_json()["results"][0]["result"][0]), expected)


def test_settings_from_env_reject_malformed_values():
    from labelstudio_backend.settings import Settings

    settings = Settings.from_env(
        {
            "MOBILESAM_CACHE_SIZE": "3",
            "MOBILESAM_CACHE_MAX_MB": "64",
            "MOBILESAM_EMBEDDING_DIR": "off",
            "LABEL_STUDIO_URL": "http://ls:8080/",
        }
    )
    assert (settings.cache_size, settings.cache_max_bytes, settings.embedding_dir) == (3, 64 << 20, None)
    assert settings.label_studio_url == "http://ls:8080"
    with pytest.raises(ValueError, match="MOBILESAM_CACHE_SIZE"):
        Settings.from_env({"MOBILESAM_CACHE_SIZE": "many"})
    with pytest.raises(ValueError, match="MOBILESAM_OUTPUT"):
        Settings.from_env({"MOBILESAM_OUTPUT": "svg"})
    with pytest.raises(ValueError, match="BASIC_AUTH"):
        Settings.from_env({"BASIC_AUTH_USER": "ann"})


def test_wsgi_module_builds_app_from_environment(vit_t_checkpoint, monkeypatch):
    """`gunicorn labelstudio_backend._wsgi:app` gets a Flask app configured from the environment."""
    import labelstudio_backend._wsgi as wsgi

    monkeypatch.setenv("MOBILESAM_CHECKPOINT", str(vit_t_checkpoint))
    monkeypatch.setenv("MOBILESAM_EMBEDDING_DIR", "off")
    monkeypatch.setenv("MOBILESAM_CACHE_SIZE", "3")
    monkeypatch.delattr(wsgi, "app", raising=False)
    try:
        app = wsgi.app
        backend = app.config["backend"]
        assert backend.settings.cache_size == 3 and backend.settings.checkpoint == str(vit_t_checkpoint)
        assert app.test_client().get("/health").get_json()["status"] == "UP"
        assert backend._model_ready.wait(60) and backend.model_status()["model_state"] == "ready"
    finally:
        wsgi.__dict__.pop("app", None)
