"""`mobilesam serve`: the Label Studio ML backend (labelstudio_backend), on 127.0.0.1:9090 by default.

The backend is imported only when this subcommand runs, so the core CLI needs no web stack.
"""

import argparse

from ..errors import MobileSamError
from ._common import add_model_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the Label Studio ML backend",
        description="Serve MobileSAM masks to Label Studio's smart keypoint and rectangle "
        "tools. Other settings come from environment variables (see "
        "labelstudio_backend/README.md). For production: "
        "gunicorn -w 1 --threads 8 labelstudio_backend._wsgi:app",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; use 0.0.0.0 only behind a firewall or with basic auth)",
    )
    p.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    p.add_argument("--basic-auth-user", help="require HTTP basic auth (or set BASIC_AUTH_USER)")
    p.add_argument("--basic-auth-pass", help="its password (or set BASIC_AUTH_PASS)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_model_arguments(p)
    p.set_defaults(func=serve)


def backend_env_overrides(args: argparse.Namespace) -> dict:
    """Command-line model options as the environment variables the backend reads."""
    overrides = {
        "MOBILESAM_MODEL_TYPE": args.model_type,
        "MOBILESAM_CHECKPOINT": args.checkpoint,
        "MOBILESAM_DEVICE": args.device,
    }
    if args.no_download:
        overrides["MOBILESAM_ALLOW_DOWNLOAD"] = "0"
    return overrides


def import_backend(module: str):
    """Import labelstudio_backend.<module>, or explain which extra to install."""
    import importlib

    try:
        return importlib.import_module(f"labelstudio_backend.{module}")
    except ModuleNotFoundError as exc:
        raise MobileSamError(
            f"the Label Studio backend needs {exc.name!r}: pip install 'napari-mobilesam[labelstudio]'"
        ) from None


def serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        from ..cli import UsageError

        raise UsageError(f"--port must be 0..65535, got {args.port}")
    wsgi = import_backend("_wsgi")
    overrides = backend_env_overrides(args)
    overrides.update({"BASIC_AUTH_USER": args.basic_auth_user, "BASIC_AUTH_PASS": args.basic_auth_pass})
    wsgi.serve(args.host, args.port, overrides, args.log_level)
    return 0
