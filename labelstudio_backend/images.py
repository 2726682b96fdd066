"""Fetch a task's image the way Label Studio serves it, and decode it to (H, W, 3) uint8 -- safely.

Where an image URL leads (label-studio-sdk's conventions, its helpers reused):
- `/data/upload/<project>/<file>`: Label Studio's `/storage-data/uploaded/?filepath=upload/...`, then
  `/data/upload/...` (local FileSystemStorage answers the first with 404);
- `/data/local-files/?d=<path>`: read from disk when `LOCAL_FILES_DOCUMENT_ROOT` is set, else from
  Label Studio;
- `s3://`, `gs://`, `azure-blob://`: Label Studio's `/tasks/<id>/presign/?fileuri=...`, which redirects
  to the storage;
- `http(s)://...`: fetched as is, when its host is Label Studio or allowed by the operator.

What a request can never make the backend do (see SECURITY.md):
- send the token anywhere but Label Studio's own file-serving paths (`/data/`, `/storage-data/`,
  `/tasks/<id>/presign/`) on the Label Studio origin the call is for;
- fetch from a host other than that Label Studio or `MOBILESAM_ALLOWED_IMAGE_HOSTS` (redirects are
  checked hop by hop; a redirect issued by Label Studio itself, e.g. a presigned storage URL, may
  lead to any public address);
- connect to a private, loopback or otherwise reserved address other than Label Studio's while
  `SSRF_PROTECTION_ENABLED` (default on, as in Label Studio) -- checked on the connected socket, so
  a DNS answer that changes between check and connect gains nothing;
- download more than `MOBILESAM_MAX_DOWNLOAD_MB`, wait longer than `MOBILESAM_FETCH_TIMEOUT` for a
  connection or a byte, or longer than `MOBILESAM_FETCH_DEADLINE` for a whole file;
- run more than `MOBILESAM_MAX_FETCHES` downloads at once (the others get 503 at once, so request
  threads never all hang on slow hosts and /health keeps answering);
- decode an image whose header states more than `MOBILESAM_MAX_IMAGE_PIXELS`
  (`mobilesam.io.check_pixel_limit`, before decoding).

Downloads go to an anonymous temporary file (spilled from memory past 8 MB) that the kernel removes
even when the process is killed, so no half-written download outlives a crash.
"""

import ipaddress
import logging
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

import numpy as np

from .errors import BackendError

logger = logging.getLogger(__name__)

# Label Studio's own list of reserved networks (core/utils/io.py validate_ip), used when
# USE_DEFAULT_BANNED_SUBNETS is on, as there.
DEFAULT_BANNED_SUBNETS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "233.252.0.0/24",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "::ffff:0:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:0000::/32",
    "2001:20::/28",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)
# Paths under which Label Studio serves task files; the only ones that get the token.
_MEDIA_PATH = re.compile(r"^/(data/|storage-data/|tasks/\d+/presign/?$)")
_SPOOL_BYTES = 8 << 20
_CHUNK = 64 << 10


class ImageFetchError(BackendError):
    status = 502  # the image's server failed us, not the caller's request


class ImageTooLargeError(BackendError):
    status = 413


class ImageRefused(BackendError):
    """A URL, redirect or address the fetch policy does not allow."""

    status = 403


class FetchBusy(BackendError):
    status = 503


