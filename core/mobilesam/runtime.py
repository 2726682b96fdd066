"""Process-wide runtime settings that make CPU inference fast: the memory allocator and threads.

Why the allocator matters: glibc's malloc returns every block above its mmap threshold to the
kernel on `free` and maps it again on the next `malloc`. A vit_t forward pass allocates tens of
large activation buffers, so with the defaults each pass costs ~1.2M page faults and the encoder
runs ~2x slower than it needs to. Raising the mmap and trim thresholds keeps freed buffers in the
heap for reuse (the same as `MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=8589934592`
in the environment). The cost is that the process keeps its peak heap mapped instead of giving it
back between images, which is what a long-running viewer or server wants anyway.

Entry points call `configure_allocator()` once at start-up (the `mobilesam` CLI does it in
`main`; the napari plugin and the Label Studio backend may call it before loading the model).
It is idempotent, never raises, and is a no-op on platforms without glibc (macOS, Windows, musl)
or when the user has set the allocator through the environment or preloaded jemalloc/tcmalloc.
Set `MOBILESAM_NO_ALLOCATOR_TUNING=1` to opt out.
"""

import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# mallopt parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# mallopt takes a C int, so 2 GiB - 1 is the most it can be asked for; any value above the largest
# activation (~64 MiB for vit_t at 1024 px, beyond glibc's 32 MiB dynamic-threshold ceiling) works.
MMAP_THRESHOLD = 2**31 - 1
TRIM_THRESHOLD = 2**31 - 1

OPT_OUT_ENV = "MOBILESAM_NO_ALLOCATOR_TUNING"
_ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_CONF")


@dataclass(frozen=True)
class AllocatorStatus:
    """What `configure_allocator` did: `applied` True when mallopt was called successfully."""

    applied: bool
    reason: str


_lock = threading.Lock()
_status: AllocatorStatus | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _ = libc.gnu_get_libc_version  # only glibc has it; musl has no mallopt thresholds
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def _preloaded_allocator() -> str | None:
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return name
    return None


def configure_allocator() -> AllocatorStatus:
    """Keep freed large buffers in the heap (glibc) so repeated forward passes skip page faults.

    Safe to call any number of times from any thread: the first call decides, later calls return
    the same status. Never raises.
    """
    global _status
    with _lock:
        if _status is None:
            _status = _configure()
        return _status


def _configure() -> AllocatorStatus:
    if os.environ.get(OPT_OUT_ENV, "").strip() not in ("", "0"):
        return AllocatorStatus(False, f"disabled by {OPT_OUT_ENV}")
    preloaded = _preloaded_allocator()
    if preloaded:
        return AllocatorStatus(False, f"{preloaded} is preloaded")
    if any(name in os.environ for name in _ENV_SETTINGS):
        return AllocatorStatus(False, "allocator already set through the environment")
    libc = _glibc()
    if libc is None:
        return AllocatorStatus(False, "not glibc: nothing to tune")
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
    return AllocatorStatus(ok, "mallopt thresholds raised" if ok else "mallopt refused the thresholds")


def release_free_memory() -> bool:
    """Give the heap's free pages back to the kernel now (glibc `malloc_trim`); returns whether
    it could.

    `configure_allocator` keeps freed memory mapped so that the next forward pass reuses it
    without page faults; this undoes that once, for memory that one-time work left free and that
    would otherwise sit under the next peak (the ONNX predictor calls it after loading a model).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    libc.malloc_trim(0)
    return True


# ---------------------------------------------------------------- BLAS buffers

# MKL (torch's BLAS on x86) keeps the packing buffers of every matrix product in its own pool, and
# a product whose buffer is a little larger than the pooled ones gets a new one: the encoder's
# linear layers leave ~9 MB each behind (~40 MB by the end of an encode, held for the life of the
# process). Releasing them after each large product bounds the pool to one buffer; the next product
# takes it back from the heap (no page faults with `configure_allocator`'s settings), so it costs
# nothing measurable. A no-op where torch's BLAS is not MKL or its symbol is not reachable.
_mkl_free_buffers = None  # False once looked up and not found


def release_blas_buffers() -> None:
    """Give the buffers MKL pooled for finished matrix products back to the heap (`mkl_free_buffers`)."""
    global _mkl_free_buffers
    if _mkl_free_buffers is None:
        _mkl_free_buffers = _find_mkl_free_buffers() or False
    if _mkl_free_buffers:
        _mkl_free_buffers()


def _find_mkl_free_buffers():
    import torch

    if not (sys.platform.startswith("linux") and torch.backends.mkl.is_available()):
        return None
    try:  # torch links MKL statically into libtorch_cpu and exports its service functions
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        function = lib.mkl_serv_free_buffers
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = (), None
    return function


def allocator_status() -> AllocatorStatus | None:
    """The status of the first `configure_allocator` call, or None if it was never called."""
    return _status


def configure_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads to `num_threads` (default: the CPUs this process may use).

    torch defaults to the number of physical cores of the machine, which oversubscribes a
    container or a cgroup limited to fewer CPUs. Returns the number set.
    """
    import torch

    if num_threads is None:
        num_threads = usable_cpus()
    num_threads = max(1, int(num_threads))
    with _threads_lock:
        if torch.get_num_threads() != num_threads:
            torch.set_num_threads(num_threads)
    return num_threads


