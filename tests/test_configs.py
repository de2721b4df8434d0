"""Every file in configs/ loads; the standard configs keep the original's values; the seed configs agree
with the seed README's workflow."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from backbones import MODEL_NAMES
from conftest import REPO, SHARED
from utils.utils_config import get_config

CONFIGS = REPO / "configs"
# configs/_<name>.py are parts that configs import (the shared recipes), not configs themselves
ALL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.py") if not p.name.startswith("_"))

SEED_SETS = ("dcface", "cemiface", "vec2face", "uiface")
SEED_TARGETS = ["lfw", "cfp_fp", "agedb_30", "cplfw", "calfw"]
# every config built on configs/_synthetic_10k.py -> the seed-table data set it trains on
SYNTHETIC_CONFIGS = {**{name: name for name in SEED_SETS}, "dcface_adaface_irse50": "dcface",
                     "cemiface_adaface_irse50": "cemiface", "vec2face_irse50": "vec2face"}
# keys that are the config file's own, not the recipe's (config_file/output follow the file name)
PER_FILE = {"config_file", "output"}

# Values read from deepinsight/insightface recognition/arcface_torch/configs/<name>.py.
ORIGINAL = {
    "ms1mv2_r50": dict(network="r50", margin_list=(1.0, 0.5, 0.0), num_classes=85742, num_image=5822653,
                       lr=0.1, weight_decay=1e-4, batch_size=128, num_epoch=20, warmup_epoch=0),
    "ms1mv3_r50": dict(network="r50", margin_list=(1.0, 0.5, 0.0), num_classes=93431, num_image=5179510,
                       lr=0.1, weight_decay=5e-4, batch_size=128, num_epoch=20, warmup_epoch=0),
    "ms1mv3_r50_onegpu": dict(network="r50", num_classes=93431, num_image=5179510, lr=0.02, num_epoch=20),
    "ms1mv3_r100": dict(network="r100", num_classes=93431, num_image=5179510, lr=0.2, num_epoch=25,
                        warmup_epoch=0),
    "glint360k_r50": dict(network="r50", margin_list=(1.0, 0.0, 0.4), num_classes=360232, num_image=17091657,
                          lr=0.1, weight_decay=1e-4, num_epoch=20),
    "glint360k_r100": dict(network="r100", margin_list=(1.0, 0.0, 0.4), num_classes=360232,
                           num_image=17091657, lr=0.1, weight_decay=1e-4, num_epoch=20),
    "wf42m_pfc02_r100": dict(network="r100", margin_list=(1.0, 0.0, 0.4), sample_rate=0.2,
                             num_classes=2059906, num_image=42474557, verbose=10000, num_epoch=20),
    "wf42m_pfc02_16gpus_r100": dict(network="r100", sample_rate=0.2, batch_size=256, lr=0.3, warmup_epoch=1),
    "wf42m_pfc03_40epoch_8gpu_vit_t": dict(network="vit_t_dp005_mask0", margin_list=(1.0, 0.0, 0.4),
                                           sample_rate=0.3, optimizer="adamw", lr=0.001, weight_decay=0.1,
                                           batch_size=512, num_epoch=40, warmup_epoch=4, val_targets=[]),
    "wf42m_pfc03_40epoch_8gpu_vit_b": dict(network="vit_b_dp005_mask_005", batch_size=256, gradient_acc=12,
                                           optimizer="adamw", num_epoch=40, warmup_epoch=4),
    "wf12m_conflict_r50_pfc03_filter04": dict(sample_rate=0.3, interclass_filtering_threshold=0.4,
                                              num_classes=1017970, num_image=12720066, warmup_epoch=2),
    "ms1mv3_mbf": dict(network="mbf", embedding_size=512, weight_decay=1e-4, num_epoch=40,
                       num_classes=93431, num_image=5179510),
    "glint360k_mbf": dict(network="mbf", margin_list=(1.0, 0.0, 0.4), num_classes=360232, num_epoch=20),
}


def load(name: str):
    return get_config(str(CONFIGS / name))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_loads_with_a_known_backbone(name):
    cfg = load(name)
    assert cfg.network in MODEL_NAMES, f"{name}: network {cfg.network!r} is not a backbone name"
    assert Path(cfg.output) == Path("work_dirs") / name[:-3]


def test_the_expected_configs_exist():
    names = {name[:-3] for name in ALL_CONFIGS}
    expected = set(ORIGINAL) | set(SEED_SETS) | {"vec2face_irse50"}
    assert expected <= names, f"missing: {sorted(expected - names)}"
    assert any(cfg.startswith("wf42m") and "vit" in cfg for cfg in names)
    assert any(cfg.endswith("mbf") for cfg in names)


@pytest.mark.parametrize("name", sorted(ORIGINAL))
def test_standard_configs_keep_the_original_values(name):
    cfg = load(f"{name}.py")
    for key, value in ORIGINAL[name].items():
        assert cfg[key] == value, f"{name}: {key} = {cfg[key]!r}, the original has {value!r}"
    assert cfg.fp16 is True and cfg.resume is False and cfg.dali is False


def seed_table() -> dict[str, tuple[int, int]]:
    """{dataset: (identities, images)} from the comparison table of the seed README ('10K / 0.55M')."""
    text = (SHARED / "seed" / "README-original.md").read_text()
    rows = re.findall(r"^\| (\w+) \| (\d+)K / ([\d.]+)M \|", text, flags=re.M)
    return {name.lower(): (int(ids) * 1000, round(float(images) * 1e6)) for name, ids, images in rows}


@pytest.mark.parametrize("name", SEED_SETS)
def test_seed_configs(name):
    cfg = load(f"{name}.py")
    assert cfg.network == "LResNet50E_IR"
    assert cfg.val_targets == SEED_TARGETS
    assert cfg.rec == f"./rec/{name}"
    assert cfg.num_classes == "auto" and cfg.num_image == "auto"
    assert cfg.fp16 is True and cfg.save_all_states is True and cfg.sample_rate == 1.0
    assert cfg.optimizer == "sgd" and cfg.lr == 0.1 and cfg.batch_size in (128, 256)
    assert 20 <= cfg.num_epoch <= 30 and 0 < cfg.warmup_epoch < cfg.num_epoch
    assert cfg.margin_list == (1.0, 0.5, 0.0)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_CONFIGS))
def test_synthetic_configs_fit_their_data_set_and_verify_once_per_epoch(name):
    """On the seed table's data set: no data/config disagreement, "auto" counts, ~1 verification/epoch."""
    from utils.data_check import DataInfo, check_data_vs_config, resolve_auto
    from training import set_step_counts
    identities, images = seed_table()[SYNTHETIC_CONFIGS[name]]
    cfg = load(f"{name}.py")
    info = DataInfo(images, identities, 0, identities - 1, "header", cfg.rec)
    assert check_data_vs_config(cfg, info, world_size=1) == []
    resolve_auto(cfg, info)
    assert (cfg.num_classes, cfg.num_image) == (identities, images)
    set_step_counts(cfg, world_size=1)
    assert 0.5 * cfg.steps_per_epoch <= cfg.verbose <= 1.5 * cfg.steps_per_epoch, "verify about once per epoch"
    assert cfg.total_step == cfg.steps_per_epoch * 26


