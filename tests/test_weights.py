"""Weights: cache dir, resolution order, download with hash check, clear offline message.

Downloads are served from a local HTTP server on 127.0.0.1 (the official hosts are unreachable here).
"""

import functools
import hashlib
import http.server
import socket
import threading

import pytest

from mobilesam import weights
from mobilesam.errors import MissingWeightsError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILESAM_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MOBILESAM_CHECKPOINT", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _fake_official(monkeypatch, url, data):
    info = weights.WeightsInfo("vit_t", "mobile_sam.pt", url, hashlib.sha256(data).hexdigest(), len(data))
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "vit_t", info)
    return info


def test_official_registry_is_complete():
    assert set(weights.OFFICIAL_WEIGHTS) == {
        "vit_t",
        "vit_b",
        "vit_l",
        "vit_h",
        "tinysam",
        "vit_t_lm",
        "vit_t_lm_decoder",
        "vit_t_em_organelles",
        "vit_t_em_organelles_decoder",
        "efficientvit_sam_l0",
    }
    for info in weights.OFFICIAL_WEIGHTS.values():
        assert info.url.startswith("https://") and info.licence
        if info.model_type in (
            "vit_t",
            "vit_b",
            "vit_l",
            "vit_h",
        ):  # Meta / MobileSAM publish sha256 and size
            assert info.url.endswith(info.filename)
            assert len(info.sha256) == 64 and int(info.sha256, 16) >= 0 and info.size > 10_000_000
        elif info.xxh128:  # micro-sam publishes xxh128 only
            assert len(info.xxh128) == 32 and int(info.xxh128, 16) >= 0
    filenames = [info.filename for info in weights.OFFICIAL_WEIGHTS.values()]
    assert len(set(filenames)) == len(filenames)  # micro-sam's files are all called vit_t.pt upstream


def test_download_checks_xxh128_where_that_is_what_upstream_publishes(home, file_server, monkeypatch):
    xxhash = pytest.importorskip("xxhash", reason="xxhash (optional) not installed")
    served, base = file_server
    data = b"pretend micro-sam checkpoint" * 1000
    (served / "vit_t.pt").write_bytes(data)
    good = weights.WeightsInfo(
        "vit_t_lm",
        "vit_t_lm.pt",
        f"{base}/vit_t.pt",
        None,
        None,
        "CC-BY-4.0",
        xxh128=xxhash.xxh128(data).hexdigest(),
    )
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "vit_t_lm", good)
    assert weights.download("vit_t_lm", progress=False).read_bytes() == data
    bad = weights.WeightsInfo(
        "vit_t_em_organelles", "em.pt", f"{base}/vit_t.pt", None, None, "CC-BY-4.0", xxh128="0" * 32
    )
    monkeypatch.setitem(weights.OFFICIAL_WEIGHTS, "vit_t_em_organelles", bad)
    with pytest.raises(MissingWeightsError, match="has xxh128 .*expected 0+; the file was discarded"):
        weights.download("vit_t_em_organelles", progress=False)
    assert not (home / "em.pt").exists() and not (home / "em.pt.part").exists()


def test_cache_dir_honours_mobilesam_home(home):
    assert weights.cache_dir() == home
    assert weights.cached_path("vit_b") == home / "sam_vit_b_01ec64.pth"


def test_download_verifies_hash_and_caches(home, file_server, monkeypatch):
    served, base = file_server
    data = b"pretend checkpoint" * 1000
    (served / "mobile_sam.pt").write_bytes(data)
    _fake_official(monkeypatch, f"{base}/mobile_sam.pt", data)
    path = weights.download("vit_t", progress=False)
    assert path == home / "mobile_sam.pt" and path.read_bytes() == data
    assert weights.resolve_checkpoint("vit_t") == path  # cached: no second download
    (served / "mobile_sam.pt").unlink()
    assert weights.resolve_checkpoint("vit_t") == path


def test_hash_mismatch_discards_file(home, file_server, monkeypatch):
    served, base = file_server
    (served / "mobile_sam.pt").write_bytes(b"tampered")
    _fake_official(monkeypatch, f"{base}/mobile_sam.pt", b"original")
    with pytest.raises(MissingWeightsError, match="has sha256 .* expected .* discarded"):
        weights.download("vit_t", progress=False)
    assert not any(home.iterdir())  # neither the file nor a .part is left behind


def test_offline_message_says_where_to_put_the_file(home, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _fake_official(monkeypatch, f"http://127.0.0.1:{port}/mobile_sam.pt", b"x")
    with pytest.raises(MissingWeightsError) as info:
        weights.resolve_checkpoint("vit_t", progress=False)
    message = str(info.value)
    assert (
        "offline" in message and str(home / "mobile_sam.pt") in message and "MOBILESAM_CHECKPOINT" in message
    )


def test_no_download_allowed(home):
    with pytest.raises(MissingWeightsError, match="no vit_b weights found"):
        weights.resolve_checkpoint("vit_b", allow_download=False)


def test_explicit_checkpoint_and_env_win(home, tmp_path, monkeypatch):
    home.mkdir()
    (home / "mobile_sam.pt").write_bytes(b"cached")
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"mine")
    env = tmp_path / "env.pt"
    env.write_bytes(b"env")
    assert weights.resolve_checkpoint("vit_t") == home / "mobile_sam.pt"
    monkeypatch.setenv("MOBILESAM_CHECKPOINT", str(env))
    assert weights.resolve_checkpoint("vit_t") == env
    assert weights.resolve_checkpoint("vit_t", explicit) == explicit
    monkeypatch.setenv("MOBILESAM_CHECKPOINT", str(tmp_path / "missing.pt"))
    with pytest.raises(MissingWeightsError, match="MOBILESAM_CHECKPOINT points to .*missing.pt"):
        weights.resolve_checkpoint("vit_t")


def test_sha256sum(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert weights.sha256sum(path) == hashlib.sha256(b"abc").hexdigest()
