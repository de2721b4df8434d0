"""Generate the demo's synthetic face-identity data: train.rec/.idx and a held-out verification .bin.

Every identity is a face-like drawing (face shape, skin colour, eye/brow/mouth/nose geometry and a few
identity-specific marks); every image of it changes pose, scale, lighting, colour cast, background,
occlusion and noise. Verification pairs use only identities that are never trained on.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import cv2
import numpy as np

from utils import recordio
from utils.image import FACE_SIZE

SIZE = FACE_SIZE


@dataclass
class Identity:
    skin: np.ndarray       # RGB 0..255
    face_axes: tuple[float, float]
    eye_dx: float
    eye_y: float
    eye_size: float
    mouth_y: float
    mouth_w: float
    nose_len: float
    marks: np.ndarray      # (K, 6): x, y, radius, r, g, b


def random_identity(rng: np.random.Generator) -> Identity:
    return Identity(
        skin=rng.uniform(60, 230, 3),
        face_axes=(rng.uniform(30, 42), rng.uniform(38, 50)),
        eye_dx=rng.uniform(10, 22), eye_y=rng.uniform(-16, -4), eye_size=rng.uniform(3, 7),
        mouth_y=rng.uniform(14, 28), mouth_w=rng.uniform(8, 20), nose_len=rng.uniform(4, 14),
        marks=np.column_stack([rng.uniform(-24, 24, 4), rng.uniform(-30, 30, 4), rng.uniform(3, 8, 4),
                               rng.uniform(0, 255, (4, 3))]),
    )


def _blob(img: np.ndarray, yy: np.ndarray, xx: np.ndarray, cx: float, cy: float, ax: float, ay: float,
          color: np.ndarray, sharp: float = 4.0) -> None:
    """Paint a soft ellipse in place."""
    d = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
    alpha = 1.0 / (1.0 + np.exp(np.clip(sharp * (d - 1.0), -30.0, 30.0)))
    img += alpha[..., None] * (color - img)


def render(ident: Identity, rng: np.random.Generator) -> np.ndarray:
    """One RGB uint8 image of ``ident`` under random nuisance factors."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    grad = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    img = cv2.resize(grad, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    scale = rng.uniform(0.88, 1.12)
    angle = rng.uniform(-0.25, 0.25)
    cx, cy = SIZE / 2 + rng.uniform(-7, 7), SIZE / 2 + rng.uniform(-7, 7)
    cos, sin = np.cos(angle), np.sin(angle)

    def place(dx: float, dy: float) -> tuple[float, float]:
        return cx + scale * (cos * dx - sin * dy), cy + scale * (sin * dx + cos * dy)

    _blob(img, yy, xx, cx, cy, ident.face_axes[0] * scale, ident.face_axes[1] * scale, ident.skin)
    for mx, my, mr, *color in ident.marks:
        px, py = place(mx, my)
        _blob(img, yy, xx, px, py, mr * scale, mr * scale, np.array(color, np.float32))
    dark = np.array([30, 25, 20], np.float32)
    for side in (-1, 1):
        ex, ey = place(side * ident.eye_dx, ident.eye_y)
        _blob(img, yy, xx, ex, ey, ident.eye_size * scale, ident.eye_size * 0.6 * scale, dark)
        bx, by = place(side * ident.eye_dx, ident.eye_y - 2.2 * ident.eye_size)
        _blob(img, yy, xx, bx, by, ident.eye_size * 1.4 * scale, 1.5 * scale, dark)
    nx, ny = place(0, ident.eye_y / 2 + ident.nose_len / 2)
    _blob(img, yy, xx, nx, ny, 2.5 * scale, ident.nose_len * scale, ident.skin * 0.7)
    mx_, my_ = place(0, ident.mouth_y)
    _blob(img, yy, xx, mx_, my_, ident.mouth_w * scale, 3 * scale, np.array([150, 40, 50], np.float32))
    if rng.random() < 0.4:  # occluder
        _blob(img, yy, xx, rng.uniform(10, 100), rng.uniform(10, 100), rng.uniform(8, 20), rng.uniform(8, 20),
              rng.uniform(0, 255, 3).astype(np.float32))
    img = img * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30, 3)
    img += rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def write_train_rec(root: str, identities: list[Identity], images_per_id: int, rng: np.random.Generator) -> int:
    """Write train.rec/train.idx (MXNet layout, key = image index, label = class); returns the image count."""
    tmp_rec, tmp_idx = os.path.join(root, "train.rec.tmp"), os.path.join(root, "train.idx.tmp")
    writer = recordio.MXIndexedRecordIO(tmp_idx, tmp_rec, "w")
    key = 0
    for label, ident in enumerate(identities):
        for _ in range(images_per_id):
            header = recordio.IRHeader(0, float(label), key, 0)
            writer.write_idx(key, recordio.pack(header, _encode_jpeg(render(ident, rng))))
            key += 1
    writer.close()
    os.replace(tmp_rec, os.path.join(root, "train.rec"))
    os.replace(tmp_idx, os.path.join(root, "train.idx"))
    with open(os.path.join(root, "property"), "w") as f:
        f.write(f"{len(identities)},{SIZE},{SIZE}")
    return key


def write_verification_bin(path: str, identities: list[Identity], num_pairs: int,
                           rng: np.random.Generator) -> list[int]:
    """A .bin in the insightface format: (list of 2P JPEG bytes, list of P issame booleans); returns the
    index in ``identities`` of every image."""
    bins, issame, who = [], [], []
    for i in range(num_pairs):
        same = i % 2 == 0
        a = int(rng.integers(len(identities)))
        b = a
        while not same and b == a:
            b = int(rng.integers(len(identities)))
        bins += [_encode_jpeg(render(identities[a], rng)), _encode_jpeg(render(identities[b], rng))]
        issame.append(same)
        who += [a, b]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return who


def make_demo_dataset(root: str, num_ids: int = 200, images_per_id: int = 30, num_val_ids: int = 100,
                      num_pairs: int = 600, seed: int = 0, val_name: str = "demo_val") -> dict[str, int]:
    """Create the whole demo data folder (skipped when it is already complete)."""
    os.makedirs(root, exist_ok=True)
    done = all(os.path.exists(os.path.join(root, n)) for n in ("train.rec", "train.idx", f"{val_name}.bin"))
    if not done:
        rng = np.random.default_rng(seed)
        train_ids = [random_identity(rng) for _ in range(num_ids)]
        val_ids = [random_identity(rng) for _ in range(num_val_ids)]
        write_train_rec(root, train_ids, images_per_id, rng)
        write_verification_bin(os.path.join(root, f"{val_name}.bin"), val_ids, num_pairs, rng)
    return {"num_classes": num_ids, "num_image": num_ids * images_per_id}


def ensure_demo_data(root: str, is_main: bool, distributed: bool) -> None:
    """``demo_data = True``: rank 0 generates the demo data in ``root`` when missing; the others wait."""
    if is_main:
        make_demo_dataset(root)
    if distributed:
        import torch.distributed as dist
        dist.barrier()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="generate the demo's synthetic identity data set")
    parser.add_argument("root")
    parser.add_argument("--num-ids", type=int, default=200)
    parser.add_argument("--images-per-id", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(make_demo_dataset(a.root, a.num_ids, a.images_per_id, seed=a.seed))
