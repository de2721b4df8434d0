"""LResNet50E_IR: the seed fork's "IR50", state_dict-compatible with the fork's checkpoints.

Same residual computation as iResNet-50, but other module names (`prelu1`, `fc.N`), a
BN2d-Dropout(0.5)-Flatten-FC-BN1d head whose BN1d weight is trainable, Xavier-uniform
initialisation and PyTorch-default BatchNorm settings. The fork's constructor ignored `fp16`
and `num_features`; here both take effect.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .iresnet import amp_context, checkpoint_call, checkpoint_plan, conv1x1, conv3x3, run_stages

__all__ = ["LResNet", "BlockIR", "LResNet50E_IR"]


class BlockIR(nn.Module):
    """bn1 -> conv1 -> bn2 -> prelu1 -> conv2 (stride) -> bn3, plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int, dim_match: bool):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.prelu1 = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = None if dim_match else nn.Sequential(conv1x1(inplanes, planes, stride),
                                                               nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu1(self.bn2(self.conv1(self.bn1(x))))))
        out += x if self.downsample is None else self.downsample(x)
        return out


class LResNet(nn.Module):
    """The fork's LResNet; fp16 autocasts everything up to the flatten, fc.3/fc.4 run in float32.

    gradient_checkpointing checkpoints, in training mode, the stem and the first
    `checkpoint_blocks` blocks, with BN running statistics updated once per step (as IResNet;
    see `backbones.iresnet.checkpoint_plan` and `checkpoint_call`).
    """

    def __init__(self, layers: Sequence[int], filter_list: Sequence[int] = (64, 64, 128, 256, 512),
                 dropout: float = 0.5, num_features: int = 512, fp16: bool = False,
                 gradient_checkpointing: bool = False, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.fp16 = fp16
        self.amp_dtype = amp_dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.conv1 = nn.Conv2d(3, filter_list[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filter_list[0])
        self.prelu1 = nn.PReLU(filter_list[0])
        self.layer1 = self._make_layer(filter_list[0], filter_list[1], layers[0])
        self.layer2 = self._make_layer(filter_list[1], filter_list[2], layers[1])
        self.layer3 = self._make_layer(filter_list[2], filter_list[3], layers[2])
        self.layer4 = self._make_layer(filter_list[3], filter_list[4], layers[3])
        self.fc = nn.Sequential(
            nn.BatchNorm2d(filter_list[4]),
            nn.Dropout(p=dropout),
            nn.Flatten(),
            nn.Linear(filter_list[4] * 7 * 7, num_features),
            nn.BatchNorm1d(num_features),
        )
        self.checkpoint_blocks = checkpoint_plan(self.stages())
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    @staticmethod
    def _make_layer(inplanes: int, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
        layers = [BlockIR(inplanes, planes, stride, dim_match=False)]
        layers += [BlockIR(planes, planes, stride=1, dim_match=True) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu1(self.bn1(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        with amp_context(x, self.fp16, self.amp_dtype):
            x = checkpoint_call(self._stem, x, self.bn1) if checkpointing else self._stem(x)
            x = run_stages(self.stages(), x, self.checkpoint_blocks if checkpointing else None)
            x = self.fc[2](self.fc[1](self.fc[0](x)))
        x = self.fc[3](x.float() if self.fp16 else x)
        return self.fc[4](x)


def LResNet50E_IR(**kwargs) -> LResNet:
    """The fork's network: [3, 4, 14, 3] blocks, widths 64..512, dropout 0.5 before the FC."""
    return LResNet([3, 4, 14, 3], **kwargs)
