"""Official checkpoints: where they come from, where they are cached, how they are verified.

Resolution order for a model's weights (`resolve_checkpoint`):
1. an explicit `checkpoint=` path, 2. the `MOBILESAM_CHECKPOINT` environment variable,
3. the file in the cache dir (`MOBILESAM_HOME`, else the platform cache dir), 4. a download
from the official URL, checked against its published sha256.
"""

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import platformdirs
from tqdm.auto import tqdm

from ._types import PathLike
from .atomic import atomic_write
from .errors import MissingWeightsError
from .model_zoo import WeightsInfo, all_weights  # noqa: F401  (WeightsInfo re-exported)

# The registry lives in model_zoo; OFFICIAL_WEIGHTS is every checkpoint it names (models and AIS decoders).
OFFICIAL_WEIGHTS = all_weights()

# An upstream without a published size still gets a bound on what a download may write.
MAX_UNKNOWN_SIZE = 3_000_000_000


def cache_dir() -> Path:
    """Where downloaded weights live: `$MOBILESAM_HOME` or the platform's user cache dir."""
    env = os.environ.get("MOBILESAM_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("mobilesam"))


def weights_info(model_type: str) -> WeightsInfo:
    try:
        return OFFICIAL_WEIGHTS[model_type]
    except KeyError:
        raise ValueError(
            f"no official weights for {model_type!r}; known: {', '.join(OFFICIAL_WEIGHTS)}"
        ) from None


def cached_path(model_type: str) -> Path:
    """Path the official checkpoint of `model_type` has in the cache (it may not exist yet)."""
    return cache_dir() / weights_info(model_type).filename


def sha256sum(path: PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manual_install_hint(model_type: str) -> str:
    info = weights_info(model_type)
    size = f"{info.size / 1e6:.0f} MB" if info.size else "size unpublished"
    return (
        f"Download {info.url} ({size}, licence {info.licence}) by hand and put it at {cached_path(model_type)}, "
        f"or point MOBILESAM_CHECKPOINT (or --checkpoint) at a copy."
    )


def verify_digest(path: PathLike, info: WeightsInfo) -> str | None:
    """None if `path` matches the digest upstream publishes, else what is wrong. micro-sam publishes
    xxh128 only (checked with the optional `xxhash` package); TinySAM publishes none (nothing to check,
    said on stderr with the file's sha256 so a user can compare it with a trusted copy)."""
    if info.sha256:
        digest = sha256sum(path)
        return None if digest == info.sha256 else f"has sha256 {digest}, expected {info.sha256}"
    if info.xxh128:
        try:
            import xxhash
        except ImportError:
            return (
                "could not be verified: its publisher gives an xxh128 digest and the xxhash package "
                "is not installed (pip install xxhash)"
            )
        digest = xxhash.xxh128()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return (
            None
            if digest.hexdigest() == info.xxh128
            else f"has xxh128 {digest.hexdigest()}, expected {info.xxh128}"
        )
    print(
        f"note: {info.filename}: upstream publishes no checksum; its sha256 is {sha256sum(path)}",
        file=sys.stderr,
    )
    return None


def download(model_type: str, progress: bool = True, force: bool = False, timeout: float = 30.0) -> Path:
    """Fetch the official checkpoint into the cache and verify its sha256; returns its path.

    The file is written to a temporary name and moved into place only once its hash matches, so
    an interrupted or corrupted download never looks like a valid checkpoint.
    """
    info = weights_info(model_type)
    target = cached_path(model_type)
    if target.is_file() and not force:
        return target
    # Written under a temp name (removed on failure, or by the next download if this process is
    # killed) and moved into place only once its digest matches.
    with atomic_write(target, suffix=".part") as part:
        try:
            with (
                urllib.request.urlopen(info.url, timeout=timeout) as response,
                open(part, "wb") as out,
                tqdm(
                    total=int(response.headers.get("Content-Length") or info.size or 0) or None,
                    unit="B",
                    unit_scale=True,
                    desc=f"Downloading {info.filename}",
                    disable=not progress,
                ) as bar,
            ):
                limit = 2 * info.size if info.size else MAX_UNKNOWN_SIZE
                written = 0
                while block := response.read(1 << 20):
                    written += len(block)
                    if written > limit:
                        raise OSError(f"the server sent more than {limit} bytes")
                    out.write(block)
                    bar.update(len(block))
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise MissingWeightsError(
                f"could not download the {model_type} weights from {info.url} ({exc}). You may be offline. "
                + manual_install_hint(model_type)
            ) from None
        problem = verify_digest(part, info)
        if problem:
            raise MissingWeightsError(
                f"downloaded {info.filename} {problem}; the file was discarded. "
                + manual_install_hint(model_type)
            )
    return target


def resolve_checkpoint(
    model_type: str = "vit_t",
    checkpoint: PathLike | None = None,
    allow_download: bool = True,
    progress: bool = True,
    env_var: str = "MOBILESAM_CHECKPOINT",
) -> Path:
    """The checkpoint file to use for `model_type` (see the module docstring for the order);
    `env_var` names the environment variable of step 2 (AIS decoders have their own)."""
    explicit = checkpoint or os.environ.get(env_var)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "checkpoint" if checkpoint else env_var
            raise MissingWeightsError(f"{source} points to {path}, which does not exist")
        return path
    cached = cached_path(model_type)
    if cached.is_file():
        return cached
    if not allow_download:
        raise MissingWeightsError(f"no {model_type} weights found. " + manual_install_hint(model_type))
    return download(model_type, progress=progress)
