"""Load a config module (any path), apply --set overrides, and validate keys and types."""
from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Mapping

from easydict import EasyDict as edict

from utils.errors import ConfigError
from utils.image import FACE_SIZE
from utils.margin_schema import check_margin_config

BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.py"
CONFIGS_DIR = BASE_CONFIG.parent

# Keys whose value may be of more than one kind; every other key must match its default's type.
SPECIAL_TYPES: dict[str, tuple[str, ...]] = {
    "num_classes": ("int", "auto"),
    "num_image": ("int", "auto"),
    "resume": ("bool", "auto"),
    "output": ("str", "none"),
    "suffix_run_name": ("str", "none"),
    "gradient_checkpointing": ("bool", "none"),
    "pretrained": ("str", "none"),
}
# Keys computed at start-up; a config may not set them.
DERIVED_KEYS = ("total_batch_size", "warmup_step", "total_step", "world_size")


def _configs_package() -> None:
    """Make ``from configs.<recipe> import ...`` work in a config file loaded from any folder.

    configs/ is not an installed package (pyproject installs backbones, eval and utils): with the
    toolkit installed and another working directory, ``import configs`` would fail, or find only a
    user's own configs/ folder. Registered once, toolkit folder first; a ``configs`` package with an
    __init__.py (a user's real package) or one already imported is left alone.
    """
    if "configs" in sys.modules:
        return
    found = importlib.util.find_spec("configs")
    if found is not None and found.origin not in (None, "namespace"):
        return
    others = [p for p in (found.submodule_search_locations or []) if Path(p).resolve() != CONFIGS_DIR] \
        if found is not None else []
    package = ModuleType("configs", "The toolkit's config files (registered by utils.utils_config).")
    package.__path__ = [str(CONFIGS_DIR)] + others
    sys.modules["configs"] = package


