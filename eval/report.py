"""Comparison table and plots from training runs: ``python -m eval.report work_dirs/a work_dirs/b ...``.

Each argument is a run folder (its ``training.log`` and any evaluator JSON written by
``python -m eval.verification --json``) or such a JSON file. The table holds the best
``Accuracy-Highest`` per target from the log (and one row per evaluation JSON), in percent like
the README; one PNG per run shows verification accuracy vs step, the loss curve and ROC curves.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from utils.errors import ArcFaceError, DataError

STANDARD_TARGETS = ("lfw", "cfp_fp", "agedb_30", "cplfw", "calfw")
TARGET_TITLES = {"lfw": "LFW", "cfp_fp": "CFP-FP", "agedb_30": "AgeDB", "cplfw": "CPLFW", "calfw": "CALFW"}
LOG_NAME = "training.log"

_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
SPEED_RE = re.compile(rf"Speed\s+(?P<speed>{_NUM})\s+samples/sec\s+Loss\s+(?P<loss>{_NUM})\s+"
                      rf"LearningRate\s+(?P<lr>{_NUM})\s+Epoch:\s*(?P<epoch>\d+)\s+Global Step:\s*(?P<step>\d+)")
VERIFY_RE = re.compile(rf"\[(?P<target>[^\[\]]+)\]\[(?P<step>\d+)\]"
                       rf"(?P<kind>XNorm|Accuracy-Flip|Accuracy-Highest):\s*(?P<value>{_NUM})(?:\+-(?P<std>{_NUM}))?")


def target_title(target: str) -> str:
    """Column title of a target as in the README table (LFW, CFP-FP, AgeDB, ...)."""
    return TARGET_TITLES.get(target, target.upper())


def _finite_max(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else None


def markdown_table(rows: Sequence[tuple[str, Mapping[str, float | None]]],
                   targets: Sequence[str]) -> tuple[str, list[str]]:
    """README-style table (accuracies 0..1 shown in percent, two decimals) and notes on missing cells."""
    titles = [target_title(t) for t in targets]
    lines = ["| Name | " + " | ".join(titles) + " | Avg. |",
             "|" + "|".join("-" * (len(x) + 2) for x in ["Name", *titles, "Avg."]) + "|"]
    notes = []
    for name, accs in rows:
        present = [t for t in targets if accs.get(t) is not None and not math.isnan(accs[t])]
        cells = [f"{accs[t] * 100:.2f}" if t in present else "-" for t in targets]
        avg = f"{sum(accs[t] for t in present) / len(present) * 100:.2f}" if present else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {avg} |")
        if len(present) < len(targets):
            missing = ", ".join(t for t in targets if t not in present)
            notes.append(f"note: {name}: no result for {missing}; Avg. is over {len(present)} of "
                         f"{len(targets)} targets")
    return "\n".join(lines), notes


@dataclass
class TrainingLog:
    """What a training.log holds: the Speed/Loss lines and the verification lines."""
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    accuracy: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)   # step, acc, std
    highest: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    xnorm: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def best(self) -> dict[str, float]:
        """Best Accuracy-Highest per target (best Accuracy-Flip when no Highest line was logged)."""
        out = {}
        for target in dict.fromkeys([*self.accuracy, *self.highest]):
            values = [v for _, v in self.highest.get(target, [])] or [a for _, a, _ in self.accuracy.get(target, [])]
            best = _finite_max(values)
            if best is not None:
                out[target] = best
        return out


def parse_training_log(text: str) -> TrainingLog:
    """Parse the original arcface_torch log lines (the ``Training: <asctime>-`` prefix is optional)."""
    log = TrainingLog()
    for line in text.splitlines():
        m = SPEED_RE.search(line)
        if m:
            log.steps.append(int(m["step"]))
            log.loss.append(float(m["loss"]))
            log.lr.append(float(m["lr"]))
            log.speed.append(float(m["speed"]))
            continue
        m = VERIFY_RE.search(line)
        if not m:
            continue
        target, step, value = m["target"], int(m["step"]), float(m["value"])
        if m["kind"] == "Accuracy-Flip":
            log.accuracy.setdefault(target, []).append((step, value, float(m["std"] or "nan")))
        elif m["kind"] == "Accuracy-Highest":
            log.highest.setdefault(target, []).append((step, value))
        else:
            log.xnorm.setdefault(target, []).append((step, value))
    return log


@dataclass
class Run:
    """One run folder (or one evaluation JSON) given on the command line."""
    name: str
    path: Path
    log: TrainingLog | None
    evaluations: list[tuple[Path, dict]]

    def rows(self) -> list[tuple[str, dict[str, float]]]:
        """Table rows: the log's best accuracies, then one row per evaluation JSON."""
        rows = [(self.name, self.log.best())] if self.log is not None else []
        for json_path, payload in self.evaluations:
            label = self.name if not rows and len(self.evaluations) == 1 else f"{self.name} ({json_path.stem})"
            rows.append((label, {t: r.get("acc") for t, r in payload.get("targets", {}).items()}))
        return rows


