"""One prepared GPU check (run it as `bash bench/gpu_check.sh`): training speed, memory, DALI, NCCL.

Every section runs in its own child process under a time limit, inside an overall --budget; a
failure or time-out is recorded (with what the child had measured so far) and the next section
runs. Sections, in order:
  env           versions, GPU, driver
  nccl          init_process_group('nccl') with world_size 1 over tcp://127.0.0.1, all_reduce, destroy
  train:NET     the toolkit's training step (bench_train.toolkit_step = train_v2.py's step) with AMP
                (fp16 autocast + GradScaler), batch 128, synthetic data on the GPU: eager vs
                channels_last vs cudnn.benchmark, in interleaved blocks
  memory        peak CUDA memory and step time, gradient checkpointing off / on
  dali          DALI decode img/s of generated 112x112 JPEGs packed with utils.recordio:
                fn.readers.mxnet + fn.decoders.image on 'mixed' (GPU) and 'cpu'; the toolkit's DALILoader
  decode        GPU JPEG decode without DALI (the lent machines have torchvision, not DALI):
                torchvision.io.decode_jpeg on CUDA (nvJPEG, batched) vs cv2 / torchvision on one CPU core
  compile:NET   eager vs torch.compile (config key `compile`), interleaved; compile time recorded
for NET in r50 and LResNet50E_IR. Writes $OUT/gpu_check.md when $OUT is set, else
bench/RESULTS_gpu.md, plus the raw results as JSON beside it, after every section.

    bash bench/gpu_check.sh                     # on a GPU machine, < 8 minutes
    python bench/gpu_check.py --dry-run --out /tmp/gpu_check.md
                                                # every section on the CPU, tiny sizes (CUDA-only parts skipped)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import REPO, header_lines, machine_info, markdown_table, write_section  # noqa: E402

from utils.errors import ConfigError  # noqa: E402

RESULT_MARK = "@@RESULT "
NETWORKS = ("r50", "LResNet50E_IR")
Emit = Callable[[dict], None]
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- helpers used by the children

def _device(args: argparse.Namespace) -> torch.device:
    if args.dry_run or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(0)
    return torch.device("cuda", 0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_only(args: argparse.Namespace) -> str | None:
    """Why a CUDA-only measurement is skipped, or None when it can run."""
    if args.dry_run:
        return "dry run (CPU)"
    if not torch.cuda.is_available():
        return "CUDA not available"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_cudnn_benchmark(step: Step, on: bool) -> Step:
    def run(img: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        torch.backends.cudnn.benchmark = on
        return step(img, labels)
    return run


def _build_steps(args: argparse.Namespace, network: str, variants: Sequence[str], device: torch.device,
                 checkpointing: bool = False) -> dict[str, Step]:
    """The toolkit step per variant (eager / channels_last / compile / cudnn_benchmark); AMP on CUDA."""
    from bench_train import base_config, toolkit_step
    steps: dict[str, Step] = {}
    for name in variants:
        torch.manual_seed(0)
        cfg = base_config(network, args.batch, args.classes, channels_last=name == "channels_last",
                          compile_model=name == "compile", fp16=device.type == "cuda",
                          gradient_checkpointing=checkpointing)
        step, _, _ = toolkit_step(cfg, device)
        steps[name] = _with_cudnn_benchmark(step, name == "cudnn_benchmark")
    return steps


def _time_steps(step: Step, batches: list, count: int, device: torch.device, cursor: int = 0) -> float:
    tic = time.perf_counter()
    for i in range(count):
        step(*batches[(cursor + i) % len(batches)])
    _sync(device)
    return time.perf_counter() - tic


def interleaved(steps: dict[str, Step], batches: list, device: torch.device, args: argparse.Namespace,
                emit: Emit, result: dict) -> None:
    """Warm every variant up (first step timed apart: compile / autotune), then alternate timed blocks."""
    rows = {}
    for name, step in steps.items():
        first = _time_steps(step, batches, 1, device)
        warm = _time_steps(step, batches, args.warmup, device, 1) / args.warmup
        rows[name] = {"variant": name, "first step (s)": round(first, 3), "warm step (s)": round(warm, 4),
                      "_times": [], "_steps": 0}
        result["rows"] = [_public(r) for r in rows.values()]
        emit(result)
    slowest = max(r["warm step (s)"] for r in rows.values())
    per_block = max(1, int(args.seconds / args.rounds / max(slowest, 1e-6)))
    result["notes"].append(f"{args.rounds} rounds x {per_block} steps per variant, order alternating every round")
    order = list(steps)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            rows[name]["_times"].append(_time_steps(steps[name], batches, per_block, device, r))
            rows[name]["_steps"] = per_block
    base = rows[order[0]]
    for row in rows.values():
        row["img/s"] = round(args.batch * row["_steps"] * len(row["_times"]) / sum(row["_times"]), 1)
        per_round = [b / t for t, b in zip(row["_times"], base["_times"])]
        row[f"vs {order[0]}"] = f"{row['img/s'] / base['img/s']:.3f} ({min(per_round):.2f}-{max(per_round):.2f})"
    result["rows"] = [_public(r) for r in rows.values()]
    emit(result)


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


# ---------------------------------------------------------------- sections (run in children)

def section_env(args: argparse.Namespace, emit: Emit) -> dict:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    info = machine_info()
    rows = [{"item": k, "value": v} for k, v in info.items()]
    rows.append({"item": "cuda available", "value": available})
    rows += [{"item": "CUDA warning", "value": str(w.message).splitlines()[0][:300]} for w in caught]
    rows.append({"item": "torch CUDA / cuDNN", "value": f"{torch.version.cuda} / {torch.backends.cudnn.version()}"})
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        rows.append({"item": "compute capability", "value": f"{props.major}.{props.minor}"})
        version = torch.cuda.nccl.version()
        rows.append({"item": "NCCL", "value": ".".join(map(str, version)) if isinstance(version, tuple) else version})
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
        rows.append({"item": "nvidia-smi", "value": smi.stdout.strip() or smi.stderr.strip()})
    except (OSError, subprocess.TimeoutExpired) as err:
        rows.append({"item": "nvidia-smi", "value": f"not available ({err.__class__.__name__})"})
    try:
        import nvidia.dali
        rows.append({"item": "DALI", "value": nvidia.dali.__version__})
    except Exception as err:  # noqa: BLE001 - any import failure is worth recording
        rows.append({"item": "DALI", "value": f"not importable: {err}"})
    return {"rows": rows, "notes": []}


def section_nccl(args: argparse.Namespace, emit: Emit) -> dict:
    import torch.distributed as dist
    device = _device(args)
    backend = "nccl" if device.type == "cuda" else "gloo"
    result: dict[str, Any] = {"rows": [], "notes": []}
    if backend != "nccl":
        result["notes"].append(f"NCCL skipped ({_cuda_only(args)}): the same code path ran with gloo on the CPU")
    tic = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    init_s = time.perf_counter() - tic
    try:
        tensor = torch.full((1 << 20,), 2.0, device=device)
        tic = time.perf_counter()
        dist.all_reduce(tensor)
        _sync(device)
        first_s = time.perf_counter() - tic
        correct = bool((tensor == 2.0).all())
        tic = time.perf_counter()
        for _ in range(20):
            dist.all_reduce(tensor)
        _sync(device)
        repeat_ms = (time.perf_counter() - tic) / 20 * 1e3
    finally:
        dist.destroy_process_group()
    result["rows"] = [{"backend": backend, "init_process_group (s)": round(init_s, 3),
                       "first all_reduce 4 MiB (s)": round(first_s, 3), "all_reduce 4 MiB (ms)": round(repeat_ms, 3),
                       "sum correct": correct, "destroyed": not dist.is_initialized()}]
    if not correct:
        raise RuntimeError("all_reduce over one rank changed the tensor")
    return result


def section_train(args: argparse.Namespace, emit: Emit, network: str, variants: Sequence[str]) -> dict:
    from bench_train import synthetic_batches
    device = _device(args)
    amp = "fp16=True: float16 autocast + GradScaler" if device.type == "cuda" else "fp16=False (CPU)"
    result: dict[str, Any] = {"rows": [], "notes": [
        f"{network}, batch {args.batch}, {amp}, {args.classes} classes, PartialFC_V2 sample_rate 1.0, SGD, "
        f"synthetic data on {device}"]}
    skipped = [v for v in variants if v == "cudnn_benchmark" and device.type != "cuda"]
    steps = _build_steps(args, network, [v for v in variants if v not in skipped], device)
    batches = synthetic_batches(2, args.batch, args.classes, device=device)
    interleaved(steps, batches, device, args, emit, result)
    result["rows"] += [{"variant": v, "img/s": f"skipped: CUDA only ({_cuda_only(args)})"} for v in skipped]
    return result


def section_memory(args: argparse.Namespace, emit: Emit) -> dict:
    from bench_train import synthetic_batches
    device = _device(args)
    result: dict[str, Any] = {"rows": [], "notes": [
        f"batch {args.batch}, fp16={device.type == 'cuda'}; static = allocated after one step (weights, grads, momentum); "
        "activation = peak during the timed steps - static"]}
    if device.type != "cuda":
        result["notes"].append(f"memory columns: CUDA only, skipped ({_cuda_only(args)}); step times measured")
    batches = synthetic_batches(2, args.batch, args.classes, device=device)
    for network in args.networks:
        for checkpointing in (False, True):
            row: dict[str, Any] = {"network": network, "checkpointing": checkpointing}
            try:
                step = _build_steps(args, network, ["eager"], device, checkpointing)["eager"]
            except ConfigError as err:
                result["rows"].append({**row, "step (s)": f"n/a: {err}"})
                continue
            _time_steps(step, batches, 1, device)
            static = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = _time_steps(step, batches, args.memory_steps, device) / args.memory_steps
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                row.update({"peak (MiB)": round(peak / 2**20), "static (MiB)": round(static / 2**20),
                            "activation (MiB)": round((peak - static) / 2**20)})
            row.update({"step (s)": round(seconds, 4), "img/s": round(args.batch / seconds, 1)})
            result["rows"].append(row)
            emit(result)
            del step
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        off, on = result["rows"][-2], result["rows"][-1]
        if not isinstance(on["step (s)"], float):
            continue
        cost = on["step (s)"] / off["step (s)"] - 1
        text = f"{network}: checkpointing costs {100 * cost:+.0f}% step time"
        if "activation (MiB)" in off and off["activation (MiB)"] > 0:
            text += f", cuts activation memory by {100 * (1 - on['activation (MiB)'] / off['activation (MiB)']):.0f}%"
        result["notes"].append(text + " (target: >= 40% cut at <= 35% cost)")
        emit(result)
    return result


def synthetic_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` 112x112 JPEGs (smooth colour fields + noise, quality 95), face-crop sized."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(seed)
    jpegs = []
    for _ in range(count):
        low = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
        img = cv2.resize(low, (112, 112), interpolation=cv2.INTER_CUBIC)
        img = cv2.add(img, rng.integers(0, 24, (112, 112, 3), dtype=np.uint8))
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        jpegs.append(buf.tobytes())
    return jpegs


def make_rec(folder: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """synthetic_jpegs(count) in train.rec/.idx, labels i % 100."""
    from utils.recordio import IRHeader, MXIndexedRecordIO, pack
    rec, idx = folder / "train.rec", folder / "train.idx"
    writer = MXIndexedRecordIO(str(idx), str(rec), "w")
    try:
        for i, jpeg in enumerate(synthetic_jpegs(count, seed)):
            writer.write_idx(i, pack(IRHeader(0, float(i % 100), i, 0), jpeg))
    finally:
        writer.close()
    return rec, idx


def _dali_rate(rec: Path, idx: Path, args: argparse.Namespace, decode_device: str, threads: int) -> float:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali.pipeline import Pipeline
    gpu = decode_device == "mixed"
    pipe = Pipeline(batch_size=args.dali_batch, num_threads=threads, device_id=0 if gpu else None,
                    prefetch_queue_depth=2)
    with pipe:
        jpegs, labels = fn.readers.mxnet(path=str(rec), index_path=str(idx), random_shuffle=False, name="reader")
        images = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB)
        pipe.set_outputs(images, labels)
    pipe.build()
    for _ in range(3):
        pipe.run()
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < args.dali_seconds:
        pipe.run()
        count += args.dali_batch
    if gpu:
        torch.cuda.synchronize()
    rate = count / (time.perf_counter() - tic)
    del pipe
    return rate


def _endless(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _toolkit_dali_rate(folder: Path, args: argparse.Namespace) -> float:
    """Batches/s of dataset.get_dataloader(dali=True) over the .rec, counted in images."""
    from dataset import get_dataloader
    device = _device(args)
    batches = _endless(get_dataloader(str(folder), 0, args.dali_batch, True))
    for _ in range(3):
        next(batches)
    _sync(device)
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < args.dali_seconds:
        count += next(batches)[0].size(0)
    _sync(device)
    return count / (time.perf_counter() - tic)


def section_dali(args: argparse.Namespace, emit: Emit) -> dict:
    import nvidia.dali  # noqa: F401 - a missing DALI fails the section with this import's message
    result: dict[str, Any] = {"rows": [], "notes": []}
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="gpu_check_dali_") as tmp:
        tic = time.perf_counter()
        rec, idx = make_rec(Path(tmp), args.dali_images)
        size_kib = rec.stat().st_size / args.dali_images / 1024
        result["notes"].append(f"{args.dali_images} JPEGs 112x112 (q95, {size_kib:.1f} KiB each on average) "
                               f"written in {time.perf_counter() - tic:.1f} s; batch {args.dali_batch}, "
                               f"{args.dali_seconds:.1f} s per variant after 3 warm-up batches")
        plan = [("fn.decoders.image mixed (GPU)", "mixed", min(8, cpus)),
                (f"fn.decoders.image cpu, {min(8, cpus)} threads", "cpu", min(8, cpus))]
        if cpus > 8:
            plan.append((f"fn.decoders.image cpu, {cpus} threads", "cpu", cpus))
        for label, decode_device, threads in plan:
            if decode_device == "mixed" and _cuda_only(args):
                result["rows"].append({"variant": label, "threads": threads, "img/s": f"skipped: {_cuda_only(args)}"})
                continue
            rate = _dali_rate(rec, idx, args, decode_device, threads)
            result["rows"].append({"variant": label, "threads": threads, "img/s": round(rate)})
            emit(result)
        rate = _toolkit_dali_rate(Path(tmp), args)
        where = "mixed decode, to the GPU" if _device(args).type == "cuda" else "cpu decode"
        result["rows"].append({"variant": f"toolkit DALILoader ({where}, flip, labels)", "threads": 2,
                               "img/s": round(rate)})
    return result


def _decode_rate(decode_batch: Callable[[list], Any], jpegs: list, batch: int, seconds: float,
                 device: torch.device) -> float:
    """Images/s of decode_batch over consecutive slices of `batch` JPEGs, after 2 warm-up batches."""
    slices = [jpegs[i:i + batch] for i in range(0, len(jpegs) - batch + 1, batch)]
    for chunk in slices[:2]:
        decode_batch(chunk)
    _sync(device)
    count, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        decode_batch(slices[count // batch % len(slices)])
        count += batch
    _sync(device)
    return count / (time.perf_counter() - tic)


def section_decode(args: argparse.Namespace, emit: Emit) -> dict:
    """GPU JPEG decode without DALI: torchvision.io.decode_jpeg on CUDA (nvJPEG), batched, vs the CPU."""
    import cv2
    import numpy as np
    from torchvision.io import decode_jpeg
    result: dict[str, Any] = {"rows": [], "notes": []}
    raw = synthetic_jpegs(args.dali_images)
    as_tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in raw]
    as_arrays = [np.frombuffer(b, dtype=np.uint8) for b in raw]
    batch = min(args.dali_batch, len(raw))
    result["notes"].append(f"{len(raw)} JPEGs 112x112 q95, batches of {batch}, {args.dali_seconds:.1f} s per "
                           "variant; one CPU thread for the CPU rows (per-core rates, as bench/bench_data.py)")
    cv2.setNumThreads(0)
    cpu = torch.device("cpu")
    plan: list[tuple[str, Callable[[list], Any], list, torch.device]] = [
        ("cv2.imdecode, CPU", lambda chunk: [cv2.imdecode(a, cv2.IMREAD_COLOR) for a in chunk], as_arrays, cpu),
        ("torchvision decode_jpeg, CPU", lambda chunk: decode_jpeg(chunk), as_tensors, cpu)]
    if _cuda_only(args) is None:
        gpu = _device(args)
        plan.append(("torchvision decode_jpeg, CUDA (nvJPEG), batched",
                     lambda chunk: decode_jpeg(chunk, device=gpu), as_tensors, gpu))
    else:
        result["rows"].append({"variant": "torchvision decode_jpeg, CUDA (nvJPEG), batched",
                               "img/s": f"skipped: {_cuda_only(args)}"})
    base = None
    for label, decode_batch, data, device in plan:
        rate = _decode_rate(decode_batch, data, batch, args.dali_seconds, device)
        base = base or rate
        result["rows"].append({"variant": label, "img/s": round(rate), "vs cv2.imdecode": round(rate / base, 2)})
        emit(result)
    return result


def section_compile(args: argparse.Namespace, emit: Emit, network: str) -> dict:
    result = section_train(args, emit, network, ["eager", "compile"])
    result["notes"].append("torch.compile default mode (inductor) of the backbone, as config key compile=True; "
                           "its 'first step (s)' includes the compilation")
    return result


def run_section(name: str, args: argparse.Namespace, emit: Emit) -> dict:
    if name == "env":
        return section_env(args, emit)
    if name == "nccl":
        return section_nccl(args, emit)
    if name == "dali":
        return section_dali(args, emit)
    if name == "decode":
        return section_decode(args, emit)
    kind, _, network = name.partition(":")
    if not args.dry_run and not torch.cuda.is_available():
        raise RuntimeError(f"CUDA not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
                           "see the env section): full-size training sections only run on a GPU, use --dry-run")
    if name == "memory":
        return section_memory(args, emit)
    if kind == "train":
        return section_train(args, emit, network, ["eager", "channels_last", "cudnn_benchmark"])
    if kind == "compile":
        return section_compile(args, emit, network)
    raise ValueError(f"unknown section {name!r}")


def child_main(args: argparse.Namespace) -> int:
    def emit(result: dict) -> None:
        print(RESULT_MARK + json.dumps(result, default=str), flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        emit(run_section(args.child, args, emit))
        return 0
    except Exception as err:  # noqa: BLE001 - the parent records any failure and goes on
        import traceback
        traceback.print_exc()
        print(RESULT_MARK + json.dumps({"error": f"{type(err).__name__}: {err}"}), flush=True)
        return 1


# ---------------------------------------------------------------- parent: plan, children, report

def plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(section, time limit in seconds), most important first; compile (slowest) last."""
    nets = args.networks
    sections = [("env", 30.0), ("nccl", 45.0), (f"train:{nets[0]}", 75.0), ("memory", 90.0), ("dali", 75.0),
                ("decode", 45.0)]
    sections += [(f"train:{n}", 75.0) for n in nets[1:]]
    sections += [(f"compile:{n}", args.compile_limit) for n in nets]
    if args.sections:
        wanted = args.sections.split(",")
        unknown = sorted(set(wanted) - {name for name, _ in sections})
        if unknown:
            raise SystemExit(f"error: unknown --sections {', '.join(unknown)}; choose from "
                             f"{', '.join(name for name, _ in sections)}")
        sections = [(name, limit) for name, limit in sections if name in wanted]
    return sections


