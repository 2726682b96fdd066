"""Running tiles as independent tasks: here one after the other, or on a `dask.distributed` client.

Tasks are plain functions of picklable arguments that write their own part of a zarr store, so a
task rerun after a lost worker rewrites the same chunks; the model is built once per worker process
(`cached_instance`), not shipped with every task.
"""

import hashlib
import pickle
import threading

from ..progress import Progress, ProgressCallback

_INSTANCES: dict = {}  # per process: the instance made by the last factory
_INSTANCES_LOCK = threading.Lock()


def cached_instance(factory):
    """factory() made once per process (a model per dask worker, not per task); one kept at a time."""
    try:  # equal factories unpickled in a worker are different objects: key by their bytes
        key = hashlib.sha256(pickle.dumps(factory)).hexdigest()
    except (pickle.PicklingError, AttributeError, TypeError):  # a local function: only ever used in-process
        key = id(factory)  # unique while the entry below holds the factory
    with _INSTANCES_LOCK:
        if key not in _INSTANCES:
            _INSTANCES.clear()  # one model per worker at a time
            _INSTANCES[key] = (factory, factory())
        return _INSTANCES[key][1]


def tile_progress(total: int, progress: ProgressCallback | None, cancel: threading.Event | None) -> Progress:
    """Counts finished tiles for a progress callback and honours a cancel event."""
    return Progress(total, progress, cancel, "tiled segmentation stopped after {done} of {total} tile steps")


def run_tiles(client, function, arguments: list[tuple], ticker: Progress) -> list:
    """function(*args) for each args, here or as tasks on a dask client; results in completion order."""
    ticker.check()
    if client is None:
        results = []
        for args in arguments:
            results.append(function(*args))
            ticker.tick()
        return results
    from distributed import as_completed

    futures = [client.submit(function, *args, pure=False) for args in arguments]
    results = []
    try:
        for future in as_completed(futures):
            results.append(future.result())
            ticker.tick()
    except BaseException:
        client.cancel(futures)
        raise
    return results


def local_cluster_client(workers: int, threads_per_worker: int = 1):
    """A `dask.distributed` client on a LocalCluster of `workers` processes (torch one thread each)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=None,
        env={"OMP_NUM_THREADS": str(threads_per_worker)},
    )
    return Client(cluster)
