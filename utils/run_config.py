"""``config.json`` beside ``model.pt``: what a run knows about its model, read by the tools.

Written once at the start of training (atomically, rank 0): network, embedding size, image size,
margin, the input normalisation and colour order, the data it trained on, the torch version and
the whole resolved config (secrets masked). Every tool that loads a model.pt reads it (through
``face_model.load_model``) when ``--network`` / ``--num-features`` are not given; a flag that
disagrees with the file is an error naming both.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.files import atomic_write_text

RUN_CONFIG = "config.json"
NORMALISATION = "(x / 255 - 0.5) / 0.5 per channel (ToTensor + Normalize(0.5, 0.5))"
COLOUR_ORDER = "RGB"


def describe_run(cfg: Any, masked: dict) -> dict:
    """The facts of a run that tools need later, plus its masked config."""
    import torch
    return {
        "network": cfg.network, "embedding_size": int(cfg.embedding_size),
        "image_size": list(cfg.image_size), "margin": cfg.get("margin", "combined"),
        "margin_list": list(cfg.margin_list), "margin_scale": cfg.margin_scale,
        "normalisation": NORMALISATION, "colour_order": COLOUR_ORDER,
        "data": {"rec": str(cfg.rec), "num_classes": cfg.num_classes, "num_image": cfg.num_image},
        "torch_version": torch.__version__,
        "config": {key: value if _jsonable(value) else repr(value) for key, value in masked.items()},
    }


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def write_run_config(output: str, description: dict) -> str:
    path = os.path.join(output, RUN_CONFIG)
    atomic_write_text(path, json.dumps(description, indent=2, sort_keys=True) + "\n")
    return path


def read_run_config(weights: str | os.PathLike) -> dict | None:
    """The config.json beside a weights file (or in a run folder), None when there is none."""
    path = Path(weights)
    path = path / RUN_CONFIG if path.is_dir() else path.parent / RUN_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}): delete it or pass --network and --num-features") from None


def resolve_model_args(weights: str | os.PathLike, network: str | None, num_features: int | None,
                       default_network: str | None = None) -> tuple[str, int]:
    """(network, embedding size) from the flags, else from the run's config.json; a disagreement is an error."""
    described = read_run_config(weights) or {}
    found = {"--network": described.get("network"), "--num-features": described.get("embedding_size")}
    given = {"--network": network, "--num-features": num_features}
    for flag, value in given.items():
        if value is not None and found[flag] is not None and value != found[flag]:
            raise ConfigError(f"{flag} {value} disagrees with the run's {RUN_CONFIG} beside {weights} "
                              f"({found[flag]}): drop the flag, or pass the value the model was trained with")
    network = network or found["--network"] or default_network
    if network is None:
        raise ConfigError(f"no --network given and no {RUN_CONFIG} beside {weights}: pass the --network it was "
                          f"trained with (e.g. r50)")
    return network, int(num_features or found["--num-features"] or 512)
