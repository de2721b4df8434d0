"""Training-step throughput on CPU: train_v2.py's step vs a plain PyTorch loop, in the same process.

For each backbone, on synthetic data (random uint8 images through utils.image.normalize, random
labels), these variants run in interleaved blocks (order A B C D, then D C B A, ... so that drift
of a shared machine cancels); warm-up steps are not timed:

- plain: the same backbone + ``F.linear(F.normalize(emb), F.normalize(W))`` + ArcFace margin +
  ``F.cross_entropy`` + SGD (same groups and hyper-parameters) + gradient clipping;
- toolkit: exactly what train_v2.py runs per step: the backbone from ``build_backbone``,
  ``PartialFC_V2`` (sample_rate 1.0) with ``CombinedMarginLoss``, ``build_optimizer``,
  ``build_grad_scaler``, ``train_step``, the loss accumulation and ``lr_scheduler.step()``,
  all with configs/base.py's defaults (SGD lr 0.1, momentum 0.9, weight decay 5e-4, clip 5);
- channels_last / compile: the toolkit step with config key ``channels_last`` / ``compile`` on.
  torch.compile is first tried in a child process bounded by --compile-timeout (which also fills
  inductor's on-disk cache); when it fails or runs out of time, the variant is recorded as such.

Also: achieved GFLOP/s = 3 x forward FLOPs per image (2 x MACs from bench/flops.py's hook counter;
the backward pass counted as twice the forward) x images/s, against a measured float32 matmul
peak (torch.mm, 2048 x 2048, same thread count). Target: toolkit >= 0.9 x plain.

Timings are reported as the whole-run mean and as the best block: on a shared machine other
processes only ever add time (with 2 OpenMP threads and more runnable processes than cores a step
can take several times longer), so the best blocks are the less disturbed estimate; the load
average is recorded with the results.

    python bench/bench_train.py                         # mbf, r18, r50, batch 32, 2 threads -> bench/RESULTS_train.md
    python bench/bench_train.py --quick --out /tmp/x.md # mbf, batch 8, a few steps (smoke run)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO, header_lines, load_line, machine_info, markdown_table, write_section  # noqa: E402

from backbones import get_model  # noqa: E402
from flops import count_macs  # noqa: E402
from losses import CombinedMarginLoss  # noqa: E402
from partial_fc_v2 import PartialFC_V2  # noqa: E402
from utils.image import FACE_SIZE, normalize  # noqa: E402
from utils.utils_config import get_config  # noqa: E402
from utils.utils_distributed import DistInfo  # noqa: E402
from training import (build_backbone, build_grad_scaler, build_lr_scheduler, build_optimizer,  # noqa: E402
                      set_step_counts, train_step)

RESULTS = REPO / "bench" / "RESULTS_train.md"
ALL_VARIANTS = ("plain", "toolkit", "channels_last", "compile")
TARGET_RATIO = 0.9
MIN_ROUNDS = 3
CPU = torch.device("cpu")

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def base_config(network: str, batch_size: int, num_classes: int, channels_last: bool = False,
                compile_model: bool = False, fp16: bool = False, gradient_checkpointing: bool = False):
    """configs/base.py's defaults for a synthetic run of `network`."""
    cfg = get_config(str(REPO / "configs" / "base.py"))
    cfg.network, cfg.batch_size, cfg.fp16 = network, batch_size, fp16
    cfg.gradient_checkpointing = gradient_checkpointing
    cfg.num_classes, cfg.num_image = num_classes, batch_size * 10_000
    cfg.channels_last, cfg.compile = channels_last, compile_model
    set_step_counts(cfg, 1)
    return cfg


