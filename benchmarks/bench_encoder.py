"""Image encoder speed: the reference `mobile_sam` vit_t vs ours (fast, the default) vs ours (exact).

One command, one process, the same seeded random weights on every side:

    .venv/bin/python benchmarks/bench_encoder.py             # 1024x1024, 5 repeats, all CPUs
    .venv/bin/python benchmarks/bench_encoder.py --repeats 9 --samples --profile
    .venv/bin/python benchmarks/bench_encoder.py --cpu-time  # 1 thread, CPU time (shared machines)

The allocator is tuned first (`mobilesam.runtime.configure_allocator()`) so every side runs under
the same malloc settings, and the sides are interleaved repeat by repeat (ref, exact, fast, ref,
...), so a machine that other work slows down slows them alike: trust the ratios, not the
absolute milliseconds. Prints the median and best time per side, their ratios to the reference
and the largest absolute difference of the embeddings against the reference. On a machine that
other jobs share, `--cpu-time` (one thread, the thread's CPU time instead of wall time) gives the
steadiest ratios. `--profile` adds a torch.profiler table of the fast path's operators.
"""

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="timed passes per side (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    p.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time")
    p.add_argument("--samples", action="store_true", help="also print every timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print the fast path's operator profile")
    return p.parse_args(argv)


def build_sides(seed: int, tmp: Path) -> dict:
    import mobile_sam

    import mobilesam

    torch.manual_seed(seed)
    reference = mobile_sam.sam_model_registry["vit_t"]().eval()
    path = tmp / "vit_t.pt"
    torch.save(reference.state_dict(), path)
    from mobilesam.runtime import bf16_supported

    sides = {
        "reference": reference.image_encoder,
        "ours exact": mobilesam.build_sam("vit_t", str(path), exact=True).eval().image_encoder,
        "ours fast": mobilesam.build_sam("vit_t", str(path)).eval().image_encoder,
    }
    if bf16_supported():  # AVX512-BF16 / AMX only
        sides["ours bf16"] = (
            mobilesam.build_sam("vit_t", str(path)).eval().set_precision("bf16").image_encoder
        )
    return sides


def time_once(encoder, image: torch.Tensor, clock) -> tuple[float, torch.Tensor]:
    start = clock()
    out = encoder(image)
    return clock() - start, out


def main(argv=None) -> int:
    args = parse_args(argv)
    from mobilesam.runtime import configure_allocator, configure_threads

    allocator = configure_allocator()
    threads = configure_threads(1 if args.cpu_time else args.threads)
    # thread_time counts the calling thread only: exact with one thread, wrong with more.
    clock = time.thread_time if args.cpu_time else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        sides = build_sides(args.seed, Path(tmp))
    torch.manual_seed(args.seed + 1)
    image = torch.randn(1, 3, 1024, 1024)  # the reference hard-codes the 1024 input's 64x64 grid
    times = {name: [] for name in sides}
    outputs = {}
    with torch.inference_mode():
        for name, encoder in sides.items():  # warm-up: first-call allocations, oneDNN primitives
            outputs[name] = encoder(image)
        for _ in range(args.repeats):
            for name, encoder in sides.items():
                seconds, outputs[name] = time_once(encoder, image, clock)
                times[name].append(seconds)

    ref_ms = statistics.median(times["reference"]) * 1e3
    print(
        f"torch {torch.__version__}, {threads} thread(s), {'CPU' if args.cpu_time else 'wall'} time, "
        f"allocator: {allocator.reason}, input (1, 3, 1024, 1024), {args.repeats} interleaved repeats"
    )
    if args.samples:
        for name, samples in times.items():
            print(f"  {name}: {', '.join(f'{t * 1e3:.0f}' for t in samples)} ms")
    ref_best = min(times["reference"]) * 1e3
    print(
        f"{'side':<12} {'median ms':>10} {'ratio to ref':>13} {'best ms':>8} {'ratio':>6} {'max |diff| vs ref':>18} "
        f"{'rel. error':>10}"
    )
    ref_out = outputs["reference"]
    for name, samples in times.items():
        ms, best = statistics.median(samples) * 1e3, min(samples) * 1e3
        diff = (outputs[name] - ref_out).abs().max().item()
        relative = ((outputs[name] - ref_out).norm() / ref_out.norm()).item()
        print(
            f"{name:<12} {ms:>10.1f} {ms / ref_ms:>13.3f} {best:>8.1f} {best / ref_best:>6.3f} {diff:>18.3g} "
            f"{relative:>10.2e}"
        )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            sides["ours fast"](image)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
