"""Identity leakage between a training set and the verification sets: ``python -m eval.leakage``.

    python -m eval.leakage --model work_dirs/dcface/model.pt --network LResNet50E_IR \\
        --train rec/dcface --data-dir rec/dcface [--targets lfw,cfp_fp,agedb_30,cplfw,calfw]

Embeds ``--per-class`` images of every training identity and every test image with the
verification protocol's flip-fused, normalised embeddings; one centroid (the mean embedding) per
training identity; for every test image the most similar centroid (blocked matrix products,
bounded memory). The dot product with the mean embedding is the test image's mean cosine to that
identity's images, on the same scale as a pair cosine (the cosine to the *normalised* centroid
is higher for every identity, look-alikes included, and would need its own calibration). A
test image *matches* when it exceeds the threshold (default: calibrated per target as the cosine
only 1 in 10,000 of the target's own different-identity pairs exceed); a pair is *touched* when
either image matches. Per target: images matched, distinct training identities
matched, pairs touched, and the accuracy (same 10-fold protocol) on all pairs and on the
untouched pairs only. Writes ``leakage.json``, ``leakage.md`` and ``leakage.png`` (the strongest
matches: test image beside the nearest training images, with the cosines) to ``--out``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from eval.dataset_stats import (SATURATED_NOTE, TrainingSet, calibrated_threshold, calibration_method, class_sums,
                                contact_sheet, embed_samples, nearest, pair_cosines)
from utils.cli import model_parser, run_tool
from utils.errors import ConfigError, DataError

DEFAULT_TARGETS = ("lfw", "cfp_fp", "agedb_30", "cplfw", "calfw")
SHEET_ROWS = 12                     # strongest matches shown in the contact sheet
SHEET_NEIGHBOURS = 4                # training images beside each test image
MIN_FOLD_PAIRS = 10                 # fewer untouched pairs than this: no accuracy (10 folds)


def check_threshold(value: float | None) -> None:
    """A cosine threshold must lie in [-1, 1]."""
    if value is not None and not (-1.0 <= value <= 1.0 and math.isfinite(value)):
        raise ConfigError(f"--threshold {value} is not a cosine: use a value in [-1, 1], or leave it out "
                          "to calibrate it per target")


def find_bins(data_dir: str, targets: Sequence[str]) -> dict[str, Path]:
    """DIR/<target>.bin for every target; a missing one is an error (the caller asked for it)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {data_dir}: not a directory")
    missing = [t for t in targets if not (root / f"{t}.bin").is_file()]
    if missing:
        have = sorted(p.stem for p in root.glob("*.bin"))
        raise DataError(f"--data-dir {data_dir}: no {', '.join(f'{t}.bin' for t in missing)}; pass --targets "
                        f"with the sets it holds ({', '.join(have) or 'none'})")
    return {t: root / f"{t}.bin" for t in targets}


