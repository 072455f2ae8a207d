"""Reading checkpoint files safely: list tensors without loading them, read only the named ones.

Pickle files are read only with ``torch.load(weights_only=True)`` (memory-mapped when the file allows it, so nothing
is copied until a tensor is used); safetensors are read lazily through ``safe_open``.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import torch
from safetensors import safe_open

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES


# Keys under which training frameworks nest the real state dict (Lightning, DeepSpeed, EMA trainers).
WRAPPER_KEYS = ("state_dict", "module", "model_state_dict", "model", "ema", "net")


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
    "BOOL": "bool",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not what was asked for; the message names the file and the fix."""


class TensorInfo(NamedTuple):
    """Shape and dtype of one stored tensor (read from the file's index, the data stays on disk)."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class CheckpointIndex:
    """Every tensor of a checkpoint by name, with how it was stored (format, wrapper keys)."""

    tensors: dict[str, TensorInfo]
    file_format: str  # "safetensors" or "torch"
    wrapper: tuple[str, ...] = ()  # wrapper keys descended, e.g. ("state_dict",)
    wrapper_sole_key: bool = True  # every wrapper level held only that key (ComfyUI unwraps those too)
    nested: bool = False  # nested dicts were flattened into dotted names
    ignored: tuple[str, ...] = ()  # non-tensor entries (step counters, configs)


def check_path(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file {path!r} does not exist; check the path (in ComfyUI the file belongs "
                              "in models/diffusion_models or models/memv2v).")
    if not path.lower().endswith(CHECKPOINT_SUFFIXES):
        raise CheckpointError(f"checkpoint file {path!r} is not a {'/'.join(CHECKPOINT_SUFFIXES)} file; use a "
                              "safetensors file or a PyTorch .ckpt/.pt/.pth.")
    return path


def is_safetensors(path: str) -> bool:
    return path.lower().endswith(SAFETENSORS_SUFFIXES)


def dtype_name(dtype: torch.dtype | str) -> str:
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return _SAFETENSORS_DTYPES.get(dtype, dtype.lower())


def _torch_load(path: str) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped for zip-format files; a refused pickle is a clear error."""
    mmap = zipfile.is_zipfile(path)  # mmap needs the zip format (torch >= 1.6); legacy files are read whole
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused:
            raise CheckpointError(
                f"checkpoint file {path!r} holds Python objects that torch.load(weights_only=True) refuses (it "
                f"contains {refused.group(1)}, which is not a tensor type). This pack never unpickles arbitrary "
                "code. Fix: in an environment you trust, load it and save only its tensors (e.g. with "
                "safetensors.torch.save_file), then pick that file."
            ) from None
        detail = re.search(r"(Unsupported[^\n]*|invalid load key[^\n]*)", text)
        raise CheckpointError(
            f"checkpoint file {path!r} is not a readable PyTorch checkpoint (torch.load(weights_only=True): "
            f"{detail.group(1) if detail else text.splitlines()[0]}); the file is damaged or not a checkpoint. "
            "Re-download it, or convert it to safetensors where it was made."
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint file {path!r} is not a readable PyTorch checkpoint "
                              f"({type(err).__name__}: {err}); re-download it or convert it to safetensors.") from None


def _unwrap(obj: Any) -> tuple[Mapping, tuple[str, ...], bool, list[str]]:
    """Descend wrapper dicts ({"state_dict": ...}, {"module": ...}) until a level that holds tensors.

    Returns the state dict, the wrapper keys descended, whether each level held only its wrapper key, and the
    names of the entries left beside the wrappers (step counters, optimizer states, configs).
    """
    path: list[str] = []
    left: list[str] = []
    sole = True
    while isinstance(obj, Mapping) and len(path) < 4:
        if any(isinstance(value, torch.Tensor) for value in obj.values()):
            break
        inner = [key for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)]
        if not inner:
            mappings = [key for key, value in obj.items() if isinstance(value, Mapping)]
            if len(mappings) != 1:
                break
            inner = mappings
        sole = sole and len(obj) == 1
        where = ".".join(path + [""])
        left.extend(f"{where}{key}" for key in obj if key != inner[0])
        path.append(str(inner[0]))
        obj = obj[inner[0]]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"the checkpoint holds a {type(obj).__name__}, not a state dict of named tensors; "
                              "use a file saved from model.state_dict().")
    return obj, tuple(path), sole, left


def _flatten(state: Mapping, prefix: str = "") -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Named tensors of a (possibly nested) dict as dotted names, plus the names of non-tensor entries skipped."""
    tensors: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    nested = False
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, Mapping):
            inner, inner_ignored, _ = _flatten(value, name + ".")
            tensors.update(inner)
            ignored.extend(inner_ignored)
            nested = True
        else:
            ignored.append(name)
    return tensors, ignored, nested


def torch_tensors(path: str) -> tuple[dict[str, torch.Tensor], CheckpointIndex]:
    state, wrapper, sole, left = _unwrap(_torch_load(path))
    tensors, ignored, nested = _flatten(state)
    index = CheckpointIndex({n: TensorInfo(tuple(t.shape), dtype_name(t.dtype)) for n, t in tensors.items()},
                            "torch", wrapper, sole, nested, tuple(left + ignored))
    return tensors, index


def read_checkpoint_index(path: str | os.PathLike) -> CheckpointIndex:
    """Every tensor's name, shape and dtype without reading tensor data.

    safetensors: only the header is read (``safe_open`` + ``get_slice``). Pickle checkpoints: ``torch.load`` with
    ``weights_only=True`` and ``mmap=True``, so the tensors stay memory-mapped on disk and nothing is copied.
    """
    path = check_path(path)
    if not is_safetensors(path):
        return torch_tensors(path)[1]
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            tensors = {}
            for name in handle.keys():
                piece = handle.get_slice(name)
                tensors[name] = TensorInfo(tuple(piece.get_shape()), dtype_name(piece.get_dtype()))
    except Exception as err:  # safetensors raises its own SafetensorError for bad headers
        raise CheckpointError(f"checkpoint file {path!r} is not a valid safetensors file ({err}); re-download it, "
                              "or if it is really a PyTorch pickle rename it to .ckpt.") from None
    return CheckpointIndex(tensors, "safetensors")


def read_state_dict_keys(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """{name: (shape, dtype)} of every tensor in the file, without loading the tensors (see read_checkpoint_index)."""
    return read_checkpoint_index(path).tensors


def read_tensors(path: str | os.PathLike, names: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Only the named tensors, as independent CPU copies (safetensors: read one by one; pickles: copied from mmap)."""
    path = check_path(path)
    if is_safetensors(path):
        with safe_open(path, framework="pt", device="cpu") as handle:
            available = set(handle.keys())
            lost = [name for name in names if name not in available]
            if not lost:
                return {name: handle.get_tensor(name) for name in names}
    else:
        tensors, _ = torch_tensors(path)
        lost = [name for name in names if name not in tensors]
        if not lost:
            return {name: tensors[name].detach().clone() for name in names}
    raise CheckpointError(f"checkpoint file {path!r} no longer holds {lost[:5]}; it changed since it was inspected. "
                          "Inspect it again.")
