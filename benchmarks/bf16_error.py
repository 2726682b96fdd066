"""Where a bf16 TinyViT encoder's error comes from, and what the chosen mix gives.

    .venv/bin/python benchmarks/bf16_error.py            # 1024 px, the packaged sample image

For two sets of random weights (the official random initialisation, where MBConv blocks and
LayerNorms start as identities, and the same with randomised norm layers, as
tests/test_fast_encoder.py uses), prints the embedding's relative error (Frobenius, vs our fp32
fast path) with bf16 in one part of the encoder at a time, with everything in plain bf16, and
with `Sam.set_precision("bf16")` (the measured mix: see `TinyViT.set_compute_dtype`). Then the
mask IoU of the chosen mix against fp32 over point and box clicks, on the random-weight model and
on the stand-in model of tests/test_amg.py (masks that follow objects; its encoder is not a
TinyViT, so it gets the bf16 encoder's relative error pattern transplanted onto its embedding).
Accuracy only: speed is in benchmarks/run.py and benchmarks/bench_encoder.py.
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

PARTS = {
    "patch embedding": lambda name: name.startswith("patch_embed"),
    "stage 0 (MBConv)": lambda name: name.startswith("layers.0.blocks"),
    "patch mergings": lambda name: ".downsample" in name,
    "stage 1 blocks": lambda name: name.startswith("layers.1.blocks"),
    "stage 2 blocks": lambda name: name.startswith("layers.2.blocks"),
    "stage 3 blocks": lambda name: name.startswith("layers.3.blocks"),
    "everything (plain bf16)": lambda name: True,
}


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


def plain_bf16(encoder, selected) -> None:
    """bf16 with plain (unsplit) weights in the selected modules, fp32 elsewhere."""
    import mobilesam.modeling.tiny_vit as tiny_vit

    for name, module in encoder.named_modules():
        if isinstance(module, tiny_vit.FastPath):
            module.compute_dtype = torch.bfloat16 if selected(name) else None
        if isinstance(module, tiny_vit.TinyViTBlock):
            module.local_conv.compute_dtype = None


def part_errors(model, image: torch.Tensor) -> dict:
    import mobilesam.modeling.fast_encoder as fast_encoder

    encoder = model.image_encoder
    with torch.inference_mode():
        model.set_precision("fp32")
        expected = encoder(image)
        rows = {}
        split = fast_encoder.split_weight
        try:  # "plain": the split weights replaced by plain bf16 ones
            fast_encoder.split_weight = _plain_split_weight
            _forget_derived(encoder)
            for part, selected in PARTS.items():
                plain_bf16(encoder, selected)
                rows[part] = relative_error(encoder(image), expected)
        finally:
            fast_encoder.split_weight = split
            _forget_derived(encoder)
        model.set_precision("bf16")
        rows["set_precision('bf16') (the mix)"] = relative_error(encoder(image), expected)
        model.set_precision("fp32")
    return rows


def _plain_split_weight(weight, dtype):
    """[W_bf16, 0]: the doubled input's product with it is the plain bf16 product x @ W_bf16."""
    return torch.cat([weight.to(dtype), torch.zeros_like(weight, dtype=dtype)], dim=1)


def _forget_derived(module) -> None:
    """Drop the split weights the encoder keeps (`modeling.common.derived`), so new ones are made."""
    for m in module.modules():
        m.__dict__.pop("_derived", None)


def mask_ious(fp32_predictor, bf16_predictor, image: np.ndarray, clicks: int = 20) -> list:
    from run import _iou, click_prompts

    points, boxes = click_prompts(image.shape, clicks, seed=3)
    ious = []
    for point, box in zip(points, boxes):
        for kwargs in (dict(point_coords=point[None], point_labels=np.array([1])), dict(box=box)):
            a = fp32_predictor.predict(**kwargs, multimask_output=False)[0]
            b = bf16_predictor.predict(**kwargs, multimask_output=False)[0]
            ious.append(_iou(a, b))
    return ious


def standin_ious(perturbation: torch.Tensor) -> list:
    """Stand-in decoder masks on its own embedding vs the same embedding carrying the bf16
    encoder's relative error pattern (`perturbation`: (bf16 - fp32) / |fp32|, resized)."""
    from test_amg import blobs_image, structured_pair

    import mobilesam

    _, model = structured_pair()
    model.set_exact(False)
    image = blobs_image()
    fp32 = mobilesam.SamPredictor(model)
    fp32.set_image(image)
    side = fp32.features.shape[-1]
    pattern = torch.nn.functional.interpolate(perturbation, size=(side, side), mode="bilinear")
    pattern = pattern * (perturbation.norm() / pattern.norm())  # keep the relative size
    state = fp32.get_embedding_state()
    bf16 = mobilesam.SamPredictor(model)
    features = state.features + pattern * state.features.norm()
    bf16.set_embedding(type(state)(features, state.original_size, state.input_size))
    return mask_ious(fp32, bf16, image)


def main() -> int:
    import mobile_sam
    from run import load_image, parse_args
    from test_fast_encoder import _randomise_norms

    import mobilesam
    from mobilesam.runtime import bf16_supported, configure_allocator, configure_threads

    if not bf16_supported():
        print("this CPU has neither AVX512-BF16 nor AMX: no bf16 encoder to measure")
        return 0
    configure_allocator()
    configure_threads()
    image = load_image(parse_args([]))
    torch.manual_seed(0)
    state_dict = mobile_sam.sam_model_registry["vit_t"]().state_dict()
    model = mobilesam.build_sam("vit_t")
    model.load_state_dict(state_dict)
    model.eval()
    predictor = mobilesam.SamPredictor(model)
    tensor = torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float()
    pixels = model.preprocess(tensor)

    official = part_errors(model, pixels)
    randomised = mobilesam.build_sam("vit_t")
    randomised.load_state_dict(state_dict)
    _randomise_norms(randomised.image_encoder, 0)
    randomised.eval()
    normed = part_errors(randomised, pixels)
    print("Embedding relative error vs fp32 with bf16 in one part at a time (plain bf16 weights):\n")
    print("| bf16 in | official random init | randomised norms |")
    print("|---|---|---|")
    for part in official:
        print(f"| {part} | {official[part]:.2e} | {normed[part]:.2e} |")

    bf16_model = mobilesam.build_sam("vit_t")
    bf16_model.load_state_dict(state_dict)
    bf16_model.eval().set_precision("bf16")
    bf16 = mobilesam.SamPredictor(bf16_model)
    predictor.set_image(image)
    bf16.set_image(image)
    ious = mask_ious(predictor, bf16, image)
    perturbation = (bf16.features - predictor.features) / predictor.features.norm()
    stand_in = standin_ious(perturbation)
    print(
        f"\nMask IoU, set_precision('bf16') vs fp32 (point and box clicks, multimask off): "
        f"random weights mean {np.mean(ious):.4f} min {np.min(ious):.4f}; "
        f"stand-in mean {np.mean(stand_in):.4f} min {np.min(stand_in):.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
