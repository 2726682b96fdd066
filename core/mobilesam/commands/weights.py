"""`mobilesam weights list|download|path`: the official checkpoints and the local cache."""

import argparse

from ..model_zoo import all_weights

WEIGHT_NAMES = tuple(all_weights())  # models and their AIS decoders


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="list, download or locate the official weights")
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    sub.add_parser("list", help="official checkpoints and whether they are cached").set_defaults(
        func=list_weights
    )
    d = sub.add_parser("download", help="download and verify a checkpoint into the cache")
    d.add_argument("model_type", nargs="?", default="vit_t", choices=WEIGHT_NAMES)
    d.add_argument("--force", action="store_true", help="download again even if cached")
    d.set_defaults(func=download_weights)
    w = sub.add_parser("path", help="print the checkpoint path that would be used")
    w.add_argument("model_type", nargs="?", default="vit_t", choices=WEIGHT_NAMES)
    w.set_defaults(func=weights_path)


def list_weights(args: argparse.Namespace) -> int:
    from ..weights import OFFICIAL_WEIGHTS, cache_dir, cached_path

    print(f"cache dir: {cache_dir()}  (set MOBILESAM_HOME to change it)")
    for info in OFFICIAL_WEIGHTS.values():
        state = "cached" if cached_path(info.model_type).is_file() else "not downloaded"
        size = f"{info.size / 1e6:8.1f} MB" if info.size else "       ? MB"
        print(f"{info.model_type:27} {size}  {state:14}  licence: {info.licence}\n{'':29}{info.url}")
    return 0


def download_weights(args: argparse.Namespace) -> int:
    from ..weights import download

    print(download(args.model_type, force=args.force))
    return 0


def weights_path(args: argparse.Namespace) -> int:
    from ..weights import resolve_checkpoint

    print(resolve_checkpoint(args.model_type, allow_download=False))
    return 0