def _load_module(path: Path) -> ModuleType:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (give the path of a .py config, e.g. configs/dcface.py)")
    spec = importlib.util.spec_from_file_location(f"arcface_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    _configs_package()
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # a config is user code: report where it failed
        raise ConfigError(f"config file {path} failed to load: {type(err).__name__}: {err}") from err
    if not isinstance(getattr(module, "config", None), Mapping):
        raise ConfigError(f"config file {path} defines no `config` mapping (expected `config = edict()` and its keys)")
    return module


def _closest(key: str, valid: Iterable[str]) -> str:
    """'; did you mean ...?' for a mistyped key: a valid key it extends ('lr_rate' -> 'lr'), else the closest."""
    valid = list(valid)
    extended = [k for k in valid if key.startswith(k + "_") or key.endswith("_" + k)]
    match = (difflib.get_close_matches(key, valid, n=1, cutoff=0.85) or sorted(extended, key=len)[-1:]
             or difflib.get_close_matches(key, valid, n=1, cutoff=0.5))
    return f"; did you mean '{match[0]}'?" if match else ""


def _kind_of(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "auto" if value == "auto" else "str"
    if isinstance(value, (list, tuple)):
        return "sequence"
    if isinstance(value, Mapping):
        return "dict"
    return type(value).__name__


def _allowed_kinds(key: str, default: Any) -> tuple[str, ...]:
    if key in SPECIAL_TYPES:
        return SPECIAL_TYPES[key]
    kind = _kind_of(default)
    if kind == "none":
        return ()  # any value
    if kind == "float":
        return ("float", "int")
    if kind == "auto":
        return ("str", "auto")
    return (kind,)


def check_value(key: str, value: Any, default: Any, source: str) -> Any:
    """Return ``value`` (ints widened to float where the default is a float) or raise ConfigError."""
    allowed = _allowed_kinds(key, default)
    kind = _kind_of(value)
    if allowed and kind not in allowed and not (kind == "auto" and "str" in allowed):
        wanted = " or ".join('"auto"' if k == "auto" else k for k in allowed)
        raise ConfigError(f"config key '{key}' in {source} must be {wanted}, got {value!r} ({type(value).__name__})")
    if "float" in allowed and kind == "int":
        return float(value)
    return value


def parse_override(text: str) -> tuple[str, Any]:
    """'lr=0.05' -> ('lr', 0.05); values are Python literals, bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}' (e.g. --set lr=0.05 batch_size=64)")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered in ("none", "null"):
        return key, None
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def get_config(config_file: str, overrides: Iterable[str] = ()) -> edict:
    """Defaults from configs/base.py, updated by ``config_file`` and then by ``key=value`` overrides."""
    defaults = _load_module(BASE_CONFIG).config
    path = Path(config_file)
    cfg = edict(dict(defaults))
    user = _load_module(path).config if path.resolve() != BASE_CONFIG else edict()
    sources = [(dict(user), str(path))]
    sources.append((dict(parse_override(item) for item in overrides), "--set"))
    for values, source in sources:
        for key, value in values.items():
            if key not in defaults:
                hint = " (computed at start-up; remove it)" if key in DERIVED_KEYS else _closest(key, defaults)
                raise ConfigError(f"unknown config key '{key}' in {source}{hint}")
            cfg[key] = check_value(key, value, defaults[key], source)
    if cfg.output is None:
        cfg.output = os.path.join("work_dirs", path.stem)
    cfg.config_file = str(path)
    validate(cfg)
    return cfg


def config_warnings(cfg: edict) -> list[str]:
    """Keys that are valid but have no effect with the other keys (logged at start-up)."""
    warnings = []
    if cfg.dali_aug and not cfg.dali:
        warnings.append("config key 'dali_aug' has no effect without dali=True (the PyTorch loader uses the "
                        "aug_* keys)")
    if cfg.lr_steps and cfg.lr_scheduler != "step":
        warnings.append(f"config key 'lr_steps' {tuple(cfg.lr_steps)} has no effect with lr_scheduler="
                        f"{cfg.lr_scheduler!r}: set lr_scheduler=\"step\" to use it")
    if cfg.optimizer == "adamw" and cfg.momentum != 0.9:
        warnings.append(f"config key 'momentum' ({cfg.momentum}) has no effect with optimizer='adamw' "
                        f"(AdamW uses its default betas)")
    return warnings


def validate(cfg: edict) -> None:
    """Cross-key checks that need no data (ranges and choices)."""
    if len(cfg.margin_list) != 3:
        raise ConfigError(f"config key 'margin_list' must hold 3 numbers (m1, m2, m3), got {cfg.margin_list!r}")
    check_margin_config(cfg.margin, cfg.margin_params, cfg.margin_scale)
    if not 0.0 <= cfg.sample_rate <= 1.0:
        raise ConfigError(f"config key 'sample_rate' must be in [0, 1] (0 = the positive class centres "
                          f"only), got {cfg.sample_rate}")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise ConfigError(f"config key 'lr' must be a number > 0, got {cfg.lr}")
    if cfg.num_workers < 0:
        raise ConfigError(f"config key 'num_workers' must be >= 0 (0 = load in the main process), got "
                          f"{cfg.num_workers}")
    if tuple(cfg.image_size) != (FACE_SIZE, FACE_SIZE):
        raise ConfigError(f"config key 'image_size' must be ({FACE_SIZE}, {FACE_SIZE}), got {tuple(cfg.image_size)}: "
                          f"the backbones, loaders and verification are built for {FACE_SIZE}x{FACE_SIZE} aligned "
                          f"faces (re-pack other sizes with python -m im2rec --resize {FACE_SIZE})")
    if cfg.val_targets_missing not in ("error", "warn"):
        raise ConfigError(f"config key 'val_targets_missing' must be 'error' or 'warn', got {cfg.val_targets_missing!r}")
    if cfg.check_data not in ("fast", "full"):
        raise ConfigError(f"config key 'check_data' must be 'fast' or 'full', got {cfg.check_data!r}")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ConfigError(f"config key 'optimizer' must be 'sgd' or 'adamw', got '{cfg.optimizer}'")
    if cfg.lr_scheduler not in ("poly", "step"):
        raise ConfigError(f"config key 'lr_scheduler' must be 'poly' or 'step', got '{cfg.lr_scheduler}'")
    for key in ("batch_size", "gradient_acc", "frequent", "verbose", "num_epoch", "embedding_size"):
        if cfg[key] < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {cfg[key]}")
    for key in ("num_classes", "num_image"):
        if cfg[key] != "auto" and cfg[key] < 1:
            raise ConfigError(f"config key '{key}' must be >= 1 or \"auto\", got {cfg[key]}")
    if cfg.warmup_epoch > cfg.num_epoch or (cfg.warmup_epoch < 0 and cfg.warmup_epoch != -1):
        raise ConfigError(f"config key 'warmup_epoch' must be in [0, num_epoch={cfg.num_epoch}] or -1 (no "
                          f"warm-up), got {cfg.warmup_epoch}")
