"""utils/utils_config.py: loading a config from any path, defaults, --set overrides, key and type checks."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from utils.errors import ArcFaceError, ConfigError
from utils.utils_config import BASE_CONFIG, CONFIGS_DIR, get_config, parse_override

HEADER = "from easydict import EasyDict as edict\nconfig = edict()\n"


def base_defaults() -> dict:
    spec = importlib.util.spec_from_file_location("base_for_test", BASE_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.config)


def write_config(folder: Path, body: str, name: str = "my_run.py", header: str = HEADER) -> Path:
    path = folder / name
    path.write_text(header + body)
    return path


def config_error(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        get_config(str(path), overrides)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


# --- loading ---------------------------------------------------------------------------------

def test_loads_from_any_path_and_applies_defaults(tmp_path):
    path = write_config(tmp_path, 'config.network = "r18"\nconfig.lr = 0.05\nconfig.num_classes = 7\n')
    cfg = get_config(str(path))
    assert (cfg.network, cfg.lr, cfg.num_classes) == ("r18", 0.05, 7)
    defaults = base_defaults()
    for key, value in defaults.items():
        if key not in ("network", "lr", "num_classes", "output"):
            assert cfg[key] == value, key
    assert cfg.config_file == str(path)


def test_output_defaults_to_work_dirs_config_name(tmp_path):
    cfg = get_config(str(write_config(tmp_path, "", name="exp-01_ir50.py")))
    assert Path(cfg.output) == Path("work_dirs") / "exp-01_ir50"


def test_explicit_output_is_kept(tmp_path):
    cfg = get_config(str(write_config(tmp_path, 'config.output = "/runs/a"\n')))
    assert cfg.output == "/runs/a"


def test_base_config_itself_loads():
    cfg = get_config(str(BASE_CONFIG))
    assert cfg.network == base_defaults()["network"]
    assert Path(cfg.output) == Path("work_dirs") / "base"


def test_calls_do_not_leak_into_each_other(tmp_path):
    first = write_config(tmp_path, "config.val_targets.append('calfw')\n", name="first.py",
                         header=HEADER + "config.val_targets = ['lfw']\n")
    assert get_config(str(first), ["lr=0.05"]).val_targets == ["lfw", "calfw"]
    second = get_config(str(write_config(tmp_path, "", name="second.py")))
    assert second.lr == base_defaults()["lr"]
    assert second.val_targets == base_defaults()["val_targets"]


@pytest.fixture
def installed_elsewhere(tmp_path, monkeypatch):
    """The toolkit installed, run from another folder: neither the checkout nor `configs` on sys.path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")
                                      and Path(p).resolve() != CONFIGS_DIR.parent])
    before = {m: mod for m, mod in sys.modules.items() if m == "configs" or m.startswith("configs.")}
    for name in before:
        del sys.modules[name]
    yield tmp_path
    for name in [m for m in sys.modules if m == "configs" or m.startswith("configs.")]:
        del sys.modules[name]
    sys.modules.update(before)


def test_a_config_imports_a_toolkit_recipe_from_any_folder(installed_elsewhere):
    copy = write_config(installed_elsewhere, 'from configs._synthetic_10k import seed_ir50\n'
                        'config = seed_ir50("/data/mine")\nconfig.lr = 0.05\n', name="mine.py", header="")
    cfg = get_config(str(copy))
    assert (cfg.network, cfg.rec, cfg.lr, cfg.batch_size) == ("LResNet50E_IR", "/data/mine", 0.05, 128)


def test_a_users_own_configs_folder_does_not_hide_the_recipes(installed_elsewhere):
    own = installed_elsewhere / "configs"
    own.mkdir()
    (own / "mine_part.py").write_text("LR = 0.03\n")
    sys.path.insert(0, str(installed_elsewhere))        # the user's configs/ is importable from here
    path = write_config(own, 'from configs._synthetic_10k import seed_ir50\nfrom configs.mine_part import LR\n'
                        'config = seed_ir50("/data/mine")\nconfig.lr = LR\n', name="run.py", header="")
    cfg = get_config(str(path))
    assert (cfg.network, cfg.lr) == ("LResNet50E_IR", 0.03)


def test_missing_file(tmp_path):
    message = config_error(tmp_path / "nope.py")
    assert "nope.py" in message and "not found" in message


def test_config_file_that_raises(tmp_path):
    path = write_config(tmp_path, "raise RuntimeError('boom in config')\n")
    message = config_error(path)
    assert str(path) in message and "RuntimeError" in message and "boom in config" in message


