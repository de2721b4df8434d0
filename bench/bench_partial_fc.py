"""PartialFC_V2 forward+backward time and peak memory vs a plain full-FC margin softmax head.

    python bench/bench_partial_fc.py            # 10k, 100k, 1M classes (the 1M case needs ~10 GB)
    python bench/bench_partial_fc.py --quick    # 10k classes only (CI smoke run)

512-d embeddings, batch 128, sample_rate 1.0 / 0.3 / 0.1, and the plain head
``cross_entropy(margin(linear(normalize(x), normalize(W))))`` measured in the same run.
Time: per class count one subprocess steps all heads round-robin on one shared weight (so load
changes on a shared machine hit every head alike); median per head. Memory: one fresh subprocess
per head; its peak is the rise of VmHWM over the RSS after set-up (weight and inputs allocated),
so it holds the dense weight gradient plus the step's working memory (logits, softmax,
normalised/sampled weights, index tensors). The gradient is dropped after every step
(``zero_grad(set_to_none=True)``, the trainer's default). Fixed buffers (weight, dense gradient,
SGD momentum) are reported separately, with what a row-sparse update would save.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMBEDDING = 512
BATCH = 128
SAMPLE_RATES = (1.0, 0.3, 0.1)
GIB = 1024 ** 3
MIB = 1024 ** 2


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _plain_head(weight):
    """The baseline: a full FC with ArcFace margin (true gradient) and torch's cross-entropy."""
    import torch
    import torch.nn.functional as F

    def step(x, labels):
        cos = F.linear(F.normalize(x), F.normalize(weight)).clamp(-1, 1)
        target = cos.gather(1, labels[:, None])
        phi = torch.cos(torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7)) + 0.5)
        logits = torch.scatter(cos, 1, labels[:, None], phi) * 64.0
        return F.cross_entropy(logits, labels)

    return step


def _pfc_head(weight, sample_rate: float):
    """PartialFC_V2 on the shared weight (built on the meta device, then given the real weight)."""
    import torch

    sys.path.insert(0, str(REPO))
    from losses import CombinedMarginLoss
    from partial_fc_v2 import PartialFC_V2

    with torch.device("meta"):
        head = PartialFC_V2(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), EMBEDDING, weight.size(0), sample_rate)
    head.weight = weight
    return head


def _setup(num_classes: int, threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, EMBEDDING)))
    x = torch.randn(BATCH, EMBEDDING, requires_grad=True)
    labels = torch.randint(0, num_classes, (BATCH,))
    return weight, x, labels


def _make_head(name: str, weight):
    return _plain_head(weight) if name == "plain" else _pfc_head(weight, float(name.split("_")[1]))


def _step(head, weight, x, labels) -> float:
    start = time.perf_counter()
    loss = head(x, labels)
    loss.backward()
    elapsed = time.perf_counter() - start
    weight.grad = None
    x.grad = None
    return elapsed


def time_worker(num_classes: int, names: list[str], iters: int, threads: int) -> dict:
    """Round-robin the heads on one shared weight, so that load changes hit every head alike."""
    weight, x, labels = _setup(num_classes, threads)
    heads = {name: _make_head(name, weight) for name in names}
    times = {name: [] for name in names}
    for round_ in range(iters + 1):
        for name, head in heads.items():
            elapsed = _step(head, weight, x, labels)
            if round_ > 0:
                times[name].append(elapsed)
    return {name: {"ms": 1000 * statistics.median(t), "ms_min": 1000 * min(t)} for name, t in times.items()}


def memory_worker(num_classes: int, name: str, threads: int) -> dict:
    """Peak memory of one step of one head in this fresh process, over the RSS after set-up."""
    rss_start = _status_kb("VmRSS")
    weight, x, labels = _setup(num_classes, threads)
    head = _make_head(name, weight)
    rss_setup = _status_kb("VmRSS")
    peak_ok = _reset_peak()
    _step(head, weight, x, labels)
    peak_kb = _status_kb("VmHWM") - (rss_setup if peak_ok else rss_start)
    result = {"peak_step_mib": peak_kb / 1024, "peak_includes_setup": not peak_ok}
    if name != "plain" and head.sample_rate < 1:
        result["dense_grad_ms"] = _dense_grad_ms(weight, head.num_sample)
    return result


def _dense_grad_ms(weight, num_rows: int, repeats: int = 2) -> float:
    """Time to materialise a dense gradient from ``num_rows`` sampled rows (what row-sparse skips)."""
    import torch

    index = torch.randperm(weight.size(0))[:num_rows].sort()[0]
    rows = torch.randn(num_rows, weight.size(1))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dense = torch.zeros_like(weight).index_add_(0, index, rows)
        times.append(time.perf_counter() - start)
        del dense
    return 1000 * min(times)


