"""Parameters of every margin head: kind, default (the published recipe) and valid range.

One table shared by ``losses.get_margin`` (which builds the heads) and the start-up config check
in ``utils_config`` (``utils/`` imports nothing above it, so the table lives here). Sources of the
defaults: ../shared/spec/margins.md and the README section "Margin heads".
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping

from utils.errors import ConfigError


@dataclass(frozen=True)
class Param:
    """One hyper-parameter: ``kind`` is float, int, bool, optional_float or sequence."""

    default: Any
    kind: str = "float"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def range_text(self) -> str:
        low = "-inf" if self.low is None else _number_text(self.low)
        high = "inf" if self.high is None else _number_text(self.high)
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{low}, {high}{right}"

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


def _number_text(value: float) -> str:
    return "pi/2" if value == math.pi / 2 else f"{value:g}"


def _scale() -> Param:
    return Param(64.0, low=0.0, low_open=True)


def _angle(default: float) -> Param:
    """An additive angular margin (radians)."""
    return Param(default, low=0.0, high=math.pi / 2, high_open=True)


def _cosine(default: float) -> Param:
    """An additive cosine margin."""
    return Param(default, low=0.0, high=1.0, high_open=True)


def _elastic(m: float) -> dict[str, Param]:
    # std None: the published value for the variant, 0.05 plain / ELASTIC_PLUS_STD for "+"
    return {"s": _scale(), "m": _angle(m) if m == 0.5 else _cosine(m),
            "std": Param(None, "optional_float", low=0.0), "plus": Param(False, "bool"), "seed": Param(2048, "int")}


MARGIN_PARAMS: dict[str, dict[str, Param]] = {
    # today's CombinedMarginLoss, set by margin_scale / margin_list / interclass_filtering_threshold
    "combined": {"s": _scale(), "margin_list": Param((1.0, 0.5, 0.0), "sequence"),
                 "interclass_filtering_threshold": Param(0.0, low=0.0, high=1.0, high_open=True)},
    "arcface": {"s": _scale(), "m": _angle(0.5)},
    "cosface": {"s": _scale(), "m": _cosine(0.4)},
    "adaface": {"s": _scale(), "m": _cosine(0.4), "h": Param(0.333, low=0.0),
                "t_alpha": Param(0.01, low=0.0, high=1.0, low_open=True), "straight_through": Param(False, "bool")},
    "magface": {"s": _scale(), "l_a": Param(10.0, low=0.0, low_open=True), "u_a": Param(110.0, low=0.0, low_open=True),
                "l_m": _angle(0.45), "u_m": _angle(0.8), "lambda_g": Param(35.0, low=0.0),
                "easy_margin": Param(True, "bool")},
    "curricularface": {"s": _scale(), "m": _angle(0.5)},
    "elasticface_arc": _elastic(0.5),
    "elasticface_cos": _elastic(0.35),
    "subcenter_arcface": {"s": _scale(), "m": _angle(0.5), "k": Param(3, "int", low=1)},
    "uniface": {"s": _scale(), "m": _cosine(0.4), "lambda_": Param(1.0, low=0.0, low_open=True),
                "r": Param(1.0, low=0.0, high=1.0, low_open=True)},
}
MARGIN_NAMES: tuple[str, ...] = tuple(MARGIN_PARAMS)
ELASTIC_STD = {("elasticface_arc", False): 0.05, ("elasticface_cos", False): 0.05,
               ("elasticface_arc", True): 0.0175, ("elasticface_cos", True): 0.02}


def _closest(word: str, valid) -> str:
    match = difflib.get_close_matches(str(word), list(valid), n=1, cutoff=0.4)
    return f"did you mean '{match[0]}'? " if match else ""


def check_margin_name(name: Any) -> str:
    if name not in MARGIN_PARAMS:
        raise ConfigError(f"unknown margin {name!r} (config key 'margin'): {_closest(name, MARGIN_NAMES)}"
                          f"valid names: {', '.join(MARGIN_NAMES)}")
    return name


def _checked_value(name: str, key: str, param: Param, value: Any) -> Any:
    where = f"margin_params['{key}'] of margin '{name}'"
    if param.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be True or False, got {value!r}")
        return value
    if param.kind == "sequence":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list or tuple, got {value!r}")
        return tuple(value)
    if value is None and param.kind == "optional_float":
        return None
    integral = param.kind == "int"
    if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
        wanted = "an integer" if integral else "a number"
        raise ConfigError(f"{where} must be {wanted}, got {value!r}")
    if not integral and not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if not param.contains(value):
        raise ConfigError(f"{where} must be in {param.range_text()}, got {value!r}")
    return int(value) if integral else float(value)


def magface_lambda_bound(s: float, l_a: float, u_a: float, l_m: float, u_m: float) -> float:
    """MagFace's lower bound on lambda_g (its trainer's check): s k u_a^2 l_a^2 / (u_a^2 - l_a^2)."""
    k = (u_m - l_m) / (u_a - l_a)
    return s * k * u_a ** 2 * l_a ** 2 / (u_a ** 2 - l_a ** 2)


def _cross_checks(name: str, p: dict[str, Any]) -> None:
    if name == "magface":
        if p["u_a"] <= p["l_a"]:
            raise ConfigError(f"margin_params of margin 'magface': u_a ({p['u_a']}) must be > l_a ({p['l_a']})")
        if p["u_m"] <= p["l_m"]:
            raise ConfigError(f"margin_params of margin 'magface': u_m ({p['u_m']}) must be > l_m ({p['l_m']})")
        bound = magface_lambda_bound(p["s"], p["l_a"], p["u_a"], p["l_m"], p["u_m"])
        if p["lambda_g"] < bound:
            raise ConfigError(f"margin_params['lambda_g'] of margin 'magface' must be in [{bound:.4g}, inf) for "
                              f"s={p['s']:g}, l_a={p['l_a']:g}, u_a={p['u_a']:g}, l_m={p['l_m']:g}, u_m={p['u_m']:g} "
                              f"(MagFace's bound s*k*u_a^2*l_a^2/(u_a^2-l_a^2)), got {p['lambda_g']:g}")


def check_margin_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of head ``name``: ``params`` checked (kind, range) and completed with the defaults."""
    schema = MARGIN_PARAMS[check_margin_name(name)]
    for key in params:
        if key not in schema:
            raise ConfigError(f"unknown parameter '{key}' of margin '{name}' (config key 'margin_params'): "
                              f"{_closest(key, schema)}valid parameters: {', '.join(schema)}")
    values = {key: _checked_value(name, key, param, params[key]) if key in params else param.default
              for key, param in schema.items()}
    if values.get("std", 0.0) is None:
        values["std"] = ELASTIC_STD[(name, values["plus"])]
    _cross_checks(name, values)
    return values


def check_margin_config(margin: Any, margin_params: Mapping[str, Any], margin_scale: float) -> None:
    """The start-up check of config keys margin / margin_params (ConfigError naming the key and the fix)."""
    check_margin_name(margin)
    if not isinstance(margin_params, Mapping):
        raise ConfigError(f"config key 'margin_params' must be a dict of the head's parameters, got {margin_params!r}")
    if margin == "combined":
        if margin_params:
            raise ConfigError(f"margin 'combined' takes no margin_params (got {', '.join(map(str, margin_params))}): "
                              "set margin_list, margin_scale and interclass_filtering_threshold instead")
        return
    check_margin_params(margin, {"s": margin_scale} | dict(margin_params))