@dataclass(frozen=True)
class FetchPolicy:
    """Where images may come from and how much fetching them may cost (from Settings)."""

    label_studio_url: str = ""  # the operator's LABEL_STUDIO_URL: any path there may be fetched
    allowed_hosts: tuple[str, ...] = ()  # "host", "host:port", "*.domain", "*"
    ssrf_protection: bool = True
    banned_subnets: tuple[str, ...] = DEFAULT_BANNED_SUBNETS
    max_bytes: int = 64 << 20
    timeout: float = 5.0  # connect, and between two bytes
    deadline: float = 30.0  # the whole download, redirects included
    max_redirects: int = 3
    verify_ssl: bool = True

    @classmethod
    def from_settings(cls, settings) -> "FetchPolicy":
        return cls(
            label_studio_url=settings.label_studio_url,
            allowed_hosts=settings.allowed_image_hosts,
            ssrf_protection=settings.ssrf_protection,
            banned_subnets=settings.banned_subnets,
            max_bytes=settings.max_download_bytes,
            timeout=settings.fetch_timeout,
            deadline=settings.fetch_deadline,
            verify_ssl=settings.verify_ssl,
        )

    def host_allowed(self, host: str, port: int) -> bool:
        for pattern in self.allowed_hosts:
            name, _, want_port = pattern.lower().partition(":")  # host names and IPv4 addresses
            if want_port and want_port != str(port):
                continue
            if name == "*" or name == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False

    def banned_network(self, ip: str) -> str | None:
        """The banned subnet `ip` lies in, or None (always None with SSRF protection off)."""
        if not self.ssrf_protection:
            return None
        address = ipaddress.ip_address(ip.split("%", 1)[0])
        for subnet in self.banned_subnets:
            network = ipaddress.ip_network(subnet, strict=False)
            if address.version == network.version and address in network:
                return subnet
        return None


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, lowercase host, port) of an absolute http(s) URL; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return parts.scheme, parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)


