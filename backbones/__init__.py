"""Backbone registry: `get_model(name, ...)` with arcface_torch's names and hyper-parameters."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from utils.errors import ConfigError, require_torch

from .iresnet import IResNet
from .lresnet import LResNet
from .mobilefacenet import MobileFaceNet
from .vit import VisionTransformer

__all__ = ["get_model", "check_network", "MODEL_CONFIGS", "MODEL_NAMES"]


def _vit(embed_dim: int, depth: int, drop_path_rate: float, mask_ratio: float, checkpointing: bool) -> dict:
    return {"family": "vit", "img_size": 112, "patch_size": 9, "embed_dim": embed_dim, "depth": depth,
            "num_heads": 8, "drop_path_rate": drop_path_rate, "mask_ratio": mask_ratio,
            "gradient_checkpointing": checkpointing}


# Upstream hyper-parameters per name. "gradient_checkpointing" is the default used when
# get_model's argument is None (upstream turned it on for the big ViTs). The "_mask_005" ViTs
# use 0.1: upstream never passed its 0.05 to random_masking, whose default 0.1 applied.
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "r18": {"family": "iresnet", "layers": (2, 2, 2, 2)},
    "r34": {"family": "iresnet", "layers": (3, 4, 6, 3)},
    "r50": {"family": "iresnet", "layers": (3, 4, 14, 3)},
    "r100": {"family": "iresnet", "layers": (3, 13, 30, 3)},
    "r200": {"family": "iresnet", "layers": (6, 26, 60, 6)},
    "ir_se50": {"family": "iresnet", "layers": (3, 4, 14, 3), "se_reduction": 16},
    # not in the original: SOTA-FR's iresnet 50 "se" (Vec2Face's network), SE on the stage shortcuts
    "ir_se50_sotafr": {"family": "iresnet", "layers": (3, 4, 14, 3), "shortcut_se": 16, "dropout": 0.4},
    "LResNet50E_IR": {"family": "lresnet", "layers": (3, 4, 14, 3), "dropout": 0.5},
    "mbf": {"family": "mbf", "blocks": (1, 4, 6, 2), "scale": 2},
    "mbf_large": {"family": "mbf", "blocks": (2, 8, 12, 4), "scale": 4},
    # not in the original: a 0.5M-parameter MobileFaceNet for CPU demos and tests
    "mbf_tiny": {"family": "mbf", "blocks": (1, 1, 1, 1), "scale": 1},
    "vit_t": _vit(256, 12, 0.1, 0.1, False),
    "vit_t_dp005_mask0": _vit(256, 12, 0.05, 0.0, False),
    "vit_s": _vit(512, 12, 0.1, 0.1, False),
    "vit_s_dp005_mask_0": _vit(512, 12, 0.05, 0.0, False),
    "vit_b": _vit(512, 24, 0.1, 0.1, True),
    "vit_b_dp005_mask_005": _vit(512, 24, 0.05, 0.1, True),
    "vit_l_dp005_mask_005": _vit(768, 24, 0.05, 0.1, True),
    "vit_h": _vit(1024, 48, 0.1, 0.0, True),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_CONFIGS)

_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
_NO_DROPOUT = ("mbf", "vit")
_NO_CHECKPOINTING = ("mbf",)


def check_network(name: str) -> None:
    """ConfigError naming the closest valid network when ``name`` is not one (cheap: run it at start-up)."""
    if name not in MODEL_CONFIGS:
        import difflib
        close = difflib.get_close_matches(str(name), list(MODEL_CONFIGS), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown network {name!r} (config key 'network'): {hint}valid names: "
                          f"{', '.join(MODEL_NAMES)}")


def get_model(name: str, *, dropout: float | None = None, fp16: bool = False, num_features: int = 512,
              gradient_checkpointing: bool | None = None,
              amp_dtype: torch.dtype | str | None = None) -> nn.Module:
    """Build backbone `name` (see MODEL_NAMES) with upstream's hyper-parameters.

    dropout: before the FC of iresnet (default 0.0; 0.4 for ir_se50_sotafr, as SOTA-FR) and LResNet50E_IR
        (default 0.5, the fork's);
        None keeps the network's default. mbf and ViT have no such dropout (only None/0 accepted).
    fp16: autocast the regions upstream autocasts; dtype `amp_dtype` (a torch dtype or "float16" /
        "bfloat16"), default float16 on CUDA and bfloat16 on CPU (chosen from the input's device
        at forward time).
    num_features: embedding size.
    gradient_checkpointing: activation checkpointing in training mode: iresnet/LResNet50E_IR
        the stem and the leading blocks of `checkpoint_plan` (same peak memory as every block),
        ViT every block; None keeps upstream's default (on for vit_b, vit_l, vit_h). BN running
        statistics are updated once per step (upstream's reentrant variant updated them twice).
    """
    require_torch()
    check_network(name)
    cfg = dict(MODEL_CONFIGS[name])
    family = cfg.pop("family")
    if family in _NO_DROPOUT and dropout:
        raise ConfigError(f"network {name!r} has no dropout layer; set dropout to 0 or None")
    if family in _NO_CHECKPOINTING and gradient_checkpointing:
        raise ConfigError(f"gradient_checkpointing is not available for {name!r}; "
                          f"use an iresnet or vit network or set it to False")
    if isinstance(amp_dtype, str):
        if amp_dtype not in _AMP_DTYPES:
            raise ConfigError(f"amp_dtype {amp_dtype!r} is not one of {', '.join(_AMP_DTYPES)}")
        amp_dtype = _AMP_DTYPES[amp_dtype]
    default_checkpointing = cfg.pop("gradient_checkpointing", False)
    checkpointing = default_checkpointing if gradient_checkpointing is None else bool(gradient_checkpointing)
    common = {"fp16": fp16, "num_features": num_features, "amp_dtype": amp_dtype}
    if family == "iresnet":
        return IResNet(cfg["layers"], dropout=cfg.get("dropout", 0.0) if dropout is None else dropout,
                       gradient_checkpointing=checkpointing, se_reduction=cfg.get("se_reduction", 0),
                       shortcut_se=cfg.get("shortcut_se", 0), **common)
    if family == "lresnet":
        return LResNet(cfg["layers"], dropout=cfg["dropout"] if dropout is None else dropout,
                       gradient_checkpointing=checkpointing, **common)
    if family == "mbf":
        return MobileFaceNet(blocks=cfg["blocks"], scale=cfg["scale"], **common)
    return VisionTransformer(num_classes=num_features, fp16=fp16, amp_dtype=amp_dtype,
                             gradient_checkpointing=checkpointing, **cfg)