def _resolved(name: str) -> dict:
    return {k: v for k, v in load(f"{name}.py").items() if k not in PER_FILE}


def _differing(a: dict, b: dict) -> set:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_synthetic_configs_share_the_recipe():
    """The recipe's keys hold its values in all seven; the files differ only in their stated keys."""
    from configs._synthetic_10k import common
    shared = {k: v for k, v in common("unused").items() if k not in PER_FILE | {"rec"}}
    for name in SYNTHETIC_CONFIGS:
        cfg = _resolved(name)
        assert {k: cfg[k] for k in shared} == shared, name
        assert cfg["rec"] == f"./rec/{SYNTHETIC_CONFIGS[name]}", name
    seed = {name: _resolved(name) for name in SEED_SETS}
    for name in SEED_SETS[1:]:
        assert _differing(seed["dcface"], seed[name]) == {"rec"}, name
    assert _differing(_resolved("dcface_adaface_irse50"), _resolved("cemiface_adaface_irse50")) == {"rec"}
    assert _differing(seed["dcface"], _resolved("dcface_adaface_irse50")) == {
        "margin", "margin_params", "network", "batch_size", "verbose", "lr_scheduler", "lr_steps",
        "warmup_epoch"}
    assert _differing(seed["vec2face"], _resolved("vec2face_irse50")) == {
        "network", "lr_scheduler", "lr_steps", "warmup_epoch", "aug_random_erasing"}


