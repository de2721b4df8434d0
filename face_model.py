"""A trained face model as the tools use it: model.pt (with its run's config.json) or an exported ONNX file.

The one place that builds a backbone from a weights file, reads the config.json beside it, opens
an onnxruntime session and runs a model over aligned faces. inference.py, torch2onnx.py,
subcenter_clean.py and eval/ use it; it imports backbones and utils/, never a command-line script.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from backbones import check_network, get_model
from utils.errors import ConfigError, DataError
from utils.image import FACE_SIZE, decode_rgb_chw, normalize
from utils.run_config import resolve_model_args
from utils.weights import WeightsError, WeightsMismatchError, describe_mismatch, key_differences, read_backbone_state

INPUT_SIZE = FACE_SIZE
DEFAULT_NUM_FEATURES = 512
ONNX_SUFFIX = ".onnx"
# an ONNX file is a protobuf ModelProto whose first field is ir_version (tag byte 0x08); torch.save
# writes a zip ("PK") or a pickle (0x80), so one byte tells a mislabelled ONNX file apart
ONNX_FIRST_BYTE = b"\x08"

PathLike = Union[str, Path]


class LoadedModel(NamedTuple):
    """A backbone (or an ONNX session wrapped as one) with what the tools report about it."""
    backbone: torch.nn.Module
    network: Optional[str]          # None for an ONNX model
    num_features: Optional[int]     # None for an ONNX model
    path: Path


def tool_device(name: Optional[str] = None) -> torch.device:
    """``--device``, else cuda when available, else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def is_onnx_file(path: PathLike) -> bool:
    """True for an .onnx name or an ONNX protobuf under another name."""
    path = Path(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        return True
    with open(path, "rb") as f:
        return f.read(1) == ONNX_FIRST_BYTE


def resolve_weight_path(weight_path: PathLike, onnx_flag: Optional[str] = "--onnx") -> Path:
    """A directory means `<dir>/model.pt`, like the original tools; an ONNX file names ``onnx_flag`` as the fix."""
    path = Path(weight_path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise WeightsError(f"weights not found: {path} (pass the model.pt written by training)")
    if is_onnx_file(path):
        fix = f"use {onnx_flag} {path}" if onnx_flag else "exported already; pass the model.pt written by training"
        raise ConfigError(f"{path}: this is an ONNX file: {fix}")
    return path


def load_backbone(network: str, weight_path: PathLike, device: Union[str, torch.device] = "cpu",
                  num_features: int = DEFAULT_NUM_FEATURES) -> torch.nn.Module:
    """Build `get_model(network)`, load model.pt strictly and return it in eval mode on `device`."""
    path = resolve_weight_path(weight_path)
    state = read_backbone_state(path)
    check_network(network)
    model = get_model(network, dropout=0.0, fp16=False, num_features=num_features)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise WeightsMismatchError(_mismatch(path, network, num_features, model.state_dict(), state)) from None
    return model.to(device).eval()


def _mismatch(path: Path, network: str, num_features: int, expected: dict, state: dict) -> str:
    """The fix for a model.pt that does not load: the embedding size it holds, else the network."""
    held = embedding_size_held(network, num_features, expected, state)
    if held is not None:
        omit = " or omit it" if held == DEFAULT_NUM_FEATURES else ""
        return (f"{path} does not fit --num-features {num_features}: the weights hold {held}-d embeddings: "
                f"pass --num-features {held}{omit}")
    return (f"{path} does not fit --network {network} (num_features {num_features}): "
            f"{describe_mismatch(expected, state)}; pass the --network it was trained with")


def embedding_size_held(network: str, num_features: int, expected: dict, state: dict) -> Optional[int]:
    """The embedding size a state_dict of ``network`` was trained with, when only that differs; else None."""
    missing, unexpected, shapes = key_differences(expected, state)
    if missing or unexpected or not shapes:
        return None
    candidates = {int(state[k].shape[d]) for k in shapes for d, n in enumerate(expected[k].shape)
                  if n == num_features and d < state[k].dim() and state[k].shape[d] != n}
    for size in sorted(candidates):
        # building the model once more costs a second at most, and only on this error path
        if not any(key_differences(get_model(network, num_features=size).state_dict(), state)):
            return size
    return None


def load_model(weights: Optional[PathLike] = None, onnx: Optional[PathLike] = None, network: Optional[str] = None,
               num_features: Optional[int] = None, device: Union[str, torch.device, None] = None,
               default_network: Optional[str] = None, onnx_flag: Optional[str] = "--onnx") -> LoadedModel:
    """model.pt (network and size from the flags, else from the run's config.json beside it) or an ONNX model."""
    if network is not None:
        check_network(network)      # a typo in the flag is named before any file is opened
    device = tool_device(device) if not isinstance(device, torch.device) else device
    if onnx:
        return LoadedModel(load_onnx(onnx, device), None, None, Path(onnx))
    if weights is None:
        raise ConfigError("no model given: pass the model.pt written by training, or an exported model with --onnx")
    path = resolve_weight_path(weights, onnx_flag)
    network, num_features = resolve_model_args(path, network, num_features, default_network=default_network)
    return LoadedModel(load_backbone(network, path, device, num_features), network, num_features, path)


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------

def check_onnx_model(path: PathLike) -> None:
    """One-line error unless the graph takes one float32 N x 3 x 112 x 112 input and returns N x D."""
    import onnx
    if not Path(path).is_file():
        raise WeightsError(f"ONNX model not found: {path} (export one with torch2onnx.py)")
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as err:
        raise WeightsError(f"--onnx {path}: not an ONNX model ({str(err).splitlines()[0]})") from None
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise WeightsError(f"--onnx {path}: {len(inputs)} inputs and {len(graph.output)} outputs; expected one "
                           "N x 3 x 112 x 112 input and an N x D embedding output")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    dtype = inputs[0].type.tensor_type.elem_type
    if len(dims) != 4 or dims[1:] != [3, INPUT_SIZE, INPUT_SIZE] or dtype != onnx.TensorProto.FLOAT:
        shown = "x".join("N" if d is None else str(d) for d in dims)
        raise WeightsError(f"--onnx {path}: input {inputs[0].name!r} is {shown} "
                           f"({onnx.TensorProto.DataType.Name(dtype).lower()}); the tools feed float32 "
                           f"N x 3 x {INPUT_SIZE} x {INPUT_SIZE} normalised crops: export with torch2onnx.py")
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) not in (0, 2):             # 0: shape not recorded in the graph
        raise WeightsError(f"--onnx {path}: output {graph.output[0].name!r} has {len(out_dims)} dimensions; "
                           "expected N x D embeddings")


class OnnxBackbone(torch.nn.Module):
    """An onnxruntime session callable like a backbone (normalised NCHW in, raw embedding out, on the CPU)."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        first = session.get_inputs()[0]
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        data = x.detach().cpu().numpy().astype(np.float32, copy=False)
        if not self.fixed_batch or data.shape[0] == self.fixed_batch:
            return torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: data})[0], np.float32))
        outs = []                   # a graph exported with a fixed batch: zero-pad the last chunk
        for start in range(0, data.shape[0], self.fixed_batch):
            chunk = data[start:start + self.fixed_batch]
            pad = np.zeros((self.fixed_batch - chunk.shape[0],) + chunk.shape[1:], np.float32)
            outs.append(self.session.run(None, {self.input_name: np.concatenate([chunk, pad])})[0][:len(chunk)])
        return torch.from_numpy(np.asarray(np.concatenate(outs), np.float32))


def load_onnx(onnx_path: PathLike, device: Union[str, torch.device] = "cpu") -> OnnxBackbone:
    """An exported model run by onnxruntime (CUDA when asked for and available), callable like a backbone."""
    import onnxruntime as ort

    path = Path(onnx_path)
    check_onnx_model(path)
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as err:
        raise WeightsError(f"cannot load ONNX model {path}: {str(err).splitlines()[0]}") from None
    return OnnxBackbone(session)


# ----------------------------------------------------------------------------------------------
# images and embeddings
# ----------------------------------------------------------------------------------------------

def load_image(path: PathLike, size: int = INPUT_SIZE) -> torch.Tensor:
    """Read an aligned face as uint8 RGB (3, size, size); other sizes are resized with a warning."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    image = decode_rgb_chw(path.read_bytes())
    height, width = image.shape[1:]
    if (height, width) != (size, size):
        warnings.warn(f"{path} is {width}x{height}, resized to {size}x{size}; "
                      f"the model expects aligned {size}x{size} faces", stacklevel=2)
        hwc = cv2.resize(image.permute(1, 2, 0).numpy(), (size, size), interpolation=cv2.INTER_LINEAR)
        image = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).contiguous()
    return image