def _run_worker(*worker_args: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", *worker_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {worker_args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_classes(num_classes: int, iters: int, threads: int) -> list[dict]:
    names = ["plain"] + [f"pfc_{rate}" for rate in SAMPLE_RATES]
    timing = _run_worker("time", str(num_classes), ",".join(names), str(iters), str(threads))
    results = []
    for name in names:
        memory = _run_worker("memory", str(num_classes), name, "0", str(threads))
        kind, rate = ("plain", 1.0) if name == "plain" else ("pfc", float(name.split("_")[1]))
        results.append({"kind": kind, "num_classes": num_classes, "sample_rate": rate, **timing[name], **memory})
    return results


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 ** 2
    return float("inf")


def fixed_buffers(num_classes: int, sample_rate: float) -> dict:
    """Weight, dense gradient and SGD momentum bytes; a row-sparse gradient holds only the kept rows."""
    dense = num_classes * EMBEDDING * 4
    kept = max(1, int(sample_rate * num_classes)) * (EMBEDDING * 4 + 8)
    return {"weight": dense, "grad": dense, "momentum": dense, "row_sparse_grad": kept}


def report(results: list[dict], args, elapsed: float, load: tuple) -> str:
    import torch

    lines = [
        "# PartialFC_V2 benchmark", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{_cpu_model()}, torch {torch.__version__}, {args.threads} threads",
        f"- command: `python bench/bench_partial_fc.py{' --quick' if args.quick else ''}` "
        f"(embedding {EMBEDDING}, batch {BATCH}, median of {args.iters} steps after 1 warm-up; {elapsed:.0f} s)",
        f"- load average (1 min) at start / end: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} CPUs "
        "(other jobs share the machine: absolute times are noisy, ratios come from interleaved steps)",
        "- time: one forward+backward of the head (the weight gradient is dropped after each step, as "
        "`zero_grad()` does); peak: VmHWM rise over the set-up RSS in a fresh process (dense gradient "
        "included), so it is the step's memory beyond the weight itself",
        "",
        "| classes | head | sample_rate | fwd+bwd ms | vs plain | vs sr 1.0 | step peak MiB | "
        "peak minus dense grad MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["kind"], r["num_classes"], r["sample_rate"]): r for r in results}
    for r in results:
        plain = by_key.get(("plain", r["num_classes"], 1.0))
        full = by_key.get(("pfc", r["num_classes"], 1.0))
        grad_mib = r["num_classes"] * EMBEDDING * 4 / MIB
        vs_plain = f"{plain['ms'] / r['ms']:.2f}x" if plain and r["kind"] == "pfc" else ""
        vs_full = f"{full['ms'] / r['ms']:.2f}x" if full and r["kind"] == "pfc" and r["sample_rate"] < 1 else ""
        lines.append(f"| {r['num_classes']:,} | {r['kind']} | {r['sample_rate']} | {r['ms']:.1f} | {vs_plain} | "
                     f"{vs_full} | {r['peak_step_mib']:.0f} | {r['peak_step_mib'] - grad_mib:.0f} |")
    lines += ["", "vs plain = plain time / PartialFC time (> 1: PartialFC faster); vs sr 1.0 = speed-up "
              "over sample_rate 1.0. Below 1.0 the step's working memory is the logits-sized tensors "
              "(cosines, softmax, their gradients) plus the gathered rows and their gradient (2 x sample_rate "
              "x weight), both proportional to the sample rate; at 1.0 no rows are gathered (the weight is "
              "used in place).", "", "## Fixed buffers (float32) and a row-sparse update", "",
              "| classes | sample_rate | weight MiB | dense grad MiB | momentum MiB | row-sparse grad MiB | "
              "dense-grad build ms (zeros + index_add) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["kind"] != "pfc":
            continue
        buf = fixed_buffers(r["num_classes"], r["sample_rate"])
        build = f"{r['dense_grad_ms']:.1f}" if "dense_grad_ms" in r else ""
        sparse = f"{buf['row_sparse_grad'] / MIB:.0f}" if r["sample_rate"] < 1 else ""
        lines.append(f"| {r['num_classes']:,} | {r['sample_rate']} | {buf['weight'] / MIB:.0f} | "
                     f"{buf['grad'] / MIB:.0f} | {buf['momentum'] / MIB:.0f} | {sparse} | {build} |")
    lines += ["", "A row-sparse gradient (only the kept rows + their indices) would replace the dense "
              "gradient: it saves (1 - sample_rate) of the gradient buffer and the dense-gradient build "
              "time above per step; SGD momentum must stay dense (it decays every row each step), so a "
              "row-sparse update either keeps a dense momentum or changes the optimiser's semantics "
              "(lazy momentum/weight decay).", ""]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10k classes only (smoke run)")
    parser.add_argument("--classes", type=int, nargs="*", help="class counts (default 10k 100k 1M)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps per case")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        what, classes, names, iters, threads = args.worker
        if what == "time":
            out = time_worker(int(classes), names.split(","), int(iters), int(threads))
        else:
            out = memory_worker(int(classes), names, int(threads))
        print(json.dumps(out))
        return
    classes = args.classes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    iters = args.iters or (2 if args.quick else 3)
    args.iters = iters
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    results = []
    for num_classes in classes:
        need_gib = 6.5 * num_classes * EMBEDDING * 4 / GIB + 1  # weight + the plain head's step (~5.3x)
        if need_gib > _available_gib():
            print(f"skip {num_classes:,} classes: needs ~{need_gib:.1f} GiB, {_available_gib():.1f} GiB available")
            continue
        for result in run_classes(num_classes, iters, args.threads):
            results.append(result)
            print(f"{result['kind']:5s} classes={num_classes:>9,} sr={result['sample_rate']:<4} fwd+bwd "
                  f"{result['ms']:9.1f} ms  step peak {result['peak_step_mib']:8.0f} MiB", flush=True)
    text = report(results, args, time.perf_counter() - start, (load_start, os.getloadavg()[0]))
    print(text)
    if args.out:
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
