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
from dataclasses import dataclass
from typing import Optional

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
_status: Optional[AllocatorStatus] = None


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it; musl has no mallopt thresholds
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def _preloaded_allocator() -> Optional[str]:
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


def allocator_status() -> Optional[AllocatorStatus]:
    """The status of the first `configure_allocator` call, or None if it was never called."""
    return _status


def configure_threads(num_threads: Optional[int] = None) -> int:
    """Set torch's intra-op threads to `num_threads` (default: the CPUs this process may use).

    torch defaults to the number of physical cores of the machine, which oversubscribes a
    container or a cgroup limited to fewer CPUs. Returns the number set.
    """
    import torch

    if num_threads is None:
        num_threads = usable_cpus()
    num_threads = max(1, int(num_threads))
    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
    return num_threads


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def warm_up(predictor, size: int = 256) -> float:
    """Encode a synthetic (size, size, 3) image once, so the first real encode is not slow.

    The first forward pass of a process pays one-off costs (kernel selection, oneDNN primitive
    creation, growing the heap) that make it 2-4x slower than the next. Every image is resized
    and padded to the encoder's full input size, so a small synthetic image warms the same path
    a real one takes. The predictor holds no image afterwards. Returns the seconds it took.
    """
    import time

    import numpy as np

    started = time.perf_counter()
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    image = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                      np.full((size, size), 128, np.float32)], axis=-1).astype(np.uint8)
    predictor.set_image(image)
    predictor.reset_image()
    return time.perf_counter() - started
