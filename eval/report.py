"""Comparison tables and plots from training runs: ``python -m eval.report work_dirs/a work_dirs/b ...``.

Each argument is a run folder (its ``training.log``, any evaluator JSON written by
``python -m eval.verification --json`` and any ``ijb/ijbc.json`` / ``ijb/ijbb.json`` written by
``python -m eval.ijb``), a folder of such JSON files, or one evaluation JSON. Accuracies are in
percent like the README. Two tables, each captioned: ``last`` (the last evaluation of each run,
the model training ends with) and ``best step`` (each target's ``Accuracy-Highest``, chosen on
the test set itself). Runs whose configs differ only in ``seed`` / ``output`` share one row
(mean ± sample std over the n runs); a note names the recipe keys in which rows differ. One PNG
per run shows verification accuracy vs step, the loss curve and the ROC curves (.bin and IJB).
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from utils.cli import run_tool
from utils.errors import DataError

STANDARD_TARGETS = ("lfw", "cfp_fp", "agedb_30", "cplfw", "calfw")
TARGET_TITLES = {"lfw": "LFW", "cfp_fp": "CFP-FP", "agedb_30": "AgeDB", "cplfw": "CPLFW", "calfw": "CALFW"}
LOG_NAME = "training.log"
IJB_TARGETS = {"IJBB": "IJB-B", "IJBC": "IJB-C"}
IJB_FARS = ("1e-05", "0.0001")                   # the TAR@FAR columns the table shows
SELECTIONS = ("last", "best")
CAPTIONS = {
    "last": "Accuracy at the last evaluation of each run (`last`: the model training ends with)",
    "best": "Highest accuracy of each target over all evaluations (`best step`: chosen on the test set "
            "itself, optimistic; targets may peak at different steps)",
}
# Config keys that make a different recipe; the notes under a table name those that differ.
RECIPE_KEYS = ("network", "embedding_size", "margin", "margin_list", "margin_scale", "margin_params",
               "num_epoch", "warmup_epoch", "batch_size", "world_size", "gradient_acc", "num_image",
               "num_classes", "optimizer", "lr", "weight_decay", "lr_scheduler", "sample_rate", "fp16",
               "aug_flip", "aug_random_erasing", "aug_randaugment", "aug_randaugment_num_ops",
               "aug_randaugment_magnitude", "dali_aug")
# Keys whose difference does not make another experiment: runs differing only here share a row.
NOT_GROUPED = ("seed", "output", "resume", "overwrite", "config_file", "num_workers", "frequent",
               "tensorboard", "checkpoint_every", "save_all_states", "save_checkpoint", "check_data",
               "verification_batch_size", "rank_id", "wandb_key", "suffix_run_name", "using_wandb",
               "wandb_entity", "wandb_project", "wandb_log_all", "save_artifacts", "wandb_resume")

_NUM = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"
SPEED_RE = re.compile(rf"Speed\s+(?P<speed>{_NUM})\s+samples/sec\s+Loss\s+(?P<loss>{_NUM})\s+"
                      rf"LearningRate\s+(?P<lr>{_NUM})\s+Epoch:\s*(?P<epoch>\d+)\s+Global Step:\s*(?P<step>\d+)")
VERIFY_RE = re.compile(rf"\[(?P<target>[^\[\]]+)\]\[(?P<step>\d+)\]"
                       rf"(?P<kind>XNorm|Accuracy-Flip|Accuracy-Highest):\s*(?P<value>{_NUM})(?:\+-(?P<std>{_NUM}))?")
CONFIG_RE = re.compile(r"^(?:Training: .*?-)?: (?P<key>[A-Za-z_][A-Za-z0-9_]*) +(?P<value>.*)$")


def target_title(target: str) -> str:
    """Column title of a target as in the README table (LFW, CFP-FP, AgeDB, ...)."""
    return TARGET_TITLES.get(target, target.upper())


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _finite_max(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else None


# ----------------------------------------------------------------------------------------------
# atomic files (every output of eval.report, eval.leakage and eval.dataset_stats)
# ----------------------------------------------------------------------------------------------

def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` for a temporary name beside ``path``, then rename it over ``path``.

    A failure leaves ``path`` as it was and no temporary behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | os.PathLike, payload: Mapping) -> Path:
    """Write a JSON file atomically (NaN allowed, as the evaluator's files)."""
    return write_text(path, json.dumps(payload, indent=1, allow_nan=True) + "\n")


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save a matplotlib Figure as PNG atomically."""
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def format_cell(values: Sequence[float] | float | None, scale: float = 100.0) -> str:
    """'98.22' for one value, '98.22 ± 0.15' (mean ± sample std) for several, '-' for none."""
    if values is None:
        return "-"
    values = [values] if isinstance(values, (int, float)) else [v for v in values if _finite(v)]
    if not values:
        return "-"
    mean, std = _mean_std([v * scale for v in values])
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def markdown_table(rows: Sequence[tuple[str, Mapping[str, float | None]]],
                   targets: Sequence[str]) -> tuple[str, list[str]]:
    """README-style table (accuracies 0..1 shown in percent, two decimals) and notes on missing cells."""
    table_rows = [TableRow(name, {t: [v] for t, v in accs.items() if _finite(v)}) for name, accs in rows]
    return comparison_table(table_rows, targets, show_n=False)


@dataclass
class TableRow:
    """One row: per column key the values of the runs it holds (one value each)."""
    name: str
    accs: dict[str, list[float]]
    ijb: dict[str, list[float]] = field(default_factory=dict)     # "IJBC@0.0001" -> TARs
    n: int = 1
    avgs: list[float] | None = None      # per-run Avg. (None: the mean of the cells)


def ijb_columns(rows: Sequence[TableRow]) -> list[str]:
    """The IJB columns any row has, IJB-B before IJB-C, FAR 1e-5 before 1e-4."""
    have = {key for row in rows for key in row.ijb}
    return [f"{t}@{far}" for t in sorted(IJB_TARGETS) for far in IJB_FARS if f"{t}@{far}" in have]


def _ijb_title(column: str) -> str:
    target, far = column.split("@")
    return f"{IJB_TARGETS[target]} TAR@FAR={float(far):.0e}".replace("e-0", "e-")


def comparison_table(rows: Sequence[TableRow], targets: Sequence[str],
                     show_n: bool = True) -> tuple[str, list[str]]:
    """Markdown table: name, [n,] targets, Avg., IJB TAR@FAR columns; and notes on missing cells."""
    ijb_cols = ijb_columns(rows)
    titles = (["n"] if show_n else []) + [target_title(t) for t in targets] + ["Avg."] + \
        [_ijb_title(c) for c in ijb_cols]
    lines = ["| Name | " + " | ".join(titles) + " |",
             "|" + "|".join("-" * (len(x) + 2) for x in ["Name", *titles]) + "|"]
    notes = []
    for row in rows:
        present = [t for t in targets if row.accs.get(t)]
        cells = ([str(row.n)] if show_n else []) + [format_cell(row.accs.get(t)) for t in targets]
        cells.append(format_cell(row.avgs if row.avgs is not None else
                                 ([sum(_mean_std(row.accs[t])[0] for t in present) / len(present)]
                                  if present else None)))
        cells += [format_cell(row.ijb.get(c)) for c in ijb_cols]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
        if len(present) < len(targets):
            missing = ", ".join(t for t in targets if t not in present)
            notes.append(f"note: {row.name}: no result for {missing}; Avg. is over {len(present)} of "
                         f"{len(targets)} targets")
    return "\n".join(lines), notes


# ----------------------------------------------------------------------------------------------
# training.log
# ----------------------------------------------------------------------------------------------

@dataclass
class TrainingLog:
    """What a training.log holds: the config dump, the Speed/Loss lines and the verification lines."""
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    accuracy: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)   # step, acc, std
    highest: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    xnorm: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)          # key -> value as logged (text)

    def best(self) -> dict[str, float]:
        """Best Accuracy-Highest per target (best Accuracy-Flip when no Highest line was logged)."""
        out = {}
        for target in dict.fromkeys([*self.accuracy, *self.highest]):
            values = [v for _, v in self.highest.get(target, [])] or [a for _, a, _ in self.accuracy.get(target, [])]
            best = _finite_max(values)
            if best is not None:
                out[target] = best
        return out

    def last(self) -> dict[str, float]:
        """Accuracy-Flip of the last evaluation (highest step) per target."""
        out = {}
        for target, points in self.accuracy.items():
            step, acc, _ = max(points, key=lambda p: p[0])
            if not math.isnan(acc):
                out[target] = acc
        return out

    def select(self, selection: str) -> dict[str, float]:
        """``last()`` or ``best()``."""
        return self.last() if selection == "last" else self.best()


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
            c = CONFIG_RE.match(line)
            if c and c["key"] not in log.config:         # a resumed run logs its config again
                log.config[c["key"]] = c["value"].strip()
            continue
        target, step, value = m["target"], int(m["step"]), float(m["value"])
        if m["kind"] == "Accuracy-Flip":
            log.accuracy.setdefault(target, []).append((step, value, float(m["std"] or "nan")))
        elif m["kind"] == "Accuracy-Highest":
            log.highest.setdefault(target, []).append((step, value))
        else:
            log.xnorm.setdefault(target, []).append((step, value))
    return log


# ----------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One run folder (or one evaluation JSON, or a folder of result JSONs) given on the command line."""
    name: str
    path: Path
    log: TrainingLog | None
    evaluations: list[tuple[Path, dict]]
    ijb: list[tuple[Path, dict]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, str] | None:
        return self.log.config if self.log is not None and self.log.config else None

    def ijb_values(self) -> dict[str, float]:
        """'IJBC@0.0001' -> TAR (0..1) from the IJB result files."""
        out = {}
        for _, payload in self.ijb:
            for far in IJB_FARS:
                value = payload["tar_at_far"].get(far)
                if _finite(value):
                    out[f"{payload['target']}@{far}"] = float(value)
        return out

    def row_values(self, selection: str = "best") -> list[tuple[str, dict[str, float]]]:
        """(row label suffix, accuracies): the log's, then one per evaluation JSON ('' = the run itself)."""
        rows = [("", self.log.select(selection))] if self.log is not None else []
        for json_path, payload in self.evaluations:
            suffix = "" if not rows and len(self.evaluations) == 1 else json_path.stem
            rows.append((suffix, {t: r.get("acc") for t, r in payload.get("targets", {}).items()
                                  if _finite(r.get("acc"))}))
        if not rows and self.ijb:
            rows.append(("", {}))
        return rows

    def rows(self, selection: str = "best") -> list[tuple[str, dict[str, float]]]:
        """Table rows (name, accuracies) of this run alone."""
        return [(self.name if not s else f"{self.name} ({s})", accs) for s, accs in self.row_values(selection)]


def _load_json(path: Path) -> dict | None:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _load_evaluation(path: Path) -> dict | None:
    payload = _load_json(path)
    return payload if payload is not None and payload.get("kind") == "verification" else None


def load_ijb(path: Path) -> dict:
    """An IJB result file of python -m eval.ijb (target IJBC/IJBB, tar_at_far, roc); DataError otherwise."""
    payload = _load_json(path)
    if payload is None:
        raise DataError(f"{path}: not a JSON file; expected the ijbc.json / ijbb.json python -m eval.ijb writes")
    if payload.get("target") not in IJB_TARGETS or not isinstance(payload.get("tar_at_far"), dict):
        raise DataError(f"{path}: no 'target' (IJBC or IJBB) and 'tar_at_far' table: not a result of "
                        "python -m eval.ijb; move it out of the folder or re-run eval.ijb")
    return payload


def _ijb_files(folder: Path) -> list[tuple[Path, dict]]:
    found = []
    for where in (folder / "ijb", folder):
        for stem in ("ijbb", "ijbc"):
            if (where / f"{stem}.json").is_file():
                found.append((where / f"{stem}.json", load_ijb(where / f"{stem}.json")))
    return found


def read_run(path: str | os.PathLike) -> Run:
    """Read a run folder (training.log, evaluation and IJB JSON files) or one evaluation JSON file."""
    path = Path(path)
    if path.is_file():
        payload = _load_evaluation(path)
        if payload is not None:
            return Run(name=path.stem, path=path, log=None, evaluations=[(path, payload)])
        if path.name in ("ijbb.json", "ijbc.json"):
            return Run(name=path.resolve().parent.name, path=path, log=None, evaluations=[],
                       ijb=[(path, load_ijb(path))])
        raise DataError(f"{path}: not an evaluation JSON written by python -m eval.verification --json")
    if not path.is_dir():
        raise DataError(f"{path}: no such run folder or file")
    log_path = path / LOG_NAME
    log = parse_training_log(log_path.read_text(errors="replace")) if log_path.is_file() else None
    evaluations = [(p, e) for p in sorted(path.glob("*.json")) if (e := _load_evaluation(p)) is not None]
    ijb = _ijb_files(path)
    if log is None and not evaluations and not ijb:
        raise DataError(f"{path}: neither {LOG_NAME} nor an evaluation JSON (python -m eval.verification "
                        "--json) nor ijb/ijbc.json (python -m eval.ijb) found")
    return Run(name=path.resolve().name, path=path, log=log, evaluations=evaluations, ijb=ijb)


def _targets_of(runs: Sequence[Run]) -> list[str]:
    seen = [t for run in runs for _, accs in run.rows() for t in accs]
    return list(STANDARD_TARGETS) + [t for t in dict.fromkeys(seen) if t not in STANDARD_TARGETS]


# ----------------------------------------------------------------------------------------------
# seed groups and recipe notes
# ----------------------------------------------------------------------------------------------

def _config_value(text: str):
    """A logged config value as a Python value where it parses (so '0.1' == '0.10'), else the text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def group_key(run: Run) -> tuple:
    """Runs with equal keys are repeats of one experiment (configs equal but for seed / output)."""
    config = run.config
    if config is None:
        return ("run", str(run.path.resolve()))
    return ("config", tuple(sorted((k, repr(_config_value(v))) for k, v in config.items()
                                   if k not in NOT_GROUPED)))


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs in groups of equal group_key, in the order each group first appears."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    return list(groups.values())


_SEPARATORS = "_-. "


def group_name(runs: Sequence[Run]) -> str:
    """The runs' common name prefix ('dcface_s1', 'dcface_s2' -> 'dcface'), else the names joined."""
    names = [r.name for r in runs]
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    if any(len(n) > len(prefix) and n[len(prefix)] not in _SEPARATORS for n in names):
        prefix = prefix[:max((prefix.rfind(c) for c in _SEPARATORS), default=-1) + 1]   # whole words only
    prefix = prefix.rstrip(_SEPARATORS)
    return prefix or "+".join(names)


def build_rows(groups: Sequence[Sequence[Run]], selection: str) -> list[TableRow]:
    """One row per (group, row kind): the values of every run of the group, mean ± std in the cells."""
    rows = []
    for group in groups:
        name = group_name(group)
        kinds: dict[str, list[tuple[dict, dict]]] = {}
        for run in group:
            ijb = run.ijb_values()
            for i, (suffix, accs) in enumerate(run.row_values(selection)):
                kinds.setdefault(suffix, []).append((accs, ijb if i == 0 else {}))
        for suffix, members in kinds.items():
            rows.append(_row(name if not suffix else f"{name} ({suffix})", members))
    return rows


def _row(name: str, members: list[tuple[dict, dict]]) -> TableRow:
    accs: dict[str, list[float]] = {}
    ijb: dict[str, list[float]] = {}
    for run_accs, run_ijb in members:
        for t, v in run_accs.items():
            accs.setdefault(t, []).append(v)
        for c, v in run_ijb.items():
            ijb.setdefault(c, []).append(v)
    row = TableRow(name, accs, ijb, n=len(members))
    if len(members) > 1:
        # Avg. per run, then mean ± std of those (a std of the means would hide the seed noise)
        row.avgs = [sum(a.values()) / len(a) for a, _ in members if a]
    return row


def recipe_notes(groups: Sequence[Sequence[Run]]) -> list[str]:
    """Notes naming the recipe keys in which the rows differ, and the seeds of each group."""
    notes = []
    configs = [(group_name(g), g[0].config) for g in groups if g[0].config is not None]
    differing = []
    for key in RECIPE_KEYS:
        values = {name: cfg.get(key, "-") for name, cfg in configs}
        if len({repr(_config_value(v)) for v in values.values()}) > 1:
            differing.append(f"{key} (" + ", ".join(f"{n}: {v}" for n, v in values.items()) + ")")
    if differing:
        notes.append("note: the rows differ in recipe, not only in data: " + "; ".join(differing))
    unknown = [group_name(g) for g in groups if g[0].config is None and len(groups) > 1]
    if unknown:
        notes.append(f"note: recipe unknown for {', '.join(unknown)} (no config in a training.log)")
    for group in groups:
        if len(group) > 1:
            seeds = ", ".join(f"{r.name} (seed {r.config.get('seed', '?')})" for r in group)
            notes.append(f"note: {group_name(group)}: mean ± sample std over n={len(group)} runs: {seeds}")
    return notes


def report_tables(runs: Sequence[Run], selection: str = "both") -> str:
    """The captioned tables (last, best step or both) with their notes, as Markdown text."""
    targets = _targets_of(runs)
    groups = group_runs(runs)
    chosen = SELECTIONS if selection == "both" else (selection,)
    parts = []
    for sel in chosen:
        table, notes = comparison_table(build_rows(groups, sel), targets)
        parts.append("\n".join([f"{CAPTIONS[sel]}:", "", table, *notes]))
    shared = recipe_notes(groups)
    return "\n\n".join(parts) + ("\n\n" + "\n".join(shared) if shared else "")


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------

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
    return save_figure(fig, out_path)


def _roc_curves(run: Run) -> list[tuple[str, list, list]]:
    """(label, fpr, tpr) of every evaluation JSON target and IJB result of a run."""
    curves = []
    for json_path, payload in run.evaluations:
        for target, res in payload.get("targets", {}).items():
            suffix = f" {json_path.stem}" if len(run.evaluations) > 1 else ""
            acc = res.get("acc")
            acc_text = f" ({acc * 100:.2f}%)" if isinstance(acc, (int, float)) else ""
            curves.append((f"{target_title(target)}{suffix}{acc_text}", res.get("fpr", []), res.get("tpr", [])))
    for _, payload in run.ijb:
        roc = payload.get("roc") or {}
        tar = payload["tar_at_far"].get("0.0001")
        tar_text = f" (TAR@1e-4 {tar * 100:.2f}%)" if _finite(tar) else ""
        curves.append((f"{IJB_TARGETS[payload['target']]}{tar_text}", roc.get("fpr", []), roc.get("tpr", [])))
    return curves


def _plot_roc(ax, run: Run) -> None:
    drawn = False
    for label, fpr, tpr in _roc_curves(run):
        pairs = [(f, t) for f, t in zip(fpr, tpr) if f > 0]
        if pairs:
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], label=label)
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
    parser.add_argument("runs", nargs="+", help="run folders (training.log, evaluation JSON, ijb/) or JSON files")
    parser.add_argument("--out", help="folder for the PNGs (default: report.png inside each run folder)")
    parser.add_argument("--markdown", help="also write the tables to this Markdown file")
    parser.add_argument("--select", choices=(*SELECTIONS, "both"), default="both",
                        help="which accuracies the table shows: last evaluation, best step, or both tables "
                             "(default)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    return run_tool(lambda: report(args))


def report(args: argparse.Namespace) -> None:
    """Read every run first (a bad one stops before any output), then print and write the tables and plots."""
    runs = [read_run(p) for p in args.runs]
    text = report_tables(runs, args.select)
    print(text)
    if args.markdown:
        write_text(args.markdown, text + "\n")
    if not args.no_plots:
        for run, path in zip(runs, _png_paths(runs, args.out)):
            print(f"wrote {plot_run(run, path)}")


if __name__ == "__main__":
    sys.exit(main())
