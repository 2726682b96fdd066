"""`atomic_write`: write a file under a temporary name next to it, then rename it into place.

Every file the core writes (masks, label volumes, JSON, ONNX models, downloaded weights, training
shards) goes through here, so an interrupted run never leaves a half-written file under the
final name. The temporary file is in the target's folder (a rename is only atomic within one
file system) and named `.<name>.mobilesam-tmp-<pid>-<random><suffix>`: if the process is killed
(kill -9, power loss) before it can remove it, the next write into that folder finds it by name,
sees that the process that made it is gone, and removes it (each folder once per process).
"""

import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ._types import PathLike

TEMP_MARK = "mobilesam-tmp"
# .<name>.mobilesam-tmp-<host>-<pid>-<random><suffix>
_cleaned_folders: set[str] = set()  # folders this process has already cleaned up
_TEMP_NAME = re.compile(rf"^\..+\.{TEMP_MARK}-(?P<host>[0-9a-f]{{8}})-(?P<pid>\d+)-[0-9a-f]{{8}}")


def _host_tag() -> str:
    """8 hex digits naming this machine, so a shared folder never loses another machine's temp file."""
    import hashlib

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def check_writable_path(path: PathLike, what: str = "output") -> Path:
    """Fail early, with the reason, if `path` cannot be created as a file: an existing folder
    there, or a file where one of its parent folders should be. Returns `path` as a Path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {what} {path}: {parent} is a file, not a folder")
            break
    return path


def remove_stale_temp_files(folder: PathLike) -> list[Path]:
    """Remove temp files of `atomic_write` in `folder` whose writing process (on this machine) is gone."""
    removed = []
    host = _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or match["host"] != host or process_alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # another process removed it first, or it is not ours to remove
    return removed


@contextmanager
def atomic_write(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; on success it replaces `path`.

    suffix: the temporary file's ending (default: `path`'s own, e.g. ".nii.gz", so writers that
    choose the format from the name work). On any exception the temporary file is removed and
    `path` is left as it was. Parent folders are created.
    """
    path = check_writable_path(path)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = str(path.parent.resolve())
    if folder not in _cleaned_folders:  # once per process: a folder of 10,000 outputs is not rescanned
        remove_stale_temp_files(folder)
        _cleaned_folders.add(folder)
    tmp = path.with_name(
        f".{path.name}.{TEMP_MARK}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
    )
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)` then rename into place: no half-written file survives an interruption.
    The temporary name ends in ".part", for writers that would otherwise add their own suffix."""
    with atomic_write(path, suffix=".part") as tmp:
        write(tmp)


def process_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would stop the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): leave its file alone
    return True