def toolkit_step(cfg, device: torch.device = CPU) -> tuple[Step, torch.nn.Module, torch.nn.Module]:
    """train_v2.py's per-step work on `device`; returns (step, backbone module, PartialFC_V2)."""
    info = DistInfo(0, device.index or 0, 1, device, None)
    backbone, module = build_backbone(cfg, info)
    margin_loss = CombinedMarginLoss(cfg.margin_scale, cfg.margin_list[0], cfg.margin_list[1],
                                     cfg.margin_list[2], cfg.interclass_filtering_threshold)
    partial_fc = PartialFC_V2(margin_loss, cfg.embedding_size, cfg.num_classes, cfg.sample_rate, cfg.fp16,
                              rank=info.rank, world_size=info.world_size)
    partial_fc = partial_fc.train().to(device)
    opt = build_optimizer(cfg, module, partial_fc)
    lr_scheduler = build_lr_scheduler(cfg, opt)
    amp = build_grad_scaler(cfg, device)
    loss_sum = torch.zeros((), device=device)

    def step(img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        nonlocal loss_sum
        loss = train_step(backbone, partial_fc, opt, amp, img, labels, update=True,
                          gradient_acc=cfg.gradient_acc, clip_grad_norm=cfg.clip_grad_norm)
        loss_sum += loss
        lr_scheduler.step()
        return loss

    return step, module, partial_fc


def plain_step(cfg, backbone: torch.nn.Module, weight: torch.Tensor) -> Step:
    """A textbook loop: normalised linear + ArcFace margin + cross-entropy + SGD + clipping."""
    backbone.train()
    weight = torch.nn.Parameter(weight.detach().clone())
    opt = torch.optim.SGD([{"params": backbone.parameters()}, {"params": [weight]}],
                          lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    s, margin = cfg.margin_scale, cfg.margin_list[1]

    def step(img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = backbone(img)
        cos = F.linear(F.normalize(emb), F.normalize(weight)).clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        target = torch.cos(torch.acos(cos.gather(1, labels[:, None])) + margin)
        logits = s * cos.scatter(1, labels[:, None], target)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), cfg.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def synthetic_batches(n: int, batch_size: int, num_classes: int, seed: int = 0,
                      device: torch.device = CPU) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` batches of random uint8 images through utils.image.normalize, with random labels, on `device`."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, FACE_SIZE, FACE_SIZE)
    return [(normalize(torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device)),
             torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)) for _ in range(n)]


def matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
    """Best-of-`reps` float32 torch.mm GFLOP/s of two n x n matrices at the current thread count."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        tic = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - tic)
    return 2 * n ** 3 / best / 1e9


def compile_probe(network: str, batch_size: int, num_classes: int, threads: int, timeout: float) -> dict:
    """Compile + 2 toolkit steps in a child process (bounded by `timeout`); fills inductor's cache."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-probe", network, "--batch", str(batch_size),
           "--classes", str(num_classes), "--threads", str(threads)]
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"ok": False, "reason": f"compile + 2 steps took > {timeout:.0f} s (stopped)"}
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "reason": f"failed (exit {proc.returncode}): {last[:200]}"}
    return {"ok": True, "seconds": seconds, **json.loads(out.strip().splitlines()[-1])}


def run_compile_probe(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = base_config(args.compile_probe, args.batch, args.classes, compile_model=True)
    step, _, _ = toolkit_step(cfg)
    batches = synthetic_batches(2, args.batch, args.classes)
    tic = time.perf_counter()
    for img, labels in batches:
        step(img, labels)
    print(json.dumps({"in_child_s": time.perf_counter() - tic}))


def build_variants(cfg, variants: Sequence[str], compile_info: dict) -> dict[str, Step]:
    """Same initial weights for every variant (plain copies the toolkit's backbone and centres)."""
    torch.manual_seed(0)
    steps: dict[str, Step] = {}
    toolkit, module, partial_fc = toolkit_step(cfg)
    state, head_state = copy.deepcopy(module.state_dict()), copy.deepcopy(partial_fc.state_dict())
    for name in variants:
        if name == "toolkit":
            steps[name] = toolkit
        elif name == "plain":
            backbone = get_model(cfg.network, dropout=0.0, fp16=False, num_features=cfg.embedding_size)
            backbone.load_state_dict(state)
            steps[name] = plain_step(cfg, backbone, partial_fc.weight)
        elif name == "channels_last" or (name == "compile" and compile_info.get("ok")):
            variant_cfg = copy.copy(cfg)
            variant_cfg.channels_last, variant_cfg.compile = name == "channels_last", name == "compile"
            steps[name], variant_module, variant_head = toolkit_step(variant_cfg)
            variant_module.load_state_dict(state)
            variant_head.load_state_dict(head_state)
    return steps


def schedule(step_s: float, seconds: float, max_rounds: int, fixed_steps: int | None) -> tuple[int, int]:
    """(rounds, steps per block): about `seconds` of timed steps per variant, at least MIN_ROUNDS rounds."""
    if fixed_steps:
        return max_rounds, fixed_steps
    rounds = max(MIN_ROUNDS, min(max_rounds, int(seconds / step_s)))
    return rounds, max(1, int(seconds / rounds / step_s))


def measure(steps: dict[str, Step], batches, args: argparse.Namespace) -> tuple[dict[str, dict], int, int]:
    """Warm each variant up, then time interleaved blocks, reversing the order every round.

    Returns (per-variant results, rounds, steps per block); the schedule comes from the slowest
    variant's last warm-up step unless --steps fixes it.
    """
    results: dict[str, dict] = {name: {"times": [], "first_loss": None, "warmup_s": 0.0} for name in steps}
    cursor = 0

    def run(name: str, count: int) -> float:
        nonlocal cursor
        tic = time.perf_counter()
        for _ in range(count):
            img, labels = batches[cursor % len(batches)]
            cursor += 1
            loss = steps[name](img, labels)
        float(loss)
        return time.perf_counter() - tic

    slowest = 0.0
    for name in steps:
        img, labels = batches[0]
        tic = time.perf_counter()
        results[name]["first_loss"] = float(steps[name](img, labels))
        last = time.perf_counter() - tic
        if args.warmup > 2:
            run(name, args.warmup - 2)
        if args.warmup > 1:
            last = run(name, 1)
        results[name]["warmup_s"] = time.perf_counter() - tic
        slowest = max(slowest, last)
    rounds, per_block = schedule(slowest, args.seconds, args.rounds, args.steps)
    order = list(steps)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            results[name]["times"].append(run(name, per_block))
    return results, rounds, per_block


def bench_network(network: str, args: argparse.Namespace, variants: Sequence[str]) -> dict:
    cfg = base_config(network, args.batch, args.classes)
    with torch.device("meta"):
        macs = count_macs(get_model(network, dropout=0.0, num_features=cfg.embedding_size))
    compile_info: dict = {}
    if "compile" in variants:
        print(f"[{network}] compile probe (limit {args.compile_timeout:.0f} s) ...", flush=True)
        compile_info = compile_probe(network, args.batch, args.classes, args.threads, args.compile_timeout)
        print(f"[{network}] compile probe: {compile_info}", flush=True)
    steps = build_variants(cfg, variants, compile_info)
    batches = synthetic_batches(4, args.batch, args.classes, seed=1)
    print(f"[{network}] timing {list(steps)}: {args.warmup} warm-up step(s) each, then interleaved rounds",
          flush=True)
    timing, rounds, per_block = measure(steps, batches, args)
    out = {"network": network, "gmacs": macs / 1e9, "compile": compile_info, "variants": {},
           "rounds": rounds, "steps_per_block": per_block, "peak_gflops": matmul_peak_gflops()}
    for name, res in timing.items():
        block_img_s = [args.batch * per_block / t for t in res["times"]]
        img_s = args.batch * per_block * len(res["times"]) / sum(res["times"])
        out["variants"][name] = {
            "img_s": img_s, "best_img_s": max(block_img_s), "block_img_s": block_img_s,
            "gflops": 6 * macs * img_s / 1e9, "best_gflops": 6 * macs * max(block_img_s) / 1e9,
            "first_loss": res["first_loss"], "warmup_s": res["warmup_s"]}
    if "compile" in variants and "compile" not in out["variants"]:
        out["variants"]["compile"] = {"skipped": compile_info.get("reason", "not run")}
    for name, res in out["variants"].items():
        print(f"[{network}] {name:<14} " + (f"{res['img_s']:8.2f} img/s (best block {res['best_img_s']:.2f})  "
                                            f"first loss {res['first_loss']:.4f}  warm-up {res['warmup_s']:.1f} s"
                                            if "img_s" in res else f"skipped: {res['skipped']}"), flush=True)
    return out


def ratios(results: dict, name: str, reference: str) -> dict | None:
    """Throughput ratio name / reference: whole run, best block vs best block, and the per-round range."""
    a, b = results["variants"].get(name, {}), results["variants"].get(reference, {})
    if "img_s" not in a or "img_s" not in b:
        return None
    per_round = [x / y for x, y in zip(a["block_img_s"], b["block_img_s"])]
    return {"mean": a["img_s"] / b["img_s"], "best": a["best_img_s"] / b["best_img_s"],
            "low": min(per_round), "high": max(per_round)}


def _ratio_cell(results: dict, name: str, reference: str) -> str:
    r = ratios(results, name, reference)
    return "-" if r is None else f"{r['mean']:.2f} / {r['best']:.2f} ({r['low']:.2f}-{r['high']:.2f})"


def _img_s_cell(results: dict, name: str) -> str:
    res = results["variants"].get(name)
    if res is None:
        return "-"
    return f"{res['img_s']:.2f} / {res['best_img_s']:.2f}" if "img_s" in res else "n/a"


def report(all_results: list[dict], args: argparse.Namespace, variants: Sequence[str], peak: float,
           argv: Sequence[str] | None) -> str:
    info = machine_info()
    lines = [header_lines(argv, info),
             f"- settings: batch {args.batch}, {args.threads} threads, {args.classes} classes, float32, "
             f"{args.warmup} warm-up step(s) per variant, then interleaved timed blocks (order A B C D, D C B A, ...; "
             f"rounds x steps per block chosen for ~{args.seconds:.0f} s per variant, {MIN_ROUNDS}-{args.rounds} rounds); "
             f"variants: {', '.join(variants)}",
             f"- at the start: {args.start_load}",
             f"- float32 matmul peak (torch.mm 2048x2048, {args.threads} threads, best of all measurements in the run): "
             f"{peak:.1f} GFLOP/s",
             ""]
    header = ["network", "GMACs/img", "rounds x steps", "plain img/s", "toolkit img/s",
              f"toolkit / plain (target >= {TARGET_RATIO})", "channels_last img/s", "channels_last / toolkit",
              "compile img/s", "compile / toolkit"]
    rows = [[r["network"], f"{r['gmacs']:.3f}", f"{r['rounds']} x {r['steps_per_block']}",
             _img_s_cell(r, "plain"), _img_s_cell(r, "toolkit"), _ratio_cell(r, "toolkit", "plain"),
             _img_s_cell(r, "channels_last"), _ratio_cell(r, "channels_last", "toolkit"),
             _img_s_cell(r, "compile"), _ratio_cell(r, "compile", "toolkit")] for r in all_results]
    lines.append("Throughput: img/s as whole-run mean / best block; ratios as whole-run mean / best block vs best "
                 "block (per-round min-max in brackets). On a shared machine other processes only add time, so "
                 "the best-block figures are the less disturbed ones.\n")
    lines.append(markdown_table(header, rows))
    header = ["network", "variant", "img/s (mean / best)", "achieved GFLOP/s (mean / best)",
              "% of matmul peak (best)", "first-step loss", "warm-up (s)"]
    rows = []
    for r in all_results:
        for name, res in r["variants"].items():
            if "img_s" in res:
                rows.append([r["network"], name, f"{res['img_s']:.2f} / {res['best_img_s']:.2f}",
                             f"{res['gflops']:.1f} / {res['best_gflops']:.1f}",
                             f"{100 * res['best_gflops'] / peak:.0f}%", f"{res['first_loss']:.4f}",
                             f"{res['warmup_s']:.1f}"])
            else:
                rows.append([r["network"], name, "-", "-", "-", "-", f"skipped: {res['skipped']}"])
    lines.append("\nAchieved FLOP rate (3 x forward FLOPs per image x img/s; forward FLOPs = 2 x MACs of "
                 "bench/flops.py, backbone only, the 512 x classes head adds < 0.1%):\n")
    lines.append(markdown_table(header, rows))
    compiled = [r for r in all_results if r["compile"]]
    if compiled:
        lines.append("\ntorch.compile (inductor, CPU; kernels already in inductor's on-disk cache from earlier "
                     "runs make the compile faster than a first one): " + "; ".join(
            f"{r['network']}: " + (f"compile + 2 steps {r['compile']['seconds']:.0f} s in a child process "
                                   f"(then in-process warm-up {r['variants']['compile']['warmup_s']:.0f} s)"
                                   if r["compile"].get("ok") else r["compile"]["reason"])
            for r in compiled) + "\n")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: mbf, batch 8, 1 warm-up + 2 x 1 steps, no compile")
    parser.add_argument("--networks", default=None, help="comma-separated backbones (default mbf,r18,r50)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated subset of {','.join(ALL_VARIANTS)} (default all; --quick: no compile)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32, --quick 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per block (default: from --seconds and the measured step time; --quick 1)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per variant to aim at (default 30)")
    parser.add_argument("--rounds", type=int, default=None, help="most interleaved rounds (default 6, --quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (default 1)")
    parser.add_argument("--compile-timeout", type=float, default=120.0, help="seconds for the compile probe")
    parser.add_argument("--out", default=str(RESULTS), help="results markdown file (a section is added/replaced)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", default=None, help="also write the raw results to this JSON file")
    parser.add_argument("--compile-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.networks = (args.networks or ("mbf" if quick else "mbf,r18,r50")).split(",")
    args.variants = args.variants or ",".join(v for v in ALL_VARIANTS if not (quick and v == "compile"))
    args.batch = args.batch or (8 if quick else 32)
    args.steps = args.steps or (1 if quick else None)
    args.seconds = 30.0 if args.seconds is None else args.seconds
    args.rounds = args.rounds or (2 if quick else 6)
    args.warmup = args.warmup or 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compile_probe:
        run_compile_probe(args)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown or "toolkit" not in variants:
        print(f"error: --variants must include toolkit and be among {','.join(ALL_VARIANTS)}; got {args.variants}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    args.start_load = load_line()
    first_peak = matmul_peak_gflops()
    print(f"float32 matmul peak ({args.threads} threads): {first_peak:.1f} GFLOP/s", flush=True)
    results = [bench_network(name, args, variants) for name in args.networks]
    peak = max([first_peak] + [r["peak_gflops"] for r in results])
    body = report(results, args, variants, peak, None if argv is None else [sys.argv[0], *argv])
    if args.json:
        Path(args.json).write_text(json.dumps({"peak_gflops": peak, "networks": results}, indent=1))
    print(body)
    if not args.no_write:
        heading = (f"Training step ({'quick, ' if args.quick else ''}{','.join(args.networks)}, "
                   f"batch {args.batch}, {args.threads} threads)")
        write_section(args.out, heading, body, title="# Benchmark results: training step (bench/bench_train.py)")
        print(f"wrote {args.out}")
    low = [r["network"] for r in results if (ratios(r, "toolkit", "plain") or {"best": 1.0})["best"] < TARGET_RATIO]
    if low:
        print(f"note: toolkit / plain (best blocks) below the {TARGET_RATIO} target for {', '.join(low)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