def test_recipe_calls_return_independent_configs():
    from configs._synthetic_10k import seed_ir50
    first = seed_ir50("./rec/a")
    first.val_targets.append("extra")
    assert seed_ir50("./rec/b").val_targets == SEED_TARGETS


def test_vec2face_irse50_recipe():
    cfg = load("vec2face_irse50.py")
    assert cfg.network == "ir_se50_sotafr"
    assert cfg.num_epoch == 26 and cfg.warmup_epoch == 0
    assert cfg.lr_scheduler == "step" and tuple(cfg.lr_steps) == (12, 20, 24) and cfg.lr_gamma == 0.1
    assert cfg.aug_random_erasing == 0.5 and cfg.aug_flip is True
    assert (cfg.lr, cfg.batch_size, cfg.momentum, cfg.weight_decay) == (0.1, 128, 0.9, 5e-4)
    assert cfg.margin_list == (1.0, 0.5, 0.0) and cfg.embedding_size == 512
    assert cfg.rec == "./rec/vec2face" and cfg.val_targets == SEED_TARGETS


def test_seed_config_accepts_set_overrides():
    cfg = get_config(str(CONFIGS / "dcface.py"), ["lr=0.02", "num_epoch=30", "warmup_epoch=0", "num_image=5000000"])
    assert (cfg.lr, cfg.num_epoch, cfg.warmup_epoch, cfg.num_image) == (0.02, 30, 0, 5000000)


ORIGINAL_UNUSUAL = REPO / "tests" / "data" / "original_configs"


def test_original_speed_config_runs_its_schedule_on_synthetic_data():
    """3millions.py: warmup_epoch -1 (no warm-up) and synthetic data of num_image samples."""
    import dataset
    from training import set_step_counts
    cfg = get_config(str(ORIGINAL_UNUSUAL / "3millions.py"))
    set_step_counts(cfg, world_size=1)
    assert (cfg.warmup_step, cfg.total_step) == (0, 100000 // 512 * 30)
    loader = dataset.get_dataloader(cfg.rec, 0, cfg.batch_size, num_workers=0, num_image=cfg.num_image,
                                    rank=0, world_size=1)
    assert len(loader) == cfg.steps_per_epoch      # the schedule ends with the epochs, not at LR 0


def test_original_positives_only_config_builds_its_partial_fc():
    """wf42m_pfc0008_32gpu_r100.py: sample_rate = 0 (only the positive class centres of the batch)."""
    import torch
    from losses import CombinedMarginLoss
    from partial_fc_v2 import PartialFC_V2
    cfg = get_config(str(ORIGINAL_UNUSUAL / "wf42m_pfc0008_32gpu_r100.py"))
    assert cfg.sample_rate == 0 and cfg.warmup_epoch == 2
    pfc = PartialFC_V2(CombinedMarginLoss(64, *cfg.margin_list), 8, 100, cfg.sample_rate)
    loss = pfc(torch.randn(4, 8), torch.tensor([3, 50, 3, 99]))
    assert torch.isfinite(loss) and pfc.weight_index.tolist() == [3, 50, 99]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_configs_have_no_side_effects_on_import(name, tmp_path, monkeypatch):
    """Loading a config writes nothing (the demos' data is generated by train_v2: demo_data = True)."""
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in CONFIGS.iterdir() if p.name != "__pycache__")
    get_config(str(CONFIGS / name))
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in CONFIGS.iterdir() if p.name != "__pycache__") == before


@pytest.mark.parametrize("name", ["demo.py", "demo_adaface.py"])
def test_demo_configs_ask_train_v2_for_their_data(name):
    cfg = load(name)
    assert cfg.demo_data is True and cfg.rec == "work_dirs/demo_data" and cfg.val_targets == ["demo_val"]