def test_config_file_with_syntax_error(tmp_path):
    path = write_config(tmp_path, "config.lr = = 0.1\n")
    message = config_error(path)
    assert str(path) in message and "SyntaxError" in message


@pytest.mark.parametrize("body", ["cfg = {'lr': 0.1}\n", "config = 5\n"])
def test_config_file_without_a_config_mapping(tmp_path, body):
    path = write_config(tmp_path, body, header="")
    message = config_error(path)
    assert str(path) in message and "`config`" in message


def test_errors_are_arcface_value_errors(tmp_path):
    with pytest.raises(ValueError):
        get_config(str(write_config(tmp_path, "config.batch_size = 'x'\n")))
    with pytest.raises(ArcFaceError):
        get_config(str(tmp_path / "missing.py"))


# --- unknown keys and types ------------------------------------------------------------------

@pytest.mark.parametrize("typo, closest", [("num_epochs", "num_epoch"), ("batchsize", "batch_size"),
                                           ("val_target", "val_targets"), ("lr_step", "lr_steps")])
def test_unknown_key_names_the_closest_valid_key(tmp_path, typo, closest):
    path = write_config(tmp_path, f"config.{typo} = 1\n")
    message = config_error(path)
    assert f"'{typo}'" in message and f"'{closest}'" in message and str(path) in message


def test_derived_key_in_config_is_refused(tmp_path):
    message = config_error(write_config(tmp_path, "config.total_step = 100\n"))
    assert "'total_step'" in message and "computed" in message


@pytest.mark.parametrize("body, key", [
    ("config.batch_size = '128'\n", "batch_size"),
    ("config.batch_size = 64.0\n", "batch_size"),
    ("config.fp16 = 1\n", "fp16"),
    ("config.lr = '0.1'\n", "lr"),
    ("config.lr = True\n", "lr"),
    ("config.val_targets = 'lfw'\n", "val_targets"),
    ("config.network = 50\n", "network"),
    ("config.margin_list = 0.5\n", "margin_list"),
])
def test_wrong_type_names_the_key(tmp_path, body, key):
    message = config_error(write_config(tmp_path, body))
    assert f"'{key}'" in message


@pytest.mark.parametrize("key, value", [("lr", 1), ("weight_decay", 0), ("momentum", 1),
                                        ("interclass_filtering_threshold", 0), ("sample_rate", 1)])
def test_int_widens_to_float(tmp_path, key, value):
    cfg = get_config(str(write_config(tmp_path, f"config.{key} = {value}\n")))
    assert cfg[key] == value and isinstance(cfg[key], float)


def test_float_threshold_accepted(tmp_path):
    cfg = get_config(str(write_config(tmp_path, "config.interclass_filtering_threshold = 0.4\n")))
    assert cfg.interclass_filtering_threshold == 0.4


@pytest.mark.parametrize("key", ["num_classes", "num_image", "resume"])
def test_auto_accepted_where_allowed(tmp_path, key):
    cfg = get_config(str(write_config(tmp_path, f'config.{key} = "auto"\n')))
    assert cfg[key] == "auto"


@pytest.mark.parametrize("key", ["batch_size", "lr", "fp16", "num_epoch", "sample_rate"])
def test_auto_rejected_elsewhere(tmp_path, key):
    message = config_error(write_config(tmp_path, f'config.{key} = "auto"\n'))
    assert f"'{key}'" in message


@pytest.mark.parametrize("body, key", [("config.num_classes = '10000'\n", "num_classes"),
                                       ("config.num_image = 5.5e5\n", "num_image"),
                                       ("config.num_classes = True\n", "num_classes"),
                                       ("config.resume = 'yes'\n", "resume"),
                                       ("config.resume = 1\n", "resume")])
def test_special_keys_reject_other_kinds(tmp_path, body, key):
    message = config_error(write_config(tmp_path, body))
    assert f"'{key}'" in message and "auto" in message


def test_int_counts_and_bool_resume_accepted(tmp_path):
    cfg = get_config(str(write_config(tmp_path, "config.num_classes = 10000\nconfig.num_image = 550000\n"
                                                "config.resume = True\n")))
    assert (cfg.num_classes, cfg.num_image, cfg.resume) == (10000, 550000, True)


# --- --set overrides -------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, value", [
    ("lr=0.05", "lr", 0.05),
    ("batch_size=64", "batch_size", 64),
    ("fp16=true", "fp16", True),
    ("fp16=False", "fp16", False),
    ("val_targets=['lfw']", "val_targets", ["lfw"]),
    ("network=r100", "network", "r100"),
    ("rec=./rec/dcface", "rec", "./rec/dcface"),
    ("resume=auto", "resume", "auto"),
    ("num_classes=10000", "num_classes", 10000),
    ("lr_steps=11,19,23", "lr_steps", (11, 19, 23)),
    ("margin_list=(1.0, 0.0, 0.4)", "margin_list", (1.0, 0.0, 0.4)),
])
def test_set_overrides_typed_like_the_default(tmp_path, text, key, value):
    cfg = get_config(str(write_config(tmp_path, "")), [text])
    assert cfg[key] == value
    assert type(cfg[key]) is type(value)


