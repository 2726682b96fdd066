"""`mobilesam distill embed-teacher | train | export`: decoupled distillation of a lightweight encoder.

mobilesam distill embed-teacher --teacher vit_h --teacher-checkpoint sam_vit_h.pth --images DIR --out EMB
torchrun --nproc_per_node 8 -m mobilesam distill embed-teacher ... --images sa_00000*.tar   # sharded by rank
mobilesam distill train --images DIR --embeddings EMB --out RUN [--epochs 8] [--batch-size 8] [--lr 1e-3]
torchrun --nproc_per_node 8 -m mobilesam distill train ...      # DDP, same arguments
mobilesam distill export RUN [--decoder-from sam_vit_h.pth] -o my_mobile_sam.pt
"""

import argparse
import os

from ..build_sam import MODEL_TYPES
from ..errors import UsageError
from ._common import progress_bar


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="train your own MobileSAM encoder from any SAM (decoupled distillation)",
        description="Decoupled distillation (MobileSAM paper): store a SAM teacher's image embeddings, train a "
        "TinyViT to reproduce them, export it with the teacher's prompt encoder and mask decoder.",
    )
    steps = p.add_subparsers(dest="distill_command", metavar="STEP")

    e = steps.add_parser(
        "embed-teacher",
        help="run the teacher once per image and store its embeddings",
        description="Store the teacher's float16 image embedding of every image of --images "
        "in --out (chunk files of --chunk-size images, with an index and a manifest). "
        "Rerunning skips finished chunks. Under torchrun each process encodes its "
        "share of the chunks.",
    )
    e.add_argument(
        "--teacher", choices=[t for t in MODEL_TYPES], default="vit_h", help="teacher architecture"
    )
    e.add_argument(
        "--teacher-checkpoint",
        metavar="PATH",
        help="teacher weights, e.g. sam_vit_h_4b8939.pth or a domain-tuned SAM "
        "(default: the cached official weights, downloaded on first use)",
    )
    e.add_argument("--images", required=True, nargs="+", metavar="PATH", help=IMAGES_HELP)
    e.add_argument("--out", required=True, metavar="EMB_DIR", help="where embeddings and manifest.json go")
    e.add_argument(
        "--image-size",
        type=int,
        default=1024,
        help="model input size (1024 for official-compatible students; smaller for quick trials)",
    )
    e.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda if available, else cpu; under torchrun one GPU per local rank)",
    )
    e.add_argument("--batch-size", type=int, default=8, help="images per teacher forward pass (default 8)")
    e.add_argument(
        "--num-workers", type=int, default=2, help="image-decoding workers per process (default 2)"
    )
    e.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="images per stored chunk file, the unit of resume (default 256: 512 MiB at 1024 px)",
    )
    e.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="teacher arithmetic: auto = bf16 (or fp16) autocast on GPU, fp32 on CPU",
    )
    e.add_argument("--no-download", action="store_true", help="never download teacher weights")
    e.set_defaults(func=run_embed_teacher)

    t = steps.add_parser(
        "train",
        help="train the TinyViT student on stored embeddings (MSE)",
        description="Train a TinyViT to reproduce the stored embeddings. Rerun the same command "
        "to resume from RUN_DIR/ckpt.pt. For several GPUs or nodes start it with "
        "torchrun (DistributedDataParallel; gloo on CPU).",
    )
    t.add_argument(
        "--images", required=True, nargs="+", metavar="PATH", help="the images given to embed-teacher"
    )
    t.add_argument("--embeddings", required=True, metavar="EMB_DIR")
    t.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="checkpoint (ckpt.pt) and metrics.csv go here"
    )
    from ..distill.train import TrainConfig

    defaults = TrainConfig("", "", "")
    t.add_argument("--epochs", type=int, default=defaults.epochs)
    t.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch (all processes)")
    t.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (warmup + cosine)")
    t.add_argument("--min-lr-ratio", type=float, default=defaults.min_lr_ratio)
    t.add_argument("--warmup-steps", type=int, default=None, help="default: 5%% of the steps")
    t.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    t.add_argument("--grad-clip", type=float, default=defaults.grad_clip, help="0 disables")
    t.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    t.add_argument("--seed", type=int, default=defaults.seed)
    t.add_argument(
        "--init", metavar="CHECKPOINT", help="start from this mobile_sam.pt-layout checkpoint's encoder"
    )
    t.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    t.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    t.add_argument(
        "--num-workers", type=int, default=defaults.num_workers, help="data-loading workers per process"
    )
    t.add_argument("--eval-interval", type=int, default=defaults.eval_interval)
    t.add_argument("--log-interval", type=int, default=defaults.log_interval)
    t.add_argument("--checkpoint-interval", type=int, default=defaults.checkpoint_interval)
    t.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="stop with a checkpoint after this many steps (e.g. to fit a time-limited job); "
        "rerun without it to go on",
    )
    t.add_argument(
        "--mode",
        choices=("decoupled", "coupled"),
        default="decoupled",
        help="decoupled: MSE on embeddings (the paper's method); coupled: mask loss through the "
        "frozen prompt encoder + mask decoder, for the paper's comparison",
    )
    t.add_argument(
        "--decoder",
        metavar="CHECKPOINT",
        help="coupled mode: SAM checkpoint with the decoder to train through (default: the teacher's)",
    )
    t.add_argument(
        "--points-per-image",
        type=int,
        default=defaults.points_per_image,
        help="coupled mode: random point prompts per image and step",
    )
    t.set_defaults(func=run_train)

    x = steps.add_parser(
        "export",
        help="write student + teacher decoder as an official mobile_sam.pt",
        description="Combine the trained encoder with a SAM's prompt encoder and mask decoder in "
        "the official mobile_sam.pt layout (loads in build_sam('vit_t')).",
    )
    x.add_argument("run_dir", metavar="RUN_DIR")
    x.add_argument(
        "--decoder-from",
        metavar="CHECKPOINT",
        help="SAM checkpoint giving prompt encoder and mask decoder (default: the teacher's)",
    )
    x.add_argument("-o", "--output", required=True, metavar="OUT.pt")
    x.set_defaults(func=run_export)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


