"""Train a TinyViT student to reproduce a teacher's stored image embeddings (decoupled distillation).

In the spirit of nanoGPT's train.py: the whole configuration is `TrainConfig` right below, and
`train` is one readable loop. The same code runs on one CPU, one GPU, or many GPUs/nodes:

    mobilesam distill train --images DIR --embeddings EMB --out RUN
    torchrun --nproc_per_node 8 -m mobilesam distill train --images DIR --embeddings EMB --out RUN

Under torchrun each process trains a DistributedDataParallel replica on its share of every batch
(NCCL on CUDA, gloo on CPU), reading its images (folder or SA-1B tar shards) and embeddings
(memory-mapped chunks) at random; the batch order is a seeded permutation per epoch, so every
process knows its share of any step. Rerunning the same command in RUN resumes exactly where the
last checkpoint left off: the same batches, learning rates and optimizer state as an uninterrupted
run, hence the same weights bit for bit wherever the kernels are deterministic (on CPU: one
intra-op thread, OMP_NUM_THREADS=1; multi-threaded CPU and CUDA kernels may round differently,
~1e-8). SIGTERM (a cluster's preemption notice; torchrun passes it on) makes every process stop
at the same step and write a checkpoint before exiting.
"""

import csv
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..atomic import atomic_write_bytes
from ..build_sam import build_sam, read_state_dict
from ..errors import Cancelled, MobileSamError
from ..progress import is_cancelled
from .data import DistillDataset, TeacherEmbeddingStore, collate
from .distributed import process_group
from .layout import CHECKPOINT_NAME, DECODER_PREFIXES, METRICS_NAME, read_checkpoint
from .sources import open_source


@dataclass
class TrainConfig:
    images: str | list[str]  # what embed-teacher read: an image folder, or SA-1B tar shards
    embeddings: str  # embed-teacher's output folder
    out: str  # run folder: ckpt.pt, metrics.csv
    epochs: int = 8
    batch_size: int = 8  # global batch, split evenly across processes
    lr: float = 1e-3  # peak learning rate (AdamW)
    min_lr_ratio: float = 0.01  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = None  # linear warmup; None: 5% of all steps
    weight_decay: float = 0.05  # on weight matrices/kernels only, not on biases and norms
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    val_fraction: float = 0.1  # images held out to measure validation MSE
    seed: int = 0  # student init, train/val split and batch order
    init: str | None = None  # start from a mobile_sam.pt-layout checkpoint's encoder
    device: str | None = None  # default: cuda if available, else cpu
    amp: bool = True  # mixed precision (CUDA only: bf16 if supported, else fp16)
    num_workers: int = 2  # data-loading worker processes per training process
    eval_interval: int = 100  # steps between validation MSE measurements
    log_interval: int = 10  # steps between training-loss rows in metrics.csv
    checkpoint_interval: int = 500  # steps between checkpoints
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps, resume later
    mode: str = "decoupled"  # "coupled": mask loss through the frozen prompt encoder + mask decoder
    decoder: str | None = None  # coupled mode: SAM checkpoint of that decoder (default: the teacher's)
    points_per_image: int = 4  # coupled mode: random point prompts per image and step


# Settings that define the training trajectory: a resumed run must not change them.
TRAJECTORY_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "val_fraction",
    "seed",
    "init",
    "mode",
    "decoder",
    "points_per_image",
)
MODES = ("decoupled", "coupled")
METRICS_FIELDS = ("step", "epoch", "lr", "train_loss", "val_mse", "elapsed_s", "images_per_s")


