"""Export a trained backbone (model.pt) to ONNX and check it against PyTorch with onnxruntime.

    python torch2onnx.py work_dirs/x/model.pt --network r50 [--output model.onnx] [--opset 17] [--simplify]

The graph takes one float32 NCHW input `data` (3x112x112, RGB, already normalised as
`(x - 127.5) / 127.5`, dynamic batch "None") and gives one output `embedding` (raw, not
L2-normalised), the layout the `insightface` package's ArcFaceONNX expects.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import onnx
import torch

from face_model import INPUT_SIZE, load_model, load_onnx, resolve_weight_path
from utils.cli import add_bool_argument, model_parser, run_tool
from utils.errors import ArcFaceError
from utils.image import normalize
from utils.weights import read_backbone_state

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
BATCH_DIM = "None"
RTOL = 1e-4
EXTERNAL_DATA_BYTES = 1_800_000_000
# insightface's ArcFaceONNX treats a graph whose first 8 nodes have both a Sub* and a Mul*
# named node as an MXNet model fed raw 0..255 pixels (docs/formats.md, "ONNX export").
MXNET_SUB_PREFIXES = ("Sub", "_minus")
MXNET_MUL_PREFIXES = ("Mul", "_mul")
MXNET_CHECKED_NODES = 8


class ExportError(ArcFaceError):
    """The ONNX export failed or disagrees with PyTorch."""


def looks_like_mxnet(model: onnx.ModelProto) -> bool:
    """True when insightface's ArcFaceONNX would take this graph for an MXNet model (0..255 input)."""
    names = [node.name for node in model.graph.node[:MXNET_CHECKED_NODES]]
    return any(n.startswith(MXNET_SUB_PREFIXES) for n in names) and \
        any(n.startswith(MXNET_MUL_PREFIXES) for n in names)


def fix_node_names(model: onnx.ModelProto) -> int:
    """Prefix node names that mimic MXNet's Sub*/Mul* names with '/', like torch's scoped names; returns the count."""
    taken = {node.name for node in model.graph.node}
    renamed = 0
    for node in model.graph.node:
        if node.name.startswith(MXNET_SUB_PREFIXES + MXNET_MUL_PREFIXES):
            name = "/" + node.name
            while name in taken:
                name = "/" + name
            taken.add(name)
            node.name = name
            renamed += 1
    return renamed


def random_inputs(count: int, seed: int = 0) -> torch.Tensor:
    """Normalised random images (count, 3, 112, 112), as the backbone sees them."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, INPUT_SIZE, INPUT_SIZE), dtype=torch.uint8, generator=generator)
    return normalize(images)


def _torch_export(net: torch.nn.Module, path: str, opset: int) -> None:
    """The TorchScript-based exporter (the dynamo one needs onnxscript); dummy batch 2, dynamic batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the batch-3 parity check guards the trace
        torch.onnx.export(
            net, (random_inputs(2, seed=1),), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            opset_version=opset, keep_initializers_as_inputs=False, do_constant_folding=True, dynamo=False)


def _simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxsim import simplify
    except ImportError:
        print("--simplify: onnxsim is not installed (pip install onnxsim); the model is exported unsimplified",
              file=sys.stderr)
        return model
    model, ok = simplify(model)
    if not ok:
        raise ExportError("onnxsim could not validate the simplified model; export again without --simplify")
    return model


@torch.no_grad()
def verify_onnx(path: Union[str, Path], net: torch.nn.Module, count: int = 3) -> tuple[float, float]:
    """Run onnxruntime and PyTorch on random images; returns (max abs diff, diff relative to max |output|)."""
    data = random_inputs(count)
    expected = net(data).float().numpy()
    got = load_onnx(path, "cpu")(data).numpy()
    if got.shape != expected.shape:
        raise ExportError(f"onnxruntime output shape {got.shape} != PyTorch {expected.shape} for batch {count}")
    diff = float(np.abs(got - expected).max())
    return diff, diff / max(float(np.abs(expected).max()), 1e-12)


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Save; models over protobuf's 2 GB limit (vit_h) keep their weights in `<name>.data` beside the file."""
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size < EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data")


def convert_onnx(net: torch.nn.Module, path_module: Union[str, Path, None], output: Union[str, Path],
                 opset: int = 17, simplify: bool = False) -> float:
    """Export `net` (weights from `path_module` unless None) to `output`; returns the max abs diff vs PyTorch.

    The file appears only once it passed onnx.checker and the onnxruntime parity check.
    """
    if path_module is not None:
        net.load_state_dict(read_backbone_state(resolve_weight_path(path_module, onnx_flag=None)))
    net = net.cpu().eval()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        _torch_export(net, str(work / "export.onnx"), opset)
        model = onnx.load(str(work / "export.onnx"))
        if simplify:
            model = _simplify(model)
        fix_node_names(model)
        if looks_like_mxnet(model):
            raise ExportError("the exported graph still starts with Sub*/Mul* nodes that clients take for MXNet")
        if len(model.graph.input) != 1 or len(model.graph.output) != 1:
            raise ExportError(f"expected one input and one output, got {len(model.graph.input)} and "
                              f"{len(model.graph.output)}")
        final = work / output.name
        _save(model, final)
        del model
        onnx.checker.check_model(str(final), full_check=True)
        diff, rel = verify_onnx(final, net)
        print(f"onnxruntime vs PyTorch: max abs diff {diff:.3e} (relative {rel:.3e})")
        if not rel <= RTOL:
            raise ExportError(f"onnxruntime output differs from PyTorch: max abs diff {diff:.3e}, relative "
                              f"{rel:.3e} > {RTOL:g}; {output} not written")
        data, beside = work / (output.name + ".data"), output.parent / (output.name + ".data")
        external = data.exists()
        if external:
            os.replace(data, beside)
        os.replace(final, output)
        if not external and beside.exists():
            beside.unlink()  # the weights of an earlier export too large for one file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return diff


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="ArcFace PyTorch to ONNX",
                                     parents=[model_parser(weights_flag=None, device=False)])
    parser.add_argument("input", type=str, help="model.pt, or the work directory holding it")
    parser.add_argument("--output", type=str, default=None, help="output .onnx (default: model.onnx beside the input)")
    parser.add_argument("--opset", type=int, default=17)
    add_bool_argument(parser, "--simplify", default=False, help="simplify with onnxsim when installed")
    return parser.parse_args(argv)


def export(args: argparse.Namespace) -> None:
    """Load the weights (network and size from the flags or the run's config.json), export, report."""
    loaded = load_model(args.input, network=args.network, num_features=args.num_features, device="cpu",
                        onnx_flag=None)
    output = Path(args.output) if args.output else loaded.path.parent / "model.onnx"
    convert_onnx(loaded.backbone, None, output, opset=args.opset, simplify=args.simplify)
    print(f"saved {output} (opset {args.opset}, input {INPUT_NAME} [{BATCH_DIM}, 3, {INPUT_SIZE}, {INPUT_SIZE}], "
          f"output {OUTPUT_NAME} [{BATCH_DIM}, {loaded.num_features}])")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
