"""Official checkpoints: where they come from, where they are cached, how they are verified.

Resolution order for a model's weights (`resolve_checkpoint`):
1. an explicit `checkpoint=` path, 2. the `MOBILESAM_CHECKPOINT` environment variable,
3. the file in the cache dir (`MOBILESAM_HOME`, else the platform cache dir), 4. a download
from the official URL, checked against its published sha256.
"""

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import platformdirs
from tqdm.auto import tqdm

from .atomic import atomic_write
from .errors import MissingWeightsError


@dataclass(frozen=True)
class WeightsInfo:
    model_type: str
    filename: str
    url: str
    sha256: str
    size: int  # bytes


OFFICIAL_WEIGHTS = {
    info.model_type: info
    for info in (
        WeightsInfo("vit_t", "mobile_sam.pt",
                    "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                    "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", 40_728_226),
        WeightsInfo("vit_b", "sam_vit_b_01ec64.pth",
                    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
                    "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375_042_383),
        WeightsInfo("vit_l", "sam_vit_l_0b3195.pth",
                    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
                    "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1_249_524_607),
        WeightsInfo("vit_h", "sam_vit_h_4b8939.pth",
                    "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
                    "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2_564_550_879),
    )
}

PathLike = Union[str, os.PathLike]


def cache_dir() -> Path:
    """Where downloaded weights live: `$MOBILESAM_HOME` or the platform's user cache dir."""
    env = os.environ.get("MOBILESAM_HOME")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("mobilesam"))


def weights_info(model_type: str) -> WeightsInfo:
    try:
        return OFFICIAL_WEIGHTS[model_type]
    except KeyError:
        raise ValueError(f"no official weights for {model_type!r}; known: {', '.join(OFFICIAL_WEIGHTS)}") from None


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
    return (f"Download {info.url} ({info.size / 1e6:.0f} MB) by hand and put it at {cached_path(model_type)}, "
            f"or point MOBILESAM_CHECKPOINT (or --checkpoint) at a copy.")


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
    # killed) and moved into place only once its hash matches.
    with atomic_write(target, suffix=".part") as part:
        try:
            with urllib.request.urlopen(info.url, timeout=timeout) as response, open(part, "wb") as out, tqdm(
                total=int(response.headers.get("Content-Length") or info.size), unit="B", unit_scale=True,
                desc=f"Downloading {info.filename}", disable=not progress,
            ) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise MissingWeightsError(
                f"could not download the {model_type} weights from {info.url} ({exc}). You may be offline. "
                + manual_install_hint(model_type)
            ) from None
        digest = sha256sum(part)
        if digest != info.sha256:
            raise MissingWeightsError(
                f"downloaded {info.filename} has sha256 {digest}, expected {info.sha256}; the file was "
                "discarded. " + manual_install_hint(model_type)
            )
    return target


def resolve_checkpoint(model_type: str = "vit_t", checkpoint: Optional[PathLike] = None,
                       allow_download: bool = True, progress: bool = True) -> Path:
    """The checkpoint file to use for `model_type` (see the module docstring for the order)."""
    explicit = checkpoint or os.environ.get("MOBILESAM_CHECKPOINT")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            source = "checkpoint" if checkpoint else "MOBILESAM_CHECKPOINT"
            raise MissingWeightsError(f"{source} points to {path}, which does not exist")
        return path
    cached = cached_path(model_type)
    if cached.is_file():
        return cached
    if not allow_download:
        raise MissingWeightsError(f"no {model_type} weights found. " + manual_install_hint(model_type))
    return download(model_type, progress=progress)
