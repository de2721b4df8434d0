"""Clean a training set with a sub-center ArcFace model (the paper's drop step), write a cleaned .rec/.lst.

    python subcenter_clean.py --rec ./rec/noisy --run work_dirs/noisy_subcenter \\
        --out ./rec/noisy_clean [--k 3] [--angle 75] [--device cuda] [--network r50 --num-features 512]

`--run` is the output folder of a training with ``margin = "subcenter_arcface"``: its model.pt (the
backbone) and checkpoint_gpu_<rank>.pt files (save_all_states=True; the class-centre shards, in
rank order); --network / --num-features come from the run's config.json unless given. As
insightface's sub-center `drop.py`: every image is embedded (normalised, no flip); per class, the dominant sub-centre is the one most images are nearest to (the first on a
tie); images whose cosine to it is not above cos(angle) are dropped, classes left without images
are dropped, and the remaining classes are renumbered consecutively in class order. Then train
plain ArcFace (margin "combined" or "arcface") on the cleaned folder.

Writes <out>/train.rec, train.idx (insightface layout), property, and train.lst (new index, new
label, then ``<old key>:<old label>`` in the path column, so every kept image can be traced back).
Each file is written atomically; on an error nothing is left in <out>.
"""
from __future__ import annotations

import argparse
import glob
import math
import os
import re
import sys
from typing import Sequence

import numpy as np
import torch

from utils.cli import model_parser, run_tool
from utils.errors import CheckpointError, ConfigError, DataError

DEFAULT_ANGLE = 75.0


def dominant_subcentres(embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dominant sub-centre per class (C,), each image's cosine to its class's dominant sub-centre (n,)).

    embeddings (n, D) raw; centres (C, K, D) raw; both are L2-normalised here. A class without
    images gets sub-centre 0.
    """
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    w = centres / np.maximum(np.linalg.norm(centres, axis=2, keepdims=True), 1e-12)
    own = np.einsum("nd,nkd->nk", x, w[labels])           # cosine to each sub-centre of the own class
    nearest = own.argmax(axis=1)
    num_classes, k = centres.shape[:2]
    counts = np.zeros((num_classes, k), dtype=np.int64)
    np.add.at(counts, (labels, nearest), 1)
    dominant = counts.argmax(axis=1)                       # argmax keeps the first on ties
    return dominant, own[np.arange(len(labels)), dominant[labels]]


def clean_selection(embeddings: np.ndarray, labels: np.ndarray, centres: np.ndarray,
                    angle: float = DEFAULT_ANGLE) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask (n,), new label per old class (C,), -1 for a dropped class)."""
    _, cosine = dominant_subcentres(embeddings, labels, centres)
    keep = cosine > math.cos(math.radians(angle))
    kept_classes = np.zeros(centres.shape[0], dtype=bool)
    kept_classes[labels[keep]] = True
    new_label = np.full(centres.shape[0], -1, dtype=np.int64)
    new_label[kept_classes] = np.arange(int(kept_classes.sum()))
    return keep, new_label


def load_centres(run_dir: str, k: int) -> np.ndarray:
    """(C, k, D) class centres from the checkpoint_gpu_<rank>.pt shards of a training run, rank order."""
    paths = glob.glob(os.path.join(run_dir, "checkpoint_gpu_*.pt"))
    paths = sorted((p for p in paths if re.fullmatch(r"checkpoint_gpu_\d+\.pt", os.path.basename(p))),
                   key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[-1]))
    if not paths:
        raise CheckpointError(f"no checkpoint_gpu_<rank>.pt in {run_dir}: train with save_all_states=True "
                        f"(the class centres live there, not in model.pt)")
    shards = []
    for path in paths:
        shards.append(_centre_shard(path))
    weight = torch.cat(shards).numpy()
    if weight.shape[0] % k:
        raise ConfigError(f"{run_dir}: {weight.shape[0]} class-centre rows are not a multiple of --k {k}; "
                        f"pass the k the run was trained with (margin_params k)")
    return weight.reshape(-1, k, weight.shape[1])


