"""The synthetic-dataset workflow end to end (image folders -> im2rec -> train -> evaluate -> report),
and every command the README shows: its tool exists and accepts the options written there."""
from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO
from utils.demo_data import random_identity, render

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def write_image_folder(root: Path, identities, images_per_id: int, rng) -> None:
    for i, ident in enumerate(identities):
        folder = root / f"id_{i:03d}"
        folder.mkdir(parents=True)
        for n in range(images_per_id):
            cv2.imwrite(str(folder / f"{n}.jpg"), render(ident, rng)[:, :, ::-1])


def write_bin(path: Path, identities, num_pairs: int, rng) -> None:
    bins, issame = [], []
    for i in range(num_pairs):
        a = i % len(identities)
        b = a if i % 2 == 0 else (a + 1) % len(identities)
        for ident in (identities[a], identities[b]):
            bins.append(cv2.imencode(".jpg", render(ident, rng)[:, :, ::-1])[1].tobytes())
        issame.append(a == b)
    path.write_bytes(pickle.dumps((bins, issame)))


@pytest.mark.slow
def test_image_folders_to_comparison_table(tmp_path):
    rng = np.random.default_rng(7)
    identities = [random_identity(rng) for _ in range(14)]
    images, rec, out = tmp_path / "images", tmp_path / "rec" / "toyface", tmp_path / "work" / "toyface"
    write_image_folder(images, identities[:8], 8, rng)
    rec.mkdir(parents=True)
    for name in ("lfw", "cfp_fp"):  # agedb_30, cplfw, calfw deliberately missing
        write_bin(rec / f"{name}.bin", identities[8:], 40, rng)

    run("-m", "im2rec", "--list", "--recursive", str(rec / "train"), str(images))
    lst = (rec / "train.lst").read_text().splitlines()
    assert len(lst) == 64 and {line.split("\t")[1] for line in lst} == {f"{c}.000000" for c in range(8)}
    run("-m", "im2rec", str(rec / "train.lst"), str(images))
    assert (rec / "train.rec").stat().st_size > 0 and len((rec / "train.idx").read_text().splitlines()) == 64

    train_args = ["train_v2.py", "configs/dcface.py", "--set", "network=mbf_tiny", "embedding_size=64",
                  f"rec={rec}", f"output={out}", "batch_size=16", "num_epoch=2", "warmup_epoch=0", "fp16=false",
                  "frequent=2", "verbose=4", "num_workers=0", "verification_batch_size=40"]
    refused = subprocess.run([sys.executable, *train_args], cwd=REPO, capture_output=True, text=True, timeout=300,
                             env=ENV)
    assert refused.returncode == 4 and "agedb_30.bin" in refused.stderr and 'val_targets_missing="warn"' in \
        refused.stderr and not out.exists(), refused.stderr[-2000:]
    train = run(*train_args, "val_targets_missing=warn")
    log = (out / "training.log").read_text()
    assert re.search(r": num_classes\s+8\n", log) and re.search(r": num_image\s+64\n", log)  # "auto" resolved
    assert "agedb_30.bin" in log and "[lfw][8]Accuracy-Highest" in log and "[cfp_fp][8]Accuracy-Flip" in log
    assert (out / "model.pt").exists() and (out / "checkpoint_gpu_0.pt").exists()

    evaluation = run("-m", "eval.verification", "--model", str(out / "model.pt"), "--network", "mbf_tiny",
                     "--num-features", "64", "--data-dir", str(rec), "--json", str(out / "eval.json"),
                     "--name", "toyface", "--no-progress")
    results = json.loads((out / "eval.json").read_text())
    row = next(line for line in evaluation.stdout.splitlines() if line.startswith("| toyface"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    lfw, cfp = results["targets"]["lfw"]["acc"], results["targets"]["cfp_fp"]["acc"]
    assert cells[1] == f"{100 * lfw:.2f}" and cells[2] == f"{100 * cfp:.2f}"
    assert cells[-1] == f"{100 * (lfw + cfp) / 2:.2f}"
    assert "no result for agedb_30, cplfw, calfw" in evaluation.stdout

    report = run("-m", "eval.report", str(out), "--out", str(tmp_path / "plots"))
    assert "toyface" in report.stdout and "| LFW" in report.stdout.replace("|LFW", "| LFW")
    pngs = list((tmp_path / "plots").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def readme_commands() -> list[list[str]]:
    """Every `python ...` line in the README's shell/python code blocks, split into words."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:shell|python|bash)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():       # shell line continuations joined
            if not line.startswith(("python", "torchrun", "bash", ".venv")):
                continue
            for part in line.split("&&"):
                words = shlex.split(part.strip(), comments=True)
                if "python" in " ".join(words[:1]) or (words and words[0].endswith("/python")):
                    commands.append(words)
                elif words and words[0] == "torchrun":
                    commands.append(["python"] + [w for w in words if w.endswith(".py") or not w.startswith("--")][1:])
    return commands


# Prints every tool's --help (each run as `python -m` / `python script.py` would) as one JSON
# object: one interpreter for all tools instead of one torch import per README line.
HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for tool in sys.argv[1:]:
    buffer = io.StringIO()
    sys.argv = [tool, "--help"]
    try:
        with contextlib.redirect_stdout(buffer):
            if tool.endswith(".py"):
                runpy.run_path(tool, run_name="__main__")
            else:
                runpy.run_module(tool, run_name="__main__", alter_sys=True)
        code = None
    except SystemExit as stop:
        code = stop.code
    out[tool] = {"code": code, "help": buffer.getvalue()}
print(json.dumps(out))
"""


def help_texts(tools: list[str]) -> dict[str, str]:
    """`tool --help` for each tool (a module name or a script path), all in one fresh interpreter."""
    result = json.loads(run("-c", HELP_ALL, *tools, timeout=300).stdout.splitlines()[-1])
    for tool, got in result.items():
        assert got["code"] in (0, None) and "usage:" in got["help"], (tool, got)
    return {tool: got["help"] for tool, got in result.items()}


def test_readme_commands_name_existing_tools_and_options():
    commands = readme_commands()
    assert len(commands) >= 10
    options: dict[str, set[str]] = {}
    for words in commands:
        if words[1] == "-m":
            tool, args = words[2], words[3:]
            assert (REPO / f"{words[2].replace('.', '/')}.py").exists(), words
        else:
            tool, args = words[1], words[2:]
            assert (REPO / words[1]).exists(), words
        if tool == "train_v2.py":
            config = next(a for a in args if a.endswith(".py"))
            assert (REPO / config).exists(), f"README names a missing config: {config}"
            continue
        options.setdefault(tool, set()).update(a.split("=")[0] for a in args if a.startswith("--"))
    assert len(options) >= 5, options
    helps = help_texts(sorted(options))
    for tool, used in options.items():
        for option in sorted(used):
            assert option in helps[tool], f"README uses {option} but `{tool} --help` lacks it"


def test_tools_run_from_any_folder(tmp_path):
    """`pip install -e .` (in .ci/setup) puts the tools on PATH; `python -m` works outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    bindir = Path(sys.executable).parent
    for command in ([str(bindir / "arcface-eval"), "--help"], [str(bindir / "arcface-im2rec"), "--help"],
                    [str(bindir / "arcface-export"), "--help"]):
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr[-1500:])
    # `python -m` from another folder (module lookup as -m does it, both tools in one interpreter)
    result = subprocess.run([sys.executable, "-c", HELP_ALL, "eval.verification", "im2rec"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-1500:]
    helps = json.loads(result.stdout.splitlines()[-1])
    assert all(got["code"] == 0 and "usage:" in got["help"] for got in helps.values()), helps
    # the train entry point: a config with a misspelt key is refused by name (the error epilogue runs)
    config = tmp_path / "c.py"
    config.write_text("from easydict import EasyDict as edict\nconfig = edict()\nconfig.lr_rate = 0.1\n")
    result = subprocess.run([str(bindir / "arcface-train"), str(config)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 2 and "unknown config key 'lr_rate' in" in result.stderr and \
        "did you mean 'lr'?" in result.stderr, result.stderr
