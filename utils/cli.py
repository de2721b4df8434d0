"""What every command-line tool shares: the model options, the bool option, and the error epilogue."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

from utils.errors import ArcFaceError

TRUE_WORDS = ("1", "true", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "no", "n", "off")


def str2bool(value: str) -> bool:
    """'true' / 'false' (also yes/no, on/off, 1/0) as a bool; anything else is a usage error."""
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_bool_argument(parser: argparse.ArgumentParser, flag: str, default: bool, help: str) -> None:
    """``--flag`` (true), ``--flag true|false`` and ``--no-flag``, all into one destination."""
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(flag, dest=dest, type=str2bool, nargs="?", const=True, default=default,
                        metavar="BOOL", help=f"{help} (default {'true' if default else 'false'})")
    parser.add_argument(f"--no-{flag.lstrip('-')}", dest=dest, action="store_false", help=argparse.SUPPRESS)


def model_parser(weights_flag: Optional[str] = "--model", required: bool = True,
                 device: bool = True) -> argparse.ArgumentParser:
    """Parent parser (``parents=[...]``) of the model options: WEIGHTS | --onnx, --network, --num-features, --device.

    ``weights_flag`` None leaves out the WEIGHTS | --onnx choice (a tool with its own weights argument);
    ``device`` False leaves out --device (a tool that runs on the CPU only).
    --network and --num-features default to None: the tools read them from the run's config.json
    beside the weights (face_model.load_model), so a flag is needed only where that file is missing.
    """
    parser = argparse.ArgumentParser(add_help=False)
    if weights_flag:
        source = parser.add_mutually_exclusive_group(required=required)
        source.add_argument(weights_flag, help="model.pt written by training (or its run folder)")
        source.add_argument("--onnx", help="model exported by torch2onnx.py (float32 N x 3 x 112 x 112 input)")
    parser.add_argument("--network", default=None,
                        help="backbone name, e.g. r50, mbf (default: from config.json beside the weights)")
    parser.add_argument("--num-features", type=int, default=None,
                        help="embedding size (default: from config.json beside the weights, else 512)")
    if device:
        parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    return parser


def error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (a message quoting another tool's output may hold newlines)."""
    parts = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "error: " + ("; ".join(parts) or type(err).__name__)


def run_tool(body: Callable[[], Any], on_error: Optional[Callable[[str], None]] = None) -> int:
    """Run a tool's work; an ArcFaceError becomes one stderr line ``error: ...`` and its class's exit code.

    Exit codes, the same in every tool (``exit_code`` of the class in utils/errors.py):
        0  done (an int ``body`` returns is the status instead, e.g. im2rec --check's 1; other values
           such as a tool's result payload are ignored)
        1  any other ArcFaceError (e.g. torch2onnx's ExportError, a too old torch)
        2  ConfigError: a flag or config key is wrong (argparse's usage errors exit 2 too)
        3  reserved for train_v2: training stopped, a checkpoint written: resume it
        4  DataError: a data file (images, .rec, .bin, IJB release) is missing or bad
        5  CheckpointError: a checkpoint, model.pt or ONNX file is missing, unreadable or unwritable
    ``on_error`` also receives the line (train_v2 writes it into training.log).
    """
    try:
        code = body()
    except ArcFaceError as err:
        line = error_line(err)
        if on_error is not None:
            on_error(line)
        print(line, file=sys.stderr)
        return int(err.exit_code)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0