def _load_evaluation(path: Path) -> dict | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("kind") == "verification" else None


def read_run(path: str | os.PathLike) -> Run:
    """Read a run folder (training.log + evaluation JSON files) or one evaluation JSON file."""
    path = Path(path)
    if path.is_file():
        payload = _load_evaluation(path)
        if payload is None:
            raise DataError(f"{path}: not an evaluation JSON written by python -m eval.verification --json")
        return Run(name=path.stem, path=path, log=None, evaluations=[(path, payload)])
    if not path.is_dir():
        raise DataError(f"{path}: no such run folder or file")
    log_path = path / LOG_NAME
    log = parse_training_log(log_path.read_text(errors="replace")) if log_path.is_file() else None
    evaluations = [(p, e) for p in sorted(path.glob("*.json")) if (e := _load_evaluation(p)) is not None]
    if log is None and not evaluations:
        raise DataError(f"{path}: neither {LOG_NAME} nor an evaluation JSON (python -m eval.verification "
                        "--json) found")
    return Run(name=path.resolve().name, path=path, log=log, evaluations=evaluations)


def _targets_of(runs: Sequence[Run]) -> list[str]:
    seen = [t for run in runs for _, accs in run.rows() for t in accs]
    return list(STANDARD_TARGETS) + [t for t in dict.fromkeys(seen) if t not in STANDARD_TARGETS]


def plot_run(run: Run, out_path: Path) -> Path:
    """One PNG: verification accuracy vs step per target, loss vs step, ROC (TPR vs FAR, log x)."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(16, 4.8), dpi=100)
    ax_acc, ax_loss, ax_roc = fig.subplots(1, 3)
    log = run.log
    if log is not None and log.accuracy:
        for target, points in log.accuracy.items():
            points = sorted(points)
            ax_acc.plot([p[0] for p in points], [p[1] * 100 for p in points], marker="o", ms=3,
                        label=target_title(target))
        ax_acc.legend(fontsize=8)
    else:
        ax_acc.text(0.5, 0.5, "no verification lines", ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set(title="Verification (Accuracy-Flip)", xlabel="global step", ylabel="accuracy (%)")
    if log is not None and log.steps:
        ax_loss.plot(log.steps, log.loss, lw=1)
    else:
        ax_loss.text(0.5, 0.5, "no loss lines", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set(title="Training loss", xlabel="global step", ylabel="loss")
    _plot_roc(ax_roc, run)
    for ax in (ax_acc, ax_loss, ax_roc):
        ax.grid(True, alpha=0.3)
    fig.suptitle(run.name)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out_path)
    return out_path


def _plot_roc(ax, run: Run) -> None:
    drawn = False
    for json_path, payload in run.evaluations:
        for target, res in payload.get("targets", {}).items():
            pairs = [(f, t) for f, t in zip(res.get("fpr", []), res.get("tpr", [])) if f > 0]
            if not pairs:
                continue
            suffix = f" {json_path.stem}" if len(run.evaluations) > 1 else ""
            acc = res.get("acc")
            acc_text = f" ({acc * 100:.2f}%)" if isinstance(acc, (int, float)) else ""
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], label=f"{target_title(target)}{suffix}{acc_text}")
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation JSON", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="ROC", xlabel="FAR (false positive rate)", ylabel="TPR")


def _png_paths(runs: Sequence[Run], out_dir: str | None) -> list[Path]:
    paths, used = [], set()
    for run in runs:
        if out_dir is None:
            path = run.path / "report.png" if run.path.is_dir() else run.path.with_name(f"{run.path.stem}_report.png")
        else:
            stem, k = run.name, 1
            while stem in used:
                k += 1
                stem = f"{run.name}_{k}"
            used.add(stem)
            path = Path(out_dir) / f"{stem}.png"
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (training.log, evaluation JSON) or JSON files")
    parser.add_argument("--out", help="folder for the PNGs (default: report.png inside each run folder)")
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    parser.add_argument("--no-plots", action="store_true", help="table only")
    args = parser.parse_args(argv)
    try:
        runs = [read_run(p) for p in args.runs]
    except ArcFaceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table, notes = markdown_table([row for run in runs for row in run.rows()], _targets_of(runs))
    print(table)
    for note in notes:
        print(note)
    if args.markdown:
        tmp = f"{args.markdown}.tmp{os.getpid()}"
        Path(tmp).write_text(table + "\n" + "".join(f"\n{n}" for n in notes) + ("\n" if notes else ""))
        os.replace(tmp, args.markdown)
    if not args.no_plots:
        for run, path in zip(runs, _png_paths(runs, args.out)):
            print(f"wrote {plot_run(run, path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
