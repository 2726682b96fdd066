"""The Label Studio subcommands of the `mobilesam` CLI, registered through the `mobilesam.commands`
entry-point group (pyproject.toml), so the core never names this package:

    mobilesam serve [--host H] [--port P]            # the ML backend, on 127.0.0.1:9090 by default
    mobilesam labelstudio precompute --project ID    # encode a project's images ahead of time

The web stack (flask, label-studio-sdk) is imported only when a subcommand runs, so `mobilesam --help`
needs none of it.
"""

import argparse
import os

from mobilesam.commands._common import add_model_arguments, progress_bar
from mobilesam.errors import MobileSamError, UsageError


def register_serve(subparsers) -> None:
    """`mobilesam serve`: the Label Studio ML backend."""
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


def register_labelstudio(subparsers) -> None:
    """`mobilesam labelstudio precompute --project ID`: the embeddings land in the ML backend's on-disk
    store ($MOBILESAM_EMBEDDING_DIR), where a running `mobilesam serve` finds them, so annotators'
    first click on each image is as fast as the second."""
    p = subparsers.add_parser("labelstudio", help="Label Studio helpers (precompute embeddings)")
    sub = p.add_subparsers(dest="labelstudio_command", metavar="ACTION", required=True)
    pre = sub.add_parser("precompute", help="encode every image of a project for the ML backend's cache")
    pre.add_argument("--project", type=int, required=True, help="Label Studio project id")
    pre.add_argument(
        "--url",
        default=os.environ.get("LABEL_STUDIO_URL"),
        help="Label Studio address (default $LABEL_STUDIO_URL)",
    )
    pre.add_argument(
        "--api-key",
        default=os.environ.get("LABEL_STUDIO_API_KEY"),
        help="Label Studio access token (default $LABEL_STUDIO_API_KEY)",
    )
    pre.add_argument(
        "--embedding-dir",
        default=None,
        help="where the backend reads embeddings (default $MOBILESAM_EMBEDDING_DIR, else the "
        "platform cache dir); must be the serving backend's",
    )
    pre.add_argument(
        "--predictions",
        action="store_true",
        help="also upload segment-everything masks as predictions (what Data Manager's Retrieve "
        "predictions does with MOBILESAM_AUTO_MASKS=1; MOBILESAM_AUTO_MASKS_* settings apply)",
    )
    add_model_arguments(pre)
    pre.set_defaults(func=precompute)


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


def _missing_extra(exc: ModuleNotFoundError) -> MobileSamError:
    return MobileSamError(
        f"the Label Studio backend needs {exc.name!r}: pip install 'napari-mobilesam[labelstudio]'"
    )


def serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    try:
        from . import _wsgi
    except ModuleNotFoundError as exc:
        raise _missing_extra(exc) from None
    overrides = backend_env_overrides(args)
    overrides.update({"BASIC_AUTH_USER": args.basic_auth_user, "BASIC_AUTH_PASS": args.basic_auth_pass})
    _wsgi.serve(args.host, args.port, overrides, args.log_level)
    return 0


def precompute(args: argparse.Namespace) -> int:
    if not args.url or not args.api_key:
        raise UsageError("give --url and --api-key (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {args.url!r}")
    try:
        from .model import MobileSamBackend
        from .precompute import precompute_project
        from .settings import Settings
    except ModuleNotFoundError as exc:
        raise _missing_extra(exc) from None

    env = dict(os.environ)
    env.update({k: v for k, v in backend_env_overrides(args).items() if v is not None})
    env.update({"LABEL_STUDIO_URL": args.url, "LABEL_STUDIO_API_KEY": args.api_key})
    if args.embedding_dir:
        env["MOBILESAM_EMBEDDING_DIR"] = args.embedding_dir
    backend = MobileSamBackend(Settings.from_env(env))
    print(f"model {backend.model_version}; embeddings go to {backend.settings.embedding_dir}")
    with progress_bar(f"project {args.project}", "image") as (progress, _):
        report = precompute_project(
            backend, args.url, args.api_key, args.project, progress, predictions=args.predictions
        )
    print(f"{report.encoded} encoded, {report.already_stored} already stored, {len(report.failed)} failed")
    if args.predictions:
        print(f"{report.predictions} predictions uploaded")
    for failure in report.failed:
        print(f"  {failure}")
    return 1 if report.failed else 0
