"""The original arcface_torch per-sample data path, timed on one core (runs in the MXNet side env).

Per sample, as upstream ``MXFaceDataset.__getitem__`` + the DataLoader's collate:
``mx.recordio`` read_idx + unpack, label[0] for arrays, ``mx.image.imdecode(img).asnumpy()``,
then torchvision's ToPILImage -> RandomHorizontalFlip -> ToTensor -> Normalize(0.5, 0.5)
mirrored op for op with PIL + numpy (this environment has no torch): ``Image.fromarray``,
``transpose(FLIP_LEFT_RIGHT)`` with p=0.5, ``np.array(pic, copy=True)`` -> CHW contiguous ->
float32 / 255, a copy (Normalize clones) minus 0.5 divided by 0.5; batches are stacked.
Without Pillow the PIL steps become numpy copies and the JSON says ``"pil": false``.

With --decode-only only the mxnet half runs (read, unpack, label, imdecode().asnumpy()); bench_data.py
adds the real torchvision half, timed in the main environment, to it.
Usage: mx_baseline_loader.py REC IDX [--batch-size 128] [--epochs 2] [--cpu 0] [--decode-only];
prints one JSON line.
"""
import argparse
import json
import numbers
import os
import random
import time

import mxnet as mx
import numpy as np

try:
    from PIL import Image
except ImportError:
    Image = None


def image_keys(rec):
    header, _ = mx.recordio.unpack(rec.read_idx(0))
    if header.flag > 0:
        return list(range(1, int(header.label[0])))
    return list(rec.keys)


def sample(rec, key, decode_only=False):
    header, img = mx.recordio.unpack(rec.read_idx(key))
    label = header.label
    if not isinstance(label, numbers.Number):
        label = label[0]
    label = int(label)
    array = mx.image.imdecode(img).asnumpy()
    if decode_only:
        return array, label
    flip = random.random() < 0.5
    if Image is not None:
        pic = Image.fromarray(array, mode="RGB")
        if flip:
            pic = pic.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.array(pic, np.uint8, copy=True)
    elif flip:
        array = np.ascontiguousarray(array[:, ::-1])
    tensor = np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32) / 255.0
    tensor = tensor.copy()
    tensor -= 0.5
    tensor /= 0.5
    return tensor, label


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rec")
    parser.add_argument("idx")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (one core)")
    parser.add_argument("--decode-only", action="store_true",
                        help="time only the mxnet half: read_idx + unpack + label + imdecode().asnumpy()")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    rec = mx.recordio.MXIndexedRecordIO(args.idx, args.rec, "r")
    keys = image_keys(rec)
    rng = np.random.default_rng(2048)
    sample(rec, keys[0])                                  # warm-up: mxnet's first decode
    images = 0
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = rng.permutation(len(keys))
        for b in range(len(order) // args.batch_size):
            batch = [sample(rec, keys[i], args.decode_only)
                     for i in order[b * args.batch_size:(b + 1) * args.batch_size]]
            if not args.decode_only:
                np.stack([t for t, _ in batch])
                np.asarray([label for _, label in batch], dtype=np.int64)
            images += len(batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"images": images, "seconds": seconds, "img_per_s": images / seconds,
                      "pil": Image is not None, "mxnet": mx.__version__}))


if __name__ == "__main__":
    main()
