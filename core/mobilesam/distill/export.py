"""`export_checkpoint`: student encoder + a SAM's prompt encoder and mask decoder -> `mobile_sam.pt`."""

from pathlib import Path

import torch

from .._types import PathLike
from ..atomic import atomic_write_bytes
from ..build_sam import build_sam, read_state_dict
from ..errors import CheckpointError, MobileSamError
from .layout import CHECKPOINT_NAME, DECODER_PREFIXES, read_checkpoint


def combine_state_dicts(
    encoder_state: dict[str, torch.Tensor], decoder_source: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The official layout: `image_encoder.*` from the student, the rest from the decoder source.

    The prompt encoder and mask decoder do not depend on the input size, so a 1024 px SAM's
    decoder pairs with a student trained at any size.
    """
    decoder = {k: v for k, v in decoder_source.items() if k.startswith(DECODER_PREFIXES)}
    if not any(k.startswith("mask_decoder.") for k in decoder):
        raise CheckpointError("the --decoder-from checkpoint has no mask_decoder weights")
    combined = {f"image_encoder.{k}": v.detach().cpu() for k, v in encoder_state.items()}
    combined.update({k: v.detach().cpu() for k, v in decoder.items()})
    return combined


def export_checkpoint(run_dir: PathLike, output: PathLike, decoder_from: PathLike | None = None) -> dict:
    """Write RUN_DIR's student as an official-format checkpoint at `output` (atomically).

    `decoder_from` defaults to the teacher checkpoint recorded by embed-teacher. The result is
    checked by loading it strictly into `build_sam("vit_t", image_size=S)` before it is written.
    Returns {"output", "image_size", "step", "decoder_from"}.
    """
    ckpt_path = Path(run_dir) / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise MobileSamError(
            f"{run_dir} holds no {CHECKPOINT_NAME}; train with `mobilesam distill train` first"
        )
    run = read_checkpoint(ckpt_path)
    decoder_from = Path(decoder_from or run["teacher"]["checkpoint"])
    state = combine_state_dicts(run["encoder"], read_state_dict(decoder_from))
    image_size = int(run["image_size"])
    model = build_sam("vit_t", image_size=image_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"student of {run_dir} and decoder of {decoder_from} do not make a vit_t model: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    output = Path(output)
    atomic_write_bytes(output, lambda tmp: torch.save(state, tmp))
    return {
        "output": str(output),
        "image_size": image_size,
        "step": int(run["step"]),
        "max_steps": int(run["max_steps"]),
        "decoder_from": str(decoder_from),
    }
