"""Smoke runs of bench/bench_train.py --quick and bench/gpu_check.py --dry-run (code paths, not speed)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_bench_train_quick(tmp_path):
    out, raw = tmp_path / "RESULTS_train.md", tmp_path / "train.json"
    _run(["bench/bench_train.py", "--quick", "--threads", "1", "--out", str(out), "--json", str(raw)], 300)
    data = json.loads(raw.read_text())
    assert data["peak_gflops"] > 0
    (mbf,) = data["networks"]
    assert mbf["network"] == "mbf" and mbf["gmacs"] == pytest.approx(0.4375, abs=1e-3)  # spec/models.md
    variants = mbf["variants"]
    assert set(variants) == {"plain", "toolkit", "channels_last"}
    for res in variants.values():
        assert res["img_s"] > 0 and res["gflops"] > 0 and math.isfinite(res["first_loss"])
    # Same weights and batch: the toolkit's first loss equals the plain loop's (same work is compared).
    assert variants["toolkit"]["first_loss"] == pytest.approx(variants["plain"]["first_loss"], rel=1e-4)
    assert variants["channels_last"]["first_loss"] == pytest.approx(variants["toolkit"]["first_loss"], rel=1e-4)
    text = out.read_text()
    assert "## Training step (quick, mbf, batch 8, 1 threads)" in text
    assert "| mbf | 0.438 |" in text and "command: `python bench/bench_train.py --quick" in text


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = _run(["bench/gpu_check.py", "--dry-run", "--out", str(out)], 400)
    results = json.loads(out.with_suffix(".json").read_text())
    assert list(results) == ["env", "nccl", "train:mbf", "memory", "dali", "decode", "compile:mbf"], \
        proc.stdout[-2000:]
    for name in ("env", "nccl", "train:mbf", "memory", "dali", "decode"):
        assert results[name]["status"] == "ok", (name, results[name])
    assert results["nccl"]["rows"][0]["backend"] == "gloo" and results["nccl"]["rows"][0]["sum correct"]
    train = {row["variant"]: row for row in results["train:mbf"]["rows"]}
    assert train["eager"]["img/s"] > 0 and train["channels_last"]["img/s"] > 0
    assert train["cudnn_benchmark"]["img/s"].startswith("skipped: CUDA only")
    dali = {row["variant"]: row for row in results["dali"]["rows"]}
    assert dali["fn.decoders.image mixed (GPU)"]["img/s"].startswith("skipped")
    assert all(isinstance(row["img/s"], int) and row["img/s"] > 0
               for name, row in dali.items() if "mixed" not in name)
    decode = {row["variant"]: row for row in results["decode"]["rows"]}
    assert decode["torchvision decode_jpeg, CUDA (nvJPEG), batched"]["img/s"].startswith("skipped")
    assert decode["cv2.imdecode, CPU"]["vs cv2.imdecode"] == 1.0
    assert decode["torchvision decode_jpeg, CPU"]["img/s"] > 0
    # The compile section gets 4 s in a dry run: a time-out that is recorded, not a crash.
    assert results["compile:mbf"]["status"].startswith(("timed out", "ok"))
    text = out.read_text()
    for name in results:
        assert f"### {name}" in text


@pytest.mark.slow
def test_gpu_check_sh_finds_python_and_runs(tmp_path):
    """The shell entry point picks an interpreter with torch and hands its options to gpu_check.py."""
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--sections", "nccl"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "running bench/gpu_check.py with a budget of" in proc.stdout
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(results) == ["nccl"] and results["nccl"]["status"] == "ok"
    assert "### nccl" in (tmp_path / "gpu_check.md").read_text()


def _probe_wheel(folder: Path) -> None:
    """A minimal pure-Python wheel holding the module arcface_gpu_check_probe."""
    import zipfile
    info = "arcface_gpu_check_probe-0.1.dist-info"
    files = {"arcface_gpu_check_probe.py": "VALUE = 1\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: arcface-gpu-check-probe\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    folder.mkdir()
    with zipfile.ZipFile(folder / "arcface_gpu_check_probe-0.1-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)


@pytest.mark.slow
def test_gpu_check_sh_installs_carried_wheels_offline(tmp_path):
    """On a machine without an index, wheels carried in .whl/ are installed (--no-index) before the checks."""
    _probe_wheel(tmp_path / "wheels")
    env = {**os.environ, "OUT": str(tmp_path), "TMPDIR": str(tmp_path), "GPU_CHECK_WHEELS": str(tmp_path / "wheels")}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--sections", "nccl"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "installing the carried wheels from" in proc.stdout
    assert (tmp_path / "arcface-gpu-check-site" / "arcface_gpu_check_probe.py").exists()
    assert json.loads((tmp_path / "gpu_check.json").read_text())["nccl"]["status"] == "ok"
