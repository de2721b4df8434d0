"""Backbone weights files: read a model.pt (or a training checkpoint) and describe a mismatch."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from utils.errors import CheckpointError, ConfigError


class WeightsError(CheckpointError):
    """A model.pt (or an exported ONNX model) is missing or unreadable."""


class WeightsMismatchError(ConfigError):
    """A model.pt does not fit the --network / --num-features asked for (the flag is what to change)."""


def read_backbone_state(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The backbone state_dict of a model.pt; also a training checkpoint's backbone, DDP prefixes removed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file: one line naming it
        raise WeightsError(f"cannot read weights {path}: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict_backbone" in state:
        state = state["state_dict_backbone"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a backbone state_dict (expected the model.pt saved by training)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def key_differences(expected: dict, state: dict) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, shape-mismatched) keys of ``state`` against a model's ``expected`` state_dict."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    return missing, unexpected, shapes


def describe_mismatch(expected: dict, state: dict) -> str:
    """A short description of how a state_dict differs from a model's."""
    missing, unexpected, shapes = key_differences(expected, state)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. '{unexpected[0]}')")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatches (e.g. '{k}': file {tuple(state[k].shape)} "
                     f"vs model {tuple(expected[k].shape)})")
    return ", ".join(parts) or "incompatible tensors"