def module_device(module: torch.nn.Module) -> torch.device:
    """Where a module's tensors live (cpu for one without any, e.g. OnnxBackbone)."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def reuse_freed_cpu_memory(model: torch.nn.Module) -> bool:
    """For a tool's own process: when ``model`` runs on the CPU, let glibc keep freed memory for reuse.

    An embedding pass allocates the same large activations for every batch (mbf_tiny, batch 256:
    hundreds of MB each, above glibc's mmap threshold), and by default each is a fresh mapping
    page-faulted in and unmapped again: ``python -m eval.dataset_stats`` spent more system than user
    time. The training does the same for the same reason (``keep_freed_cpu_memory``); it is a
    process-wide setting, so tools call this, library callers decide for themselves. Returns whether
    it was applied (False on a GPU, or without glibc).
    """
    if module_device(model).type != "cpu":
        return False
    from utils.utils_distributed import keep_freed_cpu_memory
    return keep_freed_cpu_memory()


def embed_images(model: torch.nn.Module, images: Union[torch.Tensor, Sequence[torch.Tensor]], batch_size: int = 64,
                 progress: bool = False, desc: Optional[str] = None) -> np.ndarray:
    """Raw (not L2-normalised) float32 embeddings (N, D) of uint8 (or 0..255 float) RGB images (N, 3, 112, 112).

    ``model`` is a backbone (its device is used) or an OnnxBackbone; it is run as it is (put it in eval mode).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch = images if isinstance(images, torch.Tensor) else torch.stack(list(images))
    if batch.dim() == 3:
        batch = batch.unsqueeze(0)
    device = module_device(model)
    starts = range(0, batch.shape[0], batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    out = None
    with torch.inference_mode():
        for start in starts:
            # uint8 to the device, normalised there: a quarter of the float32 transfer
            data = normalize(batch[start:start + batch_size].to(device=device, copy=True))
            feats = model(data).float().cpu().numpy()
            if out is None:
                out = np.empty((batch.shape[0], feats.shape[1]), np.float32)
            out[start:start + feats.shape[0]] = feats
    return out if out is not None else np.zeros((0, 0), np.float32)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
