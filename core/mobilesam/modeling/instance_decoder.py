"""micro-sam's automatic instance segmentation (AIS) decoder: a convolutional UNETR decoder that
turns a SAM image embedding into three maps (foreground probability, distance to the object
centre, distance to the object boundary), from which `mobilesam.instance_segmentation` derives
instances by seeded watershed.

Module and parameter names follow micro-sam's `decoder_state` (torch_em's UNETR without skip
connections from the image), so its `*_decoder.pt` checkpoints load unchanged. Two upsampling
flavours exist in released checkpoints: bilinear + 1x1 conv (`...conv.weight`) and 2x2 transposed
convolution (`...block.weight`); `InstanceSegmentationDecoder.from_state_dict` picks the right one.
"""

import torch
import torch.nn.functional as F
from torch import nn

# Channels of the decoder levels, coarse to fine (torch_em: initial_features 64, gain 2, depth 3).
LEVEL_CHANNELS = (512, 256, 128, 64)


class Upsample2x(nn.Module):
    """2x bilinear upsampling followed by a 1x1 convolution: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class TransposedUpsample2x(nn.Module):
    """2x2 stride-2 transposed convolution: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def make_upsampler(in_channels: int, out_channels: int, transposed: bool) -> nn.Module:
    return (
        TransposedUpsample2x(in_channels, out_channels)
        if transposed
        else Upsample2x(in_channels, out_channels)
    )


class Conv3x3(nn.Module):
    """A padded 3x3 convolution (kept as a module so the parameter names match micro-sam's)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DoubleConv(nn.Module):
    """(InstanceNorm, 3x3 conv, ReLU) twice: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpConvBlock(nn.Module):
    """Upsample 2x, 3x3 conv, BatchNorm, ReLU: (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, transposed: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(
            make_upsampler(in_channels, out_channels, transposed),
            Conv3x3(out_channels, out_channels),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def center_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The middle `channels` channels of x (B, C, H, W). torch_em's decoder crops its skip inputs
    centrally in every dimension after the batch one, channels included, so a wider skip input
    contributes only its middle channels."""
    start = (x.shape[1] - channels) // 2
    return x[:, start : start + channels]


class UpsamplingPath(nn.Module):
    """Three levels of: upsample 2x, concatenate the (centre-cropped) side input, DoubleConv."""

    def __init__(self, transposed: bool) -> None:
        super().__init__()
        pairs = list(zip(LEVEL_CHANNELS[:-1], LEVEL_CHANNELS[1:]))
        self.samplers = nn.ModuleList([make_upsampler(cin, cout, transposed) for cin, cout in pairs])
        self.blocks = nn.ModuleList([DoubleConv(cin, cout) for cin, cout in pairs])

    def forward(self, x: torch.Tensor, side_inputs: list) -> torch.Tensor:
        for sampler, block, side in zip(self.samplers, self.blocks, side_inputs):
            x = sampler(x)
            x = block(torch.cat([x, center_channels(side, x.shape[1])], dim=1))
        return x


class InstanceSegmentationDecoder(nn.Module):
    """Image embedding (B, 256, S/16, S/16) -> foreground, centre- and boundary-distance maps
    (B, 3, H, W) in [0, 1] at the original image size."""

    def __init__(
        self, embed_dim: int = 256, image_size: int = 1024, transposed: bool = False, out_channels: int = 3
    ) -> None:
        super().__init__()
        self.image_size = image_size
        c0, c1, c2, c3 = LEVEL_CHANNELS
        # A chain of upsamplings of the embedding that feeds the decoder's side inputs.
        self.deconv1 = UpConvBlock(embed_dim, c0, transposed)
        self.deconv2 = UpConvBlock(c0, c1, transposed)
        self.deconv3 = UpConvBlock(c1, c2, transposed)
        self.deconv4 = UpConvBlock(c2, c3, transposed)
        self.base = DoubleConv(embed_dim, c0)
        self.decoder = UpsamplingPath(transposed)
        self.deconv_out = make_upsampler(c3, c3, transposed)
        self.decoder_head = DoubleConv(2 * c3, c3)
        self.out_conv = nn.Conv2d(c3, out_channels, 1)

    @classmethod
    def from_state_dict(cls, state_dict: dict, embed_dim: int = 256, image_size: int = 1024):
        """A decoder whose upsampling flavour matches the checkpoint's parameter names."""
        transposed = any(".block." in k for k in state_dict if k.startswith("decoder.samplers"))
        return cls(embed_dim=embed_dim, image_size=image_size, transposed=transposed)

    def forward_maps(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, 256, S/16, S/16) -> (B, 3, S, S) sigmoid maps over the padded model input."""
        z9 = self.deconv1(embedding)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        z0 = self.deconv4(z3)
        x = self.decoder(self.base(embedding), [z9, z6, z3])
        x = self.decoder_head(torch.cat([self.deconv_out(x), z0], dim=1))
        return torch.sigmoid(self.out_conv(x))

    def forward(
        self, embedding: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Maps cropped to the unpadded input (h, w) and resized to the original (H, W)."""
        maps = self.forward_maps(embedding)
        if maps.shape[-2:] != (self.image_size, self.image_size):
            maps = F.interpolate(
                maps, (self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        maps = maps[..., : input_size[0], : input_size[1]]
        return F.interpolate(maps, tuple(original_size), mode="bilinear", align_corners=False)
