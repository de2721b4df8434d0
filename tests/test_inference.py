"""inference.py: the command line and the original inference(); embeddings from model.pt and ONNX agree; errors."""
from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import FIXTURES, REPO
from face_model import cosine_similarity, embed_images, load_backbone, load_image
from inference import inference, main
from tests.test_face_model import mbf  # noqa: F401  (a fixture: mbf model.pt and model.onnx)

IMAGES = FIXTURES / "mx_im2rec" / "images"
FACE_A = IMAGES / "id_00" / "0.jpg"
FACE_B = IMAGES / "id_03" / "1.jpg"


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "inference.py"), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def printed_cosine(stdout: str) -> float:
    return float(re.search(r"cosine similarity: (\S+)", stdout).group(1))


def printed_embeddings(stdout: str) -> np.ndarray:
    blocks = re.findall(r"embedding of .*?:\n\[(.*?)\]", stdout, flags=re.S)
    return np.array([[float(v) for v in block.split()] for block in blocks], dtype=np.float32)


@pytest.mark.slow
def test_cli_torch_and_onnx_agree(mbf, tmp_path):  # noqa: F811
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


def test_errors_are_one_line_with_the_class_exit_code(mbf, tmp_path, capsys):  # noqa: F811
    assert main(["--network", "r18", "--weight", str(mbf / "model.pt"), "--img", str(FACE_A)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.pt" in lines[0] and "r18" in lines[0]
    assert main(["--network", "mbf", "--weight", str(mbf), "--img", str(tmp_path / "nope.jpg")]) == 4
    assert capsys.readouterr().err.strip() == f"error: image not found: {tmp_path / 'nope.jpg'}"
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["--onnx", str(mbf / "model.onnx"), "--img", str(tmp_path / "bad.jpg")]) == 4
    assert capsys.readouterr().err.startswith("error: cannot decode image")
    assert main(["--weight", str(tmp_path / "missing.pt"), "--network", "mbf"]) == 5
    assert capsys.readouterr().err.startswith("error: weights not found")
    with pytest.raises(SystemExit):
        main(["--onnx", str(mbf / "model.onnx"), "--weight", str(mbf / "model.pt"), "--img", str(FACE_A)])
    with pytest.raises(SystemExit):
        main(["--onnx", str(mbf / "model.onnx"), "--network", "mbf"])
    with pytest.raises(SystemExit):
        main(["--img", str(FACE_A)])


def test_messages_point_at_the_fix(mbf, capsys):  # noqa: F811
    assert main(["--network", "mbf", "--weight", str(mbf / "model.onnx")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {mbf / 'model.onnx'}: this is an ONNX file: use --onnx "
                                               f"{mbf / 'model.onnx'}")
    assert main(["--network", "mbf", "--weight", str(mbf), "--num-features", "256"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "does not fit --num-features 256: the weights hold 512-d embeddings: pass --num-features 512 or omit it")


def test_the_original_inference_function(mbf, capsys):  # noqa: F811
    feat = inference(str(mbf / "model.pt"), "mbf", str(FACE_A))
    expected = embed_images(load_backbone("mbf", mbf), load_image(FACE_A))
    np.testing.assert_allclose(feat, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert capsys.readouterr().out.startswith("[[")
    assert inference(str(mbf / "model.pt"), "mbf", None).shape == (1, 512)   # a random image


def test_main_prints_and_saves(mbf, tmp_path, capsys):  # noqa: F811
    assert main(["--network", "mbf", "--weight", str(mbf), "--img", str(FACE_A)]) == 0
    printed = printed_embeddings(capsys.readouterr().out)
    assert main(["--network", "mbf", "--weight", str(mbf), "--img", str(FACE_A), "--out", str(tmp_path / "e")]) == 0
    assert "cosine" not in capsys.readouterr().out
    saved = np.load(tmp_path / "e")
    assert saved.shape == printed.shape == (1, 512)
    np.testing.assert_allclose(printed, saved, rtol=0, atol=1e-6 * max(1.0, np.abs(saved).max()))
