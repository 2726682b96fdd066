"""`build_sam(model_type, checkpoint)` and the `sam_model_registry`, as in segment_anything.

Checkpoints are the official `mobile_sam.pt` / `sam_vit_{b,l,h}_*.pth` state dicts, loaded with
`torch.load(weights_only=True)` and `strict=True`.
"""

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from .errors import CheckpointError
from .model_zoo import MODEL_TYPES, MODEL_VARIANTS, VIT_CONFIGS, get_variant
from .modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

PROMPT_EMBED_DIM = 256


def build_image_encoder(model_type: str, image_size: int = 1024) -> torch.nn.Module:
    return get_variant(model_type).build_encoder(image_size)


def build_sam(
    model_type: str = "vit_t",
    checkpoint: str | os.PathLike | None = None,
    image_size: int = 1024,
    exact: bool = False,
) -> Sam:
    """Build a SAM model; `checkpoint` is a path to an official-format state dict or None.

    `exact=True` runs the official order of operations (bit-identical to segment_anything /
    mobile_sam); the default fast path differs from it by float rounding only (see `Sam.set_exact`).

    `image_size` other than 1024 is for training/testing small models (distillation); official
    checkpoints need 1024.
    """
    model_type = get_variant(model_type).name  # "default" -> vit_h; unknown names raise
    embedding_size = image_size // 16
    sam = Sam(
        image_encoder=build_image_encoder(model_type, image_size),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=PROMPT_EMBED_DIM,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    sam.eval()
    sam.set_exact(exact)
    if checkpoint is not None:
        load_checkpoint(sam, checkpoint, model_type)
    return sam


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (`weights_only=True`) and return its state dict.

    Accepts a bare state dict or one wrapped as {"model": ...} / {"state_dict": ...}.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; name the file once.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} could not be read ({reason}); the file is truncated, corrupt, "
            "or not a PyTorch checkpoint"
        ) from None
    if isinstance(obj, dict):
        for key in (
            "model",
            "state_dict",
            "model_state",
        ):  # model_state: micro-sam / torch_em training format
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
        if obj and all(isinstance(k, str) and k.startswith("sam.") for k in obj):
            obj = {k[len("sam.") :]: v for k, v in obj.items()}
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors")
    return obj


def detect_model_type(state_dict: dict[str, torch.Tensor]) -> str | None:
    """Which architecture (key layout: vit_t, vit_b, vit_l, vit_h) a SAM state dict belongs to, or
    None if it is not a SAM checkpoint. Variants sharing a layout (vit_t, tinysam, vit_t_lm, ...)
    cannot be told apart by their keys."""
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        return "vit_t"
    if "image_encoder.backbone.stages.0.op_list.0.conv.weight" in state_dict:
        return "efficientvit_sam_l0"
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is not None:
        for name, (embed_dim, *_rest) in VIT_CONFIGS.items():
            if pos.shape[-1] == embed_dim:
                return name
    return None


def load_checkpoint(sam: Sam, path: str | os.PathLike, model_type: str) -> None:
    state_dict = read_state_dict(path)
    found = detect_model_type(state_dict)
    if found is None and "out_conv.weight" in state_dict:
        raise CheckpointError(
            f"checkpoint {path} is a micro-sam instance segmentation decoder, not a SAM model; "
            f"you asked for {model_type} (pass it as the decoder checkpoint)"
        )
    if found is None:
        raise CheckpointError(
            f"checkpoint {path} is not a SAM/MobileSAM checkpoint (no image encoder weights)"
        )
    wanted = get_variant(model_type)
    if found != wanted.architecture:
        asked = (
            model_type
            if model_type == wanted.architecture
            else f"{model_type} (a {wanted.architecture} model)"
        )
        raise CheckpointError(
            f"checkpoint {path} is a {found} model ({MODEL_VARIANTS[found].description}), "
            f"you asked for {asked}"
        )
    own = sam.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [k for k in state_dict if k in own and own[k].shape != state_dict[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong_shape:
        k = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} tensors of another shape (e.g. {k}: file "
            f"{tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        )
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match {model_type}: " + "; ".join(problems))
    sam.load_state_dict(state_dict, strict=True)


def _builder(model_type: str) -> Callable[..., Sam]:
    return partial(build_sam, model_type)


# segment_anything-style registry: sam_model_registry["vit_t"](checkpoint=path)
sam_model_registry = {name: _builder(name) for name in MODEL_TYPES}
sam_model_registry["default"] = _builder("vit_h")
build_sam_vit_t = sam_model_registry["vit_t"]
build_sam_vit_b = sam_model_registry["vit_b"]
build_sam_vit_l = sam_model_registry["vit_l"]
build_sam_vit_h = sam_model_registry["vit_h"]


def load_model(
    model_type=None, checkpoint=None, device=None, allow_download=True, exact=False, precision="fp32"
):
    """Build a model with weights resolved by `mobilesam.weights.resolve_checkpoint`.

    model_type None means: the architecture of the given checkpoint, else "vit_t".
    exact=True: bit-identical to the official code instead of the fast path (`Sam.set_exact`).
    precision: the fast encoder's arithmetic, "fp32", "bf16" or "auto" (`Sam.set_precision`).
    """
    from .weights import resolve_checkpoint  # weights needs no model code; imported when used

    path = resolve_checkpoint(model_type or "vit_t", checkpoint, allow_download=allow_download)
    if model_type is None:
        model_type = detect_model_type(read_state_dict(path)) or "vit_t"
    model = build_sam(model_type, path, exact=exact).set_precision(precision)
    return model.to(torch.device(device)) if device else model