def test_set_int_for_float_key_widens(tmp_path):
    cfg = get_config(str(write_config(tmp_path, "")), ["lr=1"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_set_beats_the_config_file_and_several_apply(tmp_path):
    path = write_config(tmp_path, "config.lr = 0.02\nconfig.batch_size = 32\n")
    cfg = get_config(str(path), ["lr=0.05", "batch_size=64"])
    assert (cfg.lr, cfg.batch_size) == (0.05, 64)


def test_set_output_none_gives_the_default(tmp_path):
    path = write_config(tmp_path, 'config.output = "/runs/x"\n', name="exp.py")
    assert Path(get_config(str(path), ["output=none"]).output) == Path("work_dirs") / "exp"


@pytest.mark.parametrize("text, key", [("batch_size=64.5", "batch_size"), ("fp16=yes", "fp16"),
                                       ("lr=fast", "lr"), ("val_targets=lfw", "val_targets")])
def test_set_wrong_type(tmp_path, text, key):
    message = config_error(write_config(tmp_path, ""), [text])
    assert f"'{key}'" in message and "--set" in message


def test_set_unknown_key_names_the_closest(tmp_path):
    message = config_error(write_config(tmp_path, ""), ["batch_sise=64"])
    assert "'batch_sise'" in message and "'batch_size'" in message and "--set" in message


def test_set_without_equals(tmp_path):
    message = config_error(write_config(tmp_path, ""), ["lr"])
    assert "key=value" in message


def test_parse_override_keeps_text_after_the_first_equals():
    assert parse_override(" rec = /data/a=b ") == ("rec", "/data/a=b")
    assert parse_override("suffix_run_name=None") == ("suffix_run_name", None)


# --- validate(): cross-key ranges and choices ------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("sample_rate=1.5", "sample_rate"),
    ("sample_rate=-0.1", "sample_rate"),
    ("optimizer=adam", "optimizer"),
    ("margin_list=(1.0, 0.5)", "margin_list"),
    ("lr_scheduler=cosine", "lr_scheduler"),
    ("batch_size=0", "batch_size"),
    ("gradient_acc=0", "gradient_acc"),
    ("num_classes=0", "num_classes"),
    ("warmup_epoch=30", "warmup_epoch"),
    ("warmup_epoch=-2", "warmup_epoch"),
    ("lr=0", "lr"),
    ("lr=-0.1", "lr"),
    ("num_workers=-1", "num_workers"),
    ("check_data=all", "check_data"),
    ("image_size=(128, 128)", "image_size"),
    ("val_targets_missing=ignore", "val_targets_missing"),
    ("gradient_checkpointing=1", "gradient_checkpointing"),
])
def test_validate_errors(tmp_path, override, key):
    message = config_error(write_config(tmp_path, "config.num_epoch = 20\n"), [override])
    assert f"'{key}'" in message


@pytest.mark.parametrize("override", ["sample_rate=1.0", "sample_rate=0.1", "optimizer=adamw",
                                      "lr_scheduler=step", "warmup_epoch=20",
                                      "sample_rate=0", "warmup_epoch=-1"])  # both in original configs
def test_validate_accepts_edges(tmp_path, override):
    cfg = get_config(str(write_config(tmp_path, "config.num_epoch = 20\n")), [override])
    key, value = parse_override(override)
    assert cfg[key] == value and cfg.num_epoch == 20


@pytest.mark.parametrize("overrides, words", [
    (["dali_aug=true"], "'dali_aug' has no effect without dali=True"),
    (["lr_steps=(8, 16)"], "'lr_steps' (8, 16) has no effect with lr_scheduler='poly'"),
    (["optimizer=adamw", "momentum=0.5"], "'momentum' (0.5) has no effect with optimizer='adamw'"),
])
def test_keys_without_effect_are_warned_about(tmp_path, overrides, words):
    from utils.utils_config import config_warnings
    cfg = get_config(str(write_config(tmp_path, "config.num_epoch = 20\n")), overrides)
    assert [w for w in config_warnings(cfg) if words in w]
    assert config_warnings(get_config(str(write_config(tmp_path, "config.num_epoch = 20\n")))) == []
