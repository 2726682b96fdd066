"""Fetch a task's image the way Label Studio serves it, and decode it to (H, W, 3) uint8.

`/data/upload/...`, `/data/local-files/?d=...`, cloud storage and http(s) URLs all go through
label-studio-sdk's `get_local_path` (token and host handling, local-file shortcuts, a download
cache). Failures become `ImageFetchError` naming the URL and the HTTP status, because a bare
"401" in a log is what users of other backends keep asking about.
"""

import logging
from typing import Optional

import numpy as np

from .errors import BackendError

logger = logging.getLogger(__name__)


class ImageFetchError(BackendError):
    status = 502  # the image's server failed us, not the caller's request


class ImageTooLargeError(BackendError):
    status = 413


def fetch_image_file(url: str, hostname: str, access_token: str, task_id: Optional[int] = None) -> str:
    """Local path of the image at `url` (downloaded and cached by label-studio-sdk)."""
    import requests
    from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path

    try:
        return get_local_path(url, hostname=hostname or None, access_token=access_token or None, task_id=task_id)
    except requests.HTTPError as exc:
        response = exc.response
        status = response.status_code if response is not None else "?"
        where = response.url if response is not None else url
        hint = " (check LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
        raise ImageFetchError(f"could not fetch image {url}: HTTP {status} from {where}{hint}") from None
    except requests.RequestException as exc:
        raise ImageFetchError(f"could not fetch image {url}: {type(exc).__name__}: {exc}. Is LABEL_STUDIO_URL "
                              f"({hostname or 'unset'}) reachable from the backend?") from None
    except FileNotFoundError as exc:  # the SDK's way of saying: no host or no token to resolve this URL
        raise ImageFetchError(f"could not fetch image {url}: {exc}") from None
    except ValueError as exc:  # e.g. a hostname without http(s)://
        raise ImageFetchError(f"could not fetch image {url}: {exc}") from None


def read_image(path: str, max_pixels: int, source: str = "") -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 as a browser shows it (EXIF orientation applied).

    16-bit and float images are contrast-stretched by `mobilesam.image.to_rgb_uint8`. Images over
    `max_pixels` are refused before decoding.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from mobilesam.image import to_rgb_uint8

    source = source or path
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                raise ImageTooLargeError(
                    f"image {source} has {img.width}x{img.height} = {img.width * img.height} pixels, more than "
                    f"MOBILESAM_MAX_IMAGE_PIXELS={max_pixels}")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA"):
                return np.asarray(img.convert("RGB"))
            return to_rgb_uint8(np.asarray(img))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageFetchError(f"could not decode image {source}: {exc}") from None


def load_task_image(url: str, hostname: str, access_token: str, max_pixels: int,
                    task_id: Optional[int] = None) -> np.ndarray:
    path = fetch_image_file(url, hostname, access_token, task_id)
    return read_image(path, max_pixels, source=url)