class ImageLoader:
    """`loader(url, hostname, access_token, max_pixels, task_id)` -> (H, W, 3) uint8, under `policy`.

    `hostname` is the Label Studio this request's images belong to (the operator's LABEL_STUDIO_URL,
    or the one a project announced in /setup) and `access_token` its token.
    """

    def __init__(self, policy: FetchPolicy | None = None, max_fetches: int = 4) -> None:
        self.policy = policy or FetchPolicy()
        self._slots = threading.BoundedSemaphore(max_fetches)
        self.max_fetches = max_fetches

    def __call__(
        self, url: str, hostname: str, access_token: str, max_pixels: int, task_id: int | None = None
    ) -> np.ndarray:
        # A short wait smooths bursts; never long, so waiting requests cannot pile up on request threads.
        if not self._slots.acquire(timeout=0.25):
            raise FetchBusy(
                f"{self.max_fetches} image downloads are already running (MOBILESAM_MAX_FETCHES); try again"
            )
        try:
            with self.open(url, hostname, access_token, task_id) as file:
                return read_image(file, max_pixels, source=url)
        finally:
            self._slots.release()

    # ------------------------------------------------------------------ where a URL leads
    def open(self, url: str, hostname: str, access_token: str, task_id: int | None = None) -> BinaryIO:
        """A binary file with the image's bytes (a local file, or a bounded download)."""
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import (
            encode_presign_fileuri,
            is_cloud_storage_uri,
            resolve_local_storage_file,
        )

        if not isinstance(url, str) or not url:
            raise ImageFetchError(f"bad image URL {url!r}")
        hostname = (hostname or "").rstrip("/")
        if url.startswith(("upload/", "/upload/")):
            url = "/data/" + url.lstrip("/")
        if url.startswith("/data/local-files") and "?d=" in url:
            try:
                local = resolve_local_storage_file(url)  # LOCAL_FILES_DOCUMENT_ROOT, no path escapes
            except (FileNotFoundError, ValueError) as exc:
                raise ImageFetchError(f"could not fetch image {url}: {exc}") from None
            if local:
                return self._open_local(local, url)
        if is_cloud_storage_uri(url):
            if task_id is None:
                raise ImageFetchError(f"could not fetch image {url}: cloud storage files need the task id")
            candidates = [f"/tasks/{int(task_id)}/presign/?fileuri={encode_presign_fileuri(url)}"]
        elif url.startswith("/data/upload/"):
            candidates = [f"/storage-data/uploaded/?filepath={url[len('/data/') :]}", url]
        else:
            candidates = [url]
        if candidates[0].startswith("/"):
            if not hostname:
                raise ImageFetchError(
                    f"could not fetch image {url}: no Label Studio address to resolve it; set "
                    "LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) or connect the backend from a "
                    "Label Studio project"
                )
            if not access_token:
                raise ImageFetchError(
                    f"could not fetch image {url}: no token for Label Studio; set LABEL_STUDIO_API_KEY"
                )
            candidates = [hostname + c for c in candidates]
        for i, candidate in enumerate(candidates):
            try:
                return self.download(candidate, hostname, access_token, source=url)
            except ImageFetchError as exc:
                if i + 1 == len(candidates) or getattr(exc, "http_status", None) not in (400, 401, 403, 404):
                    raise
                logger.debug("%s failed (%s); trying %s", candidate, exc, candidates[i + 1])
        raise AssertionError("unreachable")

    def _open_local(self, path: str, url: str) -> BinaryIO:
        import os

        try:
            size = os.path.getsize(path)
            if size > self.policy.max_bytes:
                raise ImageTooLargeError(
                    f"image {url} has {size} bytes, more than MOBILESAM_MAX_DOWNLOAD_MB="
                    f"{self.policy.max_bytes >> 20}"
                )
            return open(path, "rb")
        except OSError as exc:
            raise ImageFetchError(f"could not read image {url} from {path}: {exc}") from None

    # ------------------------------------------------------------------ the download
    def download(self, url: str, hostname: str, access_token: str, source: str = "") -> BinaryIO:
        """GET `url` (following checked redirects) into a temporary file, within the policy's bounds."""
        import requests
        from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_jwt_well_formed

        source = source or url
        trusted = _safe_origin(hostname) if hostname else None
        deadline = time.monotonic() + self.policy.deadline
        session = _guarded_session(self.policy, trusted)
        from_trusted = False
        try:
            for _ in range(self.policy.max_redirects + 1):
                send_token = self._check_url(url, trusted, from_trusted, source)
                headers = {"User-Agent": "mobilesam-labelstudio-backend"}
                if send_token and access_token:
                    scheme = "Bearer" if is_jwt_well_formed(access_token) else "Token"  # as label-studio-sdk
                    headers["Authorization"] = f"{scheme} {access_token}"
                try:
                    response = session.get(
                        url,
                        headers=headers,
                        stream=True,
                        allow_redirects=False,
                        timeout=(self.policy.timeout, self.policy.timeout),
                    )
                except requests.RequestException as exc:
                    raise ImageFetchError(
                        f"could not fetch image {source}: {type(exc).__name__}: {exc}. Is "
                        f"LABEL_STUDIO_URL ({hostname or 'unset'}) reachable from the backend?"
                    ) from None
                with response:
                    if response.is_redirect:
                        from_trusted = _safe_origin(url) == trusted
                        url = urljoin(url, response.headers.get("Location", ""))
                        continue
                    if response.status_code >= 400:
                        hint = " (check LABEL_STUDIO_API_KEY)" if response.status_code in (401, 403) else ""
                        error = ImageFetchError(
                            f"could not fetch image {source}: HTTP {response.status_code} from {url}{hint}"
                        )
                        error.http_status = response.status_code
                        raise error
                    return self._read_body(response, source, deadline)
            raise ImageFetchError(
                f"could not fetch image {source}: more than {self.policy.max_redirects} redirects"
            )
        finally:
            session.close()

    def _check_url(self, url: str, trusted: tuple | None, from_trusted: bool, source: str) -> bool:
        """Refuse a URL the policy does not allow; True if it may carry the token."""
        try:
            origin = _origin(url)
        except ValueError:
            raise ImageRefused(f"image {source}: {url!r} is not an http(s) URL") from None
        if origin == trusted:
            if _MEDIA_PATH.match(urlsplit(url).path):
                return True
            # Other paths only on the operator's Label Studio (without the token): a hostname learned
            # from /setup may be anybody's, and is trusted with Label Studio's file paths alone.
            if self.policy.label_studio_url and _safe_origin(self.policy.label_studio_url) == trusted:
                return False
            if self.policy.host_allowed(origin[1], origin[2]):
                return False
            raise ImageRefused(
                f"image {source}: {url} is not one of Label Studio's file paths (/data/, "
                "/storage-data/, /tasks/<id>/presign/); set LABEL_STUDIO_URL to fetch other paths "
                "from it"
            )
        if from_trusted or self.policy.host_allowed(origin[1], origin[2]):
            return False
        where = f"{trusted[0]}://{trusted[1]}:{trusted[2]}" if trusted else "none configured"
        raise ImageRefused(
            f"image {source}: host {origin[1]}:{origin[2]} is neither Label Studio ({where}) nor in "
            f"MOBILESAM_ALLOWED_IMAGE_HOSTS"
        )

    def _read_body(self, response, source: str, deadline: float) -> BinaryIO:
        limit = self.policy.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageTooLargeError(
                f"image {source} has {declared} bytes, more than MOBILESAM_MAX_DOWNLOAD_MB={limit >> 20}"
            )
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
        try:
            total = 0
            while True:
                # read1: returns after one socket read, so a host dripping bytes meets the deadline
                chunk = response.raw.read1(_CHUNK, decode_content=True)
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ImageTooLargeError(
                        f"image {source} is larger than MOBILESAM_MAX_DOWNLOAD_MB={limit >> 20}"
                    )
                if time.monotonic() > deadline:
                    raise ImageFetchError(
                        f"could not fetch image {source}: not complete after "
                        f"MOBILESAM_FETCH_DEADLINE={self.policy.deadline:g} s"
                    )
                spool.write(chunk)
        except BackendError:
            spool.close()
            raise
        except Exception as exc:  # noqa: BLE001 - read timeouts, resets, bad gzip: the host's fault
            spool.close()
            raise ImageFetchError(f"could not fetch image {source}: {type(exc).__name__}: {exc}") from None
        spool.seek(0)
        return spool


