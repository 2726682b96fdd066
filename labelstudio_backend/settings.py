"""Backend configuration, read once from environment variables (label-studio-ml's names where it has them).

| variable | meaning | default |
|---|---|---|
| `MOBILESAM_MODEL_TYPE` | a name from `mobilesam weights list` (vit_t, tinysam, vit_t_lm, vit_b, ...) | the checkpoint's architecture, else vit_t |
| `MOBILESAM_CHECKPOINT` | weights file | the official file in the cache dir (downloaded once) |
| `MOBILESAM_DEVICE` | torch device | cpu |
| `MOBILESAM_ALLOW_DOWNLOAD` | download the official weights when none are found | 1 |
| `LABEL_STUDIO_URL` | Label Studio's address, for fetching task images; wins over the `hostname` a /setup call announces | the `hostname` Label Studio sends to /setup, for that project only |
| `LABEL_STUDIO_API_KEY` | token for fetching task images, sent only to `LABEL_STUDIO_URL` | the `access_token` Label Studio sends to /setup |
| `MOBILESAM_ALLOWED_IMAGE_HOSTS` | comma-separated hosts task images may also come from (`host`, `host:port`, `*.domain`, `*`) | none: Label Studio only |
| `SSRF_PROTECTION_ENABLED`, `USE_DEFAULT_BANNED_SUBNETS`, `USER_ADDITIONAL_BANNED_SUBNETS` | as in Label Studio: refuse images on private/reserved addresses (Label Studio's own excepted) | on, on, none |
| `VERIFY_SSL` | check TLS certificates of image hosts | 1 |
| `MOBILESAM_MAX_DOWNLOAD_MB` | largest image file downloaded | 64 |
| `MOBILESAM_FETCH_TIMEOUT` | seconds to connect, and between two received bytes, of an image download | 5 |
| `MOBILESAM_FETCH_DEADLINE` | seconds one image download may take in all | 30 |
| `MOBILESAM_MAX_FETCHES` | image downloads at once; more get 503 (keep it below the server's threads) | 4 |
| `MOBILESAM_MAX_REQUEST_MB` | largest request body | 64 |
| `MOBILESAM_MAX_PROMPT_REGIONS` | keypoints and rectangles in one interactive request | 100 |
| `BASIC_AUTH_USER`, `BASIC_AUTH_PASS` | require HTTP basic auth on every endpoint | off |
| `MOBILESAM_CACHE_SIZE` | image embeddings kept in memory | 32 |
| `MOBILESAM_CACHE_MAX_MB` | memory those embeddings may use | 512 |
| `MOBILESAM_EMBEDDING_DIR` | on-disk embeddings shared with `mobilesam labelstudio precompute`; `off` disables | platform cache dir |
| `MOBILESAM_EMBEDDING_DIR_MAX_MB` | disk those embeddings may use (oldest removed first) | 10240 |
| `MOBILESAM_MAX_IMAGE_PIXELS` | larger images are refused with a clear error | 100000000 |
| `MOBILESAM_TILE_ABOVE` | images whose long side exceeds this many pixels are decoded tile by tile at full resolution (`mobilesam.tiling`, 768 px tiles + 128 px halo) instead of shrunk into one 1024 px embedding; 0 never tiles | 2048 |
| `MOBILESAM_OUTPUT` | `brush`, `polygon` or `auto` (brush when the config has BrushLabels) | auto |
| `MOBILESAM_POLYGON_TOLERANCE` | polygon simplification, pixels | 1.0 |
| `MOBILESAM_AUTO_MASKS` | non-interactive /predict (task opened, Data Manager "Retrieve predictions") returns automatic masks; off: it stores nothing | 0 |
| `MOBILESAM_AUTO_MASKS_LABEL` | label of the automatic masks | the output control's first label |
| `MOBILESAM_AUTO_MASKS_POINTS_PER_SIDE` | prompt grid of the automatic masks (points per side) | 32 |
| `MOBILESAM_AUTO_MASKS_MIN_IOU`, `MOBILESAM_AUTO_MASKS_MIN_STABILITY` | keep masks whose predicted IoU / stability score reach these | 0.88, 0.95 |
| `MOBILESAM_AUTO_MASKS_TASK_TIMEOUT` | seconds one task's automatic masks may take (then that task is skipped) | 60 |
| `MOBILESAM_AUTO_MASKS_WAIT` | seconds a /predict waits for automatic masks; unfinished tasks go on in the background (keep below Label Studio's `ML_TIMEOUT_PREDICT`, 100) | 80 |
| `MOBILESAM_PREWARM` | encode a task's image in the background as soon as the task opens | 1 |
| `MOBILESAM_PREWARM_QUEUE` | opened tasks waiting to be encoded (the oldest dropped beyond this) | 4 |
| `MOBILESAM_LOAD_TIMEOUT` | seconds a prediction waits for the model to finish loading | 90 |
| `MOBILESAM_BACKEND` | `torch`, or `onnx` to run the encoder and decoder with ONNX Runtime | torch |
| `MOBILESAM_ONNX_DIR` | exported ONNX models (exported there on first start, reused while the weights match) | `<weights cache>/onnx/<model type>` |
| `MOBILESAM_ONNX_PRECISION` | `fp32`, or `int8` (static int8 encoder: faster on some CPUs, less accurate) | fp32 |
| `MOBILESAM_PRECISION` | torch encoder arithmetic: `auto` (bf16 on CPUs with AVX512-BF16/AMX, else fp32), `fp32` or `bf16` | auto |
"""

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mobilesam.model_zoo import MODEL_TYPES
from mobilesam.serving.backend import (
    BACKEND_ENV,
    PRECISION_ENV,
    encoder_precision,
    parse_backend,
    parse_onnx_precision,
    parse_precision,
)

