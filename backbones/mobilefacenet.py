"""MobileFaceNet of arcface_torch (`mbf`, `mbf_large`), state_dict-compatible with upstream."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .iresnet import amp_context

__all__ = ["MobileFaceNet", "get_mbf", "get_mbf_large"]


class ConvBlock(nn.Module):
    """conv (no bias) -> BN -> PReLU."""

    def __init__(self, in_c: int, out_c: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, groups=groups, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearBlock(nn.Module):
    """conv (no bias) -> BN, no activation."""

    def __init__(self, in_c: int, out_c: int, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups: int = 1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DepthWise(nn.Module):
    """1x1 expand to `groups` channels, 3x3 depthwise (stride), 1x1 linear projection; residual adds input."""

    def __init__(self, in_c: int, out_c: int, residual: bool = False, kernel=(3, 3), stride=(2, 2),
                 padding=(1, 1), groups: int = 1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups),
            ConvBlock(groups, groups, kernel, stride, padding, groups=groups),
            LinearBlock(groups, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """`num_block` residual DepthWise units of width c."""

    def __init__(self, c: int, num_block: int, groups: int):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, True, (3, 3), (1, 1), (1, 1), groups)
                                      for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise 7x7 conv -> flatten -> Linear (no bias) -> BatchNorm1d."""

    def __init__(self, embedding_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=(7, 7), groups=512),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class MobileFaceNet(nn.Module):
    """fp16 autocasts `layers` only (dtype `amp_dtype`, default float16 on CUDA / bfloat16 on CPU)."""

    def __init__(self, fp16: bool = False, num_features: int = 512, blocks: Sequence[int] = (1, 4, 6, 2),
                 scale: int = 2, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.fp16 = fp16
        self.amp_dtype = amp_dtype
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, (3, 3), (2, 2), (1, 1)))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, (3, 3), (1, 1), (1, 1), groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=128))
        self.layers.extend([
            DepthWise(c1, c1, groups=128),
            Residual(c1, blocks[1], groups=128),
            DepthWise(c1, c2, groups=256),
            Residual(c2, blocks[2], groups=256),
            DepthWise(c2, c2, groups=512),
            Residual(c2, blocks[3], groups=256),
        ])
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(num_features)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    m.bias.data.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with amp_context(x, self.fp16, self.amp_dtype):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float() if self.fp16 else x)
        return self.features(x)


def get_mbf(fp16: bool = False, num_features: int = 512, **kwargs) -> MobileFaceNet:
    return MobileFaceNet(fp16, num_features, blocks=(1, 4, 6, 2), scale=2, **kwargs)


def get_mbf_large(fp16: bool = False, num_features: int = 512, **kwargs) -> MobileFaceNet:
    return MobileFaceNet(fp16, num_features, blocks=(2, 8, 12, 4), scale=4, **kwargs)
