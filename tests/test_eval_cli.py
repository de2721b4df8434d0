"""python -m eval.verification: the standalone evaluator on generated .bin files."""
from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from backbones import get_model
from conftest import REPO
from eval import verification as V

TITLES = ["LFW", "CFP-FP", "AgeDB", "CPLFW", "CALFW"]


def _faces(n, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112]
    out = []
    for _ in range(n):
        img = rng.uniform(40, 200, 3) + 50 * np.sin(xx[..., None] / rng.uniform(3, 15) + rng.uniform(0, 6)) \
            + 40 * np.cos(yy[..., None] / rng.uniform(3, 15))
        out.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
    return out


def _write_bin(path, n_pairs, seed, protocol=pickle.HIGHEST_PROTOCOL):
    bins = [cv2.imencode(".jpg", im)[1].tobytes() for im in _faces(2 * n_pairs, seed)]
    issame = [bool(v) for v in np.random.default_rng(seed).random(n_pairs) < 0.5]
    with open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=protocol)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bins")
    _write_bin(root / "lfw.bin", 10, 1)
    _write_bin(root / "agedb_30.bin", 10, 2, protocol=2)     # a Python-3 protocol-2 pickle
    return root


def _table_row(out: str, name: str) -> list[str]:
    header = [line for line in out.splitlines() if line.startswith("| Name |")]
    assert header == ["| Name | " + " | ".join(TITLES) + " | Avg. |"]
    rows = [line for line in out.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, out
    return [c.strip() for c in rows[0].strip("|").split("|")][1:]


def _expected_cells(data_dir, backbone, batch_size):
    """The row computed independently: load_bin + test() per target, percent with two decimals."""
    accs = {}
    for target in ("lfw", "cfp_fp", "agedb_30", "cplfw", "calfw"):
        if (data_dir / f"{target}.bin").exists():
            accs[target] = V.test(V.load_bin(data_dir / f"{target}.bin"), backbone, batch_size, 10)[2]
    cells = [f"{accs[t] * 100:.2f}" if t in accs else "-" for t in ("lfw", "cfp_fp", "agedb_30", "cplfw", "calfw")]
    return cells + [f"{np.mean(list(accs.values())) * 100:.2f}"], accs


@pytest.mark.slow
def test_cli_real_backbone_table_equals_evaluate(tmp_path, capsys):
    data_dir = tmp_path / "bins"
    data_dir.mkdir()
    _write_bin(data_dir / "lfw.bin", 10, 1, protocol=2)     # a Python-3 protocol-2 pickle
    torch.manual_seed(0)
    model = get_model("mbf", dropout=0.0, fp16=False, num_features=512)
    (tmp_path / "run1").mkdir()
    weights = tmp_path / "run1" / "model.pt"
    torch.save(model.state_dict(), weights)
    out_json = tmp_path / "eval.json"
    rc = V.main(["--model", str(weights), "--network", "mbf", "--data-dir", str(data_dir),
                 "--batch-size", "7", "--json", str(out_json), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    cells, accs = _expected_cells(data_dir, model.eval(), batch_size=16)
    assert _table_row(out, "run1") == cells
    for target in ("cfp_fp", "agedb_30", "cplfw", "calfw"):
        assert f"note: {target}.bin not found in {data_dir}" in out
    assert "Avg. is over 1 of 5 targets" in out
    assert re.search(r"^\[lfw\]XNorm: \d+\.\d{6}$", out, re.M)
    assert f"[lfw]Accuracy-Flip: {accs['lfw']:1.5f}+-" in out
    assert re.search(r"^\[lfw\]VAL@FAR=1e-3: ", out, re.M)

    payload = json.loads(out_json.read_text())
    assert payload["kind"] == "verification" and payload["network"] == "mbf"
    assert payload["missing"] == ["cfp_fp", "agedb_30", "cplfw", "calfw"]
    assert sorted(payload["targets"]) == ["lfw"]
    for target, res in payload["targets"].items():
        assert res["acc"] == accs[target]
        assert len(res["tpr"]) == len(res["fpr"]) == len(res["thresholds"]) == 400
        assert len(res["best_thresholds"]) == len(res["val_thresholds"]) == len(res["accuracy_per_fold"]) == 10
        assert {"std", "xnorm", "val", "val_std", "far"} <= set(res)


def test_cli_wrong_network_names_both(data_dir, tmp_path, capsys):
    weights = tmp_path / "model.pt"
    torch.save(get_model("mbf", dropout=0.0, fp16=False, num_features=512).state_dict(), weights)
    rc = V.main(["--model", str(weights), "--network", "r18", "--data-dir", str(data_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert str(weights) in err and "--network r18" in err and "missing keys" in err


def test_cli_data_dir_without_targets_says_what_it_looked_for(tmp_path, capsys):
    rc = V.main(["--onnx", "unused.onnx", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 4
    assert "lfw.bin, cfp_fp.bin, agedb_30.bin, cplfw.bin, calfw.bin" in err and str(tmp_path) in err


def test_cli_model_needs_network_when_no_run_config(tmp_path, capsys):
    (tmp_path / "lfw.bin").write_bytes(b"")
    torch.save(get_model("mbf", num_features=512).state_dict(), tmp_path / "x.pt")
    rc = V.main(["--model", str(tmp_path / "x.pt"), "--data-dir", str(tmp_path), "--targets", "lfw"])
    assert rc == 2
    assert "no --network given and no config.json beside" in capsys.readouterr().err


def test_cli_messages_point_at_the_fix(tmp_path, capsys):
    (tmp_path / "lfw.bin").write_bytes(b"")
    weights = tmp_path / "model.pt"
    torch.save(get_model("mbf", num_features=512).state_dict(), weights)
    base = ["--data-dir", str(tmp_path), "--targets", "lfw"]
    assert V.main(["--model", str(weights), "--network", "mbf", "--num-features", "128", *base]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {weights} does not fit --num-features 128: the weights hold "
                                               "512-d embeddings: pass --num-features 512 or omit it")
    _tiny_onnx(TinyNet(), tmp_path / "tiny.onnx")
    assert V.main(["--model", str(tmp_path / "tiny.onnx"), *base]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'tiny.onnx'}: this is an ONNX file: use --onnx "
                                               f"{tmp_path / 'tiny.onnx'}")
    (tmp_path / "config.json").write_text('{"network": "mbf", "embedding_size": 512}')
    assert V.main(["--model", str(weights), "--network", "r50", *base]) == 2
    err = capsys.readouterr().err
    assert "--network r50 disagrees with the run's config.json" in err and "(mbf)" in err


class TinyNet(torch.nn.Module):
    """Average-pool to 8x8, flatten, linear to 512: small enough to mirror by hand in ONNX."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.pool = torch.nn.AvgPool2d(14)
        self.fc = torch.nn.Linear(3 * 8 * 8, 512)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


def _tiny_onnx(net: TinyNet, path, fixed_batch=None):
    batch = fixed_batch if fixed_batch else "batch"
    nodes = [helper.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["683"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, 512])],
        [numpy_helper.from_array(net.fc.weight.detach().numpy(), "fc.weight"),
         numpy_helper.from_array(net.fc.bias.detach().numpy(), "fc.bias")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.slow
def test_cli_onnx_subprocess_matches_torch(data_dir, tmp_path):
    net = TinyNet().eval()
    model_path = tmp_path / "tiny.onnx"
    _tiny_onnx(net, model_path)
    out_json = tmp_path / "onnx.json"
    proc = subprocess.run([sys.executable, "-m", "eval.verification", "--onnx", str(model_path),
                           "--data-dir", str(data_dir), "--targets", "lfw,agedb_30,calfw",
                           "--batch-size", "8", "--json", str(out_json), "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(out_json.read_text())
    assert payload["name"] == "tiny" and payload["missing"] == ["calfw"]
    for target in ("lfw", "agedb_30"):
        data_set = V.load_bin(data_dir / f"{target}.bin")
        acc1, std1, acc2, std2, xnorm, _ = V.test(data_set, net, 16)
        assert payload["targets"][target]["acc"] == acc2
        assert payload["targets"][target]["xnorm"] == pytest.approx(xnorm, rel=1e-5)
    header = [line for line in proc.stdout.splitlines() if line.startswith("| Name |")][0]
    assert header == "| Name | LFW | AgeDB | CALFW | Avg. |"
    row = [c.strip() for c in proc.stdout.split("| tiny |")[1].splitlines()[0].strip("|").split("|")]
    accs = [payload["targets"][t]["acc"] for t in ("lfw", "agedb_30")]
    assert row == [f"{accs[0] * 100:.2f}", f"{accs[1] * 100:.2f}", "-", f"{np.mean(accs) * 100:.2f}"]
    assert "note: calfw.bin not found" in proc.stdout and "Avg. is over 2 of 3 targets" in proc.stdout