from .images import DEFAULT_BANNED_SUBNETS

OUTPUT_MODES = ("auto", "brush", "polygon")


def _default_embedding_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("mobilesam")) / "labelstudio-embeddings"


@dataclass(frozen=True)
class Settings:
    model_type: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    allow_download: bool = True
    label_studio_url: str = ""
    label_studio_api_key: str = ""
    basic_auth_user: str = ""
    basic_auth_pass: str = ""
    cache_size: int = 32
    cache_max_bytes: int = 512 << 20
    embedding_dir: Path | None = None
    embedding_dir_max_bytes: int = 10240 << 20
    max_image_pixels: int = 100_000_000
    tile_above: int = 2048
    output: str = "auto"
    polygon_tolerance: float = 1.0
    auto_masks: bool = False
    auto_masks_label: str = ""
    auto_masks_points_per_side: int = 32
    auto_masks_min_iou: float = 0.88
    auto_masks_min_stability: float = 0.95
    auto_masks_task_timeout: float = 60.0
    auto_masks_wait: float = 80.0
    prewarm: bool = True
    prewarm_queue: int = 4
    load_timeout: float = 90.0
    backend: str = "torch"
    onnx_dir: Path | None = None  # None: mobilesam.onnx.default_onnx_dir(model type)
    onnx_precision: str = "fp32"
    precision: str = "auto"  # of the torch encoder (`mobilesam.serving.parse_precision`)
    allowed_image_hosts: tuple[str, ...] = ()
    ssrf_protection: bool = True
    banned_subnets: tuple[str, ...] = DEFAULT_BANNED_SUBNETS
    verify_ssl: bool = True
    max_download_bytes: int = 64 << 20
    fetch_timeout: float = 5.0
    fetch_deadline: float = 30.0
    max_fetches: int = 4
    max_request_bytes: int = 64 << 20
    max_prompt_regions: int = 100

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from `env` (default os.environ); raises ValueError naming a malformed variable."""
        env = os.environ if env is None else env
        embedding_dir = env.get("MOBILESAM_EMBEDDING_DIR", "").strip()
        if embedding_dir.lower() in ("off", "none", "0", "false"):
            embedding_path = None
        else:
            embedding_path = Path(embedding_dir).expanduser() if embedding_dir else _default_embedding_dir()
        onnx_dir = env.get("MOBILESAM_ONNX_DIR", "").strip()
        model_type = env.get("MOBILESAM_MODEL_TYPE") or None
        if model_type and model_type not in MODEL_TYPES:
            raise ValueError(f"MOBILESAM_MODEL_TYPE={model_type!r} is not one of {', '.join(MODEL_TYPES)}")
        settings = cls(
            model_type=model_type,
            checkpoint=env.get("MOBILESAM_CHECKPOINT") or None,
            device=env.get("MOBILESAM_DEVICE") or None,
            allow_download=_flag(env, "MOBILESAM_ALLOW_DOWNLOAD", True),
            label_studio_url=env.get("LABEL_STUDIO_URL", "").rstrip("/"),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY", ""),
            basic_auth_user=env.get("BASIC_AUTH_USER", ""),
            basic_auth_pass=env.get("BASIC_AUTH_PASS", ""),
            cache_size=_int(env, "MOBILESAM_CACHE_SIZE", 32),
            cache_max_bytes=_int(env, "MOBILESAM_CACHE_MAX_MB", 512) << 20,
            embedding_dir=embedding_path,
            embedding_dir_max_bytes=_int(env, "MOBILESAM_EMBEDDING_DIR_MAX_MB", 10240) << 20,
            max_image_pixels=_int(env, "MOBILESAM_MAX_IMAGE_PIXELS", 100_000_000),
            tile_above=_int(env, "MOBILESAM_TILE_ABOVE", 2048),
            output=env.get("MOBILESAM_OUTPUT", "auto").strip().lower() or "auto",
            polygon_tolerance=_float(env, "MOBILESAM_POLYGON_TOLERANCE", 1.0),
            auto_masks=_flag(env, "MOBILESAM_AUTO_MASKS", False),
            auto_masks_label=env.get("MOBILESAM_AUTO_MASKS_LABEL", "").strip(),
            auto_masks_points_per_side=_int(env, "MOBILESAM_AUTO_MASKS_POINTS_PER_SIDE", 32),
            auto_masks_min_iou=_float(env, "MOBILESAM_AUTO_MASKS_MIN_IOU", 0.88),
            auto_masks_min_stability=_float(env, "MOBILESAM_AUTO_MASKS_MIN_STABILITY", 0.95),
            auto_masks_task_timeout=_float(env, "MOBILESAM_AUTO_MASKS_TASK_TIMEOUT", 60.0),
            auto_masks_wait=_float(env, "MOBILESAM_AUTO_MASKS_WAIT", 80.0),
            prewarm=_flag(env, "MOBILESAM_PREWARM", True),
            prewarm_queue=_int(env, "MOBILESAM_PREWARM_QUEUE", 4),
            load_timeout=_float(env, "MOBILESAM_LOAD_TIMEOUT", 90.0),
            backend=parse_backend(env.get(BACKEND_ENV)),
            onnx_dir=Path(onnx_dir).expanduser() if onnx_dir else None,
            onnx_precision=parse_onnx_precision(env.get("MOBILESAM_ONNX_PRECISION")),
            precision=parse_precision(env.get(PRECISION_ENV)),
            allowed_image_hosts=_list(env, "MOBILESAM_ALLOWED_IMAGE_HOSTS"),
            ssrf_protection=_flag(env, "SSRF_PROTECTION_ENABLED", True),
            banned_subnets=(
                (DEFAULT_BANNED_SUBNETS if _flag(env, "USE_DEFAULT_BANNED_SUBNETS", True) else ())
                + _list(env, "USER_ADDITIONAL_BANNED_SUBNETS")
            ),
            verify_ssl=_flag(env, "VERIFY_SSL", True),
            max_download_bytes=_int(env, "MOBILESAM_MAX_DOWNLOAD_MB", 64) << 20,
            fetch_timeout=_float(env, "MOBILESAM_FETCH_TIMEOUT", 5.0),
            fetch_deadline=_float(env, "MOBILESAM_FETCH_DEADLINE", 30.0),
            max_fetches=_int(env, "MOBILESAM_MAX_FETCHES", 4),
            max_request_bytes=_int(env, "MOBILESAM_MAX_REQUEST_MB", 64) << 20,
            max_prompt_regions=_int(env, "MOBILESAM_MAX_PROMPT_REGIONS", 100),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.output not in OUTPUT_MODES:
            raise ValueError(
                f"MOBILESAM_OUTPUT must be one of {', '.join(OUTPUT_MODES)}, not {self.output!r}"
            )
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if self.cache_size < 1 or self.cache_max_bytes < 1:
            raise ValueError("MOBILESAM_CACHE_SIZE and MOBILESAM_CACHE_MAX_MB must be at least 1")
        if self.auto_masks_points_per_side < 1 or self.prewarm_queue < 1:
            raise ValueError(
                "MOBILESAM_AUTO_MASKS_POINTS_PER_SIDE and MOBILESAM_PREWARM_QUEUE must be at least 1"
            )
        if not (self.auto_masks_task_timeout > 0 and self.auto_masks_wait >= 0):
            raise ValueError(
                "MOBILESAM_AUTO_MASKS_TASK_TIMEOUT must be positive and MOBILESAM_AUTO_MASKS_WAIT "
                "not negative"
            )
        if self.max_image_pixels < 1:
            raise ValueError("MOBILESAM_MAX_IMAGE_PIXELS must be positive")
        if self.tile_above < 0:
            raise ValueError(f"MOBILESAM_TILE_ABOVE must be 0 (never tile) or pixels, got {self.tile_above}")
        if self.label_studio_url and not self.label_studio_url.startswith(("http://", "https://")):
            raise ValueError(
                f"LABEL_STUDIO_URL must start with http:// or https://, got {self.label_studio_url!r}"
            )
        for name, value in (
            ("MOBILESAM_MAX_DOWNLOAD_MB", self.max_download_bytes),
            ("MOBILESAM_MAX_FETCHES", self.max_fetches),
            ("MOBILESAM_MAX_REQUEST_MB", self.max_request_bytes),
            ("MOBILESAM_MAX_PROMPT_REGIONS", self.max_prompt_regions),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1")
        for name, value in (
            ("MOBILESAM_FETCH_TIMEOUT", self.fetch_timeout),
            ("MOBILESAM_FETCH_DEADLINE", self.fetch_deadline),
        ):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        for subnet in self.banned_subnets:
            try:
                ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                raise ValueError(f"USER_ADDITIONAL_BANNED_SUBNETS: {subnet!r} is not a network") from None
        parse_backend(self.backend)  # the core's one policy: ValueError naming the allowed values
        parse_onnx_precision(self.onnx_precision)
        try:  # "bf16" on a CPU without it, or for a model without a bf16 path, stops the server here
            encoder_precision(self.precision, self.model_type)
        except ValueError as exc:
            raise ValueError(f"{PRECISION_ENV}: {exc}") from None

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        return (self.basic_auth_user, self.basic_auth_pass) if self.basic_auth_user else None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1/0 (or true/false), got {raw!r}")