# ---------------------------------------------------------------- decoder threads

# A click's decoder and mask postprocessing are a few hundred small operations (token-sized matrix
# products, 1M-element elementwise passes) that each last well under a millisecond: splitting them
# over OpenMP threads buys little on an idle machine and costs a lot on a busy one, where every
# operation waits at a barrier for a thread that is not scheduled (measured 2-20x slower with 2
# threads on a loaded 2-core machine). So clicks run on one thread by default.
DECODER_THREADS_ENV = "MOBILESAM_DECODER_THREADS"
# 0: leave torch's thread count alone. One thread wins only on a busy machine (a click 0.21x vs 0.52x
# the reference under load) and loses on an idle one (38 ms vs 21 ms on 2 idle cores), so it is opt-in.
DECODER_THREADS = 0

# Serialises every change of torch's thread count made by this package (`configure_threads`,
# `decoder_threads`): torch.set_num_threads also sets the process default that threads starting
# their first torch operation pick up, so set/restore pairs must not interleave with each other.
_threads_lock = threading.Lock()
_openmp: bool | None = None


def decoder_thread_count() -> int:
    """Threads for a click's decoding: `MOBILESAM_DECODER_THREADS` if set (0: leave torch's
    setting alone), else `DECODER_THREADS`."""
    value = os.environ.get(DECODER_THREADS_ENV, "").strip()
    try:
        return max(0, int(value)) if value else DECODER_THREADS
    except ValueError:
        raise ValueError(f"{DECODER_THREADS_ENV} must be a whole number, not {value!r}") from None


def _threads_are_per_thread() -> bool:
    """Whether torch's intra-op threads are OpenMP's (the default build on Linux, macOS and
    Windows): then torch.set_num_threads changes the calling thread's OpenMP and MKL thread
    counts only, so other threads (the encoder, other requests) keep theirs."""
    global _openmp
    if _openmp is None:
        import torch

        _openmp = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    return _openmp


@contextmanager
def decoder_threads(num_threads: int | None = None) -> Iterator[None]:
    """Run the body on `num_threads` torch threads in the calling thread (default
    `decoder_thread_count()`), restoring the thread's count afterwards.

    Thread-safe: with torch's OpenMP backend the count is per thread, so concurrent decodes on
    other threads and an encoder running beside them are not affected, and the switch happens
    under `_threads_lock`. With another backend (a native thread pool, where the count is
    process-wide) it leaves the threads alone rather than slow down an encoder on another thread.
    """
    import torch

    wanted = decoder_thread_count() if num_threads is None else max(0, int(num_threads))
    if wanted == 0 or not _threads_are_per_thread():
        yield
        return
    with _threads_lock:
        previous = torch.get_num_threads()
        if previous != wanted:
            torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if previous != wanted:
            with _threads_lock:
                torch.set_num_threads(previous)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------- CPU features and low precision

# The instruction-set extensions that decide which low-precision paths pay off (Linux names).
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "avx512_vnni",
    "avx_vnni",
    "avx512_fp16",
)


def cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_supported() -> bool:
    """Whether bf16 matrix products run natively here (AVX512-BF16 or AMX, through oneDNN).

    Without them oneDNN emulates bf16 in fp32 and is slower than fp32, so this is False there.
    """
    flags = cpu_flags()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    import torch

    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# Instructions that make int8 matrix products faster than fp32 (x86 VNNI / AMX, ARM dot product).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")


def int8_supported() -> bool:
    """Whether int8 matrix products have native dot-product instructions here (`INT8_FLAGS`).

    onnxruntime runs int8 without them too, but emulated in 16-bit arithmetic: then the int8
    encoder saves little or nothing over fp32 and is still less accurate.
    """
    return bool(set(INT8_FLAGS) & cpu_flags())


def resolve_precision(precision: str) -> str:
    """ "fp32", "bf16" or "auto" (bf16 where `bf16_supported()`, else fp32) -> "fp32" or "bf16".

    Raises ValueError for an unknown name or for "bf16" on a CPU without native bf16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    if precision == "bf16" and not bf16_supported():
        raise ValueError(
            "precision 'bf16' needs a CPU with AVX512-BF16 or AMX (this one has neither; "
            "use 'fp32' or 'auto')"
        )
    return precision


PRECISIONS = ("fp32", "bf16", "auto")


# ---------------------------------------------------------------- warm-up


def warm_up(predictor, size: int = 256) -> float:
    """Encode a synthetic `size` x `size` image and answer one click, then forget them, so that
    the first real image does not pay for oneDNN's kernel generation, first allocations and
    lazy imports (2-4x a steady encode otherwise). Returns the seconds it took.

    Works with any predictor that has set_image / predict / reset_image (torch or ONNX backend,
    `mobilesam.onnx.StandalonePredictor`). The encoder always runs at its full input size (the
    image is resized to it), so a small synthetic image warms the same kernels as a real one.
    """
    import time

    import numpy as np

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    predictor.set_image(image)
    predictor.predict(point_coords=np.array([[size / 2, size / 2]]), point_labels=np.array([1]))
    predictor.reset_image()
    return time.perf_counter() - start
