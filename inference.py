"""Embed aligned face images with a trained backbone (model.pt) or an exported ONNX model.

    python inference.py --network r50 --weight work_dirs/x/model.pt --img a.jpg [--img2 b.jpg]
    python inference.py --onnx work_dirs/x/model.onnx --img a.jpg --img2 b.jpg --out emb.npy
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from face_model import INPUT_SIZE, cosine_similarity, embed_images, load_image, load_model
from utils.cli import model_parser, run_tool
from utils.files import atomic_write


@torch.no_grad()
def inference(weight: str, name: str, img: str | None) -> np.ndarray:
    """The original's function: print (and return) the raw embedding of one image (random when None)."""
    model = load_model(weight, network=name, device="cpu", onnx_flag=None).backbone
    if img is None:
        images = torch.randint(0, 256, (1, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8)
    else:
        images = load_image(img).unsqueeze(0)
    feat = embed_images(model, images)
    print(feat)
    return feat


def save_npy(path: Union[str, Path], array: np.ndarray) -> None:
    """np.save, atomically and to exactly `path` (no .npy appended)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(str(path), lambda f: np.save(f, array))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="PyTorch ArcFace inference",
                                     parents=[model_parser(weights_flag="--weight")])
    parser.add_argument("--img", type=str, default=None, help="aligned 112x112 face image (random if omitted)")
    parser.add_argument("--img2", type=str, default=None, help="second image: also print the cosine similarity")
    parser.add_argument("--out", type=str, default=None, help="save the embeddings (N, D) as .npy")
    args = parser.parse_args(argv)
    if args.onnx and (args.network or args.num_features):
        parser.error("--onnx models carry their network: drop --network / --num-features")
    if args.img2 and not args.img:
        parser.error("--img2 needs --img")
    return args


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def embed(args: argparse.Namespace) -> None:
    """Embed the images (or one random image), print or save the embeddings and their cosine."""
    model = load_model(args.weight, args.onnx, args.network, args.num_features, args.device,
                       default_network="r50").backbone
    if args.img:
        paths = [args.img] + ([args.img2] if args.img2 else [])
        images = torch.stack([load_image(p) for p in paths])
    else:
        paths = ["random image"]
        images = torch.randint(0, 256, (1, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: embed(args))


if __name__ == "__main__":
    warnings.formatwarning = _format_warning
    sys.exit(main())
