"""iResNet backbones of arcface_torch (r18 .. r200) and ir_se50, state_dict-compatible with upstream.

Also holds the helpers every backbone shares: the device-agnostic autocast region and the
activation checkpointing of a sequence of blocks.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from utils.utils_distributed import amp_dtype as default_amp_dtype

__all__ = ["IResNet", "IBasicBlock", "SEModule", "iresnet18", "iresnet34", "iresnet50",
           "iresnet100", "iresnet200", "iresnet_se50", "iresnet_se50_sotafr", "amp_context", "checkpoint_call",
           "checkpoint_plan", "run_blocks", "run_stages"]


def resolve_amp_dtype(device_type: str, amp_dtype: torch.dtype | None) -> torch.dtype:
    """The autocast dtype of `fp16` mode: `amp_dtype` when given, else utils_distributed.amp_dtype's."""
    if amp_dtype is not None:
        return amp_dtype
    return default_amp_dtype(device_type)


def amp_context(x: torch.Tensor, enabled: bool, amp_dtype: torch.dtype | None = None):
    """Autocast region on x's device, switched on or explicitly off (like upstream's `autocast(flag)`)."""
    device_type = x.device.type
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=resolve_amp_dtype(device_type, amp_dtype),
                          enabled=enabled)


class _KeepBatchNormStats:
    """Puts the BatchNorm running statistics of a module back as they were when entered."""

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        self.saved: list[list[torch.Tensor]] = []

    def __enter__(self) -> "_KeepBatchNormStats":
        self.saved = [[b.detach().clone() for b in _stat_buffers(m)] for m in self.norms]
        return self

    def __exit__(self, *exc) -> bool:
        with torch.no_grad():
            for m, saved in zip(self.norms, self.saved):
                for buf, value in zip(_stat_buffers(m), saved):
                    buf.copy_(value)
        return False


def _stat_buffers(m: _BatchNorm) -> tuple[torch.Tensor, ...]:
    return m.running_mean, m.running_var, m.num_batches_tracked


def checkpoint_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    owner: nn.Module) -> torch.Tensor:
    """fn(x) with its activations recomputed in backward instead of kept; `owner` holds fn's BatchNorms.

    Uses the non-reentrant `torch.utils.checkpoint` (RNG and autocast state replayed). Upstream
    used the reentrant variant, whose recomputation runs every BatchNorm of the block in training
    mode a second time, so running statistics were updated twice per step and
    `num_batches_tracked` grew by 2. Here the recomputation runs inside a context that restores
    the BatchNorm statistics of `owner` afterwards: they are updated exactly once per step, as
    without checkpointing. Under torch.compile (which rejects a custom context_fn) the plain
    non-reentrant checkpoint is traced; the compiled graph then also applies the buffer updates
    once (checked with the aot_eager backend on torch 2.14.1).
    """
    if torch.compiler.is_compiling():
        return checkpoint(fn, x, use_reentrant=False)
    return checkpoint(fn, x, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _KeepBatchNormStats(owner)))


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """Apply blocks in order, each one checkpointed when `checkpointing` (and grad mode) is on."""
    checkpointing = checkpointing and torch.is_grad_enabled()
    for block in blocks:
        x = checkpoint_call(block, x, block) if checkpointing else block(x)
    return x


def block_activation(block: nn.Module, size: int) -> int:
    """Elements per image a residual block keeps for backward, for a size x size input.

    Its input and bn1 output (in channels), conv1/bn2/prelu outputs (out channels, input
    resolution), conv2 and downsample outputs (output resolution).
    """
    inplanes, planes = block.bn1.num_features, block.bn3.num_features
    out = size // block.conv2.stride[0]
    strided = 2 if block.downsample is not None else 1
    return 2 * inplanes * size * size + 3 * planes * size * size + strided * planes * out * out


def checkpoint_plan(stages: Sequence[nn.Sequential], size: int = 112) -> int:
    """How many leading blocks gradient checkpointing recomputes.

    The peak memory of a checkpointed backward is reached while the first block (the largest,
    at full resolution) is recomputed and back-propagated. Blocks at the end whose activations
    together fit in that block's own need do not raise the peak if they keep their activations,
    so they are not checkpointed: same peak as checkpointing every block, less recomputation
    (r50: 9 of 24 blocks, about 40% of the forward MACs, are recomputed).
    """
    sizes = []
    for block in itertools.chain(*stages):
        sizes.append(block_activation(block, size))
        size //= block.conv2.stride[0]
    count, tail = len(sizes), 0
    while count > 1 and tail + sizes[count - 1] <= sizes[0]:
        count -= 1
        tail += sizes[count]
    return count