def _child_args(args: argparse.Namespace) -> list[str]:
    out = ["--networks", ",".join(args.networks), "--batch", str(args.batch), "--classes", str(args.classes),
           "--seconds", str(args.seconds), "--rounds", str(args.rounds), "--warmup", str(args.warmup),
           "--memory-steps", str(args.memory_steps), "--dali-images", str(args.dali_images),
           "--dali-batch", str(args.dali_batch), "--dali-seconds", str(args.dali_seconds)]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out + (["--dry-run"] if args.dry_run else [])


def run_child(name: str, args: argparse.Namespace, limit: float) -> dict:
    """Run one section in a child process group; on time-out kill the group and keep its last partial result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name] + _child_args(args)
    tic = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        status = f"timed out after {limit:.0f} s (stopped)"
    results = [line[len(RESULT_MARK):] for line in out.splitlines() if line.startswith(RESULT_MARK)]
    result = json.loads(results[-1]) if results else {}
    result["status"] = status
    result["seconds"] = round(time.perf_counter() - tic, 1)
    tail = [line for line in err.strip().splitlines() if line.strip()][-3:]
    if status != "ok" and "error" not in result and tail:
        result["error"] = " | ".join(tail)[-600:]
    return result


def section_markdown(name: str, result: dict) -> str:
    lines = [f"### {name}", "", f"status: {result.get('status')} ({result.get('seconds')} s)"]
    if result.get("error"):
        lines.append(f"\nerror: `{result['error']}`")
    for note in result.get("notes", []):
        lines.append(f"\n- {note}")
    rows = result.get("rows") or []
    if rows:
        header = list(dict.fromkeys(k for row in rows for k in row))
        lines.append("\n" + markdown_table(header, [[row.get(k, "") for k in header] for row in rows]))
    return "\n".join(lines) + "\n"


def output_path(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.md"
    return REPO / "bench" / "RESULTS_gpu.md"


def write_report(path: Path, heading: str, preamble: str, done: list[tuple[str, dict]]) -> None:
    body = preamble + "\n" + "\n".join(section_markdown(name, result) for name, result in done)
    write_section(path, heading, body, title="# GPU check (bench/gpu_check.sh)")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(done), indent=1, default=str))
    os.replace(tmp, path.with_suffix(".json"))


def _gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi (the parent never initialises CUDA itself)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.strip().splitlines()
    return names[0].strip() if out.returncode == 0 and names else None


def parent_main(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    start = time.perf_counter()
    path = output_path(args)
    info = machine_info(cuda=False)
    gpu = None if args.dry_run else _gpu_name()
    heading = f"GPU check: {gpu or ('dry run on the CPU' if args.dry_run else 'no CUDA device')}"
    preamble = header_lines(argv, info) + (
        f"- budget {args.budget:.0f} s; networks {', '.join(args.networks)}; batch {args.batch}; "
        f"{args.classes} classes\n")
    done: list[tuple[str, dict]] = []
    for name, limit in plan(args):
        remaining = args.budget - (time.perf_counter() - start)
        if remaining < args.min_section:
            result = {"status": f"skipped: {remaining:.0f} s left of the {args.budget:.0f} s budget", "seconds": 0}
        else:
            print(f"[gpu_check] {name} (limit {min(limit, remaining):.0f} s) ...", flush=True)
            result = run_child(name, args, min(limit, remaining))
        print(f"[gpu_check] {name}: {result['status']} in {result['seconds']} s", flush=True)
        done.append((name, result))
        write_report(path, heading, preamble, done)
    total = time.perf_counter() - start
    write_report(path, heading, preamble + f"- total time {total:.0f} s\n", done)
    print(path.read_text() if path.exists() else "")
    print(f"[gpu_check] wrote {path} in {total:.0f} s")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes; CUDA-only parts skipped")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 450, dry run 240)")
    parser.add_argument("--out", default=None, help="markdown file (default $OUT/gpu_check.md or bench/RESULTS_gpu.md)")
    parser.add_argument("--networks", default=None, help=f"comma-separated (default {','.join(NETWORKS)}; dry run mbf)")
    parser.add_argument("--batch", type=int, default=None, help="default 128 (dry run 2)")
    parser.add_argument("--classes", type=int, default=None, help="default 10000 (dry run 100)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per variant (default 8)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 4, dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps after the first (default 5)")
    parser.add_argument("--memory-steps", type=int, default=None, help="timed steps per memory variant (default 10)")
    parser.add_argument("--compile-limit", type=float, default=None, help="seconds per compile section (default 150)")
    parser.add_argument("--dali-images", type=int, default=None, help="JPEGs to generate (default 4096)")
    parser.add_argument("--dali-batch", type=int, default=None, help="default 128")
    parser.add_argument("--dali-seconds", type=float, default=None, help="default 6")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in the children")
    parser.add_argument("--sections", default=None,
                        help="comma-separated subset of the sections to run, e.g. compile:r50,dali (default all)")
    parser.add_argument("--min-section", type=float, default=15.0, help="skip a section with less time left")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dry = args.dry_run
    defaults = {"budget": (240.0, 450.0), "networks": ("mbf", ",".join(NETWORKS)), "batch": (2, 128),
                "classes": (100, 10_000), "seconds": (0.5, 8.0), "rounds": (2, 4), "warmup": (1, 5),
                "memory_steps": (1, 10), "compile_limit": (4.0, 150.0), "dali_images": (64, 4096),
                "dali_batch": (16, 128), "dali_seconds": (0.5, 6.0), "threads": (1, None)}
    for key, (dry_value, value) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, dry_value if dry else value)
    if isinstance(args.networks, str):
        args.networks = [n for n in args.networks.split(",") if n]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    return parent_main(args, None if argv is None else [sys.argv[0], *argv])


if __name__ == "__main__":
    sys.exit(main())
