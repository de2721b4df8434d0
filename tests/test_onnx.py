"""torch2onnx: export of every backbone family, onnxruntime and insightface client parity, errors."""
from __future__ import annotations

import subprocess
import sys
import time

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import torch2onnx
from backbones import get_model
from conftest import FIXTURES, REPO
from face_model import cosine_similarity, embed_images, load_image
from torch2onnx import (BATCH_DIM, INPUT_NAME, OUTPUT_NAME, ExportError, convert_onnx, fix_node_names,
                        looks_like_mxnet, random_inputs)

FACE = FIXTURES / "mx_im2rec" / "images" / "id_00" / "0.jpg"


def randomize_bn(net: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm running statistics, so that folding them into the graph is exercised."""
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A backbone from get_model with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    return randomize_bn(get_model(name, dropout=0.0, fp16=False, num_features=512)).eval()


def run_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def check_graph(path) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == INPUT_NAME and out.name == OUTPUT_NAME
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == [BATCH_DIM, 3, 112, 112]
    assert out_dims == [BATCH_DIM, 512]
    assert not looks_like_mxnet(model)


def check_onnxruntime(path, net) -> None:
    data = random_inputs(5, seed=7)
    with torch.no_grad():
        expected = net(data).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: data.numpy()})[0]
    assert got.shape == (5, 512)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def check_insightface(path, net) -> None:
    """The insightface package must read the model as a 127.5-normalised ArcFace model."""
    from insightface.model_zoo import get_model as insightface_get_model

    client = insightface_get_model(str(path), providers=["CPUExecutionProvider"])
    assert type(client).__name__ == "ArcFaceONNX"
    assert client.input_mean == 127.5 and client.input_std == 127.5
    bgr = cv2.imread(str(FACE))
    client_feat = client.get_feat(bgr)[0]
    torch_feat = embed_images(net, load_image(FACE))[0]
    assert cosine_similarity(client_feat, torch_feat) > 0.9999


def build_lresnet_small() -> torch.nn.Module:
    """LResNet50E_IR's family with one block per stage (the 50-layer one takes ~20 s to export on 2 cores)."""
    from backbones.lresnet import LResNet

    torch.manual_seed(0)
    return randomize_bn(LResNet((1, 1, 1, 1), dropout=0.0, num_features=512)).eval()


FAMILIES = {"mbf": lambda: build("mbf"), "vit_t": lambda: build("vit_t"), "r18": lambda: build("r18"),
            "lresnet": build_lresnet_small}


@pytest.mark.parametrize("name", FAMILIES)
def test_export_family(name, tmp_path):
    net = FAMILIES[name]()
    path = tmp_path / f"{name}.onnx"
    started = time.perf_counter()
    diff = convert_onnx(net, None, path)
    print(f"{name}: export + check {time.perf_counter() - started:.1f} s, max abs diff {diff:.2e}")
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
    check_graph(path)
    check_onnxruntime(path, net)
    check_insightface(path, net)


def test_mxnet_like_names_are_renamed(tmp_path):
    """A graph starting with nodes named Sub*/Mul* would be fed 0..255 pixels by ArcFaceONNX."""
    x = onnx.helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, [BATCH_DIM, 3, 112, 112])
    y = onnx.helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, [BATCH_DIM, 512])
    consts = [onnx.helper.make_tensor(n, onnx.TensorProto.FLOAT, [], [v]) for n, v in (("c", 1.0), ("s", 2.0))]
    w = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [3 * 112, 512], np.ones(3 * 112 * 512))
    nodes = [onnx.helper.make_node("Sub", [INPUT_NAME, "c"], ["a"], name="Sub_0"),
             onnx.helper.make_node("Mul", ["a", "s"], ["b"], name="_mul1"),
             onnx.helper.make_node("ReduceMean", ["b"], ["m"], name="/mean", axes=[2], keepdims=0),
             onnx.helper.make_node("Flatten", ["m"], ["f"], name="Flatten_3"),
             onnx.helper.make_node("MatMul", ["f", "w"], [OUTPUT_NAME], name="Mul_4")]
    graph = onnx.helper.make_graph(nodes, "g", [x], [y], initializer=consts + [w])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    assert looks_like_mxnet(model)
    assert fix_node_names(model) == 3
    assert not looks_like_mxnet(model)
    assert [n.name for n in model.graph.node] == ["/Sub_0", "/_mul1", "/mean", "Flatten_3", "/Mul_4"]
    path = tmp_path / "fixed.onnx"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    assert ArcFaceONNX(model_file=str(path)).input_mean == 127.5


