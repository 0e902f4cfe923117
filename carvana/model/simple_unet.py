"""SimpleUnet: the 4th-place solution's from-scratch U-Net, the second stage of the stacked model (no pretrained
encoder)."""

import torch
from torch import nn

from carvana import CarvanaError


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU layers: Bx(in_channels)xHxW -> Bx(out_channels)xHxW."""
    return nn.Sequential(
        # no conv bias: the BatchNorm right after has its own shift
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """Transposed-conv x2 upsampling, concatenation with the skip, then a conv block."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.block = conv_block(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Bx(in_channels)x(H/2)x(W/2) and Bx(out_channels)xHxW skip -> Bx(out_channels)xHxW."""
        return self.block(torch.cat([self.up(x), skip], dim=1))


class SimpleUnet(nn.Module):
    """U-Net with len(widths) levels; `encoder` (a ModuleList, one block per level) is the down path."""

    def __init__(self, in_channels: int = 3, classes: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128, 256)):
        super().__init__()
        if len(widths) < 2:
            raise CarvanaError(f"SimpleUnet needs at least 2 widths (one per level), got widths={tuple(widths)}")
        self.in_channels = in_channels
        # each encoder block after the first runs after a 2x2 max-pool, so the input must halve cleanly this often
        self.divisor = 2 ** (len(widths) - 1)
        self.encoder = nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out in zip((in_channels, *widths), widths))
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList(UpBlock(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bx(in_channels)xHxW float, H and W divisible by 2**(len(widths)-1) -> Bx(classes)xHxW logits."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise CarvanaError(f"SimpleUnet expects Bx{self.in_channels}xHxW input, got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.divisor or width % self.divisor:
            raise CarvanaError(
                f"SimpleUnet needs H and W divisible by {self.divisor}, got {height}x{width} (height x width): "
                f"pad the input (e.g. 1918 -> 1920) or use fewer widths"
            )
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        for up, skip in zip(self.decoder, reversed(skips[:-1])):
            x = up(x, skip)
        return self.head(x)
