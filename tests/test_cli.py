"""utils.cli: one exit code per error class in every tool, one stderr line, the shared parsers."""
from __future__ import annotations

import argparse

import pytest
import torch

import im2rec
import inference
import subcenter_clean
import torch2onnx
from backbones import get_model
from eval import dataset_stats, ijb, leakage, report, verification
from utils import checkpoint
from utils.cli import add_bool_argument, error_line, model_parser, run_tool, str2bool
from utils.errors import ArcFaceError, CheckpointError, ConfigError, DataError, EnvironmentVersionError


class _Stopped(ArcFaceError):
    exit_code = 3


@pytest.mark.parametrize("error, code", [(ConfigError, 2), (DataError, 4), (CheckpointError, 5),
                                         (EnvironmentVersionError, 1), (ArcFaceError, 1), (_Stopped, 3)])
def test_run_tool_exit_code_per_class(error, code, capsys):
    def body():
        raise error("bad input: the fix")

    assert run_tool(body) == code
    assert capsys.readouterr().err == "error: bad input: the fix\n"


def test_run_tool_passes_results_and_other_errors_through(capsys):
    assert run_tool(lambda: None) == 0 and run_tool(lambda: 1) == 1
    assert run_tool(lambda: {"kind": "verification"}) == 0       # a tool's payload is not a status
    with pytest.raises(KeyError):
        run_tool(lambda: {}["x"])             # a bug is a traceback, not a one-line error
    seen = []

    def body():
        raise DataError("first line\n  second line\n")

    assert run_tool(body, on_error=seen.append) == 4
    assert seen == ["error: first line; second line"] and capsys.readouterr().err == seen[0] + "\n"
    assert error_line(ConfigError("")) == "error: ConfigError"


def test_bool_argument():
    assert [str2bool(v) for v in ("true", "Yes", "1", "on", "false", "NO", "0", "off")] == [True] * 4 + [False] * 4
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false, got 'maybe'"):
        str2bool("maybe")
    parser = argparse.ArgumentParser()
    add_bool_argument(parser, "--flip-test", default=True, help="flip")
    assert parser.parse_args([]).flip_test is True
    assert parser.parse_args(["--no-flip-test"]).flip_test is False
    assert parser.parse_args(["--flip-test", "false"]).flip_test is False
    assert parser.parse_args(["--no-flip-test", "--flip-test"]).flip_test is True


def test_model_parser_is_one_set_of_flags():
    parser = argparse.ArgumentParser(parents=[model_parser()])
    args = parser.parse_args(["--model", "m.pt", "--num-features", "128"])
    assert (args.model, args.onnx, args.network, args.num_features, args.device) == ("m.pt", None, None, 128, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m.pt", "--onnx", "m.onnx"])
    with pytest.raises(SystemExit):
        parser.parse_args([])
    optional = argparse.ArgumentParser(parents=[model_parser(required=False, device=False)])
    assert vars(optional.parse_args([])) == {"model": None, "onnx": None, "network": None, "num_features": None}
    own = argparse.ArgumentParser(parents=[model_parser(weights_flag="--weight")])
    assert own.parse_args(["--weight", "w.pt"]).weight == "w.pt"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.save(get_model("mbf_tiny", num_features=32).state_dict(), root / "model.pt")
    (root / "model.onnx").write_bytes(b"\x08\x07")        # only its name and first byte are read
    (root / "bins").mkdir()
    (root / "bins" / "lfw.bin").write_bytes(b"")
    return root


def _bad_inputs(w):
    """(tool, argv, exit code): every class of error through several tools."""
    missing, onnx, model = w / "missing.pt", w / "model.onnx", w / "model.pt"
    bins = ["--data-dir", str(w / "bins"), "--targets", "lfw"]
    return [
        # ConfigError: a flag is wrong
        (inference.main, ["--weight", str(onnx), "--network", "mbf_tiny"], 2),
        (verification.main, ["--model", str(onnx), *bins], 2),
        (torch2onnx.main, [str(model), "--network", "mbf_tiny", "--num-features", "64"], 2),
        (leakage.main, ["--model", str(model), "--train", str(w), *bins, "--threshold", "3"], 2),
        (subcenter_clean.main, ["--rec", str(w), "--run", str(w), "--out", str(w / "o"), "--k", "0"], 2),
        # DataError: a data file is missing or bad
        (inference.main, ["--weight", str(model), "--network", "mbf_tiny", "--num-features", "32", "--img",
                          str(w / "nope.jpg")], 4),
        (verification.main, ["--model", str(model), "--data-dir", str(w / "nowhere")], 4),
        (dataset_stats.main, [str(w / "nowhere"), "--out", str(w / "o")], 4),
        (report.main, [str(w / "nowhere")], 4),
        (im2rec.main, ["--list", str(w / "x"), str(w / "nowhere")], 4),
        (ijb.main, ["--features", str(w / "f.npy"), "--image-path", str(w / "nowhere")], 4),
        # CheckpointError: weights or checkpoints missing or unreadable
        (inference.main, ["--weight", str(missing), "--network", "mbf_tiny"], 5),
        (verification.main, ["--model", str(missing), "--network", "mbf_tiny", *bins], 5),
        (torch2onnx.main, [str(missing), "--network", "mbf_tiny"], 5),
        (checkpoint.main, ["reshard", str(w / "nowhere"), "--world-size", "2"], 5),
        (subcenter_clean.main, ["--rec", str(w), "--run", str(w / "nowhere"), "--out", str(w / "o")], 5),
    ]


@pytest.mark.parametrize("case", range(16))
def test_every_tool_gives_the_class_exit_code_and_one_line(weights, capsys, case):
    cases = _bad_inputs(weights)
    assert len(cases) == 16
    tool, argv, code = cases[case]
    assert tool(argv) == code
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (tool.__module__, out.err)
    assert "Traceback" not in out.out + out.err
