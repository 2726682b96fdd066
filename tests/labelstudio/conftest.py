"""Fixtures for the Label Studio backend tests: a backend on the random-weight checkpoint whose
images come from memory (protocol tests), the core predictor that gives the expected masks, and one
real Label Studio server shared by every test that needs one (starting it costs tens of seconds)."""

from pathlib import Path

import pytest
from ls_requests import MemoryImages, make_test_image


@pytest.fixture(scope="session")
def ls_images():
    """Three images of different sizes and content, by the URLs Label Studio would give them."""
    return {
        "/data/upload/1/a.png": make_test_image(48, 64, seed=1),
        "/data/upload/1/b.png": make_test_image(60, 40, seed=2),
        "/data/local-files/?d=images/c.png": make_test_image(72, 96, seed=3),
    }


@pytest.fixture(scope="session")
def reference_predictor(vit_t_model):
    import mobilesam

    return mobilesam.SamPredictor(vit_t_model)


@pytest.fixture(scope="module")
def server_reference_predictor(vit_t_checkpoint):
    """The core predictor at the precision a server started from a plain environment runs:
    "auto", i.e. bf16 on CPUs with AVX512-BF16/AMX (for tests of `mobilesam serve` processes)."""
    import mobilesam

    return mobilesam.SamPredictor(mobilesam.load_model("vit_t", vit_t_checkpoint, precision="auto"))


@pytest.fixture(scope="module")
def make_backend(vit_t_checkpoint, tmp_path_factory):
    """Build a backend on the random-weight checkpoint with settings overridden by keyword."""
    from labelstudio_backend.model import MobileSamBackend
    from labelstudio_backend.settings import Settings

    def make(image_loader=None, model_loader=None, **overrides):
        # fp32: the loaders hand the backend the session's shared models, which the parity tests
        # need in fp32 (the backend sets its precision on the model it gets); test_ls_onnx.py
        # checks the default ("auto") on a model of its own.
        options = {
            "checkpoint": str(vit_t_checkpoint),
            "embedding_dir": None,
            "load_timeout": 120.0,
            "precision": "fp32",
        }
        options.update(overrides)
        return MobileSamBackend(Settings(**options), model_loader=model_loader, image_loader=image_loader)

    return make


@pytest.fixture(scope="module")
def memory_images(ls_images):
    return MemoryImages(ls_images)


@pytest.fixture(scope="module")
def backend(make_backend, memory_images, vit_t_model):
    # model_loader shares the session's model (same checkpoint) instead of loading it once more
    return make_backend(image_loader=memory_images, model_loader=lambda: vit_t_model)


@pytest.fixture(scope="module")
def client(backend):
    from labelstudio_backend.api import create_app

    return create_app(backend).test_client()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, request):
    """A real Label Studio 1.23.2 for the whole session; its migrated empty database is cached."""
    from ls_server import ServerError, start_label_studio, stop, template_key

    cache = getattr(request.config, "cache", None)
    template = None
    if cache is not None:
        try:
            template = Path(cache.mkdir(f"labelstudio-template-{template_key()}")) / "label_studio.sqlite3"
        except OSError:  # LS_BIN missing: start_label_studio says how to install it
            template = None
    try:
        server = start_label_studio(
            tmp_path_factory.mktemp("label-studio-data"),
            tmp_path_factory.mktemp("label-studio-files"),
            template,
        )
    except ServerError as exc:
        pytest.fail(str(exc))
    yield server
    stop(server.process)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item (the browser tests screenshot a failed call)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
