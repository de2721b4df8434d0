"""utils/margin_schema.py and losses.get_margin / build_margin: names, defaults, ranges, config keys."""
from __future__ import annotations

import inspect
import math

import pytest
from easydict import EasyDict as edict

import losses
from losses import CombinedMarginLoss, build_margin, get_margin
from utils.errors import ConfigError
from utils.margin_schema import MARGIN_PARAMS, check_margin_params, magface_lambda_bound
from utils.utils_config import get_config

HEADER = "from easydict import EasyDict as edict\nconfig = edict()\n"


def _error(match: str, name: str, **params) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        get_margin(name, **params)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_every_name_of_the_interface_is_in_the_registry():
    expected = {"combined", "arcface", "cosface", "adaface", "magface", "curricularface", "elasticface_arc",
                "elasticface_cos", "subcenter_arcface", "uniface"}
    assert set(MARGIN_PARAMS) == expected
    assert set(losses.MARGINS) <= expected


@pytest.mark.parametrize("name", sorted(losses.MARGINS))
def test_schema_matches_the_constructor_signature(name):
    """The validated parameters are exactly what the head's constructor takes, with the same defaults."""
    built = losses.MARGINS[name]
    params = inspect.signature(built).parameters
    assert list(params) == list(MARGIN_PARAMS[name])
    for key, param in params.items():
        if param.default is not inspect.Parameter.empty:
            assert param.default == MARGIN_PARAMS[name][key].default, key


def test_published_defaults():
    """The recipe values of margins.md (not the references' class or argparse defaults)."""
    ada = get_margin("adaface")
    assert (ada.s, ada.m, ada.h, ada.t_alpha, ada.straight_through) == (64.0, 0.4, 0.333, 0.01, False)
    mag = get_margin("magface")
    assert (mag.l_a, mag.u_a, mag.l_m, mag.u_m, mag.lambda_g, mag.easy_margin) == (10, 110, 0.45, 0.8, 35, True)
    cur = get_margin("curricularface")
    assert (cur.s, cur.m) == (64.0, 0.5)
    stds = [get_margin(n, plus=p).std for n in ("elasticface_arc", "elasticface_cos") for p in (False, True)]
    assert stds == [0.05, 0.0175, 0.05, 0.02]
    assert get_margin("elasticface_cos").m == 0.35 and get_margin("elasticface_arc", std=0.01).std == 0.01
    sub = get_margin("subcenter_arcface")
    assert (sub.s, sub.m, sub.k) == (64.0, 0.5, 3)
    arc, cos = get_margin("arcface"), get_margin("cosface", m=0.35)
    assert (arc.s, arc.m2, cos.m3) == (64.0, 0.5, 0.35)


def test_combined_is_todays_loss():
    combined = get_margin("combined", s=32.0, margin_list=(1.0, 0.3, 0.0), interclass_filtering_threshold=0.2)
    assert type(combined) is CombinedMarginLoss
    assert (combined.s, combined.m1, combined.m2, combined.m3, combined.interclass_filtering_threshold) == \
        (32.0, 1.0, 0.3, 0.0, 0.2)
    default = get_margin("combined")
    assert (default.s, default.m1, default.m2, default.m3) == (64.0, 1.0, 0.5, 0.0)


def test_unknown_name_and_parameter_name_the_closest():
    assert "did you mean 'adaface'" in _error("unknown margin", "adafce")
    assert "did you mean 'curricularface'" in _error("unknown margin", "curricular_face")
    assert "did you mean 't_alpha'" in _error("unknown parameter 'talpha'", "adaface", talpha=0.1)
    assert "did you mean 'lambda_g'" in _error("unknown parameter", "magface", lambdag=30.0)


@pytest.mark.parametrize("name, params, match", [
    ("adaface", {"h": -0.1}, r"margin_params\['h'\] of margin 'adaface' must be in \[0, inf\)"),
    ("adaface", {"t_alpha": 0.0}, r"'t_alpha'.*\(0, 1\]"),
    ("adaface", {"s": 0.0}, r"'s'.*\(0, inf\)"),
    ("arcface", {"s": -1.0}, r"'s'.*\(0, inf\)"),
    ("subcenter_arcface", {"k": 0}, r"'k'.*\[1, inf\)"),
    ("subcenter_arcface", {"k": 2.5}, r"'k'.*integer"),
    ("curricularface", {"m": 2.0}, r"'m'.*\[0, pi/2\)"),
    ("cosface", {"m": 1.0}, r"'m'.*\[0, 1\)"),
    ("elasticface_arc", {"std": -0.01}, r"'std'"),
    ("elasticface_arc", {"plus": 1}, r"'plus'.*True or False"),
    ("magface", {"lambda_g": 20.0}, r"'lambda_g'\] of margin 'magface' must be in \[22.59, inf\)"),
    ("magface", {"u_a": 5.0}, r"u_a .* must be > l_a"),
    ("magface", {"l_m": 0.9}, r"u_m .* must be > l_m"),
    ("adaface", {"m": float("nan")}, r"'m'.*finite"),
])
def test_out_of_range_names_key_and_range(name, params, match):
    _error(match, name, **params)


