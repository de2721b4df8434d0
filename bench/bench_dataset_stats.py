"""Benchmark: the non-model work of eval.dataset_stats / eval.leakage, per 100 K images.

    python bench/bench_dataset_stats.py            # 100 K images / 2 K identities, 10 K centroids; appends to RESULTS.md
    python bench/bench_dataset_stats.py --quick    # smoke run (small sizes, results file untouched)
    python bench/bench_dataset_stats.py --many 200000,2000000   # also 2 M centroids (3.8 GiB of keys, ~1 min)

Parts, each against a baseline timed in the same run:
- the pass over a RecordIO (read, content hash, image header) vs reading the records alone;
- the per-identity statistics (consistency, diversity, separability, leave-one-out cosines) on
  random unit embeddings vs a per-identity loop with explicit pairwise matrices;
- the blocked nearest-centroid search vs one full similarity matrix (same answers), with the
  peak memory of each (tracemalloc), and searches of 2,000 test images against many more centroids
  than fit in one block (``--many``; each checked against one full matrix for 50 of the images), with
  the search's traced peak and the process's peak resident set (the keys are made in float32 chunks).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from common import header_lines, markdown_table, write_section  # noqa: E402
from eval import dataset_stats as S  # noqa: E402
from utils import recordio  # noqa: E402
from utils.demo_data import _encode_jpeg, random_identity, render  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
HEADING = "Dataset statistics and leakage search, non-model work (bench_dataset_stats.py)"


def write_rec(root: Path, images: int, identities: int, distinct: int = 400) -> None:
    """train.rec/.idx of demo faces: ``distinct`` renders, each copy made unique by a JPEG comment."""
    rng = np.random.default_rng(0)
    ids = [random_identity(rng) for _ in range(8)]
    base = [_encode_jpeg(render(ids[i % 8], rng)) for i in range(distinct)]
    writer = recordio.MXIndexedRecordIO(str(root / "train.idx"), str(root / "train.rec"), "w")
    for key in range(images):
        comment = key.to_bytes(8, "little")
        jpeg = base[key % distinct]
        payload = jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]
        label = key * identities // images
        writer.write_idx(key, recordio.pack(recordio.IRHeader(0, float(label), key, 0), payload))
    writer.close()


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def peak_memory(fn, *args) -> tuple[float, float]:
    """(seconds, peak traced MiB) of one call."""
    tracemalloc.start()
    try:
        seconds, _ = timed(fn, *args)
        return seconds, tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


def bench_scan(images: int, identities: int) -> list[list]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rec(root, images, identities)
        data = S.TrainingSet(str(root))
        raw_s, _ = timed(lambda: [data._records.imgrec.read_idx(int(k)) for k in data.keys])
        scan_s, scan = timed(S.scan, data)
        stats_s, stats = timed(S.basic_stats, data, scan)
        assert stats["images"] == images and stats["duplicates"]["groups"] == 0
    per = 100_000 / images
    return [["read the records (baseline)", f"{raw_s * per:.2f}", "1.00"],
            ["read + hash + image header (`scan`)", f"{scan_s * per:.2f}", f"{scan_s / raw_s:.2f}"],
            ["counts, duplicates, anomalies (`basic_stats`)", f"{stats_s * per:.3f}", f"{stats_s / raw_s:.3f}"]]


def random_embedded(images: int, identities: int, dim: int = 512) -> S.Embedded:
    rng = np.random.default_rng(1)
    labels = np.sort(rng.integers(0, identities, images))
    centres = S.unit_rows(rng.normal(size=(identities, dim)))
    emb = S.unit_rows(centres[labels] + 0.08 * rng.normal(size=(images, dim)).astype(np.float32))
    ids, sums, counts = S.class_sums(emb, labels)
    return S.Embedded(np.arange(images), emb, np.searchsorted(ids, labels), ids, sums, counts)


def loop_measures(e: S.Embedded) -> None:
    """Baseline: per identity, the explicit pairwise matrix and centroid, then a full centroid matrix."""
    centroids = []
    for row in range(len(e.identities)):
        x = e.embeddings[e.rows == row]
        c = x.mean(0)
        c /= np.linalg.norm(c)
        _ = (x @ c).mean(), 1 - (x @ x.T)[~np.eye(len(x), dtype=bool)].mean()
        _ = [x[i] @ (x.sum(0) - x[i]) for i in range(len(x))]
        centroids.append(c)
    full = np.asarray(centroids) @ np.asarray(centroids).T
    np.fill_diagonal(full, -np.inf)
    full.argmax(1)


def vector_measures(e: S.Embedded) -> None:
    S.identity_measures(e)
    S.own_mean_cosines(e)


def bench_measures(images: int, identities: int) -> list[list]:
    e = random_embedded(images, identities)
    loop_s, _ = timed(loop_measures, e)
    vec_s, _ = timed(vector_measures, e)
    per = 100_000 / images
    return [["per-identity loop with pairwise matrices (baseline)", f"{loop_s * per:.2f}", "1.00"],
            ["`identity_measures` + `own_mean_cosines`", f"{vec_s * per:.2f}", f"{loop_s / vec_s:.1f}x faster"]]


def random_unit_rows(n: int, dim: int, rng: np.random.Generator, chunk: int = 1 << 16) -> np.ndarray:
    """(n, dim) float32 random unit rows, made chunk by chunk (2 M x 512 keys: 4 GB, no float64 copy)."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def peak_rss_mib() -> float:
    """The process's peak resident set so far (ru_maxrss, KiB on Linux)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_many(queries: np.ndarray, big: int, rng: np.random.Generator, check: int = 50) -> list:
    """One row: the queries against ``big`` random centroids (time, traced peak of the search, process peak
    RSS), the first ``check`` queries' answers against one full similarity matrix of theirs."""
    many = random_unit_rows(big, queries.shape[1], rng)
    many_s, many_mb = peak_memory(S.nearest, queries, many)
    sims, idx = S.nearest(queries[:check], many)
    full = queries[:check] @ many.T
    assert np.array_equal(idx, full.argmax(1)) and np.allclose(sims, full.max(1), atol=1e-6)
    del full
    rss = peak_rss_mib()
    keys_mb = many.nbytes / 2 ** 20
    del many
    return [f"{len(queries):,} test images x {big:,} centroids, `nearest`", f"{many_s:.2f}",
            f"{many_mb:,.0f} (the keys: {keys_mb:,.0f}; process peak RSS {rss:,.0f})", "-"]


