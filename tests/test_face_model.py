"""face_model: loading model.pt (with config.json) and ONNX models, embeddings, and the fix each bad input names."""
from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from backbones import get_model
from conftest import FIXTURES
from face_model import (OnnxBackbone, check_onnx_model, cosine_similarity, embed_images, load_backbone, load_image,
                        load_model, load_onnx, resolve_weight_path)
from tests.test_eval_cli import TinyNet, _tiny_onnx
from torch2onnx import convert_onnx
from utils.errors import CheckpointError, ConfigError, DataError
from utils.weights import WeightsError, WeightsMismatchError

IMAGES = FIXTURES / "mx_im2rec" / "images"
FACE_A = IMAGES / "id_00" / "0.jpg"
FACE_B = IMAGES / "id_03" / "1.jpg"


@pytest.fixture(scope="module")
def mbf(tmp_path_factory):
    """A random-weight mbf saved as model.pt and exported to model.onnx."""
    work = tmp_path_factory.mktemp("work_dirs")
    torch.manual_seed(0)
    net = get_model("mbf", dropout=0.0, fp16=False, num_features=512)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), work / "model.pt")
    convert_onnx(net.eval(), None, work / "model.onnx")
    return work


def test_load_backbone_and_embed(mbf):
    net = load_backbone("mbf", mbf, "cpu")
    assert not net.training
    images = torch.stack([load_image(FACE_A), load_image(FACE_B)])
    feats = embed_images(net, images, batch_size=1)
    assert feats.shape == (2, 512) and feats.dtype == np.float32
    with torch.no_grad():
        direct = net(((images.float() / 255) - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(feats, direct, rtol=0, atol=1e-5 * np.abs(direct).max())
    onnx_model = load_onnx(mbf / "model.onnx")
    assert isinstance(onnx_model, OnnxBackbone)
    onnx_feats = embed_images(onnx_model, images)
    np.testing.assert_allclose(onnx_feats, feats, rtol=0, atol=1e-4 * np.abs(feats).max())
    assert cosine_similarity(feats[0], feats[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        embed_images(net, images, batch_size=0)


def test_resize_warning(tmp_path):
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((100, 130, 3), 90, np.uint8))
    with pytest.warns(UserWarning, match="130x100, resized to 112x112"):
        image = load_image(tmp_path / "wide.png")
    assert image.shape == (3, 112, 112) and image.dtype == torch.uint8
    assert int(image[0, 50, 50]) == 90
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert load_image(FACE_A).shape == (3, 112, 112)
    with pytest.raises(DataError, match="image not found"):
        load_image(tmp_path / "missing.jpg")


def test_unreadable_weights_are_checkpoint_errors(mbf, tmp_path):
    with pytest.raises(WeightsError, match="weights not found"):
        load_backbone("mbf", tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_backbone("mbf", tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        load_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="not an ONNX model"):
        load_onnx(tmp_path / "junk.onnx")


def test_an_onnx_file_as_weights_points_at_the_onnx_flag(mbf, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.onnx: this is an ONNX file: use --onnx .*model\.onnx"):
        resolve_weight_path(mbf / "model.onnx")
    renamed = tmp_path / "model.pt"                     # an ONNX file under a weights name
    renamed.write_bytes((mbf / "model.onnx").read_bytes())
    with pytest.raises(ConfigError, match="this is an ONNX file: use --onnx"):
        load_model(renamed, network="mbf")
    with pytest.raises(ConfigError, match="this is an ONNX file: exported already; pass the model.pt"):
        resolve_weight_path(renamed, onnx_flag=None)


def test_wrong_network_names_the_network(mbf):
    with pytest.raises(WeightsMismatchError, match=r"model\.pt does not fit --network vit_t .*missing keys"):
        load_backbone("vit_t", mbf / "model.pt")
    with pytest.raises(ConfigError, match="unknown network 'r1000'"):
        load_backbone("r1000", mbf / "model.pt")


def test_wrong_num_features_reads_the_size_from_the_weights(mbf, tmp_path):
    with pytest.raises(WeightsMismatchError, match=r"does not fit --num-features 128: the weights hold 512-d "
                                                   r"embeddings: pass --num-features 512 or omit it$"):
        load_backbone("mbf", mbf / "model.pt", num_features=128)
    torch.save(get_model("mbf", num_features=128).state_dict(), tmp_path / "model.pt")
    with pytest.raises(WeightsMismatchError, match=r"the weights hold 128-d embeddings: pass --num-features 128$"):
        load_backbone("mbf", tmp_path / "model.pt")
    assert load_backbone("mbf", tmp_path / "model.pt", num_features=128)(torch.zeros(1, 3, 112, 112)).shape == (1, 128)


def test_load_model_reads_the_run_config(tmp_path):
    torch.save(get_model("mbf", num_features=64).state_dict(), tmp_path / "model.pt")
    (tmp_path / "config.json").write_text(json.dumps({"network": "mbf", "embedding_size": 64}))
    loaded = load_model(tmp_path)
    assert (loaded.network, loaded.num_features, loaded.path) == ("mbf", 64, tmp_path / "model.pt")
    assert not loaded.backbone.training
    with pytest.raises(ConfigError, match=r"--num-features 128 disagrees with the run's config.json .*\(64\)"):
        load_model(tmp_path / "model.pt", num_features=128)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match="no --network given and no config.json"):
        load_model(tmp_path / "model.pt")
    assert load_model(tmp_path, network="mbf", num_features=64).num_features == 64
    with pytest.raises(ConfigError, match="no model given"):
        load_model()


def test_onnx_backbone_fixed_batch_pads_last_batch(tmp_path):
    net = TinyNet().eval()
    _tiny_onnx(net, tmp_path / "fixed.onnx", fixed_batch=4)
    backbone = load_onnx(tmp_path / "fixed.onnx")
    x = torch.randn(10, 3, 112, 112)
    with torch.inference_mode():
        np.testing.assert_allclose(backbone(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    assert load_model(onnx=tmp_path / "fixed.onnx").network is None


def test_onnx_with_wrong_input_shape_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"], axis=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 150528])])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(WeightsError, match=r"input 'x' is Nx3x224x224 \(float\); .* N x 3 x 112 x 112"):
        check_onnx_model(str(path))
    with pytest.raises(WeightsError, match="input 'x' is Nx3x224x224"):
        load_onnx(path)                             # checked before onnxruntime opens it


def test_tools_keep_freed_memory_only_for_a_cpu_model(monkeypatch):
    """reuse_freed_cpu_memory asks glibc to keep freed memory (keep_freed_cpu_memory) for a model on the CPU
    and leaves the allocator alone for one elsewhere (the setting itself: test_train's page-fault test)."""
    import face_model
    import utils.utils_distributed as ud
    calls = []
    monkeypatch.setattr(ud, "keep_freed_cpu_memory", lambda: calls.append("kept") or True)
    assert face_model.reuse_freed_cpu_memory(torch.nn.Linear(2, 2)) is True and calls == ["kept"]
    assert face_model.reuse_freed_cpu_memory(torch.nn.Linear(2, 2, device="meta")) is False and calls == ["kept"]
    monkeypatch.setattr(ud, "keep_freed_cpu_memory", lambda: False)            # no glibc: nothing applied
    assert face_model.reuse_freed_cpu_memory(torch.nn.Linear(2, 2)) is False
