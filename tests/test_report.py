"""eval/report.py: log parsing, the comparison table, the per-run PNGs."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from eval import report as R
from eval import verification as V

PREFIX = "Training: 2026-11-28 01:20:00,123-"


def _speed(step, loss, fp16=True, prefix=PREFIX):
    scale = "Fp16 Grad Scale: 65536   " if fp16 else ""
    return (f"{prefix}Speed 1234.56 samples/sec   Loss {loss:.4f}   LearningRate 0.100000   Epoch: 0   "
            f"Global Step: {step}   {scale}Required: 10 hours")


def _verify(target, step, acc, highest, prefix=PREFIX):
    return [f"{prefix}[{target}][{step}]XNorm: 21.123456",
            f"{prefix}[{target}][{step}]Accuracy-Flip: {acc:1.5f}+-0.00300",
            f"{prefix}[{target}][{step}]Accuracy-Highest: {highest:1.5f}"]


LOG_LINES = [
    "Training: 2026-11-28 01:19:00,000-: margin_list    (1.0, 0.5, 0.0)",
    _speed(100, 12.3456), _speed(200, 11.5, fp16=False, prefix=""), _speed(300, float("nan")),
    *_verify("lfw", 2000, 0.95, 0.95), *_verify("cfp_fp", 2000, 0.80, 0.80),
    *_verify("lfw", 4000, 0.97123, 0.97123, prefix=""), *_verify("cfp_fp", 4000, 0.79, 0.80),
    *_verify("lfw", 6000, 0.96, 0.97123), *_verify("agedb_30", 6000, 0.88, 0.88),
]


def test_parse_training_log():
    log = R.parse_training_log("\n".join(LOG_LINES))
    assert log.steps == [100, 200, 300]
    assert log.loss[:2] == [12.3456, 11.5] and np.isnan(log.loss[2])
    assert log.lr == [0.1] * 3 and log.speed == [1234.56] * 3
    assert log.accuracy["lfw"] == [(2000, 0.95, 0.003), (4000, 0.97123, 0.003), (6000, 0.96, 0.003)]
    assert log.highest["cfp_fp"] == [(2000, 0.8), (4000, 0.8)]
    assert log.xnorm["agedb_30"] == [(6000, 21.123456)]
    assert log.best() == {"lfw": 0.97123, "cfp_fp": 0.80, "agedb_30": 0.88}


def test_parse_callback_lines_from_fixture(fixtures_dir):
    lines = json.loads((fixtures_dir / "verification" / "expected.json").read_text())["flip_p300"][
        "log_lines_as_upstream_prints"]
    log = R.parse_training_log("\n".join(lines))
    assert log.xnorm == {"flip_p300": [(0, 22.164981)]}
    assert log.accuracy == {"flip_p300": [(0, 0.95667, 0.03)]}


def test_markdown_table_format_and_missing_note():
    table, notes = R.markdown_table([("a", {"lfw": 0.9822, "cfp_fp": 0.85864, "agedb_30": 0.8882,
                                             "cplfw": 0.8132, "calfw": 0.911}),
                                     ("b", {"lfw": 0.99, "calfw": None})], R.STANDARD_TARGETS)
    lines = table.splitlines()
    assert lines[0] == "| Name | LFW | CFP-FP | AgeDB | CPLFW | CALFW | Avg. |"
    assert set(lines[1]) == {"|", "-"}
    assert lines[2] == "| a | 98.22 | 85.86 | 88.82 | 81.32 | 91.10 | 89.06 |"
    assert lines[3] == "| b | 99.00 | - | - | - | - | 99.00 |"
    assert notes == ["note: b: no result for cfp_fp, agedb_30, cplfw, calfw; Avg. is over 1 of 5 targets"]


def _evaluation_json(fixtures_dir, path):
    data = np.load(fixtures_dir / "verification" / "small_p300.npz")
    ev = V.evaluate_folds(data["embeddings"], data["issame"])
    record = V.result_dict(ev, 1.0, "lfw.bin")
    payload = {"kind": "verification", "name": "final", "targets": {"lfw": record, "cplfw": record}}
    path.write_text(json.dumps(payload))
    return record


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] > 400 and img.size[1] > 200


def test_report_cli_table_pngs_and_markdown(fixtures_dir, tmp_path, capsys):
    run_a = tmp_path / "dcface"
    run_a.mkdir()
    (run_a / "training.log").write_text("\n".join(LOG_LINES) + "\n")
    record = _evaluation_json(fixtures_dir, run_a / "eval_final.json")
    (run_a / "config.json").write_text('{"not": "an evaluation"}')
    run_b = tmp_path / "uiface"
    run_b.mkdir()
    (run_b / "training.log").write_text("\n".join(_verify("lfw", 2000, 0.99, 0.991)) + "\n")
    md = tmp_path / "table.md"

    assert R.main([str(run_a), str(run_b), "--out", str(tmp_path / "plots"), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    acc = f"{record['acc'] * 100:.2f}"
    header = "| Name | n | LFW | CFP-FP | AgeDB | CPLFW | CALFW | Avg. |"
    best_rows = [                        # each target's Accuracy-Highest
        "| dcface | 1 | 97.12 | 80.00 | 88.00 | - | - | 88.37 |",
        f"| dcface (eval_final) | 1 | {acc} | - | - | {acc} | - | {acc} |",
        "| uiface | 1 | 99.10 | - | - | - | - | 99.10 |",
    ]
    last_rows = [                        # the last evaluation: lfw 0.96 (step 6000), cfp_fp 0.79 (4000)
        "| dcface | 1 | 96.00 | 79.00 | 88.00 | - | - | 87.67 |",
        f"| dcface (eval_final) | 1 | {acc} | - | - | {acc} | - | {acc} |",
        "| uiface | 1 | 99.00 | - | - | - | - | 99.00 |",
    ]
    lines = out.splitlines()
    last_at = lines.index(R.CAPTIONS["last"] + ":")
    best_at = lines.index(R.CAPTIONS["best"] + ":")
    assert last_at < best_at
    assert lines[last_at + 2] == header and lines[last_at + 4:last_at + 7] == last_rows
    assert lines[best_at + 2] == header and lines[best_at + 4:best_at + 7] == best_rows
    assert "note: uiface: no result for cfp_fp, agedb_30, cplfw, calfw; Avg. is over 1 of 5 targets" in out
    assert md.read_text().splitlines() == lines[:len(md.read_text().splitlines())]
    for name in ("dcface", "uiface"):
        _assert_png(tmp_path / "plots" / f"{name}.png")


def test_select_shows_one_captioned_table(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training.log").write_text("\n".join(LOG_LINES))
    assert R.main([str(run), "--select", "last", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(R.CAPTIONS["last"]) and R.CAPTIONS["best"] not in out
    assert "| run | 1 | 96.00 | 79.00 | 88.00 | - | - | 87.67 |" in out
    assert R.main([str(run), "--select", "best", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(R.CAPTIONS["best"]) and "| run | 1 | 97.12 | 80.00 | 88.00 | - | - | 88.37 |" in out


def _config_lines(**overrides):
    config = dict(network="r50", margin_list=(1.0, 0.5, 0.0), num_epoch=20, batch_size=128, num_image=500000,
                  aug_flip=True, lr=0.1, rec="/data/dcface", seed=2048, output="work_dirs/x", num_workers=2)
    config.update(overrides)
    return [f"{PREFIX}: {k}" + " " * max(25 - len(k), 1) + str(v) for k, v in config.items()]


def _run_folder(root, name, accs_by_step, **config):
    """A run folder whose training.log has the config dump and verification lines {step: {target: acc}}."""
    folder = root / name
    folder.mkdir()
    lines = [f"{PREFIX}rank_id: 0", *_config_lines(**config)]
    best = {}
    for step, accs in accs_by_step.items():
        lines.append(_speed(step, 10.0))
        for target, acc in accs.items():
            best[target] = max(best.get(target, 0.0), acc)
            lines += _verify(target, step, acc, best[target])
    (folder / "training.log").write_text("\n".join(lines) + "\n")
    return folder


def test_seeds_are_one_row_with_mean_std_and_n(tmp_path, capsys):
    last = {"s1": (0.97, 0.85), "s2": (0.98, 0.86), "s3": (0.99, 0.90)}
    folders = [_run_folder(tmp_path, f"dcface_{s}", {1000: {"lfw": 0.995, "cfp_fp": 0.95},
                                                     2000: {"lfw": a, "cfp_fp": b}},
                           seed=i + 1, output=f"work_dirs/dcface_{s}")
               for i, (s, (a, b)) in enumerate(last.items())]
    other = _run_folder(tmp_path, "uiface", {2000: {"lfw": 0.99, "cfp_fp": 0.91}}, rec="/data/uiface")
    assert R.main([*map(str, folders), str(other), "--no-plots", "--select", "last"]) == 0
    out = capsys.readouterr().out
    # by hand: lfw 97, 98, 99 -> 98.00 ± 1.00; cfp_fp 85, 86, 90 -> 87.00 ± 2.65 (sample std);
    # per-run Avg. over lfw, cfp_fp: 91, 92, 94.5 -> 92.50 ± 1.80
    assert "| dcface | 3 | 98.00 ± 1.00 | 87.00 ± 2.65 | - | - | - | 92.50 ± 1.80 |" in out.splitlines()
    assert "| uiface | 1 | 99.00 | 91.00 | - | - | - | 95.00 |" in out.splitlines()
    assert ("note: dcface: mean ± sample std over n=3 runs: dcface_s1 (seed 1), dcface_s2 (seed 2), "
            "dcface_s3 (seed 3)") in out
    assert "differ in recipe" not in out              # same recipe, only the data differ
    assert R.main([*map(str, folders), "--no-plots", "--select", "best"]) == 0
    assert "| dcface | 3 | 99.50 ± 0.00 | 95.00 ± 0.00 | - | - | - | 97.25 ± 0.00 |" in capsys.readouterr().out


def test_rows_differing_in_recipe_get_a_note_naming_the_keys(tmp_path, capsys):
    accs = {2000: {"lfw": 0.99}}
    a = _run_folder(tmp_path, "a", accs)
    b = _run_folder(tmp_path, "b", accs, network="r100", num_epoch=40, aug_randaugment=True, seed=7)
    assert R.main([str(a), str(b), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| a | 1 |" in out and "| b | 1 |" in out                   # not grouped
    note = next(line for line in out.splitlines() if "differ in recipe" in line)
    assert "network (a: r50, b: r100)" in note and "num_epoch (a: 20, b: 40)" in note
    assert "aug_randaugment (a: -, b: True)" in note
    assert "batch_size" not in note and "seed" not in note and "lr (" not in note


def _ijb_json(path, target, tars, auc=0.99):
    fars = ["1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    fpr = [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    payload = {"target": target, "name": f"run-{target}", "model": "model.pt",
               "switches": {"flip": True, "norm": True, "detector_score": True},
               "tar_at_far": dict(zip(fars, tars)), "auc": auc,
               "roc": {"fpr": fpr, "tpr": [0.0, *tars, 1.0]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_ijb_results_join_the_table_and_the_roc_plot(tmp_path, capsys):
    run = _run_folder(tmp_path, "dcface", {2000: {"lfw": 0.99}})
    _ijb_json(run / "ijb" / "ijbc.json", "IJBC", [0.5, 0.61234, 0.72345, 0.8, 0.9, 0.95])
    _ijb_json(run / "ijb" / "ijbb.json", "IJBB", [0.4, 0.55556, 0.66666, 0.8, 0.9, 0.95])
    plain = _run_folder(tmp_path, "plain", {2000: {"lfw": 0.98}}, rec="/data/other")
    standalone = tmp_path / "ijb_only"
    _ijb_json(standalone / "ijbc.json", "IJBC", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert R.main([str(run), str(plain), str(standalone), "--select", "last", "--out", str(tmp_path / "png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| Name | n | LFW | CFP-FP | AgeDB | CPLFW | CALFW | Avg. | IJB-B TAR@FAR=1e-5 | "
                        "IJB-B TAR@FAR=1e-4 | IJB-C TAR@FAR=1e-5 | IJB-C TAR@FAR=1e-4 |")
    assert lines[4] == "| dcface | 1 | 99.00 | - | - | - | - | 99.00 | 55.56 | 66.67 | 61.23 | 72.34 |"
    assert lines[5] == "| plain | 1 | 98.00 | - | - | - | - | 98.00 | - | - | - | - |"
    assert lines[6] == "| ijb_only | 1 | - | - | - | - | - | - | - | - | 20.00 | 30.00 |"
    curves = R._roc_curves(R.read_run(run))
    assert [label for label, _, _ in curves] == ["IJB-B (TAR@1e-4 66.67%)", "IJB-C (TAR@1e-4 72.34%)"]
    _assert_png(tmp_path / "png" / "dcface.png")
    (run / "ijb" / "ijbc.json").unlink()
    (run / "ijb" / "ijbb.json").unlink()
    R.plot_run(R.read_run(run), tmp_path / "without.png")
    assert (tmp_path / "without.png").read_bytes() != (tmp_path / "png" / "dcface.png").read_bytes()


def test_seed_groups_average_ijb_too(tmp_path, capsys):
    runs = []
    for seed, tar in ((1, 0.70), (2, 0.74)):
        run = _run_folder(tmp_path, f"r_{seed}", {10: {"lfw": 0.9}}, seed=seed)
        _ijb_json(run / "ijb" / "ijbc.json", "IJBC", [0.5, 0.6, tar, 0.8, 0.9, 0.95])
        runs.append(str(run))
    assert R.main([*runs, "--no-plots", "--select", "last"]) == 0
    assert "| r | 2 | 90.00 ± 0.00 | - | - | - | - | 90.00 ± 0.00 | 60.00 ± 0.00 | 72.00 ± 2.83 |" in \
        capsys.readouterr().out


def test_bad_ijb_file_is_one_line_naming_it(tmp_path, capsys):
    run = _run_folder(tmp_path, "run", {10: {"lfw": 0.9}})
    (run / "ijb").mkdir()
    (run / "ijb" / "ijbc.json").write_text('{"target": "LFW"}')
    assert R.main([str(run), "--no-plots"]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run / "ijb" / "ijbc.json") in err and "eval.ijb" in err


def test_report_default_png_locations_and_json_argument(fixtures_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "training.log").write_text("\n".join(LOG_LINES))
    json_path = tmp_path / "standalone.json"
    _evaluation_json(fixtures_dir, json_path)
    assert R.main([str(run), str(json_path)]) == 0
    capsys.readouterr()
    _assert_png(run / "report.png")
    _assert_png(tmp_path / "standalone_report.png")


def test_report_errors_name_the_path(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert R.main([str(tmp_path / "empty")]) == 4
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "training.log" in err
    assert R.main([str(tmp_path / "nope")]) == 4
    assert "no such run folder" in capsys.readouterr().err
