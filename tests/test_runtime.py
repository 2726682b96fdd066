"""`mobilesam.runtime`: allocator tuning (glibc mallopt) and thread settings.

Each allocator case runs in a fresh interpreter, because mallopt changes the whole process.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from mobilesam import runtime

# Allocates (glibc malloc itself, as torch does), touches and frees a 96 MiB buffer repeatedly and prints the minor page faults it cost.
_FAULTS = textwrap.dedent("""
    import ctypes, resource
    from mobilesam import runtime
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = (ctypes.c_void_p,)
    def touch_and_free(size=96 << 20):
        ptr = libc.malloc(size)
        ctypes.memset(ptr, 1, size)
        libc.free(ptr)
    status = runtime.configure_allocator()
    assert runtime.configure_allocator() is status  # idempotent
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    touch_and_free()  # warm-up: the first pass always faults
    before = faults()
    for _ in range(10):
        touch_and_free()
    print(status.applied, faults() - before)
""")


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != runtime.OPT_OUT_ENV}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(runtime._glibc() is None, reason="mallopt tuning exists only on glibc")
def test_allocator_tuning_stops_page_faults_on_reuse():
    applied, tuned_faults = _run({})
    opted_out, default_faults = _run({runtime.OPT_OUT_ENV: "1"})
    assert applied and not opted_out
    # Untuned: each 96 MiB buffer is mmapped and touched again (~24k faults per pass);
    # tuned: the freed buffer stays in the heap and is reused.
    assert default_faults > 10 * 20000
    assert tuned_faults < default_faults / 20


def test_configure_allocator_respects_environment(monkeypatch):
    monkeypatch.setattr(runtime, "_status", None)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4294967296")
    status = runtime.configure_allocator()
    assert not status.applied and "environment" in status.reason
    assert runtime.allocator_status() is status
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert runtime.configure_allocator() is status  # the first call decides


def test_configure_allocator_is_noop_without_glibc(monkeypatch):
    monkeypatch.setattr(runtime, "_status", None)
    monkeypatch.setattr(runtime, "_glibc", lambda: None)
    for name in (
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_CONF",
        "LD_PRELOAD",
        runtime.OPT_OUT_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    status = runtime.configure_allocator()
    assert not status.applied and "glibc" in status.reason


def test_configure_threads_sets_torch_threads():
    import torch

    before = torch.get_num_threads()
    try:
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
        assert runtime.configure_threads() == runtime.usable_cpus() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_warm_up_encodes_once_and_leaves_no_image(small_model):
    import mobilesam

    predictor = mobilesam.SamPredictor(small_model)
    calls = []
    encode = small_model.image_encoder.forward
    small_model.image_encoder.forward = lambda x: calls.append(tuple(x.shape)) or encode(x)
    try:
        seconds = runtime.warm_up(predictor, size=64)
    finally:
        del small_model.image_encoder.forward
    assert seconds > 0 and calls == [(1, 3, 256, 256)]  # padded to the encoder's full input size
    assert not predictor.is_image_set


def test_decoder_threads_switches_only_the_calling_thread(monkeypatch):
    """Clicks decode on one thread while another thread (an encoder, another request) keeps its
    torch thread count, and the caller's count comes back afterwards, also after an error."""
    import threading

    import torch

    monkeypatch.setenv(runtime.DECODER_THREADS_ENV, "1")
    if not runtime._threads_are_per_thread():
        pytest.skip("torch's parallel backend here is not OpenMP: the switch is a no-op by design")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inside, entered, leave = [], threading.Event(), threading.Event()

        def decode():
            with runtime.decoder_threads():
                inside.append(torch.get_num_threads())
                entered.set()
                leave.wait(10)

        worker = threading.Thread(target=decode)
        worker.start()
        entered.wait(10)
        assert inside == [1]
        assert torch.get_num_threads() == 2  # this thread is not affected by the worker's switch
        leave.set()
        worker.join()
        with pytest.raises(RuntimeError), runtime.decoder_threads(1):
            raise RuntimeError("decoder failed")
        assert torch.get_num_threads() == 2
        monkeypatch.setenv(runtime.DECODER_THREADS_ENV, "0")
        with runtime.decoder_threads():
            assert torch.get_num_threads() == 2  # 0: torch's own setting is left alone
        monkeypatch.setenv(runtime.DECODER_THREADS_ENV, "two")
        with pytest.raises(ValueError, match=runtime.DECODER_THREADS_ENV), runtime.decoder_threads():
            pass
    finally:
        torch.set_num_threads(before)
