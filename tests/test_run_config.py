"""config.json: the run describes itself, and the tools read network and embedding size from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_train import run_main, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)

import inference
import torch2onnx
from eval import verification
from utils.errors import ConfigError
from utils.run_config import read_run_config, resolve_model_args


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory) -> Path:  # noqa: F811
    root = tmp_path_factory.mktemp("described")
    run_main(write_config(root / "c.py", tiny_data, root / "out", num_epoch=1, wandb_key="do-not-write-me"))
    return root / "out"


def test_config_json_describes_the_run(trained_run):
    text = (trained_run / "config.json").read_text()
    described = json.loads(text)
    assert (described["network"], described["embedding_size"], described["image_size"]) == ("mbf_tiny", 64, [112, 112])
    assert described["colour_order"] == "RGB" and "0.5" in described["normalisation"]
    assert described["data"]["num_classes"] == 8 and described["data"]["num_image"] == 64
    assert described["config"]["lr"] == 0.1 and described["torch_version"]
    assert "do-not-write-me" not in text
    assert read_run_config(trained_run / "model.pt") == described == read_run_config(trained_run)


def test_tools_read_network_and_size_from_the_run(trained_run, tiny_data, capsys):  # noqa: F811
    model = str(trained_run / "model.pt")
    assert verification.main(["--model", model, "--data-dir", str(tiny_data), "--targets", "demo_val",
                              "--no-progress"]) == 0
    assert "[demo_val]Accuracy-Flip" in capsys.readouterr().out
    assert torch2onnx.main([model, "--output", str(trained_run / "m.onnx")]) == 0
    assert "[None, 64])" in capsys.readouterr().out
    assert inference.main(["--weight", model, "--device", "cpu"]) == 0
    assert "(64-d" in capsys.readouterr().out


def test_a_flag_that_disagrees_with_the_run_names_both(trained_run, tiny_data, capsys):  # noqa: F811
    assert verification.main(["--model", str(trained_run / "model.pt"), "--num-features", "128", "--data-dir",
                              str(tiny_data), "--targets", "demo_val"]) == 2
    err = capsys.readouterr().err
    assert "--num-features 128 disagrees with the run's config.json" in err and "(64)" in err
    with pytest.raises(ConfigError, match="--network r50 disagrees .*\\(mbf_tiny\\)"):
        resolve_model_args(trained_run / "model.pt", "r50", None)
    assert resolve_model_args(trained_run / "model.pt", "mbf_tiny", 64) == ("mbf_tiny", 64)


def test_without_a_run_config_the_network_must_be_given(tmp_path):
    weights = tmp_path / "model.pt"
    with pytest.raises(ConfigError, match="no --network given and no config.json beside .*: pass the --network"):
        resolve_model_args(weights, None, None)
    assert resolve_model_args(weights, "r100", None) == ("r100", 512)
    assert resolve_model_args(weights, None, None, default_network="r50") == ("r50", 512)


def test_pretrained_initialises_the_backbone_strictly(trained_run, tiny_data, tmp_path):  # noqa: F811
    import torch
    weights = trained_run / "model.pt"
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", num_epoch=1, lr=1e-12,
                          pretrained=str(weights))
    run_main(config)
    log = (tmp_path / "out" / "training.log").read_text()
    assert f"pretrained: initialised" in log and str(weights) in log
    before, after = torch.load(weights, weights_only=True), torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    conv = next(k for k in before if k.endswith("weight") and before[k].dim() == 4)
    assert torch.allclose(before[conv], after[conv], atol=1e-6)      # lr ~0: the pretrained weights remain
    wrong = write_config(tmp_path / "w.py", tiny_data, tmp_path / "w", embedding_size=32, pretrained=str(weights))
    with pytest.raises(ConfigError, match=r"'pretrained': .*model.pt does not fit network mbf_tiny \(embedding_size "
                                          r"32\): .*shape mismatches.*pretrained_strict=False"):
        run_main(wrong)
    run_main(wrong, "pretrained_strict=false", "num_epoch=1")
    assert "keys left at their initial values" in (tmp_path / "w" / "training.log").read_text()
