"""inference.py: embeddings from model.pt and from the exported ONNX agree; resize warning; errors."""
from __future__ import annotations

import re
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch

from backbones import get_model
from conftest import FIXTURES, REPO
from inference import (WeightsError, cosine_similarity, embed_images, load_backbone, load_image, load_onnx,
                       main)
from torch2onnx import convert_onnx
from utils.errors import DataError

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


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "inference.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def printed_cosine(stdout: str) -> float:
    return float(re.search(r"cosine similarity: (\S+)", stdout).group(1))


def printed_embeddings(stdout: str) -> np.ndarray:
    blocks = re.findall(r"embedding of .*?:\n\[(.*?)\]", stdout, flags=re.S)
    return np.array([[float(v) for v in block.split()] for block in blocks], dtype=np.float32)


def test_load_backbone_and_embed(mbf):
    net = load_backbone("mbf", mbf, "cpu")
    assert not net.training
    images = torch.stack([load_image(FACE_A), load_image(FACE_B)])
    feats = embed_images(net, images, batch_size=1)
    assert feats.shape == (2, 512) and feats.dtype == np.float32
    with torch.no_grad():
        direct = net(((images.float() / 255) - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(feats, direct, rtol=0, atol=1e-5 * np.abs(direct).max())
    onnx_feats = embed_images(load_onnx(mbf / "model.onnx"), images)
    np.testing.assert_allclose(onnx_feats, feats, rtol=0, atol=1e-4 * np.abs(feats).max())


@pytest.mark.slow
def test_cli_torch_and_onnx_agree(mbf, tmp_path):
    """Both ways, with one aligned image and one 120x120 image that must be resized with a warning."""
    big = cv2.resize(cv2.imread(str(FACE_B)), (120, 120), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    by_torch = run_cli("--network", "mbf", "--weight", mbf / "model.pt", "--img", FACE_A, "--img2",
                       tmp_path / "big.png", "--out", tmp_path / "t.npy")
    assert by_torch.returncode == 0, by_torch.stderr
    by_onnx = run_cli("--onnx", mbf / "model.onnx", "--img", FACE_A, "--img2", tmp_path / "big.png")
    assert by_onnx.returncode == 0, by_onnx.stderr
    for done in (by_torch, by_onnx):
        assert done.stderr.strip() == (f"warning: {tmp_path / 'big.png'} is 120x120, resized to 112x112; "
                                       "the model expects aligned 112x112 faces")

    saved, printed = np.load(tmp_path / "t.npy"), printed_embeddings(by_onnx.stdout)
    assert saved.shape == printed.shape == (2, 512)
    scale = np.abs(saved).max()
    np.testing.assert_allclose(printed, saved, rtol=0, atol=1e-4 * scale)
    rgb = cv2.resize(big[:, :, ::-1], (112, 112), interpolation=cv2.INTER_LINEAR)
    images = torch.stack([load_image(FACE_A), torch.from_numpy(rgb.copy()).permute(2, 0, 1)])
    expected = embed_images(load_backbone("mbf", mbf / "model.pt"), images)
    np.testing.assert_allclose(saved, expected, rtol=0, atol=1e-5 * scale)
    cos_t, cos_o = printed_cosine(by_torch.stdout), printed_cosine(by_onnx.stdout)
    assert cos_t == pytest.approx(cosine_similarity(expected[0], expected[1]), abs=2e-6)
    assert cos_o == pytest.approx(cos_t, abs=1e-5)


def test_resize_warning_in_process(tmp_path):
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((100, 130, 3), 90, np.uint8))
    with pytest.warns(UserWarning, match="130x100, resized to 112x112"):
        image = load_image(tmp_path / "wide.png")
    assert image.shape == (3, 112, 112) and image.dtype == torch.uint8
    assert int(image[0, 50, 50]) == 90
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert load_image(FACE_A).shape == (3, 112, 112)


def test_errors(mbf, tmp_path, capsys):
    with pytest.raises(WeightsError, match=r"model\.pt does not fit --network vit_t"):
        load_backbone("vit_t", mbf / "model.pt")
    with pytest.raises(WeightsError, match="weights not found"):
        load_backbone("mbf", tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_backbone("mbf", tmp_path / "junk.pt")
    with pytest.raises(WeightsError, match="ONNX model not found"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(DataError, match="image not found"):
        load_image(tmp_path / "missing.jpg")

    assert main(["--network", "r18", "--weight", str(mbf / "model.pt"), "--img", str(FACE_A)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.pt" in lines[0] and "r18" in lines[0]
    assert main(["--network", "mbf", "--weight", str(mbf), "--img", str(tmp_path / "nope.jpg")]) == 1
    assert capsys.readouterr().err.strip() == f"error: image not found: {tmp_path / 'nope.jpg'}"
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["--onnx", str(mbf / "model.onnx"), "--img", str(tmp_path / "bad.jpg")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot decode image")
    with pytest.raises(SystemExit):
        main(["--onnx", str(mbf / "model.onnx"), "--weight", str(mbf / "model.pt"), "--img", str(FACE_A)])
    with pytest.raises(SystemExit):
        main(["--img", str(FACE_A)])


def test_main_prints_and_saves(mbf, tmp_path, capsys):
    assert main(["--network", "mbf", "--weight", str(mbf), "--img", str(FACE_A)]) == 0
    printed = printed_embeddings(capsys.readouterr().out)
    assert main(["--network", "mbf", "--weight", str(mbf), "--img", str(FACE_A), "--out", str(tmp_path / "e")]) == 0
    assert "cosine" not in capsys.readouterr().out
    saved = np.load(tmp_path / "e")
    assert saved.shape == printed.shape == (1, 512)
    np.testing.assert_allclose(printed, saved, rtol=0, atol=1e-6 * max(1.0, np.abs(saved).max()))
