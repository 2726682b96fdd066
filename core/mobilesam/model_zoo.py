"""The model zoo: every model the project knows, in one place.

A `ModelVariant` names its architecture (the checkpoint key layout, which `build_sam.detect_model_type`
recognises), its image encoder builder, its input size and its official weights (URL, published
digest, size, licence). Adding a model is one entry here, plus an encoder module in `modeling/` when
its architecture is new. The CLI's --model-type, the napari Model combo and the Label Studio
backend's MOBILESAM_MODEL_TYPE all read `MODEL_TYPES` from here.

This module imports neither torch nor the models at import time (the CLI's `weights list` stays fast).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightsInfo:
    """One downloadable checkpoint. `sha256` / `xxh128` are the digests upstream publishes (None when
    it publishes none); `size` is in bytes (None when unknown)."""

    model_type: str
    filename: str
    url: str
    sha256: str | None
    size: int | None
    licence: str = "Apache-2.0"
    xxh128: str | None = None


@dataclass(frozen=True)
class ModelVariant:
    name: str
    architecture: (
        str  # key layout: "vit_t" (TinyViT encoder), "vit_b", "vit_l", "vit_h", "efficientvit_sam_l0"
    )
    description: str
    weights: WeightsInfo
    image_size: int = 1024
    ais_decoder: WeightsInfo | None = None  # micro-sam's automatic instance segmentation decoder

    def build_encoder(self, image_size: int | None = None):
        """A fresh (randomly initialised) image encoder of this variant's architecture."""
        from .modeling import ImageEncoderViT, TinyViT

        size = image_size or self.image_size
        if self.architecture == "vit_t":
            return TinyViT(img_size=size)
        if self.architecture == "efficientvit_sam_l0":
            from .modeling.efficientvit import EfficientViTSamEncoder

            return EfficientViTSamEncoder(img_size=size)
        embed_dim, depth, num_heads, global_attn = VIT_CONFIGS[self.architecture]
        return ImageEncoderViT(
            img_size=size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            global_attn_indexes=global_attn,
        )


# (embed_dim, depth, num_heads, global attention blocks) of SAM's ViT encoders
VIT_CONFIGS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}

_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
_MICRO_SAM_URL = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
# micro-sam's model zoo publishes xxh128 digests (micro_sam.util.models), not sha256.
_MICRO_SAM_LICENCE = "CC-BY-4.0 (micro-sam model zoo, bioimage.io)"

MODEL_VARIANTS = {
    v.name: v
    for v in (
        ModelVariant(
            "vit_t",
            "vit_t",
            "MobileSAM (TinyViT encoder)",
            WeightsInfo(
                "vit_t",
                "mobile_sam.pt",
                "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
                "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
                40_728_226,
            ),
        ),
        ModelVariant(
            "vit_b",
            "vit_b",
            "SAM ViT-B",
            WeightsInfo(
                "vit_b",
                "sam_vit_b_01ec64.pth",
                _SAM_URL + "sam_vit_b_01ec64.pth",
                "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
                375_042_383,
            ),
        ),
        ModelVariant(
            "vit_l",
            "vit_l",
            "SAM ViT-L",
            WeightsInfo(
                "vit_l",
                "sam_vit_l_0b3195.pth",
                _SAM_URL + "sam_vit_l_0b3195.pth",
                "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
                1_249_524_607,
            ),
        ),
        ModelVariant(
            "vit_h",
            "vit_h",
            "SAM ViT-H",
            WeightsInfo(
                "vit_h",
                "sam_vit_h_4b8939.pth",
                _SAM_URL + "sam_vit_h_4b8939.pth",
                "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
                2_564_550_879,
            ),
        ),
        ModelVariant(
            "tinysam",
            "vit_t",
            "TinySAM (MobileSAM architecture, better-trained weights)",
            WeightsInfo(
                "tinysam",
                "tinysam_42.3.pth",
                "https://github.com/xinghaochen/TinySAM/releases/download/3.0/tinysam_42.3.pth",
                None,
                None,
            ),
        ),
        ModelVariant(
            "efficientvit_sam_l0",
            "efficientvit_sam_l0",
            "EfficientViT-SAM L0 (512 px EfficientViT encoder, SAM decoder)",
            WeightsInfo(
                "efficientvit_sam_l0",
                "efficientvit_sam_l0.pt",
                "https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/efficientvit_sam_l0.pt",
                None,
                None,
            ),
        ),
        ModelVariant(
            "vit_t_lm",
            "vit_t",
            "micro-sam light microscopy (MobileSAM architecture) + AIS decoder",
            WeightsInfo(
                "vit_t_lm",
                "vit_t_lm.pt",
                _MICRO_SAM_URL + "faithful-chicken/1.1/files/vit_t.pt",
                None,
                None,
                _MICRO_SAM_LICENCE,
                xxh128="72ec5074774761a6e5c05a08942f981e",
            ),
            ais_decoder=WeightsInfo(
                "vit_t_lm_decoder",
                "vit_t_lm_decoder.pt",
                _MICRO_SAM_URL + "faithful-chicken/1.1/files/vit_t_decoder.pt",
                None,
                None,
                _MICRO_SAM_LICENCE,
                xxh128="3e914a5f397b0312cdd36813031f8823",
            ),
        ),
        ModelVariant(
            "vit_t_em_organelles",
            "vit_t",
            "micro-sam electron microscopy organelles (MobileSAM architecture) + AIS decoder",
            WeightsInfo(
                "vit_t_em_organelles",
                "vit_t_em_organelles.pt",
                _MICRO_SAM_URL + "greedy-whale/1/files/vit_t.pt",
                None,
                None,
                _MICRO_SAM_LICENCE,
                xxh128="253474720c497cce605e57c9b1d18fd9",
            ),
            ais_decoder=WeightsInfo(
                "vit_t_em_organelles_decoder",
                "vit_t_em_organelles_decoder.pt",
                _MICRO_SAM_URL + "greedy-whale/1/files/vit_t_decoder.pt",
                None,
                None,
                _MICRO_SAM_LICENCE,
                xxh128="8f897c7bb93174a4d1638827c4dd6f44",
            ),
        ),
    )
}

MODEL_TYPES = tuple(MODEL_VARIANTS)
ARCHITECTURES = tuple(dict.fromkeys(v.architecture for v in MODEL_VARIANTS.values()))


def get_variant(model_type: str) -> ModelVariant:
    if model_type == "default":
        model_type = "vit_h"
    try:
        return MODEL_VARIANTS[model_type]
    except KeyError:
        raise ValueError(
            f"unknown model type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}"
        ) from None


def all_weights() -> dict:
    """Every downloadable checkpoint by name: the models' and their AIS decoders'."""
    out = {}
    for variant in MODEL_VARIANTS.values():
        for info in (variant.weights, variant.ais_decoder):
            if info is not None:
                out[info.model_type] = info
    return out