def learning_rate(step: int, config: TrainConfig, max_steps: int, warmup: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `max_steps`."""
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * (config.lr - min_lr)


def split_train_val(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded, reproducible hold-out of round(val_fraction * n) images (at least 1 when asked for)."""
    n_val = min(len(names) - 1, max(1, round(val_fraction * len(names)))) if val_fraction > 0 else 0
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    val = sorted(names[i] for i in order[:n_val])
    return [name for name in names if name not in set(val)], val


class StepBatchSampler:
    """Index batches for steps start..max_steps-1: this process's share of the global batch.

    Epoch e is the seeded permutation (seed, e) cut into global batches (last partial one
    dropped), so any step's batch is known without replaying the ones before: exact resume.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int, world: int, start: int, stop: int
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world, self.start, self.stop = rank, world, start, stop
        self.steps_per_epoch = n // batch_size

    def epoch_order(self, epoch: int) -> list[int]:
        return torch.randperm(
            self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        ).tolist()

    def __iter__(self):
        epoch, order = None, None
        for step in range(self.start, self.stop):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.epoch_order(epoch)
            first = (step % self.steps_per_epoch) * self.batch_size
            yield order[first : first + self.batch_size][self.rank :: self.world]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def parameter_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay weight matrices and conv kernels; not biases, norms or attention biases (as nanoGPT)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


@torch.no_grad()
def validation_mse(encoder, preprocess, loader, device, distributed: bool, autocast) -> float:
    """Mean squared error per embedding element over this process's validation images, all processes summed."""
    was_training = encoder.training
    encoder.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for images, targets in loader:
        batch = torch.stack([preprocess(image.to(device)) for image in images])
        with autocast:
            prediction = encoder(batch)
        totals[0] += (prediction.float() - targets.to(device)).pow(2).sum().double()
        totals[1] += targets.numel()
    if distributed:
        dist.all_reduce(totals)
    encoder.train(was_training)
    return (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan")


def load_frozen_decoder(student, path) -> None:
    """Coupled mode: the prompt encoder and mask decoder of `path`, frozen (only the encoder learns)."""
    state = {k: v for k, v in read_state_dict(path).items() if k.startswith(DECODER_PREFIXES)}
    student.load_state_dict({**student.state_dict(), **state}, strict=True)
    for module in (student.prompt_encoder, student.mask_decoder):
        module.requires_grad_(False).eval()


def coupled_mask_loss(
    student,
    prediction: torch.Tensor,
    targets: torch.Tensor,
    input_sizes: list[tuple[int, int]],
    points_per_image: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mask loss of the paper's coupled setting: the decoder's masks from the student's
    embeddings (B, 256, E, E) against its masks from the teacher's, for random single-point prompts
    inside each image (model-input coordinates); binary cross-entropy + dice on the low-res logits."""
    losses = []
    image_pe = student.prompt_encoder.get_dense_pe()
    for i, (h, w) in enumerate(input_sizes):
        coords = torch.rand(points_per_image, 1, 2, generator=generator) * torch.tensor([w, h])
        labels = torch.ones(points_per_image, 1, dtype=torch.int)
        sparse, dense = student.prompt_encoder(
            (coords.to(prediction.device), labels.to(prediction.device)), None, None
        )
        logits, _ = student.mask_decoder(prediction[i : i + 1].float(), image_pe, sparse, dense, False)
        with torch.no_grad():
            teacher_logits, _ = student.mask_decoder(targets[i : i + 1], image_pe, sparse, dense, False)
        target = (teacher_logits > 0).float()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        probs = logits.sigmoid().flatten(1)
        dice = 1 - (2 * (probs * target.flatten(1)).sum(1) + 1) / (
            probs.sum(1) + target.flatten(1).sum(1) + 1
        )
        losses.append(bce + dice.mean())
    return torch.stack(losses).mean()


def check_resumable(saved: dict, config: TrainConfig, path: Path) -> None:
    changed = [
        f"{k} ({saved['config'].get(k)!r} -> {getattr(config, k)!r})"
        for k in TRAJECTORY_KEYS
        if saved["config"].get(k) != getattr(config, k)
    ]
    if changed:
        raise MobileSamError(
            f"{path} was trained with other settings: {', '.join(changed)}; "
            "use the same ones to resume, or a new --out folder"
        )


class MetricsLog:
    """metrics.csv, appended row by row; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        rows = []
        if resume_step > 0 and path.is_file():
            with open(path, newline="") as f:
                rows = [row for row in csv.DictReader(f) if int(row["step"]) < resume_step]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, METRICS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, METRICS_FIELDS).writerow(row)


def read_metrics(run_dir) -> list[dict]:
    """metrics.csv rows with numbers parsed (empty cells become None)."""
    with open(Path(run_dir) / METRICS_NAME, newline="") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


class StopRequests:
    """SIGTERM (preemption) and the caller's cancel event, agreed on by all processes at each step.

    Processes get the signal at slightly different times; each step they take the maximum of their
    flags (one tiny all-reduce), so all stop after the same step and rank 0's checkpoint fits everyone.
    """

    def __init__(self, cancel: threading.Event | None, distributed: bool, device: torch.device) -> None:
        self.cancel, self.distributed, self.device = cancel, distributed, device
        self.signalled = threading.Event()
        self.previous = None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            self.previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.signalled.set())
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def reason(self) -> str | None:
        """ "SIGTERM", "cancelled" or None, the same in every process."""
        flags = [self.signalled.is_set(), is_cancelled(self.cancel)]
        if self.distributed:
            tensor = torch.tensor(flags, dtype=torch.int32, device=self.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flags = tensor.tolist()
        return "SIGTERM" if flags[0] else "cancelled" if flags[1] else None


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the training process, which stops them after its checkpoint."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def format_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def train(
    config: TrainConfig,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or resume) training; returns {"step", "max_steps", "val_mse", "initial_val_mse", "checkpoint"}.

    Under torchrun (RANK set) this joins the process group; only rank 0 writes files and reports.
    A SIGTERM or `cancel` writes a checkpoint and raises `Cancelled`.
    """
    with process_group(config.device) as procs:
        return _train(
            config,
            procs.rank,
            procs.world,
            procs.device,
            procs.distributed,
            progress if procs.master else None,
            cancel,
            log if procs.master else (lambda message: None),
        )


def _train(config, rank, world, device, distributed, progress, cancel, log) -> dict:
    master = rank == 0
    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_NAME

    # -- data: every image needs its teacher embedding; a seeded hold-out measures validation MSE
    store = TeacherEmbeddingStore(config.embeddings)
    manifest = store.manifest()
    image_size = int(manifest["image_size"])
    source = open_source(config.images)
    names = source.names
    missing = [name for name in names if not store.has(name)]
    if missing:
        raise MobileSamError(
            f"{len(missing)} of {len(names)} images have no teacher embedding in {store.root} "
            f"(e.g. {missing[0]}); finish `mobilesam distill embed-teacher` first"
        )
    train_names, val_names = split_train_val(names, config.val_fraction, config.seed)
    if config.batch_size % world:
        raise MobileSamError(f"batch size {config.batch_size} must be a multiple of the {world} processes")
    steps_per_epoch = len(train_names) // config.batch_size
    if steps_per_epoch == 0:
        raise MobileSamError(
            f"batch size {config.batch_size} is larger than the {len(train_names)} training images"
        )
    max_steps = config.epochs * steps_per_epoch
    if config.mode not in MODES:
        raise MobileSamError(f"mode must be one of {', '.join(MODES)}, not {config.mode!r}")
    warmup = config.warmup_steps if config.warmup_steps is not None else max_steps // 20

    # -- student: a TinyViT at the teacher's input size (optionally from a checkpoint's encoder)
    torch.manual_seed(config.seed)
    student = build_sam("vit_t", config.init, image_size=image_size).to(device)
    if config.mode == "coupled":
        load_frozen_decoder(student, config.decoder or manifest["teacher"]["checkpoint"])
    encoder = student.image_encoder.train()
    # TinyViT's classification head is kept for the official layout but unused for embeddings;
    # frozen, it gets no gradient and DDP does not wait for one.
    for unused in (encoder.norm_head, encoder.head):
        unused.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        parameter_groups(encoder, config.weight_decay),
        lr=config.lr,
        betas=(0.9, 0.999),
        fused=device.type == "cuda",
    )
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if use_amp else nullcontext()

    # -- resume: weights, optimizer, scaler and step from the last checkpoint
    step = 0
    if ckpt_path.is_file():
        saved = read_checkpoint(ckpt_path)
        check_resumable(saved, config, ckpt_path)
        encoder.load_state_dict(saved["encoder"])
        optimizer.load_state_dict(saved["optimizer"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        step = int(saved["step"])
        log(f"resuming {out} at step {step}/{max_steps}")
    model = DistributedDataParallel(encoder) if distributed else encoder

    loader_options = dict(
        num_workers=config.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_sigterm,
    )
    train_loader = torch.utils.data.DataLoader(
        DistillDataset(source, store, train_names, image_size),
        batch_sampler=StepBatchSampler(
            len(train_names), config.batch_size, config.seed, rank, world, step, max_steps
        ),
        **loader_options,
    )
    val_loader = torch.utils.data.DataLoader(
        DistillDataset(source, store, val_names[rank::world], image_size),
        batch_size=max(1, config.batch_size // world),
        **loader_options,
    )

    def save_checkpoint() -> None:
        if not master:
            return
        state = {
            "encoder": encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": step,
            "max_steps": max_steps,
            "image_size": image_size,
            "config": asdict(config),
            "teacher": manifest["teacher"],
            "val_images": val_names,
        }
        atomic_write_bytes(ckpt_path, lambda tmp: torch.save(state, tmp))

    if master:
        out.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(out / METRICS_NAME, step)
        log(
            f"{len(train_names)} training / {len(val_names)} validation images ({source.describe()}) at "
            f"{image_size} px, {max_steps} steps of {config.batch_size} on {world} process(es), {device}"
        )
    started = time.time()
    window = (step, time.perf_counter())  # throughput since the last training-loss row
    val_mse = initial_val_mse = None

    def evaluate() -> float:
        mse = validation_mse(model, student.preprocess, val_loader, device, distributed, autocast)
        if master:
            metrics.write(
                step=step,
                epoch=step // steps_per_epoch,
                lr="",
                train_loss="",
                val_mse=f"{mse:.6g}",
                elapsed_s=f"{time.time() - started:.1f}",
            )
            log(f"step {step}: validation MSE {mse:.4g}")
        return mse

    def train_step(images: list[torch.Tensor], targets: torch.Tensor, lr: float) -> float:
        batch = torch.stack([student.preprocess(image.to(device, non_blocking=True)) for image in images])
        with autocast:
            prediction = model(batch)
        targets = targets.to(device, non_blocking=True)
        if config.mode == "coupled":
            # a generator per step (not the global RNG) keeps the prompts identical on resume
            prompts = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 1)
            loss = coupled_mask_loss(
                student,
                prediction,
                targets,
                [tuple(im.shape[-2:]) for im in images],
                config.points_per_image,
                prompts,
            )
        else:
            loss = (prediction.float() - targets).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    def stop(reason: str) -> None:
        save_checkpoint()
        raise Cancelled(
            f"training stopped ({reason}) at step {step}/{max_steps}, checkpoint {ckpt_path} written; "
            "rerun the same command to resume"
        )

    if progress:
        progress(step, max_steps)
    batches = iter(train_loader)
    with StopRequests(cancel, distributed, device) as requests:
        while True:
            if step % config.eval_interval == 0 or step == max_steps:
                val_mse = evaluate()
                if step == 0:
                    initial_val_mse = val_mse
            if step >= max_steps or (config.stop_after is not None and step >= config.stop_after):
                break
            reason = requests.reason()
            if reason:
                stop(reason)
            lr = learning_rate(step, config, max_steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            try:
                images, targets = next(batches)
            except RuntimeError:  # a worker killed by the same preemption: the step has not started yet
                if requests.signalled.is_set():
                    stop("SIGTERM")
                raise
            loss = train_step(images, targets, lr)
            step += 1

            if master and (step % config.log_interval == 0 or step == max_steps):
                now = time.perf_counter()
                rate = (step - window[0]) * config.batch_size / max(now - window[1], 1e-9)
                window = (step, now)
                metrics.write(
                    step=step,
                    epoch=(step - 1) // steps_per_epoch,
                    lr=f"{lr:.6g}",
                    train_loss=f"{loss:.6g}",
                    val_mse="",
                    elapsed_s=f"{time.time() - started:.1f}",
                    images_per_s=f"{rate:.3g}",
                )
                log(
                    f"step {step}/{max_steps} loss {loss:.4g} lr {lr:.3g}: {rate:.3g} images/s, "
                    f"ETA {format_duration((max_steps - step) * config.batch_size / rate)}"
                )
            if step % config.checkpoint_interval == 0:
                save_checkpoint()
            if progress:
                progress(step, max_steps)

    save_checkpoint()
    return {
        "step": step,
        "max_steps": max_steps,
        "val_mse": val_mse,
        "initial_val_mse": initial_val_mse,
        "checkpoint": str(ckpt_path),
    }
