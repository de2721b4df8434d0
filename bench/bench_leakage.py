"""Benchmark: does ``python -m eval.leakage`` find held-out test identities injected into a training set?

    python bench/bench_leakage.py                  # the README demo's data, 2 and 8 epochs (~15 min on 2 cores)
    python bench/bench_leakage.py --epochs 8       # one training length
    python bench/bench_leakage.py --quick          # smoke run (tiny data, 1 epoch; results file untouched)

The issue's leakage experiment at a training length a CI run cannot afford: the README demo's data
(200 training identities x 30 demo faces, demo_val.bin: 600 pairs of 100 held-out identities) with
8 of the held-out identities injected as new classes (zz_leak0-3: 3 exact copies of their test
images and fresh renders; zz_leak4-7: fresh renders only), the demo model (configs/demo.py) trained
on that injected set for each ``--epochs``, then eval.leakage with its default, calibrated
threshold on the injected set and on the clean one (the 200 identities alone).

Measured per training length: the model's demo_val accuracy and the spread of its
different-identity cosines (which sets the calibrated threshold), the injected identities found
(recall), other identities matched (false), pairs touched on the clean set; and, to show where a
threshold could lie at all, the best recall any threshold reaches with at most 2 false identities.
The baseline in the same run is the clean set: same model, same test set, nothing injected.
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import header_lines, markdown_table, write_section  # noqa: E402
from utils.demo_data import _encode_jpeg, random_identity, render, write_verification_bin  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
HEADING = "Leakage check with longer-trained demo models (bench_leakage.py)"
TARGET = "demo_val"
MAX_FALSE = 2                       # the bound on non-injected identities matched


@dataclass
class Sizes:
    train_ids: int
    images: int
    val_ids: int
    pairs: int
    injected: int
    copied: int                     # of the injected identities, how many also get exact copies of test images
    copies: int                     # exact copies per such identity


FULL = Sizes(200, 30, 100, 600, 8, 4, 3)
QUICK = Sizes(12, 6, 10, 40, 4, 2, 1)


def _write_class(folder: Path, images: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for j, data in enumerate(images):
        (folder / f"{j:03d}.jpg").write_bytes(data)


def build_world(root: Path, sizes: Sizes, seed: int = 0) -> np.ndarray:
    """root/clean and root/injected image folders (each with demo_val.bin beside the classes, as the training
    reads it); returns the held-out identity index of every test image."""
    rng = np.random.default_rng(seed)
    train_ids = [random_identity(rng) for _ in range(sizes.train_ids)]
    val_ids = [random_identity(rng) for _ in range(sizes.val_ids)]
    clean = {f"id{i:03d}": [_encode_jpeg(render(ident, rng)) for _ in range(sizes.images)]
             for i, ident in enumerate(train_ids)}
    bin_path = root / f"{TARGET}.bin"
    root.mkdir(parents=True, exist_ok=True)
    who = np.asarray(write_verification_bin(str(bin_path), val_ids, sizes.pairs, rng))
    with open(bin_path, "rb") as f:
        test_images, _ = pickle.load(f)
    fresh = np.random.default_rng(seed + 1)
    for variant in ("clean", "injected"):
        for name, images in clean.items():
            _write_class(root / variant / name, images)
        (root / variant / bin_path.name).write_bytes(bin_path.read_bytes())
    for k in range(sizes.injected):
        copies = [bytes(test_images[i]) for i in np.flatnonzero(who == k)[:sizes.copies]] if k < sizes.copied else []
        renders = [_encode_jpeg(render(val_ids[k], fresh)) for _ in range(sizes.images - len(copies))]
        _write_class(root / "injected" / f"zz_leak{k}", copies + renders)
    return who


def train(root: Path, epochs: int, quick: bool) -> Path:
    """The demo recipe on the injected set (no verification during training: eval.leakage reports the
    accuracy); returns its model.pt."""
    out = root / f"run_{epochs}ep"
    sets = [f"rec={root / 'injected'}", f"output={out}", f"num_epoch={epochs}", "save_all_states=False",
            "demo_data=False", "verbose=1000000"]
    if quick:
        sets += ["batch_size=16", "num_workers=0"]
    proc = subprocess.run([sys.executable, "train_v2.py", "configs/demo.py", "--set", *sets], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out / "model.pt"


def leakage(model: Path, train_dir: Path, out: Path, extra: list[str]) -> dict:
    """python -m eval.leakage on one training folder; its JSON record of the target."""
    cmd = [sys.executable, "-m", "eval.leakage", "--model", str(model), "--network", "mbf_tiny", "--num-features",
           "128", "--train", str(train_dir), "--data-dir", str(train_dir), "--targets", TARGET, "--no-progress",
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"eval.leakage failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / "leakage.json").read_text())["targets"][TARGET]


def best_threshold(record: dict, injected: set[str]) -> tuple[float, int, int]:
    """Over the reported strongest matches (200): the threshold with the most injected identities found while at
    most MAX_FALSE others match (threshold, found, false)."""
    scores = sorted({m["score"] for m in record["strongest"]}, reverse=True)
    best = (1.0, 0, 0)
    for t in scores:
        ids = {m["identity"] for m in record["strongest"] if m["score"] >= t}
        found, false = len(ids & injected), len(ids - injected)
        if false > MAX_FALSE:
            break
        if found > best[1]:
            best = (t, found, false)
    return best


def measure(root: Path, sizes: Sizes, epochs: int, quick: bool) -> list:
    start = time.perf_counter()
    model = train(root, epochs, quick)
    trained = time.perf_counter() - start
    extra = ["--workers", "0"] if quick else []
    injected = {f"zz_leak{k}" for k in range(sizes.injected)}
    inj = leakage(model, root / "injected", root / f"leak_{epochs}ep_injected", extra)
    clean = leakage(model, root / "clean", root / f"leak_{epochs}ep_clean", extra)
    found = len(injected & set(inj["identities"]))
    false = len(set(inj["identities"]) - injected)
    t, best_found, best_false = best_threshold(inj, injected)
    return [epochs, f"{trained:.0f}", f"{100 * inj['acc_all']:.2f}", f"{inj['threshold']:.3f}",
            f"{found} / {sizes.injected} ({found / sizes.injected:.2f})", false,
            f"{clean['pairs_touched']} / {clean['pairs']}",
            f"{best_found} / {sizes.injected} at {t:.3f} ({best_false} false)"]


HEADER = ["epochs", "training s", f"{TARGET} acc. %", "calibrated threshold", "injected found (recall)",
          "other identities matched", "clean set: pairs touched", f"best any threshold reaches (<= {MAX_FALSE} false)"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="2,8", help="comma-separated training lengths (default 2,8)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, results file untouched")
    parser.add_argument("--sizes", help="TRAIN_IDS,IMAGES,HELD_OUT_IDS,PAIRS instead of the README demo's "
                        "200,30,100,600 (8 held-out identities are injected)")
    parser.add_argument("--work", help="folder for the data and runs (default: a temporary one)")
    parser.add_argument("--out", default=str(RESULTS), help="results file (default bench/RESULTS.md)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.sizes:
        train_ids, images, val_ids, pairs = (int(x) for x in args.sizes.split(","))
        sizes = Sizes(train_ids, images, val_ids, pairs, FULL.injected, FULL.copied, FULL.copies)
    epochs = [1] if args.quick else [int(e) for e in args.epochs.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        build_world(root, sizes)
        rows = [measure(root, sizes, e, args.quick) for e in epochs]
    table = markdown_table(HEADER, rows)
    print(table)
    if not args.quick:
        body = header_lines() + (f"- data: {sizes.train_ids} identities x {sizes.images} demo faces + {sizes.injected} "
                                 f"held-out identities injected; {TARGET}.bin: {sizes.pairs} pairs of "
                                 f"{sizes.val_ids} held-out identities\n\n") + table
        write_section(args.out, HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
