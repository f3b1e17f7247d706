"""The SID U-Net in the packed raw domain (Chen et al. 2018, "Learning to See in the Dark").

Input and output are packed CFA mosaics of ``C`` channels (4 for Bayer, 9 for X-Trans), NCHW
float32: the input is the normalised, amplified and clipped noisy raw (``-1..1``), the output the
clean normalised raw (``0..1`` after clipping at inference). Four 2x2 max-poolings make the
spatial size a multiple of 16; any such size works (the ONNX export keeps h and w dynamic).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

DOWNSAMPLE = 16  # 2 ** number of poolings: packed h and w must be multiples of this


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the network.

    Attributes:
        channels: packed CFA channels in and out (4 Bayer, 9 X-Trans).
        width: channels of the first level; level ``k`` has ``width * 2**k`` (SID uses 32).
        max_mult: cap on the width multiplier of the deepest levels (SID: 16). A cap of 8 drops
            a third of the parameters (most sit at 1/16 resolution) for very little compute.
        residual: add the input to the output, so the layers learn a correction (the head
            starts at zero: a new residual network is the identity).
        noise_map: a second input ``noise`` (N, 2) of ``[a, b]`` (see
            :func:`sidraw.noise_estimate.noise_vector`); the network sees the expected noise
            ``sqrt(a * max(x, 0) + b)`` of every input value as ``channels`` extra input channels.
        block: ``"conv"``, SID's two 3x3 convolutions per level, or ``"dwsep"``, PMRID's
            depthwise-separable form (a 1x1 to the level's width, then twice a 3x3 depthwise and
            a 1x1 pointwise convolution): about a fifth of the multiply-adds at equal width.
        first_width: channels of the first (full-resolution) level when not ``width`` (0). The
            first level is the slowest per multiply-add: onnxruntime's CPU convolutions work on
            blocks of 16 channels (AVX-512), so 24 channels cost as much as 32 there, and 16
            cost a quarter of that (:mod:`sidraw.train.prune` narrows a trained network).
    """

    channels: int = 4
    width: int = 32
    max_mult: int = 16
    residual: bool = False
    noise_map: bool = False
    block: str = "conv"
    first_width: int = 0

    @property
    def widths(self) -> list[int]:
        """Channels of the five levels, finest first."""
        widths = [self.width * min(2**k, self.max_mult) for k in range(5)]
        if self.first_width:
            widths[0] = self.first_width
        return widths

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _double_conv(cin: int, cout: int, block: str = "conv") -> nn.Sequential:
    # LeakyReLU(0.2) as in SID: keeps gradients alive for the many negative, noise-only inputs.
    if block == "dwsep":
        seq = nn.Sequential(
            nn.Conv2d(cin, cout, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout),
            nn.Conv2d(cout, cout, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout),
            nn.Conv2d(cout, cout, 1),
            nn.LeakyReLU(0.2, inplace=True),
        )
        # PyTorch's default init shrinks the signal by about sqrt(3) per layer; through twice as
        # many, thinner layers it vanishes and the network never leaves its zero head. He init
        # keeps the variance (the depthwise layers as plain linear maps).
        for layer in seq:
            if isinstance(layer, nn.Conv2d):
                linear = layer.groups > 1
                nn.init.kaiming_normal_(
                    layer.weight, a=0.2, nonlinearity="linear" if linear else "leaky_relu"
                )
                nn.init.zeros_(layer.bias)
        return seq
    if block != "conv":
        raise ValueError(f"unknown block {block!r} (conv or dwsep)")
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.2, inplace=True),
    )


class UNet(nn.Module):
    """Five-level U-Net: (N, C, h, w) -> (N, C, h, w), h and w multiples of 16."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        widths = config.widths
        self.enc = nn.ModuleList()
        cin = 2 * c if config.noise_map else c
        for cw in widths:
            self.enc.append(_double_conv(cin, cw, config.block))
            cin = cw
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for k in range(len(widths) - 1, 0, -1):
            self.up.append(nn.ConvTranspose2d(widths[k], widths[k - 1], 2, stride=2))
            self.dec.append(_double_conv(2 * widths[k - 1], widths[k - 1], config.block))
        self.head = nn.Conv2d(widths[0], c, 1)
        if config.residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        skips = []
        h = x
        if self.config.noise_map:
            if noise is None:
                raise ValueError("this network needs the noise input")
            h = torch.cat([x, noise_std(x, noise)], dim=1)
        for i, block in enumerate(self.enc):
            h = block(h)
            if i < len(self.enc) - 1:
                skips.append(h)
                h = self.pool(h)
        for up, dec in zip(self.up, self.dec, strict=True):
            h = up(h)
            h = dec(torch.cat([h, skips.pop()], dim=1))
        out = self.head(h)
        if self.config.residual:
            out = out + x
        return out


def noise_std(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Expected noise std of every value of ``x`` (N, C, h, w) under ``noise`` (N, 2) = [a, b]:
    ``sqrt(a * max(x, 0) + b)``, same shape as ``x``."""
    a = noise[:, 0].reshape(-1, 1, 1, 1)
    b = noise[:, 1].reshape(-1, 1, 1, 1)
    return torch.sqrt(torch.clamp(a * torch.relu(x) + b, min=1e-10))


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def gflops_per_megapixel(config: UNetConfig, block: int) -> float:
    """Multiply-adds x 2 of one forward pass per megapixel of the *mosaic* (photosites).

    Args:
        config: network shape.
        block: photosites per packed pixel along each axis (2 Bayer, 3 X-Trans).
    """
    c = config.channels
    widths = config.widths

    def level(cin: int, cout: int) -> float:
        if config.block == "dwsep":
            return cin * cout + 2 * (9 * cout + cout * cout)
        return 9 * (cin * cout + cout * cout)

    macs = 0.0  # per packed pixel at full packed resolution
    cin = 2 * c if config.noise_map else c
    for k, cw in enumerate(widths):
        macs += level(cin, cw) / 4**k
        cin = cw
    for k in range(len(widths) - 1, 0, -1):
        lo, hi = widths[k - 1], widths[k]
        macs += 4 * hi * lo / 4**k  # transposed conv, one 2x2 kernel per low-res pixel
        macs += level(2 * lo, lo) / 4 ** (k - 1)
    macs += widths[0] * c
    packed_per_mp = 1e6 / block**2
    return 2 * macs * packed_per_mp / 1e9
