"""Metric sinks of training: Weights & Biases run for real in offline mode (its run file read back)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.test_train import run_main, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)

from utils.errors import ConfigError

_BLOCK = 32768          # the .wandb file is a LevelDB-style log of protobuf records in 32 KB blocks


def wandb_records(path: Path):
    """The protobuf records of an offline W&B run file (its header, then FULL/FIRST/MIDDLE/LAST chunks)."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:                 # block trailer too short for a header: skipped
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def read_offline_run(output: Path) -> dict:
    [run_file] = output.glob("wandb/offline-run-*/run-*.wandb")
    history, config, artifacts = [], {}, []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "run":
            config = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                      for item in record.run.config.update}
        elif kind == "artifact":
            artifacts.append([entry.path for entry in record.artifact.manifest.contents])
    return {"history": history, "config": config, "artifacts": artifacts}


@pytest.mark.slow
def test_wandb_offline_run_holds_loss_lr_accuracy_config_and_model(tmp_path, tiny_data, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    secret = "secret-key-0123456789"
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", using_wandb=True, save_artifacts=True,
                          verbose=4, frequent=2, wandb_key=secret, wandb_project="arcface-test")
    run_main(config)
    run = read_offline_run(tmp_path / "out")
    steps = {row["_step"]: row for row in run["history"]}
    assert sorted(steps) == [4, 6, 8]                    # the first logging step only starts the timer
    assert all(row["loss"] > 0 for row in steps.values()) and steps[8]["learning_rate"] == 0
    assert steps[4]["learning_rate"] == pytest.approx(0.05)
    assert 0 <= steps[4]["demo_val"] <= 1 and "demo_val" in steps[8]
    value = run["config"]["network"]
    assert (value.get("value", value) if isinstance(value, dict) else value) == "mbf_tiny"
    assert secret not in json.dumps(run["config"])
    assert run["artifacts"] and all(paths == ["model.pt"] for paths in run["artifacts"])
    assert (tmp_path / "out" / "wandb_run_id").read_text().strip()


def test_wandb_online_without_a_key_is_a_clear_error(tmp_path, tiny_data, monkeypatch):  # noqa: F811
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = write_config(tmp_path / "c.py", tiny_data, tmp_path / "out", using_wandb=True)
    with pytest.raises(ConfigError, match="using_wandb=True needs an API key: set wandb_key .* WANDB_MODE=offline"):
        run_main(config)
