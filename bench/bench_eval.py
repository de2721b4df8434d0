"""Benchmark: vectorised ``evaluate`` vs the per-threshold loop baseline, and ``load_bin`` decode time.

    python bench/bench_eval.py            # 6000 and 7000 pairs, 12000-image .bin; updates bench/RESULTS_eval.md
    python bench/bench_eval.py --quick    # smoke run (small sizes, results file untouched)

Both implementations run in this process on the same embeddings; the run fails unless every
per-fold result is identical (accuracies, chosen thresholds, VAL thresholds, tpr/fpr).
"""
from __future__ import annotations

import argparse
import datetime
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench import eval_loop_baseline as baseline  # noqa: E402
from eval import verification as V  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS_eval.md"
START, END = "<!-- bench_eval:start -->", "<!-- bench_eval:end -->"


def synthetic_embeddings(n_pairs: int, dim: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Face-like float32 unit embeddings: genuine cosine mostly 0.3-0.9, impostors near 0, some hard pairs."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    first = rng.standard_normal((n_pairs, dim))
    spread = rng.uniform(0.4, 3.0, (n_pairs, 1))
    genuine = first + spread * rng.standard_normal((n_pairs, dim))
    impostor = 0.25 * first * (rng.random((n_pairs, 1)) < 0.1) + rng.standard_normal((n_pairs, dim))
    second = np.where(issame[:, None], genuine, impostor)
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = first, second
    return V.l2_normalize(emb).astype(np.float32), issame


def _best_times(fns: dict, repeat: int) -> dict[str, float]:
    """Best wall time of each callable over ``repeat`` rounds, the callables interleaved per round."""
    times = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - t0)
    return times


def bench_evaluate(n_pairs: int, repeat: int, loop_repeat: int) -> dict:
    emb, issame = synthetic_embeddings(n_pairs, seed=n_pairs)
    out = {}
    t_loop = _best_times({"loop": lambda: out.update(loop=baseline.evaluate(emb, issame))}, loop_repeat)["loop"]
    tpr, fpr, acc, val, val_std, far, best, val_thr = out["loop"]
    ev = V.evaluate_folds(emb, issame)
    checks = {
        "accuracy per fold": ev.roc.accuracy.tolist() == acc.tolist(),
        "best threshold per fold": ev.roc.best_threshold_index.tolist() == best.tolist(),
        "VAL threshold per fold": np.allclose(ev.val_far.threshold_per_fold, val_thr, rtol=0, atol=1e-12),
        "VAL/VAL std/FAR": np.allclose([ev.val_far.val, ev.val_far.val_std, ev.val_far.far],
                                       [val, val_std, far], rtol=0, atol=1e-12),
        "tpr/fpr": np.allclose(ev.roc.tpr, tpr, rtol=0, atol=1e-12) and np.allclose(ev.roc.fpr, fpr, rtol=0, atol=1e-12),
    }
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        raise SystemExit(f"evaluate on {n_pairs} pairs differs from the loop baseline: {', '.join(failed)}")
    t_vec = _best_times({"vec": lambda: V.evaluate(emb, issame)}, repeat)["vec"]
    return {"pairs": n_pairs, "loop_s": t_loop, "vec_s": t_vec, "ratio": t_loop / t_vec,
            "acc": float(np.mean(ev.roc.accuracy))}


def _synthetic_jpegs(count: int, distinct: int, seed: int = 0) -> list[bytes]:
    import cv2
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:112, 0:112]
    pool = []
    for _ in range(distinct):
        img = rng.uniform(60, 190, 3) + 45 * np.sin(xx[..., None] / rng.uniform(3, 14) + rng.uniform(0, 6)) \
            + 35 * np.cos(yy[..., None] / rng.uniform(3, 14))
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        pool.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return [pool[i % distinct] for i in range(count)]


