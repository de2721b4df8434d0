"""Multiply-accumulate count of a backbone's forward pass, from forward hooks.

Counted: every Conv2d (output elements x input channels per group x kernel area), every
Linear (output elements x in_features) and, for the ViT, the two attention matrix products
(2 x tokens^2 x dim per block). BatchNorm, PReLU, softmax, additions are not counted. GFLOPs
are 2 x MACs (upstream's README and ptflops call MACs "FLOPs").

    python bench/flops.py r18 r50 mbf vit_t      # table of params / GMACs / GFLOPs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbones import MODEL_NAMES, get_model  # noqa: E402
from backbones.vit import Attention  # noqa: E402


def _conv_macs(m: nn.Conv2d, inputs, output: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    return output.numel() * (m.in_channels // m.groups) * kh * kw


def _linear_macs(m: nn.Linear, inputs, output: torch.Tensor) -> int:
    return output.numel() * m.in_features


def _attention_macs(m: Attention, inputs, output: torch.Tensor) -> int:
    batch_size, num_token, dim = inputs[0].shape
    return 2 * batch_size * num_token * num_token * dim


_COUNTERS = ((nn.Conv2d, _conv_macs), (nn.Linear, _linear_macs), (Attention, _attention_macs))


def count_macs(model: nn.Module, input_size: Sequence[int] = (1, 3, 112, 112)) -> int:
    """MACs of one inference forward (eval mode, no ViT masking) on a zero input of `input_size`."""
    total = 0

    def hook(counter):
        def record(module, inputs, output):
            nonlocal total
            total += counter(module, inputs, output)
        return record

    handles = [m.register_forward_hook(hook(counter))
               for m in model.modules() for kind, counter in _COUNTERS if isinstance(m, kind)]
    param = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["r18", "r50", "r100", "mbf", "vit_t"], choices=MODEL_NAMES)
    args = parser.parse_args(argv)
    print(f"{'network':<22} {'params (M)':>11} {'MACs':>16} {'GMACs':>8} {'GFLOPs':>8}")
    for name in args.names:
        with torch.device("meta"):
            model = get_model(name)
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model)
        print(f"{name:<22} {params / 1e6:>11.2f} {macs:>16,} {macs / 1e9:>8.3f} {2 * macs / 1e9:>8.3f}")


if __name__ == "__main__":
    main()
