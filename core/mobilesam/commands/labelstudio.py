"""`mobilesam labelstudio precompute --project ID`: encode a Label Studio project's images ahead of time.

The embeddings land in the ML backend's on-disk store ($MOBILESAM_EMBEDDING_DIR), where a running
`mobilesam serve` finds them, so annotators' first click on each image is as fast as the second.
"""

import argparse
import os

from ._common import add_model_arguments
from .serve import backend_env_overrides, import_backend


def register(subparsers) -> None:
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


def precompute(args: argparse.Namespace) -> int:
    from ..cli import UsageError

    if not args.url or not args.api_key:
        raise UsageError("give --url and --api-key (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    if not args.url.startswith(("http://", "https://")):
        raise UsageError(f"--url must start with http:// or https://, got {args.url!r}")
    settings_module = import_backend("settings")
    model_module = import_backend("model")
    precompute_module = import_backend("precompute")
    from tqdm.auto import tqdm

    env = dict(os.environ)
    env.update({k: v for k, v in backend_env_overrides(args).items() if v is not None})
    env.update({"LABEL_STUDIO_URL": args.url, "LABEL_STUDIO_API_KEY": args.api_key})
    if args.embedding_dir:
        env["MOBILESAM_EMBEDDING_DIR"] = args.embedding_dir
    backend = model_module.MobileSamBackend(settings_module.Settings.from_env(env))
    print(f"model {backend.model_version}; embeddings go to {backend.settings.embedding_dir}")
    with tqdm(desc=f"project {args.project}", unit="image") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = precompute_module.precompute_project(
            backend, args.url, args.api_key, args.project, progress, predictions=args.predictions
        )
    print(f"{report.encoded} encoded, {report.already_stored} already stored, {len(report.failed)} failed")
    if args.predictions:
        print(f"{report.predictions} predictions uploaded")
    for failure in report.failed:
        print(f"  {failure}")
    return 1 if report.failed else 0