def test_magface_bound_value_and_readme_fine_tuning_setting():
    assert magface_lambda_bound(64, 10, 110, 0.45, 0.8) == pytest.approx(64 * 0.0035 * 110 ** 2 * 100 / 12000)
    assert 22.5 < magface_lambda_bound(64, 10, 110, 0.45, 0.8) < 22.7
    check_margin_params("magface", {"l_a": 1.0, "u_a": 51.0, "l_m": 0.45, "u_m": 1.0, "lambda_g": 5.0})


def _cfg(**keys) -> edict:
    base = edict(margin="combined", margin_params={}, margin_scale=64.0, margin_list=(1.0, 0.5, 0.0),
                 interclass_filtering_threshold=0.0)
    return edict(base | keys)


def test_build_margin_defaults_reproduce_the_original():
    head = build_margin(_cfg())
    assert type(head) is CombinedMarginLoss and (head.s, head.m1, head.m2, head.m3) == (64.0, 1.0, 0.5, 0.0)
    head = build_margin(_cfg(margin_list=(1.0, 0.0, 0.4), margin_scale=30.0, interclass_filtering_threshold=0.3))
    assert (head.s, head.m3, head.interclass_filtering_threshold) == (30.0, 0.4, 0.3)


def test_build_margin_other_heads_take_margin_scale_unless_given():
    assert build_margin(_cfg(margin="adaface", margin_scale=32.0)).s == 32.0
    head = build_margin(_cfg(margin="adaface", margin_scale=32.0, margin_params={"s": 48.0, "h": 0.5}))
    assert (head.s, head.h) == (48.0, 0.5)
    with pytest.raises(ConfigError, match="interclass_filtering_threshold works with margin 'combined' only"):
        build_margin(_cfg(margin="adaface", interclass_filtering_threshold=0.2))


def _config_error(tmp_path, body: str, overrides=()) -> str:
    path = tmp_path / "run.py"
    path.write_text(HEADER + body)
    with pytest.raises(ConfigError) as info:
        get_config(str(path), overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_config_keys_default_and_validate_at_start_up(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text(HEADER + 'config.margin = "adaface"\nconfig.margin_params = {"h": 0.2}\n')
    cfg = get_config(str(path))
    assert (cfg.margin, dict(cfg.margin_params)) == ("adaface", {"h": 0.2})
    cfg = get_config(str(path), ["margin_params={'m': 0.3}"])
    assert dict(cfg.margin_params) == {"m": 0.3}
    base = tmp_path / "base_like.py"
    base.write_text(HEADER)
    assert (get_config(str(base)).margin, dict(get_config(str(base)).margin_params)) == ("combined", {})
    assert "did you mean 'magface'" in _config_error(tmp_path, 'config.margin = "magfase"\n')
    assert "'margin'" in _config_error(tmp_path, 'config.margin = "magfase"\n')
    assert "did you mean 'h'" in _config_error(tmp_path, 'config.margin = "adaface"\nconfig.margin_params = {"hh": 1}\n')
    message = _config_error(tmp_path, 'config.margin = "adaface"\nconfig.margin_params = {"h": -1.0}\n')
    assert "margin_params['h']" in message and "[0, inf)" in message
    assert "lambda_g" in _config_error(tmp_path, 'config.margin = "magface"\nconfig.margin_params = {"lambda_g": 20}\n')
    assert "margin_list" in _config_error(tmp_path, 'config.margin_params = {"m": 0.3}\n')
    assert "margin_params" in _config_error(tmp_path, 'config.margin = "adaface"\n', ["margin_params=3"])
    # margin_scale is the default s of every head: a bad one is caught with the head
    assert "'s'" in _config_error(tmp_path, 'config.margin = "curricularface"\nconfig.margin_scale = -2.0\n')
    assert math.isclose(get_margin("curricularface", s=10).s, 10.0)
