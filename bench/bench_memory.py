"""Peak CPU memory and step time of a backbone's forward+backward, with and without gradient checkpointing.

Variants: off; on (the model's default plan: the stem and `checkpoint_blocks` leading blocks);
on with every block checkpointed (skipped with --quick), which shows what the plan saves.
Each variant runs in a fresh subprocess (Linux: reads /proc/self/status). Activation memory =
peak RSS (VmHWM) during the timed steps minus the RSS before them, measured after building the
model, allocating its gradients and the input batch and running one warm-up step (the first
checkpointed call imports torch._dynamo, ~160 MiB that are not activations); the peak is reset
through /proc/self/clear_refs. The children run with MALLOC_MMAP_THRESHOLD_=131072 so that glibc
returns freed tensors to the OS and RSS follows live memory (with its default dynamic threshold,
freed heap memory stays resident and hides what checkpointing frees). Prints the ratios and writes
a section to bench/RESULTS_memory.md (target: >= 40% activation-memory cut at <= 35% extra time).

    python bench/bench_memory.py            # r50, batch 64, 2 threads
    python bench/bench_memory.py --quick    # r18, batch 8 (smoke run)
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS_memory.md"
RESIDUAL_NAMES = ("r18", "r34", "r50", "r100", "r200", "ir_se50", "LResNet50E_IR")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def child(network: str, batch_size: int, steps: int, checkpointing: bool, threads: int,
          all_blocks: bool = False) -> dict:
    """Run 1 warm-up + `steps` timed training steps in this process; return memory (MiB) and timing.

    all_blocks: checkpoint every residual block instead of the model's `checkpoint_blocks` plan.
    """
    import torch
    sys.path.insert(0, str(REPO))
    from backbones import get_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = get_model(network, gradient_checkpointing=checkpointing).train()
    if all_blocks:
        model.checkpoint_blocks = sum(len(stage) for stage in model.stages())
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    x = torch.randn(batch_size, 3, 112, 112)
    times, cpu_times = [], []
    for i in range(steps + 1):
        if i == 1:
            gc.collect()
            baseline = _status_kib("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = model(x).square().mean()
        loss.backward()
        del loss
        if i:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = _status_kib("VmHWM")
    return {"blocks": sum(len(stage) for stage in model.stages()),
            "checkpoint_blocks": model.checkpoint_blocks if checkpointing else 0,
            "baseline_mib": baseline / 1024, "peak_mib": peak / 1024, "activation_mib": (peak - baseline) / 1024,
            "step_s": sum(times) / len(times), "cpu_s": sum(cpu_times) / len(cpu_times)}


def run_variant(args: argparse.Namespace, checkpointing: bool, all_blocks: bool = False) -> dict:
    """One child process; its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--network", args.network,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
    if checkpointing:
        cmd.append("--checkpointing")
    if all_blocks:
        cmd.append("--all-blocks")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def fastest(results: list[dict]) -> dict:
    """The run with the least CPU time per step (the least disturbed by other processes)."""
    return min(results, key=lambda r: r["cpu_s"])


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch
    return f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}"


def write_section(heading: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the `## heading` section of the results file, atomically."""
    text = path.read_text() if path.exists() else "# Gradient checkpointing: memory and time (CPU)\n"
    sections = text.split("\n## ")
    kept = [sections[0].rstrip("\n")] + [s.rstrip("\n") for s in sections[1:] if s.split("\n", 1)[0] != heading]
    new_text = "\n\n## ".join(kept + [f"{heading}\n\n{body.rstrip()}"]) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS_memory.")
    with os.fdopen(fd, "w") as f:
        f.write(new_text)
    os.replace(tmp, path)


def report(args: argparse.Namespace, off: dict, on: dict, command: str, every: dict | None = None) -> str:
    cut = 1.0 - on["activation_mib"] / off["activation_mib"]
    cost = on["step_s"] / off["step_s"] - 1.0
    cpu_cost = on["cpu_s"] / off["cpu_s"] - 1.0
    met = "met" if cut >= 0.40 and cpu_cost <= 0.35 else "NOT met"
    variants = [("off", off), ("on (default plan)", on)] + ([("on, every block", every)] if every else [])
    rows = [f"| {name} | {r['baseline_mib']:.0f} | {r['peak_mib']:.0f} | {r['activation_mib']:.0f} | "
            f"{r['step_s']:.3f} | {r['cpu_s']:.3f} | {1 - r['activation_mib'] / off['activation_mib']:.1%} | "
            f"{r['step_s'] / off['step_s'] - 1:+.1%} | {r['cpu_s'] / off['cpu_s'] - 1:+.1%} |"
            for name, r in variants]
    return "\n".join([
        f"- machine: {machine()}, {args.threads} threads",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- command: `{command}`",
        f"- {args.network}, batch {args.batch_size}, forward+backward of mean(embedding^2), "
        f"1 warm-up + {args.steps} timed steps, each variant in a fresh process, "
        f"{args.rounds} interleaved round(s), the fastest kept "
        f"(MALLOC_MMAP_THRESHOLD_=131072; baseline after the warm-up step)",
        "",
        "| checkpointing | baseline RSS (MiB) | peak RSS (MiB) | activation (MiB) | wall s/step | CPU s/step "
        "| activation cut | wall-time cost | CPU-time cost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Default plan ({on['checkpoint_blocks']} of {on['blocks']} blocks and the stem checkpointed): "
        f"activation memory cut **{cut:.1%}**, time cost **{cpu_cost:+.1%}** CPU time ({cost:+.1%} wall) "
        f"per step (target >= 40% cut at <= 35% time cost: {met}). The cost is judged on the process's "
        f"CPU time: on a shared machine, wall time also counts the time other processes hold the cores.",
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="r18, batch 8: a smoke run")
    parser.add_argument("--network", default=None, choices=RESIDUAL_NAMES,
                        help="backbone name (default r50, r18 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64, 8 with --quick")
    parser.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up (default 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions; the fastest counts")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS_memory.md alone")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--all-blocks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-every-block", action="store_true",
                        help="skip the variant that checkpoints every block (default with --quick)")
    args = parser.parse_args(argv)
    args.network = args.network or ("r18" if args.quick else "r50")
    args.batch_size = args.batch_size or (8 if args.quick else 64)
    args.steps = args.steps or 2
    if args.child:
        print(json.dumps(child(args.network, args.batch_size, args.steps, args.checkpointing, args.threads,
                               args.all_blocks)))
        return
    variants = {"off": (False, False), "on": (True, False)}
    if not (args.quick or args.no_every_block):
        variants["every"] = (True, True)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved, so that load from other processes hits every variant
        for name, (checkpointing, all_blocks) in variants.items():
            runs[name].append(run_variant(args, checkpointing, all_blocks))
    off, on, every = (fastest(runs[name]) if name in runs else None for name in ("off", "on", "every"))
    command = "python bench/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = report(args, off, on, command.strip(), every)
    print(body)
    if not args.no_write:
        write_section(f"{args.network}, batch {args.batch_size}, {args.threads} thread(s)", body)


if __name__ == "__main__":
    main()
