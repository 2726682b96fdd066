"""`mobilesam info`: this machine's CPU features and which inference paths are active here."""

import argparse
import importlib.util
import platform


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="print CPU features and the active inference paths",
        description="CPU features that decide the fast paths (AVX-512, bf16, VNNI, AMX), "
        "the torch build, the allocator tuning and the available backends.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for label, value in info_lines():
        print(f"{label + ':':<22} {value}")
    return 0


def info_lines() -> list[tuple[str, str]]:
    import torch

    from .._version import __version__
    from ..runtime import CPU_FLAGS, allocator_status, bf16_supported, cpu_flags, int8_supported, usable_cpus

    flags = cpu_flags()
    present = [f for f in CPU_FLAGS if f in flags]
    missing = [f for f in CPU_FLAGS if f not in flags]
    allocator = allocator_status()
    bf16 = bf16_supported()
    lines = [
        ("mobilesam", __version__),
        ("CPU", f"{_cpu_name()}, {usable_cpus()} usable CPU(s)"),
        ("CPU features", " ".join(present) or "none of interest (or not readable here)"),
        ("CPU features missing", " ".join(missing) or "none"),
        (
            "torch",
            f"{torch.__version__}, {torch.get_num_threads()} thread(s), CPU kernels "
            f"{torch.backends.cpu.get_cpu_capability()}, oneDNN "
            f"{'yes' if torch.backends.mkldnn.is_available() else 'no'}, CUDA "
            f"{'yes' if torch.cuda.is_available() else 'no'}",
        ),
        ("allocator tuning", allocator.reason if allocator else "not configured in this process"),
        ("fast path", "on by default (load_model(..., exact=True) runs the official order of operations)"),
        (
            "bf16 encoder",
            f"available, {_bf16_setting()} (embedding ~5e-3 relative to fp32, masks IoU >= 0.99); "
            "the Python API (load_model, build_sam) stays fp32 unless precision='bf16' or 'auto'"
            if bf16
            else "not available (needs AVX512-BF16 or AMX): fp32",
        ),
        (
            "int8 encoder (ONNX)",
            "available, opt-in: backend='onnx', precision='int8' (static calibration; "
            "benchmarks/int8.py measures it)"
            if int8_supported()
            else "runs but not faster: no VNNI / AMX-INT8 / dot-product instructions",
        ),
    ]
    lines.append(("backends", ", ".join(_backends())))
    return lines


def _backends() -> list[str]:
    backends = ["torch"]
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        backends.append(
            f"onnx (onnxruntime {onnxruntime.__version__}: "
            f"{', '.join(onnxruntime.get_available_providers())})"
        )
    else:
        backends.append("onnx: not installed (pip install 'napari-mobilesam[onnx]')")
    return backends


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bf16_setting() -> str:
    """Whether the CLI, napari and Label Studio run the encoder in bf16 here, and why."""
    import os

    from ..serving.backend import PRECISION_ENV, parse_precision

    setting = parse_precision(os.environ.get(PRECISION_ENV))
    source = f"${PRECISION_ENV}={setting}" if os.environ.get(PRECISION_ENV) else f"default {setting}"
    active = "on" if setting in ("bf16", "auto") else "off"
    return f"{active} in the CLI, napari and Label Studio ({source})"
