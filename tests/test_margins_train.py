"""train_v2.py with the margin heads: exact resume with the head's state, head change refused, AdaFace demo."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_v2
from tests import demo_model
from tests.conftest import REPO
from tests.test_train import assert_same_weights, run_main, stop_at_step, tiny_data, write_config  # noqa: F401
from utils.errors import ConfigError
from utils.utils_config import get_config


def _checkpoint(output: Path) -> dict:
    return torch.load(output / "checkpoint_gpu_0.pt", map_location="cpu", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("margin, state_key", [("adaface", "margin_softmax.batch_std"),
                                               ("elasticface_arc", "margin_softmax._extra_state")])
def test_resume_restores_the_head_state(tmp_path, tiny_data, monkeypatch, margin, state_key):
    """Stopped mid-epoch and resumed = uninterrupted: weights and the head's running state."""
    keys = dict(margin=margin, margin_params={"std": 0.1} if margin.startswith("elastic") else {})
    full = write_config(tmp_path / "full.py", tiny_data, tmp_path / "full", **keys)
    run_main(full)
    cut = write_config(tmp_path / "cut.py", tiny_data, tmp_path / "cut", **keys)
    with monkeypatch.context() as patch:
        stop_at_step(patch, 6)
        with pytest.raises(train_v2.TrainingStopped, match="global step 6"):
            run_main(cut)
    stopped = _checkpoint(tmp_path / "cut")["state_dict_softmax_fc"]
    assert state_key in stopped
    run_main(cut, "resume=true")
    assert_same_weights(tmp_path / "full" / "model.pt", tmp_path / "cut" / "model.pt")
    heads = [_checkpoint(tmp_path / name)["state_dict_softmax_fc"] for name in ("full", "cut")]
    if margin == "adaface":
        assert heads[0]["margin_softmax.batch_mean"].item() != 20.0, "the statistics must have moved"
        assert heads[0]["margin_softmax.batch_mean"].item() == heads[1]["margin_softmax.batch_mean"].item()
        assert heads[0][state_key].item() == heads[1][state_key].item()
    else:
        assert torch.equal(heads[0][state_key]["state"], heads[1][state_key]["state"])
        assert not torch.equal(stopped[state_key]["state"], heads[1][state_key]["state"])


@pytest.mark.slow
def test_a_head_change_on_resume_is_refused_and_old_checkpoints_still_load(tmp_path, tiny_data):
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", num_epoch=1, margin="adaface")
    run_main(config)
    with pytest.raises(ConfigError, match="margin: checkpoint 'adaface' vs config 'combined'"):
        run_main(config, "resume=true", "margin=combined")
    # a checkpoint of the combined head written before the key existed (no 'margin' in its fingerprint,
    # a softmax-fc state with only `weight`) still resumes
    plain = write_config(tmp_path / "p.py", tiny_data, tmp_path / "plain", num_epoch=1)
    run_main(plain)
    state = _checkpoint(tmp_path / "plain")
    del state["fingerprint"]["margin"]
    assert list(state["state_dict_softmax_fc"]) == ["weight"]
    torch.save(state, tmp_path / "plain" / "checkpoint_gpu_0.pt")
    run_main(plain, "resume=true", "num_epoch=2")
    assert _checkpoint(tmp_path / "plain")["global_step"] == 8


@pytest.mark.parametrize("name", ["dcface_adaface_irse50", "cemiface_adaface_irse50", "demo_adaface"])
def test_recipes_load(name):
    cfg = get_config(str(REPO / "configs" / f"{name}.py"))
    assert cfg.margin == "adaface"
    if name != "demo_adaface":
        assert dict(cfg.margin_params) == {"m": 0.4, "h": 0.333, "t_alpha": 0.01}
        assert (cfg.network, cfg.lr, cfg.num_epoch, tuple(cfg.lr_steps)) == ("ir_se50", 0.1, 26, (12, 20, 24))
        assert cfg.margin_scale == 64.0


@pytest.mark.slow
def test_adaface_demo_learns(tmp_path, demo_run):
    """A shortened configs/demo_adaface.py on the session demo run's data: accuracy on new renders of the
    training identities and on held-out identities rises above the untrained network's
    (tests/demo_model.py), loss falls."""
    data = demo_run.data                 # the same generated faces as the ArcFace demo run
    demo = get_config(str(REPO / "configs" / "demo_adaface.py"))
    config = write_config(tmp_path / "demo.py", data, tmp_path / "out", embedding_size=demo_model.EMBEDDING,
                          batch_size=32, num_epoch=5, warmup_epoch=1, frequent=5, verbose=33, lr=demo.lr,
                          margin=demo.margin, margin_params=dict(demo.margin_params), num_workers=2,
                          val_targets=["demo_val", "demo_seen"])
    result = subprocess.run([sys.executable, "train_v2.py", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=600, env=demo_model.training_env())
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "out" / "training.log").read_text()
    assert re.search(r": margin\s+adaface\n", log), "the config dump names the head"
    demo_model.assert_learned(log, data)
    batch_mean = _checkpoint(tmp_path / "out")["state_dict_softmax_fc"]["margin_softmax.batch_mean"].item()
    assert batch_mean != 20.0


def test_vec2face_network_is_sotafr_iresnet_se_module_for_module():
    """SOTA-FR's iresnet 50 "se": r50 + an SE gate on the downsampled shortcut of each stage's first block."""
    import torch.nn.functional as F

    from backbones import get_model
    from backbones.iresnet import IResNet

    cfg = get_config(str(REPO / "configs" / "vec2face_irse50.py"))
    with torch.device("meta"):  # structure only: no 43M-parameter initialisation
        model, r50 = get_model(cfg.network), get_model("r50")
    r50_keys = set(r50.state_dict())
    extra = set(model.state_dict()) - r50_keys
    assert r50_keys <= set(model.state_dict())
    assert extra == {f"layer{i}.0.attn.fc{j}.weight" for i in (1, 2, 3, 4) for j in (1, 2)}
    assert model.dropout.p == 0.4
    assert sum(p.numel() for p in model.parameters()) - 43590848 == 2 * (64 * 4 + 128 * 8 + 256 * 16 + 512 * 32)
    for stage in model.stages():
        assert stage[0].attn is not None and stage[0].se is None
        assert all(block.attn is None and block.se is None for block in stage[1:])
    block = IResNet([1, 1, 1, 1], shortcut_se=16).eval().layer2[0]  # a real block of the same construction
    assert block.attn.fc1.weight.shape == (8, 128, 1, 1) and 0.05 < block.attn.fc1.weight.std().item() < 0.15
    x = torch.randn(2, 64, 14, 14)
    with torch.no_grad():
        residual = block.bn3(block.conv2(block.prelu(block.bn2(block.conv1(block.bn1(x))))))
        shortcut = block.downsample(x)
        gate = torch.sigmoid(F.conv2d(F.relu(F.conv2d(shortcut.mean((2, 3), keepdim=True), block.attn.fc1.weight)),
                                      block.attn.fc2.weight))
        torch.testing.assert_close(block(x), residual + shortcut * gate)
