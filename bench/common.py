"""Shared helpers of the bench scripts: a description of the machine and a results-section writer.

    from common import machine_info, machine_line, write_section
    write_section(path, "Training step (2026-01-01)", body, title="# Benchmark results: training")

`write_section` replaces the section with the same heading (or appends a new one) atomically, so
re-running a benchmark updates its numbers instead of piling up copies.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(cuda: bool = True) -> dict[str, Any]:
    """CPU model, logical CPUs (all / usable by this process), OS, Python, torch and its threads; with
    `cuda`, the first GPU when there is one (this initialises CUDA in the calling process)."""
    import torch
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "cpus_usable": usable,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "gpu": None,
    }
    if cuda and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for a results file, e.g. 'AMD EPYC, 2 CPUs (2 usable), Linux 6.1, Python 3.12, torch 2.14.1'."""
    info = info or machine_info()
    line = (f"{info['cpu']}, {info['cpus']} CPUs ({info['cpus_usable']} usable), {info['os']}, "
            f"Python {info['python']}, torch {info['torch']}")
    return line + (f", GPU: {info['gpu']}" if info.get("gpu") else "")


def load_line() -> str:
    """The 1/5/15-minute load averages (other processes on a shared machine skew CPU timings)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return "load average unknown"
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min)"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed from the repo root, e.g. `python bench/bench_train.py --quick`."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv else Path("?")
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = str(argv[0]) if argv else "?"
    return " ".join(["python", script_text] + [shlex.quote(a) for a in argv[1:]])


def header_lines(argv: Sequence[str] | None = None, info: dict[str, Any] | None = None) -> str:
    """The machine / date / command bullet list every results section starts with."""
    return (f"- machine: {machine_line(info)}\n- date: {now()}; {load_line()} when written\n"
            f"- command: `{command_line(argv)}`\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_section(path: str | Path, heading: str, body: str, title: str = "# Benchmark results") -> None:
    """Replace the `## heading` section of `path` (or append it), writing through a temp file + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.exists() else title.rstrip("\n") + "\n"
    sections = text.split("\n## ")
    kept = [sections[0].rstrip("\n")]
    kept += [s.rstrip("\n") for s in sections[1:] if s.split("\n", 1)[0].strip() != heading.strip()]
    new_text = "\n\n## ".join(kept + [f"{heading.strip()}\n\n{body.strip()}"]) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new_text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