def _centre_shard(path: str) -> torch.Tensor:
    """The class-centre rows of one checkpoint_gpu_<rank>.pt (float32)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        return state["state_dict_softmax_fc"]["weight"].float()
    except Exception as err:  # unreadable, or not a training checkpoint: one line naming the file
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"cannot read the class centres of {path} ({reason}): restore the file, or "
                              f"train again with save_all_states=True") from None


def read_records(rec_dir: str):
    """(keys, labels, payloads) of every image record of <rec_dir>/train.rec, in key order."""
    from dataset import MXFaceDataset
    from utils import recordio

    data = MXFaceDataset(rec_dir)
    keys, labels, payloads = [], [], []
    for key in data.imgidx.tolist():
        header, payload = recordio.unpack(data.imgrec.read_idx(int(key)))
        keys.append(int(key))
        labels.append(int(recordio.first_label(header)))
        payloads.append(payload)
    return np.asarray(keys), np.asarray(labels, dtype=np.int64), payloads


def embed_payloads(model, payloads: Sequence[bytes], batch_size: int) -> np.ndarray:
    """Raw embeddings (n, D) of encoded images, without flip."""
    from face_model import embed_images
    from utils.image import decode_rgb_chw

    out = []
    for start in range(0, len(payloads), batch_size):
        images = torch.stack([decode_rgb_chw(p) for p in payloads[start:start + batch_size]])
        out.append(embed_images(model, images, batch_size))
    return np.concatenate(out)


def write_clean(out_dir: str, keys, labels, payloads, keep, new_label) -> tuple[int, int]:
    """train.rec/.idx/property and train.lst of the kept images; (images, classes) written."""
    from im2rec import ListItem, write_list, write_record
    from utils.image import decode_rgb_chw

    items, data = [], {}
    for i in np.flatnonzero(keep):
        item = ListItem(len(items), f"{keys[i]}:{labels[i]}", (float(new_label[labels[i]]),))
        items.append(item)
        data[item.index] = payloads[i]

    def load(item):
        payload = data[item.index]
        return payload, tuple(decode_rgb_chw(payload).shape[1:])

    os.makedirs(out_dir, exist_ok=True)
    result = write_record(os.path.join(out_dir, "train"), items, load, insightface_header=True,
                          desc="cleaned")
    write_list(os.path.join(out_dir, "train.lst"), items)
    return len(result.written), result.num_classes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[model_parser(weights_flag=None)])
    parser.add_argument("--rec", required=True, help="folder with train.rec/train.idx of the noisy set")
    parser.add_argument("--run", required=True, help="training output folder: model.pt + checkpoint_gpu_*.pt")
    parser.add_argument("--embedding-size", dest="num_features", type=int, help=argparse.SUPPRESS)  # = --num-features
    parser.add_argument("--k", type=int, default=3, help="sub-centres per class of that run")
    parser.add_argument("--angle", type=float, default=DEFAULT_ANGLE, help="drop images beyond this angle (degrees)")
    parser.add_argument("--out", required=True, help="folder for the cleaned train.rec/.idx/.lst (must not hold one)")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    if not 0.0 < args.angle < 180.0:
        raise ConfigError(f"--angle must be in (0, 180) degrees, got {args.angle}")
    if os.path.exists(os.path.join(args.out, "train.rec")):
        raise ConfigError(f"{args.out} already holds a train.rec: choose an empty --out folder")


def run(args: argparse.Namespace) -> str:
    """Clean and write; returns the summary line."""
    from face_model import load_model

    _check_args(args)
    centres = load_centres(args.run, args.k)
    model = load_model(args.run, network=args.network, num_features=args.num_features, device=args.device,
                       onnx_flag=None).backbone
    keys, labels, payloads = read_records(args.rec)
    if labels.size and labels.max() >= centres.shape[0]:
        raise DataError(f"{args.rec} has label {labels.max()} but {args.run} holds {centres.shape[0]} classes: "
                        f"pass the data set the run was trained on")
    embeddings = embed_payloads(model, payloads, args.batch_size)
    keep, new_label = clean_selection(embeddings, labels, centres, args.angle)
    images, classes = write_clean(args.out, keys, labels, payloads, keep, new_label)
    return (f"kept {images} of {len(labels)} images and {classes} of {len(np.unique(labels))} classes "
            f"(angle {args.angle:g} degrees, k {args.k}); wrote {os.path.join(args.out, 'train.rec')}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    created = not os.path.exists(args.out)

    def clean() -> None:
        try:
            print(run(args))
        except BaseException:
            if created and os.path.isdir(args.out) and not os.listdir(args.out):
                os.rmdir(args.out)
            raise

    return run_tool(clean)


if __name__ == "__main__":
    sys.exit(main())
