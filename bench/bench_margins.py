"""Margin heads under PartialFC_V2: forward+backward time and peak memory against CombinedMarginLoss.

    python bench/bench_margins.py                 # 100k classes, batch 128, sample_rate 1.0 and 0.1
    python bench/bench_margins.py --quick         # 10k classes, 2 steps (CI smoke run)
    python bench/bench_margins.py --out bench/RESULTS.md   # also record the section there

The baseline, CombinedMarginLoss (ArcFace), is measured in the same run: per sample rate one
subprocess steps every head round-robin on one shared weight (load changes on a shared machine
hit every head alike) and reports medians. Sub-center ArcFace (k = 3) is compared per class
centre: against the combined head over 3x as many classes (the same number of weight rows).
Memory: one fresh subprocess per head; the peak is the rise over the memory after set-up
(weight, inputs) during its first step, i.e. the step's working memory plus the weight gradient: VmHWM on CPU,
max_memory_allocated on CUDA. On CUDA the timed steps also run under
``torch.cuda.set_sync_debug_mode("error")``, so a head that synchronises with the host fails.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import header_lines, markdown_table, write_section  # noqa: E402

EMBEDDING = 512
K = 3
# name -> (get_margin name, parameters); "combined" is the baseline of every other row
HEADS = {
    "combined": ("combined", {}),
    "cosface": ("cosface", {}),
    "adaface": ("adaface", {}),
    "adaface_straight_through": ("adaface", {"straight_through": True}),
    "magface": ("magface", {}),
    "curricularface": ("curricularface", {}),
    "elasticface_arc": ("elasticface_arc", {}),
    "elasticface_cos_plus": ("elasticface_cos", {"plus": True}),
    "combined_x3": ("combined", {}),          # baseline of sub-center: 3x the classes, same rows
    "subcenter_arcface": ("subcenter_arcface", {"k": K}),
}
BASELINE = {"subcenter_arcface": "combined_x3"}


def _rows(name: str, num_classes: int) -> tuple[int, int]:
    """(num_classes given to PartialFC_V2, weight rows) of a head."""
    if name == "combined_x3":
        return num_classes * K, num_classes * K
    return num_classes, num_classes * (K if name == "subcenter_arcface" else 1)


def _setup(num_classes: int, batch: int, device: str):
    import torch

    torch.manual_seed(0)
    x = (torch.randn(batch, EMBEDDING, device=device) * 1.5).requires_grad_(True)  # norms ~ 34
    labels = torch.randint(0, num_classes, (batch,), device=device)
    return x, labels


def _head(name: str, num_classes: int, rate: float, device: str, weight=None):
    import torch

    from losses import get_margin
    from partial_fc_v2 import PartialFC_V2

    margin, params = HEADS[name]
    classes, rows = _rows(name, num_classes)
    with torch.device("meta"):
        head = PartialFC_V2(get_margin(margin, **params), EMBEDDING, classes, rate)
    head.to_empty(device=device)
    for buffer_name, buffer in get_margin(margin, **params).to(device).named_buffers():  # buffers' initial values
        head.margin_softmax.get_buffer(buffer_name).copy_(buffer)
    head.weight = weight if weight is not None else torch.nn.Parameter(
        torch.normal(0, 0.01, (rows, EMBEDDING), device=device))
    return head


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _step(head, x, labels, device: str, check_sync: bool) -> float:
    import torch

    _sync(device)
    start = time.perf_counter()
    if check_sync:
        torch.cuda.set_sync_debug_mode("error")
    try:
        head(x, labels).backward()
    finally:
        if check_sync:
            torch.cuda.set_sync_debug_mode(0)
    _sync(device)
    elapsed = time.perf_counter() - start
    head.weight.grad = None
    x.grad = None
    return elapsed


def time_worker(num_classes: int, rate: float, batch: int, iters: int, device: str) -> dict:
    import torch

    x, labels = _setup(num_classes, batch, device)
    shared = {1: torch.nn.Parameter(torch.normal(0, 0.01, (num_classes, EMBEDDING), device=device)),
              K: torch.nn.Parameter(torch.normal(0, 0.01, (num_classes * K, EMBEDDING), device=device))}
    heads = {name: _head(name, num_classes, rate, device, shared[_rows(name, num_classes)[1] // num_classes])
             for name in HEADS}
    times = {name: [] for name in HEADS}
    check_sync = device.startswith("cuda") and rate == 1.0  # below 1.0 the sampler may read a count
    for round_ in range(iters + 1):
        for name, head in heads.items():
            elapsed = _step(head, x, labels, device, check_sync and round_ > 0)
            if round_ > 0:
                times[name].append(elapsed)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory_worker(name: str, num_classes: int, rate: float, batch: int, device: str) -> dict:
    import torch

    x, labels = _setup(num_classes, batch, device)
    head = _head(name, num_classes, rate, device)
    if device.startswith("cuda"):
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(head, x, labels, device, False)
        return {"peak_mib": (torch.cuda.max_memory_allocated() - base) / 2 ** 20}
    base = _status_kb("VmRSS")  # the first step: later ones reuse memory the allocator kept
    with open("/proc/self/clear_refs", "w") as f:     # VmHWM restarts from the current RSS
        f.write("5")
    _step(head, x, labels, device, False)
    return {"peak_mib": (_status_kb("VmHWM") - base) / 1024}


def _worker(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(num_classes: int, rates: list[float], batch: int, iters: int, device: str) -> list[dict]:
    rows = []
    for rate in rates:
        times = _worker("time", str(num_classes), str(rate), str(batch), str(iters), device)
        for name in HEADS:
            memory = _worker("memory", name, str(num_classes), str(rate), str(batch), device)
            rows.append({"head": name, "sample_rate": rate, "ms": times[name], **memory})
    return rows


def report(rows: list[dict], num_classes: int, batch: int, iters: int, device: str, elapsed: float) -> str:
    by_key = {(r["head"], r["sample_rate"]): r for r in rows}
    table = []
    for r in rows:
        base = by_key[(BASELINE.get(r["head"], "combined"), r["sample_rate"])]
        centres = _rows(r["head"], num_classes)[1]
        ratio = "baseline" if r["head"] in ("combined", "combined_x3") else f"{r['ms'] / base['ms']:.2f}x"
        memory = "" if r["head"] in ("combined", "combined_x3") else f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}x"
        table.append([r["head"], f"{centres:,}", r["sample_rate"], f"{r['ms']:.1f}", ratio,
                      f"{r['peak_mib']:.0f}", memory])
    body = header_lines()
    body += (f"- setting: {device}, {num_classes:,} classes, embedding {EMBEDDING}, batch {batch}, one process; "
             f"median of {iters} forward+backward steps after one warm-up, heads interleaved; {elapsed:.0f} s\n"
             "- time / memory ratio: head / baseline in the same run (combined = CombinedMarginLoss ArcFace "
             "(1, 0.5, 0); sub-center k=3 against combined over 3x the classes, i.e. per class centre)\n"
             "- peak: rise over the set-up memory during one step (weight gradient included)\n\n")
    header = ["head", "weight rows", "sample_rate", "fwd+bwd ms", "time vs baseline", "step peak MiB",
              "memory vs baseline"]
    return body + markdown_table(header, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="10k classes, 2 steps (smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="record the section in this markdown file")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        what, *rest = args.worker
        if what == "time":
            classes, rate, batch, iters, device = rest
            out = time_worker(int(classes), float(rate), int(batch), int(iters), device)
        else:
            name, classes, rate, batch, device = rest
            out = memory_worker(name, int(classes), float(rate), int(batch), device)
        print(json.dumps(out))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    classes, iters = (10_000, 2) if args.quick else (args.classes, args.iters)
    start = time.perf_counter()
    rows = measure(classes, args.rates, args.batch, iters, device)
    text = report(rows, classes, args.batch, iters, device, time.perf_counter() - start)
    print(text)
    if args.out:
        write_section(args.out, f"Margin heads under PartialFC_V2 ({device}{', quick' if args.quick else ''})", text)


if __name__ == "__main__":
    main()
