"""Entry point in label-studio-ml's layout.

    python labelstudio_backend/_wsgi.py --host 127.0.0.1 --port 9090     # threaded server
    gunicorn -w 1 --threads 8 -b 127.0.0.1:9090 labelstudio_backend._wsgi:app

One worker process with several threads keeps one model and one embedding cache; more workers
each load their own. Configuration is by environment variables (see labelstudio_backend.settings);
the command-line options below override them.
"""

import argparse
import errno
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script (label-studio-ml start): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labelstudio_backend.api import create_app  # noqa: E402
from labelstudio_backend.errors import BackendError  # noqa: E402
from labelstudio_backend.model import MobileSamBackend  # noqa: E402
from labelstudio_backend.settings import Settings  # noqa: E402


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s")


def build_app(env: dict | None = None):
    """The Flask app with a backend configured from `env` (default os.environ); the model starts loading."""
    backend = MobileSamBackend(Settings.from_env(env))
    backend.setup()
    return create_app(backend)


def __getattr__(name: str):
    """`app` is built on first access (`gunicorn labelstudio_backend._wsgi:app`), so running this file as
    a script with overriding options never builds a second backend from the unmodified environment."""
    if name == "app":
        _configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
        globals()["app"] = application = build_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="MobileSAM ML backend for Label Studio")
    parser.add_argument(
        "--host",
        default=os.environ.get("HOST", "127.0.0.1"),
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)",
    )
    parser.add_argument("-p", "--port", type=int, default=int(os.environ.get("PORT", 9090)))
    parser.add_argument("--model-type", help="overrides MOBILESAM_MODEL_TYPE")
    parser.add_argument("--checkpoint", help="overrides MOBILESAM_CHECKPOINT")
    parser.add_argument("--basic-auth-user", help="overrides BASIC_AUTH_USER")
    parser.add_argument("--basic-auth-pass", help="overrides BASIC_AUTH_PASS")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    parser.add_argument("-d", "--debug", action="store_true", help="log at DEBUG level")
    # label-studio-ml's template takes more options (--kwargs, --model-dir, --check): accept and ignore
    # them, so `label-studio-ml start labelstudio_backend` runs this file unchanged.
    args, ignored = parser.parse_known_args(argv)
    if ignored:
        print(f"ignoring options this backend does not use: {' '.join(ignored)}", file=sys.stderr)
    if args.debug:
        args.log_level = "DEBUG"
    return args


def serve(
    host: str = "127.0.0.1", port: int = 9090, env_overrides: dict | None = None, log_level: str = "INFO"
) -> None:
    """Build the backend (model loading starts in the background) and serve until interrupted.

    The port is taken first: a port in use is a one-line error before any model thread exists.
    """
    from werkzeug.serving import make_server

    _configure_logging(log_level)
    env = dict(os.environ)
    env.update({k: v for k, v in (env_overrides or {}).items() if v is not None})
    listener = listen(host, port)
    try:
        flask_app = build_app(env)
        server = make_server(host, port, flask_app, threaded=True, fd=listener.fileno())
    finally:
        listener.close()  # the server holds its own duplicate
    logging.getLogger(__name__).info(
        "MobileSAM ML backend (%s) listening on http://%s:%d",
        flask_app.config["backend"].model_version,
        host,
        server.socket.getsockname()[1],
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; BackendError saying why not (port in use, unknown address)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise BackendError(
                f"port {port} on {host} is already in use (another backend or program is "
                "listening there): stop it, or choose another port with --port"
            ) from None
        raise BackendError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        serve(
            args.host,
            args.port,
            {
                "MOBILESAM_MODEL_TYPE": args.model_type,
                "MOBILESAM_CHECKPOINT": args.checkpoint,
                "BASIC_AUTH_USER": args.basic_auth_user,
                "BASIC_AUTH_PASS": args.basic_auth_pass,
            },
            args.log_level,
        )
    except (BackendError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