class RandomOutput(torch.nn.Module):
    """ONNX's RandomUniform never matches PyTorch's generator: the parity check must catch it."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) + torch.rand(x.shape[0], 3)


def test_parity_failure_leaves_no_file(tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch"):
        convert_onnx(RandomOutput(), None, out)
    assert list(tmp_path.iterdir()) == []


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.fc = torch.nn.Linear(4 * 28 * 28, 512)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_simplify_without_onnxsim(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxsim", None)
    out = tmp_path / "tiny.onnx"
    convert_onnx(Tiny().eval(), None, out, simplify=True)
    assert "onnxsim is not installed" in capsys.readouterr().err
    check_graph(out)


def test_external_data_for_huge_models(tmp_path, monkeypatch):
    """Models over protobuf's 2 GB (vit_h) keep their weights in `<name>.data` beside the .onnx."""
    monkeypatch.setattr(torch2onnx, "EXTERNAL_DATA_BYTES", 0)
    out = tmp_path / "huge.onnx"
    net = Tiny().eval()
    convert_onnx(net, None, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.onnx", "huge.onnx.data"]
    assert out.stat().st_size < 100_000 < (tmp_path / "huge.onnx.data").stat().st_size
    check_graph(out)
    check_onnxruntime(out, net)
    monkeypatch.undo()
    convert_onnx(net, None, out)
    assert [p.name for p in tmp_path.iterdir()] == ["huge.onnx"]
    check_onnxruntime(out, net)


@pytest.mark.slow
def test_cli_directory_input_and_errors(tmp_path, capsys):
    work = tmp_path / "work_dirs" / "x"
    work.mkdir(parents=True)
    net = build("mbf", seed=3)
    torch.save(net.state_dict(), work / "model.pt")

    done = run_cli("torch2onnx.py", work, "--network", "mbf", "--opset", "17")
    assert done.returncode == 0, done.stderr
    assert "max abs diff" in done.stdout and "saved" in done.stdout
    assert sorted(p.name for p in work.iterdir()) == ["model.onnx", "model.pt"]
    check_graph(work / "model.onnx")
    check_onnxruntime(work / "model.onnx", net)

    assert torch2onnx.main([str(work / "model.pt"), "--network", "vit_t", "--output", str(tmp_path / "bad.onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.pt" in lines[0] and "vit_t" in lines[0]
    assert not (tmp_path / "bad.onnx").exists()

    assert torch2onnx.main([str(tmp_path / "nope.pt"), "--network", "mbf"]) == 5
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: weights not found: {tmp_path / 'nope.pt'} (pass the model.pt written by training)"]

    assert torch2onnx.main([str(work), "--network", "r1000"]) == 2
    assert "unknown network 'r1000'" in capsys.readouterr().err

    assert torch2onnx.main([str(work / "model.onnx"), "--network", "mbf"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {work / 'model.onnx'}: this is an ONNX file: exported "
                                               "already; pass the model.pt written by training")
    assert torch2onnx.main([str(work), "--network", "mbf", "--num-features", "128"]) == 2
    assert "the weights hold 512-d embeddings: pass --num-features 512 or omit it" in capsys.readouterr().err


def test_simplify_flag_takes_a_bool():
    parse = torch2onnx.parse_args
    assert parse(["m.pt"]).simplify is False and parse(["m.pt", "--simplify"]).simplify is True
    assert parse(["m.pt", "--simplify", "false"]).simplify is False
    assert parse(["m.pt", "--simplify", "True"]).simplify is True
    with pytest.raises(SystemExit):
        parse(["m.pt", "--simplify", "maybe"])