IMAGES_HELP = (
    "a folder of images (searched recursively), or SA-1B tar shards read without unpacking: "
    "sa_*.tar files (any subset) or a folder holding them"
)


def run_embed_teacher(args: argparse.Namespace) -> int:
    from ..distill.teacher import embed_teacher

    check_image_size(args.image_size)
    for name in ("batch_size", "chunk_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    master = int(os.environ.get("RANK", 0)) == 0
    with progress_bar(f"{args.teacher} embeddings", "image", enabled=master) as (progress, _):
        counts = embed_teacher(
            args.teacher,
            args.teacher_checkpoint,
            args.images,
            args.out,
            args.image_size,
            device=args.device,
            allow_download=not args.no_download,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            chunk_size=args.chunk_size,
            precision=args.precision,
            progress=progress,
        )
    if master:
        print(
            f"{counts['images']} images: {counts['computed']} embedded, {counts['skipped']} already done "
            f"({counts['computed_chunks']} of {counts['chunks']} chunks computed by {counts['world']} "
            f"process(es)) -> {args.out}"
        )
    return 0


def check_image_size(size: int) -> None:
    if size < 64 or size % 16:
        raise UsageError(f"--image-size must be a multiple of 16, at least 64 (got {size})")


def run_train(args: argparse.Namespace) -> int:
    from ..distill.train import TrainConfig, train

    for name in ("epochs", "batch_size", "eval_interval", "log_interval", "checkpoint_interval"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.val_fraction < 1:
        raise UsageError("--val-fraction must be in [0, 1)")
    config = TrainConfig(
        images=args.images,
        embeddings=args.embeddings,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        val_fraction=args.val_fraction,
        seed=args.seed,
        init=args.init,
        device=args.device,
        amp=not args.no_amp,
        num_workers=args.num_workers,
        eval_interval=args.eval_interval,
        log_interval=args.log_interval,
        checkpoint_interval=args.checkpoint_interval,
        stop_after=args.stop_after,
        mode=args.mode,
        decoder=args.decoder,
        points_per_image=args.points_per_image,
    )
    master = int(os.environ.get("RANK", 0)) == 0
    with progress_bar("distill", "step", enabled=master) as (progress, bar):
        result = train(config, progress=progress, log=bar.write)
    if master:
        print(
            f"step {result['step']}/{result['max_steps']}: validation MSE {result['val_mse']:.4g} "
            f"-> {result['checkpoint']}"
        )
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..distill.export import export_checkpoint

    result = export_checkpoint(args.run_dir, args.output, args.decoder_from)
    note = "" if result["step"] == result["max_steps"] else " (training not finished)"
    print(
        f"student at step {result['step']}/{result['max_steps']}{note}, {result['image_size']} px, decoder from "
        f"{result['decoder_from']} -> {result['output']}"
    )
    return 0