def _safe_origin(url: str) -> tuple[str, str, int] | None:
    try:
        return _origin(url)
    except ValueError:
        raise ImageFetchError(f"Label Studio address {url!r} must start with http:// or https://") from None


def _guarded_session(policy: FetchPolicy, trusted: tuple[str, str, int] | None):
    """A requests session whose connections are checked against the policy once connected, before any
    byte of the request is sent (Label Studio's own origin is exempt). Proxies from the environment are
    ignored: the check must see the real peer."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def check(connection, sock):
        if trusted is not None and (connection.host.lower().strip("[]"), connection.port) == trusted[1:]:
            return
        peer = sock.getpeername()[0]
        subnet = policy.banned_network(peer)
        if subnet is not None:
            sock.close()
            raise ImageRefused(
                f"image host {connection.host} resolves to {peer}, a reserved address ({subnet}); "
                "only Label Studio itself may be private (SSRF_PROTECTION_ENABLED)"
            )

    class GuardedHTTP(HTTPConnection):
        def _new_conn(self):
            sock = super()._new_conn()
            check(self, sock)
            return sock

    class GuardedHTTPS(HTTPSConnection):
        def _new_conn(self):
            sock = super()._new_conn()
            check(self, sock)
            return sock

    class Pool(HTTPConnectionPool):
        ConnectionCls = GuardedHTTP

    class PoolS(HTTPSConnectionPool):
        ConnectionCls = GuardedHTTPS

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": PoolS}

    session = requests.Session()
    session.trust_env = False
    session.verify = policy.verify_ssl
    adapter = Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def read_image(file: str | BinaryIO, max_pixels: int, source: str = "") -> np.ndarray:
    """Decode an image file (path or binary file) to (H, W, 3) uint8 as a browser shows it (EXIF
    orientation applied). 16-bit and float images are contrast-stretched by
    `mobilesam.image.to_rgb_uint8`. Images over `max_pixels` are refused from their header."""
    from PIL import Image, ImageOps

    from mobilesam.image import to_rgb_uint8
    from mobilesam.io import ImageTooLargeError as CoreTooLarge
    from mobilesam.io import check_pixel_limit

    source = source or str(file)
    try:
        check_pixel_limit(file, max_pixels, name=source)
        with Image.open(file) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGB", "L", "P", "RGBA", "LA", "CMYK", "YCbCr", "1", "PA"):
                return np.asarray(img.convert("RGB"))
            return to_rgb_uint8(np.asarray(img))
    except CoreTooLarge as exc:
        raise ImageTooLargeError(str(exc)) from None
    except (Image.DecompressionBombError, ValueError, OSError, SyntaxError) as exc:
        raise ImageFetchError(f"could not decode image {source}: {exc}") from None


_default_loader = ImageLoader()


def load_task_image(
    url: str, hostname: str, access_token: str, max_pixels: int, task_id: int | None = None
) -> np.ndarray:
    """`ImageLoader` with the default policy (no extra hosts, SSRF protection on)."""
    return _default_loader(url, hostname, access_token, max_pixels, task_id)