def bench_nearest(identities: int, many: list[int]) -> list[list]:
    rng = np.random.default_rng(2)
    cents = S.unit_rows(rng.normal(size=(identities, 512)))
    exclude = np.arange(identities)

    def full():
        sims = cents @ cents.T
        sims[exclude, exclude] = -np.inf
        return sims.argmax(1)

    full_s, full_mb = peak_memory(full)
    block_s, block_mb = peak_memory(S.nearest, cents, cents, exclude)
    assert np.array_equal(full(), S.nearest(cents, cents, exclude)[1])
    del cents
    queries = random_unit_rows(2_000, 512, rng)
    rows = [[f"{identities:,} x {identities:,} centroids, one full matrix (baseline)", f"{full_s:.2f}",
             f"{full_mb:,.0f}", "1.00"],
            [f"{identities:,} x {identities:,} centroids, `nearest` (blocks)", f"{block_s:.2f}", f"{block_mb:,.0f}",
             f"{full_s / block_s:.2f}"]]
    return rows + [bench_many(queries, big, rng) for big in many]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--identities", type=int, default=2_000)
    parser.add_argument("--centroids", type=int, default=10_000)
    parser.add_argument("--many", default="200000",
                        help="comma-separated centroid counts of the many-keys search (2,000 test images against "
                             "each; 2000000 x 512 float32 keys take 3.8 GiB)")
    parser.add_argument("--quick", action="store_true", help="small sizes; results file untouched")
    args = parser.parse_args()
    if args.quick:
        args.images, args.identities, args.centroids, args.many = 2_000, 100, 500, "20000"
    many = [int(x) for x in args.many.replace("_", "").split(",") if x.strip()]
    scan_rows = bench_scan(args.images, args.identities)
    measure_rows = bench_measures(args.images, args.identities)
    nearest_rows = bench_nearest(args.centroids, many)
    body = (header_lines() + f"- data: {args.images:,} demo-face JPEG records ({args.identities:,} identities), "
            "512-d random unit embeddings for the model-side statistics\n\n"
            + markdown_table(["step", "s per 100K images", "ratio to baseline"], scan_rows + measure_rows)
            + "\n" + markdown_table(["nearest-centroid search", "s", "peak MiB", "speed vs full"], nearest_rows))
    print(body)
    if not args.quick:
        write_section(RESULTS, HEADING, body)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