def run_stages(stages: Sequence[nn.Sequential], x: torch.Tensor, checkpoint_blocks: int | None) -> torch.Tensor:
    """Run the residual stages; with `checkpoint_blocks` set, that many leading blocks are checkpointed."""
    if checkpoint_blocks is None:
        for stage in stages:
            x = stage(x)
        return x
    blocks = list(itertools.chain(*stages))
    x = run_blocks(blocks[:checkpoint_blocks], x, True)
    return run_blocks(blocks[checkpoint_blocks:], x, False)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class SEModule(nn.Module):
    """Squeeze-and-excitation gate: x * sigmoid(fc2(relu(fc1(avgpool(x))))), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class IBasicBlock(nn.Module):
    """bn1 -> conv1 -> bn2 -> prelu -> conv2 (stride) -> bn3 [-> se], plus the (downsampled) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, se_reduction: int = 0, shortcut_se: int = 0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.se = SEModule(planes, se_reduction) if se_reduction else None
        self.downsample = downsample
        # SOTA-FR's "se" mode: an SE gate on the (downsampled) shortcut, named `attn` as there
        self.attn = SEModule(planes, shortcut_se) if shortcut_se else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        identity = x if self.downsample is None else self.downsample(x)
        if self.attn is not None:
            identity = self.attn(identity)
        out += identity
        return out


class IResNet(nn.Module):
    """insightface iResNet: stem, four stride-2 stages of IBasicBlocks, BN-Dropout-FC-BN head.

    `features` is a BatchNorm1d whose weight is fixed to 1 (requires_grad False), as upstream.
    fp16: autocast (dtype `amp_dtype`, default float16 on CUDA / bfloat16 on CPU) over stem,
    stages, bn2, flatten and dropout; `fc` and `features` run in float32.
    gradient_checkpointing: in training mode the stem and the first `checkpoint_blocks` blocks
    are checkpointed (`checkpoint_plan`: the fewest that give the peak memory of checkpointing
    every block; set the attribute to the number of blocks to checkpoint all). BN running
    statistics are updated once per step, not twice as with upstream's reentrant variant
    (`checkpoint_call`).
    se_reduction > 0 adds an SEModule (that channel reduction) after bn3 of every block (ir_se50).
    shortcut_se > 0 adds one on the downsampled shortcut of the first block of each stage
    (ir_se50_sotafr, the network SOTA-FR's `iresnet("50", mode="se")` builds).
    """

    fc_scale = 7 * 7

    def __init__(self, layers: Sequence[int], dropout: float = 0.0, num_features: int = 512,
                 fp16: bool = False, gradient_checkpointing: bool = False,
                 amp_dtype: torch.dtype | None = None, se_reduction: int = 0, shortcut_se: int = 0):
        super().__init__()
        self.fp16 = fp16
        self.amp_dtype = amp_dtype
        self.gradient_checkpointing = gradient_checkpointing
        self.se_reduction = se_reduction
        self.shortcut_se = shortcut_se
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        self.checkpoint_blocks = checkpoint_plan(self.stages())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
        downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride),
                                   nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample, self.se_reduction, self.shortcut_se)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes, se_reduction=self.se_reduction) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> tuple[nn.Sequential, ...]:
        return self.layer1, self.layer2, self.layer3, self.layer4

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn1(self.conv1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        with amp_context(x, self.fp16, self.amp_dtype):
            x = checkpoint_call(self._stem, x, self.bn1) if checkpointing else self._stem(x)
            x = run_stages(self.stages(), x, self.checkpoint_blocks if checkpointing else None)
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.float() if self.fp16 else x)
        return self.features(x)


def iresnet18(**kwargs) -> IResNet:
    return IResNet([2, 2, 2, 2], **kwargs)


def iresnet34(**kwargs) -> IResNet:
    return IResNet([3, 4, 6, 3], **kwargs)


def iresnet50(**kwargs) -> IResNet:
    return IResNet([3, 4, 14, 3], **kwargs)


def iresnet100(**kwargs) -> IResNet:
    return IResNet([3, 13, 30, 3], **kwargs)


def iresnet200(**kwargs) -> IResNet:
    return IResNet([6, 26, 60, 6], **kwargs)


def iresnet_se50(se_reduction: int = 16, **kwargs) -> IResNet:
    """iResNet-50 with an SE module after bn3 of every block (ir_se50).

    Channel reduction 16, the value of the SE blocks in AdaFace's/Vec2Face's IR-SE-50. The SE
    1x1 convs are initialised like every other iResNet conv, Normal(0, 0.1). State_dict keys are
    r50's plus `layerN.M.se.fc1.weight` / `se.fc2.weight` (222,720 parameters more).
    """
    return IResNet([3, 4, 14, 3], se_reduction=se_reduction, **kwargs)


def iresnet_se50_sotafr(dropout: float = 0.4, **kwargs) -> IResNet:
    """The IR-SE-50 of SOTA-Face-Recognition-Train-and-Test (Vec2Face's trainer), module for module.

    Its `iresnet("50", mode="se")`: r50 plus one SE module (reduction 16) gating the downsampled
    shortcut of the first block of each stage (the other blocks have none), dropout 0.4 before the
    FC; every conv, the SE ones included, initialised Normal(0, 0.1). State_dict keys are r50's plus
    `layerN.0.attn.fc1.weight` / `attn.fc2.weight` as in that code (43,520 parameters more).
    """
    return IResNet([3, 4, 14, 3], dropout=dropout, shortcut_se=16, **kwargs)
