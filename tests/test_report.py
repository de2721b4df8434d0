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
    expected_rows = [
        "| dcface | 97.12 | 80.00 | 88.00 | - | - | 88.37 |",
        f"| dcface (eval_final) | {acc} | - | - | {acc} | - | {acc} |",
        "| uiface | 99.10 | - | - | - | - | 99.10 |",
    ]
    for row in expected_rows:
        assert row in out.splitlines()
    assert "note: uiface: no result for cfp_fp, agedb_30, cplfw, calfw; Avg. is over 1 of 5 targets" in out
    assert md.read_text().splitlines()[:5] == ["| Name | LFW | CFP-FP | AgeDB | CPLFW | CALFW | Avg. |",
                                               md.read_text().splitlines()[1], *expected_rows]
    for name in ("dcface", "uiface"):
        _assert_png(tmp_path / "plots" / f"{name}.png")


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
    assert R.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and "training.log" in err
    assert R.main([str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
