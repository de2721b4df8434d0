"""Embed aligned face images with a trained backbone (model.pt) or an exported ONNX model.

    python inference.py --network r50 --weight work_dirs/x/model.pt --img a.jpg [--img2 b.jpg]
    python inference.py --onnx work_dirs/x/model.onnx --img a.jpg --img2 b.jpg --out emb.npy
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
import torch

from backbones import get_model
from utils.errors import ArcFaceError, DataError
from utils.image import decode_rgb_chw, normalize
from utils.run_config import resolve_model_args
from utils.weights import WeightsError, describe_mismatch, read_backbone_state

INPUT_SIZE = 112


def resolve_weight_path(weight_path: Union[str, Path]) -> Path:
    """A directory means `<dir>/model.pt`, like the original tools."""
    path = Path(weight_path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise WeightsError(f"weights not found: {path} (pass the model.pt written by training)")
    return path


def load_backbone(network: str, weight_path: Union[str, Path], device: Union[str, torch.device] = "cpu",
                  num_features: int = 512) -> torch.nn.Module:
    """Build `get_model(network)`, load model.pt strictly and return it in eval mode on `device`."""
    path = resolve_weight_path(weight_path)
    state = read_backbone_state(path)
    model = get_model(network, dropout=0.0, fp16=False, num_features=num_features)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise WeightsError(f"{path} does not fit --network {network} (num_features {num_features}): "
                           f"{describe_mismatch(model.state_dict(), state)}; pass the --network it was trained "
                           f"with") from None
    return model.to(device).eval()


def load_onnx(onnx_path: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """An onnxruntime session for an exported model (CUDA when asked for and available)."""
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise WeightsError(f"ONNX model not found: {path} (export one with torch2onnx.py)")
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as err:
        raise WeightsError(f"cannot load ONNX model {path}: {str(err).splitlines()[0]}") from None


def load_image(path: Union[str, Path], size: int = INPUT_SIZE) -> torch.Tensor:
    """Read an aligned face as uint8 RGB (3, size, size); other sizes are resized with a warning."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    image = decode_rgb_chw(path.read_bytes())
    height, width = image.shape[1:]
    if (height, width) != (size, size):
        warnings.warn(f"{path} is {width}x{height}, resized to {size}x{size}; "
                      f"the model expects aligned {size}x{size} faces", stacklevel=2)
        hwc = cv2.resize(image.permute(1, 2, 0).numpy(), (size, size), interpolation=cv2.INTER_LINEAR)
        image = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).contiguous()
    return image


@torch.inference_mode()
def embed_images(model, images: Union[torch.Tensor, Sequence[torch.Tensor]], batch_size: int = 64) -> np.ndarray:
    """Raw (not L2-normalised) float32 embeddings (N, D) of uint8 RGB images (N, 3, 112, 112).

    `model` is a torch backbone (its device is used) or an onnxruntime InferenceSession.
    """
    batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    if batch.dim() == 3:
        batch = batch.unsqueeze(0)
    outputs = []
    for start in range(0, batch.shape[0], batch_size):
        data = normalize(batch[start:start + batch_size])
        if isinstance(model, torch.nn.Module):
            device = next(model.parameters()).device
            outputs.append(model(data.to(device)).float().cpu().numpy())
        else:
            feed = {model.get_inputs()[0].name: data.numpy()}
            outputs.append(np.asarray(model.run(None, feed)[0], dtype=np.float32))
    return np.concatenate(outputs, axis=0)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def save_npy(path: Union[str, Path], array: np.ndarray) -> None:
    """np.save, atomically and to exactly `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PyTorch ArcFace inference")
    parser.add_argument("--network", type=str, default=None,
                        help="backbone network (default: from config.json beside the weights, else r50)")
    parser.add_argument("--weight", type=str, default=None, help="model.pt (or its directory)")
    parser.add_argument("--onnx", type=str, default=None, help="exported ONNX model instead of --network/--weight")
    parser.add_argument("--img", type=str, default=None, help="aligned 112x112 face image (random if omitted)")
    parser.add_argument("--img2", type=str, default=None, help="second image: also print the cosine similarity")
    parser.add_argument("--out", type=str, default=None, help="save the embeddings (N, D) as .npy")
    parser.add_argument("--num-features", type=int, default=None,
                        help="embedding size the model was trained with (default: from config.json, else 512)")
    parser.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.onnx and (args.network or args.weight):
        parser.error("pass either --onnx or --network/--weight, not both")
    if not args.onnx and not args.weight:
        parser.error("pass --network NAME --weight model.pt, or --onnx model.onnx")
    if args.img2 and not args.img:
        parser.error("--img2 needs --img")
    return args


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.onnx:
            model = load_onnx(args.onnx, args.device)
        else:
            network, num_features = resolve_model_args(resolve_weight_path(args.weight), args.network,
                                                       args.num_features, default_network="r50")
            model = load_backbone(network, args.weight, args.device, num_features)
        if args.img:
            paths = [args.img] + ([args.img2] if args.img2 else [])
            images = torch.stack([load_image(p) for p in paths])
        else:
            paths = ["random image"]
            images = torch.randint(0, 256, (1, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8)
    except ArcFaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    feats = embed_images(model, images)
    if args.out:
        save_npy(args.out, feats)
        print(f"saved embeddings {feats.shape} to {args.out}")
    else:
        for path, feat in zip(paths, feats):
            print(f"embedding of {path} ({feat.size}-d, L2 norm {np.linalg.norm(feat):.6f}):")
            print(np.array2string(feat, threshold=feat.size + 1, precision=6, max_line_width=100))
    if len(feats) == 2:
        print(f"cosine similarity: {cosine_similarity(feats[0], feats[1]):.6f}")
    return 0


if __name__ == "__main__":
    warnings.formatwarning = _format_warning
    sys.exit(main())