def _original_style_load(path: str) -> None:
    """The original load_bin's shape of work: per image decode, then copy into two float32 tensors."""
    import cv2
    with open(path, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    data = [torch.empty((len(issame) * 2, 3, 112, 112)) for _ in range(2)]
    for idx in range(len(issame) * 2):
        img = cv2.imdecode(np.frombuffer(bins[idx], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        data[0][idx] = chw
        data[1][idx] = chw.flip(2)


def bench_load_bin(n_pairs: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lfw.bin")
        bins = _synthetic_jpegs(2 * n_pairs, distinct=min(2 * n_pairs, 600))
        with open(path, "wb") as f:
            pickle.dump((bins, [bool(i % 2) for i in range(n_pairs)]), f, protocol=2)
        threads = min(8, os.cpu_count() or 1)
        times = _best_times({"default": lambda: V.load_bin(path), "single": lambda: V.load_bin(path, num_threads=1),
                             "orig": lambda: _original_style_load(path)}, repeat)
        t_default, t_single, t_orig = times["default"], times["single"], times["orig"]
        mean_bytes = sum(map(len, bins)) / len(bins)
    n = 2 * n_pairs
    return {"images": n, "threads": threads, "default_s": t_default, "single_s": t_single, "orig_s": t_orig,
            "default_ips": n / t_default, "single_ips": n / t_single, "orig_ips": n / t_orig,
            "jpeg_bytes": mean_bytes}


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        pass
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True).stdout.strip() or platform.platform()
    return (f"{uname}; {cpu}; {os.cpu_count()} logical CPUs; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numpy {np.__version__}; load average at start "
            f"{os.getloadavg()[0]:.1f} (shared machine: absolute times are noisy, ratios are same-run)")


def render(evals: list[dict], load: dict, command: str) -> str:
    lines = [START, "## Evaluation (`bench/bench_eval.py`)", "",
             f"- machine: {_machine()}",
             f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
             f"- command: `{command}`", "",
             "`evaluate` (10 folds, 400 + 4000 thresholds, 512-d float32 embeddings), project vs the per-threshold",
             "loop baseline (`bench/eval_loop_baseline.py`) on the same embeddings in the same run; per-fold",
             "accuracies, chosen thresholds, VAL thresholds and tpr/fpr checked identical.", "",
             "| pairs | loop baseline (best of 2) | project (best of N) | speed-up |",
             "|---|---|---|---|"]
    for r in evals:
        lines.append(f"| {r['pairs']} | {r['loop_s']:.3f} s | {r['vec_s'] * 1000:.1f} ms | {r['ratio']:.0f}x |")
    lines += ["", f"`load_bin` on a generated .bin of {load['images']} 112x112 JPEGs "
              f"(q95, ~{load['jpeg_bytes'] / 1024:.1f} KiB each), decode + flip into uint8 tensors:", "",
              "| variant | time (s) | images/s |", "|---|---|---|",
              f"| load_bin, {load['threads']} decode threads (default) | {load['default_s']:.2f} | {load['default_ips']:.0f} |",
              f"| load_bin, 1 thread | {load['single_s']:.2f} | {load['single_ips']:.0f} |",
              f"| original-style loop (cv2 decode per image, two float32 tensors) | {load['orig_s']:.2f} | "
              f"{load['orig_ips']:.0f} |", END]
    return "\n".join(lines) + "\n"


def write_results(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results: evaluation\n\n"
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, no results file")
    parser.add_argument("--repeat", type=int, default=None, help="timing repeats for the project's code")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS_eval.md")
    args = parser.parse_args(argv)
    sizes, load_pairs = ((600, 700), 300) if args.quick else ((6000, 7000), 6000)
    repeat = args.repeat or (3 if args.quick else 20)
    evals = []
    for n in sizes:
        r = bench_evaluate(n, repeat, 1 if args.quick else 2)
        evals.append(r)
        print(f"evaluate {n} pairs: loop {r['loop_s']:.3f} s, project {r['vec_s'] * 1000:.1f} ms, "
              f"{r['ratio']:.0f}x faster, identical per-fold results (acc {r['acc']:.4f})")
    load = bench_load_bin(load_pairs, 1 if args.quick else 3)
    print(f"load_bin {load['images']} images: {load['default_s']:.2f} s ({load['default_ips']:.0f} img/s, "
          f"{load['threads']} threads); 1 thread {load['single_s']:.2f} s; original-style loop "
          f"{load['orig_s']:.2f} s")
    if not args.quick and not args.no_write:
        command = "python bench/bench_eval.py" + ("".join(f" {a}" for a in (argv or sys.argv[1:])))
        write_results(render(evals, load, command))
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