def sample_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``per_class`` samples of every label (all of a smaller class; 0 = all)."""
    if per_class <= 0:
        return np.arange(len(labels))
    order = np.lexsort((np.random.default_rng(seed).random(len(labels)), labels))   # by label, then at random
    ordered = labels[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    rank = np.arange(len(labels)) - np.repeat(starts, np.diff(np.r_[starts, len(labels)]))
    return np.sort(order[rank < per_class])


@dataclass
class Gallery:
    """The training side: sampled images, their embeddings and labels, the mean embedding of each identity."""
    data: TrainingSet
    indices: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray
    identities: np.ndarray
    centroids: np.ndarray           # (K, D) mean embeddings (not normalised)

    def neighbours(self, query: np.ndarray, identity_row: int, k: int) -> list[tuple[int, float]]:
        """The k sampled images of one identity most similar to ``query``: (sample index, cosine)."""
        members = np.flatnonzero(self.labels == self.identities[identity_row])
        sims = self.embeddings[members] @ query
        best = np.argsort(-sims)[:k]
        return [(int(self.indices[members[b]]), float(sims[b])) for b in best]


def build_gallery(data: TrainingSet, backbone, per_class: int, batch_size: int, workers: int,
                  progress: bool) -> Gallery:
    """Embed the sampled training images and average them per identity."""
    labels = data.labels()
    indices = sample_per_class(labels, per_class)
    embeddings = embed_samples(data, indices, backbone, batch_size, workers, progress)
    identities, sums, counts = class_sums(embeddings, labels[indices])
    return Gallery(data, indices, embeddings, labels[indices], identities,
                   (sums / counts[:, None]).astype(np.float32))


def _accuracy(flip: np.ndarray, issame: np.ndarray, keep: np.ndarray, nfolds: int) -> tuple[float, float] | None:
    """Mean and std of the fold accuracies on the kept pairs (None when too few)."""
    from eval.verification import evaluate_folds
    if keep.sum() < max(nfolds, MIN_FOLD_PAIRS):
        return None
    rows = np.repeat(np.flatnonzero(keep) * 2, 2) + np.tile([0, 1], int(keep.sum()))
    accuracy = evaluate_folds(flip[rows], issame[keep], nrof_folds=nfolds).roc.accuracy
    return float(np.mean(accuracy)), float(np.std(accuracy))


def match_report(flip: np.ndarray, issame: np.ndarray, means: np.ndarray, names: Sequence[str],
                 threshold: float | None, nfolds: int = 10) -> tuple[dict, np.ndarray, np.ndarray]:
    """Leakage numbers of one target from its flip-fused embeddings (2P rows, pairs adjacent).

    ``means``: the mean embedding of each training identity, ``names`` their names. Returns the
    JSON record, and each test image's best score and identity row.
    """
    impostors = pair_cosines(flip)[~issame]
    used = calibrated_threshold(impostors) if threshold is None else threshold
    sims, rows = nearest(flip, means)
    # float32 products of unit vectors exceed 1 by rounding; a cosine never does: a threshold of 1 matches nothing
    sims = np.minimum(sims, 1.0)
    matched = sims > used
    touched = matched[0::2] | matched[1::2]
    acc_all = _accuracy(flip, issame, np.ones_like(touched), nfolds)
    acc_clean = _accuracy(flip, issame, ~touched, nfolds)
    order = np.argsort(-sims, kind="stable")        # strongest first, matched or not (for a person to judge)
    record = {
        "pairs": int(issame.size), "images": int(flip.shape[0]),
        "threshold": float(used), "impostor_pairs": int(impostors.size),
        "threshold_source": f"calibrated, {calibration_method(impostors.size)}" if threshold is None else "given",
        "images_matched": int(matched.sum()), "identities_matched": int(np.unique(rows[matched]).size),
        "identities": [names[r] for r in np.unique(rows[matched])],
        "pairs_touched": int(touched.sum()), "pairs_touched_pct": float(100.0 * touched.mean()),
        "acc_all": acc_all and acc_all[0], "std_all": acc_all and acc_all[1],
        "untouched_pairs": int((~touched).sum()),
        "acc_untouched": acc_clean and acc_clean[0], "std_untouched": acc_clean and acc_clean[1],
        "strongest": [{"image": int(i), "pair": int(i // 2), "score": float(sims[i]), "identity": names[rows[i]],
                       "matched": bool(matched[i])} for i in order[:200]],
    }
    return record, sims, rows


def check_target(path: Path, gallery: Gallery, backbone, threshold: float | None, batch_size: int,
                 nfolds: int, progress: bool) -> tuple[dict, list]:
    """Leakage numbers of one target .bin, and its strongest matches for the contact sheet."""
    from eval.verification import embed_data_set, flip_embeddings, load_bin
    data_set = load_bin(path, (112, 112))
    flip = flip_embeddings(embed_data_set(data_set, backbone, batch_size, progress)).astype(np.float32)
    names = [gallery.data.label_name(int(x)) for x in gallery.identities]
    record, sims, rows = match_report(flip, np.asarray(data_set[1], bool), gallery.centroids, names, threshold,
                                      nfolds)
    strongest = [m["image"] for m in record["strongest"][:SHEET_ROWS]]
    sheet = [(float(sims[i]), data_set[0][0][i].numpy(), flip[i], int(rows[i])) for i in strongest]
    return {"file": str(path), **record}, sheet


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}"


def markdown(results: dict[str, dict]) -> str:
    """One row per target."""
    lines = ["| Target | Threshold | Images matched | Identities matched | Pairs touched | Acc. all pairs | "
             "Acc. untouched pairs |", "|---|---|---|---|---|---|---|"]
    for target, r in results.items():
        lines.append(f"| {target} | {r['threshold']:.3f} ({r['threshold_source']}) | {r['images_matched']} / "
                     f"{r['images']} | {r['identities_matched']} | {r['pairs_touched']} / {r['pairs']} "
                     f"({r['pairs_touched_pct']:.2f}%) | {_pct(r['acc_all'])} | {_pct(r['acc_untouched'])} |")
    return "\n".join(lines)


def write_sheet(cases: list, gallery: Gallery, threshold_of: dict[str, float], path: Path) -> Path:
    """Contact sheet of the strongest matches over all targets (matched or not: for a person to judge)."""
    rows = []
    for sim, target, image, query, row in sorted(cases, key=lambda c: -c[0])[:SHEET_ROWS]:
        identity = gallery.data.label_name(int(gallery.identities[row]))
        images = [(image, f"{target} test image")]
        images += [(gallery.data.image(i), f"id {identity}: {cos:.3f}")
                   for i, cos in gallery.neighbours(query, row, SHEET_NEIGHBOURS)]
        rows.append((f"score {sim:.3f}" + (" (match)" if sim > threshold_of[target] else ""), images))
    return contact_sheet(rows, path, "strongest matches (score: mean cosine to the identity's images): test image | "
                                     "nearest training images of that identity (cosine to the test image)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.leakage", description=__doc__.splitlines()[0],
                                     parents=[model_parser()])
    parser.add_argument("--train", required=True, help="training data: train.rec/train.idx folder or image folder")
    parser.add_argument("--data-dir", required=True, help="folder with the <target>.bin files")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated target names")
    parser.add_argument("--per-class", type=int, default=10,
                        help="training images embedded per identity (default 10; 0 = all)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="match cosine (default: calibrated per target at 1 in 10,000 different-identity pairs)")
    parser.add_argument("--out", help="output folder (default work_dirs/leakage/<training folder name>)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="decode processes for the training images")
    parser.add_argument("--nfolds", type=int, default=10)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Check every input, then embed, search and write the outputs; returns the JSON payload."""
    from eval.report import write_json, write_text
    check_threshold(args.threshold)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bins = find_bins(args.data_dir, targets)
    data = TrainingSet(args.train)
    from face_model import load_model, reuse_freed_cpu_memory
    loaded = load_model(args.model, args.onnx, args.network, args.num_features, args.device)
    backbone, args.network = loaded.backbone, loaded.network
    reuse_freed_cpu_memory(backbone)         # the embedding passes' activations: reused, not page-faulted
    progress = not args.no_progress
    gallery = build_gallery(data, backbone, args.per_class, args.batch_size, args.workers, progress)
    results, cases = {}, []
    for target, path in bins.items():
        results[target], sheet = check_target(path, gallery, backbone, args.threshold, args.batch_size,
                                              args.nfolds, progress)
        cases += [(sim, target, image, query, row) for sim, image, query, row in sheet]
        r = results[target]
        print(f"[{target}] threshold {r['threshold']:.4f} ({r['threshold_source']} of {r['impostor_pairs']} "
              f"different-identity pairs): {r['images_matched']} images match {r['identities_matched']} "
              f"training identities; {r['pairs_touched']} of {r['pairs']} pairs touched")
        if r["threshold"] >= 1.0:
            print(f"[{target}] {SATURATED_NOTE}")
    out = Path(args.out or Path("work_dirs") / "leakage" / Path(args.train).resolve().name)
    payload = {"kind": "leakage", "train": str(args.train), "model": args.model or args.onnx,
               "network": args.network, "per_class": args.per_class, "training_identities": len(gallery.identities),
               "training_images_embedded": len(gallery.indices), "targets": results}
    table = markdown(results)
    write_json(out / "leakage.json", payload)
    write_text(out / "leakage.md", table + "\n")
    write_sheet(cases, gallery, {t: r["threshold"] for t, r in results.items()}, out / "leakage.png")
    print(table)
    print(f"wrote {out / 'leakage.json'}, {out / 'leakage.md'}, {out / 'leakage.png'}")
    return payload


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
