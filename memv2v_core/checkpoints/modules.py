"""ReCamMaster / Memory-V2V checkpoints: identify the modules they add to the Wan DiT and load only those.

ReCamMaster's ``step20000.ckpt`` is the whole Wan2.1-T2V-1.3B DiT (bare DiffSynth = Wan key names) plus, in every block,
``blocks.N.cam_encoder`` (Linear 12 -> dim) and ``blocks.N.projector`` (Linear dim -> dim) (papers §5.2). Memory-V2V's
``memoryv2v.ckpt`` adds condition patch embedders and token-merging downsamplers under an unpublished key layout, so
modules are recognised by name pattern and shape, and everything unrecognised is reported by name and shape.
Files are read through ``files`` (safetensors lazily, pickles only with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from .files import (CheckpointError, TensorInfo, check_path, dtype_name, is_safetensors,
                    read_checkpoint_index, read_tensors, torch_tensors)

log = logging.getLogger(__name__)


Kernel = tuple[int, int, int]


# Prefixes ComfyUI's own loader strips from a diffusion model file (model_detection.unet_prefix_from_state_dict).
COMFY_STRIPPED_PREFIXES = ("", "model.", "model.diffusion_model.")


CAMERA_PARTS = ("cam_encoder.weight", "cam_encoder.bias", "projector.weight", "projector.bias")


CAMERA_INPUT = 12  # a flattened 3x4 extrinsic matrix per latent frame


# Wan DiT parameter roots (top level and inside blocks.N) in ComfyUI / Wan / DiffSynth naming, variants included.
DIT_ROOTS = frozenset({
    "patch_embedding", "text_embedding", "time_embedding", "time_projection", "head", "img_emb", "ref_conv",
    "vace_patch_embedding", "vace_blocks", "control_adapter",
})


DIT_BLOCK_ROOTS = frozenset({"self_attn", "cross_attn", "norm1", "norm2", "norm3", "ffn", "modulation"})


# Plausible names for Memory-V2V's unpublished modules (matched on the lower-cased module name).
TOKENIZER_NAME = re.compile(r"patch_?embed|tokeni[sz]|patchif|cond(ition)?_?embed|memory_?embed")


MERGER_NAME = re.compile(r"downsampl|merg|compress|token_?pool|reduc")


_BLOCK_KEY = re.compile(r"^((?:[A-Za-z_]\w*\.)*?)blocks\.(\d+)\.")


_IN_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


_ROOT_ANCHORS = ("patch_embedding.weight", "head.modulation")


FLOAT_DTYPES = frozenset({"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"})


EXPECTED_TEXT = (
    "a ReCamMaster checkpoint has, in every DiT block, blocks.N.cam_encoder.weight [dim, 12] + .bias [dim] and "
    "blocks.N.projector.weight [dim, dim] + .bias [dim]; a Memory-V2V checkpoint has those plus condition patch "
    "embedders (Conv3d weights [dim, C, 1, k, k], e.g. k = 4 and 8) and token-merging downsamplers"
)


class CameraWeights(NamedTuple):
    """One block's ReCamMaster camera modules: cam_encoder (12 -> dim) and projector (dim -> dim)."""

    enc_w: torch.Tensor
    enc_b: torch.Tensor
    proj_w: torch.Tensor
    proj_b: torch.Tensor


@dataclass(frozen=True)
class TokenizerInfo:
    """A condition patch embedder found in the file: its kernel, module name and input channels."""

    kernel: Kernel
    module: str
    in_channels: int
    has_bias: bool


@dataclass(frozen=True)
class MergerInfo:
    """A token-merging module found in the file: its parameter shapes and whether it works as a merge operator."""

    module: str
    params: dict[str, tuple[int, ...]]
    operator_kernel: int | None  # k of a strided k x k conv [dim, dim, (1,) k, k]; None when the layout is unknown


@dataclass(frozen=True)
class ModuleReport:
    """What a checkpoint holds: the Wan DiT's shape, camera blocks, tokenizers by kernel, mergers, unknown extras.

    ``missing`` and ``mismatched`` say, one reason per line, what a complete ReCamMaster / Memory-V2V file would
    have and does not. ``key_map`` maps the normalised names of the usable modules to the names in the file.
    """

    dim: int | None
    depth: int
    has_dit: bool
    in_dim: int | None
    patch_size: tuple[int, ...] | None
    dtype: str | None
    camera_blocks: tuple[int, ...]
    tokenizers: dict[Kernel, TokenizerInfo]
    mergers: dict[str, MergerInfo]
    unknown: tuple[tuple[str, tuple[int, ...], str], ...]
    missing: tuple[str, ...]
    mismatched: tuple[str, ...]
    prefix: str
    key_map: dict[str, str]
    tensor_count: int
    notes: tuple[str, ...] = ()
    source: str = ""
    file_format: str = ""
    wrapper: tuple[str, ...] = ()
    wrapper_sole_key: bool = True
    nested: bool = False

    @property
    def kind(self) -> str:
        """"Memory-V2V" (tokenizers or mergers), "ReCamMaster" (camera modules only) or "none"."""
        if self.tokenizers or self.mergers:
            return "Memory-V2V"
        return "ReCamMaster" if self.camera_blocks else "none"

    @property
    def usable(self) -> bool:
        return bool(self.camera_blocks or self.tokenizers or self.mergers)

    @property
    def complete(self) -> bool:
        return self.usable and not self.missing and not self.mismatched

    def require(self, allow_partial: bool = False) -> None:
        """Raise a CheckpointError unless the file holds usable modules (and, unless ``allow_partial``, all of them)."""
        where = f"checkpoint {os.path.basename(self.source)!r}: " if self.source else "checkpoint: "
        if not self.usable:
            raise CheckpointError(
                f"{where}not a ReCamMaster/Memory-V2V checkpoint. Expected: {EXPECTED_TEXT}. "
                f"Found: {self.found_text()}. "
                "Fix: choose ReCamMaster's step20000.ckpt or Memory-V2V's memoryv2v.ckpt (a plain Wan DiT loads with "
                "ComfyUI's Load Diffusion Model and needs no modules)."
            )
        if allow_partial or not (self.missing or self.mismatched):
            return
        problems = [f"missing: {line}" for line in self.missing] + [f"mismatched: {line}" for line in self.mismatched]
        raise CheckpointError(
            f"{where}the {self.kind} modules are incomplete:\n  " + "\n  ".join(problems) + "\n"
            "Fix: use the original, complete file (a truncated download or a converted copy loses tensors), or turn "
            "on allow_partial to load only the complete modules listed in the report."
        )

    def found_text(self) -> str:
        """One sentence on what the file does hold, for error messages."""
        if self.has_dit:
            found = (f"a Wan DiT (dim {self.dim}, {self.depth} blocks, in_dim {self.in_dim}, patch "
                     f"{_kernel_text(self.patch_size)}) with no cam_encoder/projector, no condition tokenizers and "
                     "no token mergers")
        else:
            found = f"{self.tensor_count} tensor(s) and no Wan DiT (no patch_embedding.weight / head.modulation)"
        if self.unknown:
            shown = ", ".join(f"{name} {list(shape)}" for name, shape, _ in self.unknown[:8])
            more = f" and {len(self.unknown) - 8} more" if len(self.unknown) > 8 else ""
            found += f"; other tensors: {shown}{more}"
        return found

    def summary(self) -> str:
        """A multi-line, human-readable account of everything found (shown on the node)."""
        lines = []
        if self.source:
            wrapper = f", wrapped in {'/'.join(self.wrapper)}" if self.wrapper else ""
            lines.append(f"File: {os.path.basename(self.source)} ({self.file_format}, {self.tensor_count} tensors, "
                         f"key prefix {repr(self.prefix) if self.prefix else 'none'}{wrapper})")
        lines.append(f"Kind: {self.kind}")
        if self.has_dit:
            lines.append(f"Wan DiT: dim {self.dim}, {self.depth} blocks, in_dim {self.in_dim}, patch "
                         f"{_kernel_text(self.patch_size)}, {self.dtype}")
        else:
            lines.append("Wan DiT: not in this file")
        lines.append(f"Camera modules (cam_encoder Linear 12->{self.dim}, projector Linear {self.dim}->{self.dim}): "
                     f"{_ranges(self.camera_blocks) or 'none'} ({len(self.camera_blocks)} of {self.depth} blocks)")
        tokenizers = ", ".join(f"{_kernel_text(k)} <- {t.module} ({t.in_channels} ch{', bias' if t.has_bias else ''})"
                               for k, t in sorted(self.tokenizers.items()))
        lines.append(f"Condition tokenizers: {tokenizers or 'none'}")
        mergers = "; ".join(
            f"{m.module} (" + ", ".join(f"{leaf} {list(shape)}" for leaf, shape in m.params.items()) + ")"
            + (f" -> merge operator: {m.operator_kernel}x{m.operator_kernel} strided conv" if m.operator_kernel
               else " -> layout not understood, not used as merge operator")
            for m in self.mergers.values())
        lines.append(f"Token mergers: {mergers or 'none'}")
        if self.unknown:
            shown = [f"{name} {list(shape)} {dtype}" for name, shape, dtype in self.unknown[:40]]
            if len(self.unknown) > 40:
                shown.append(f"... and {len(self.unknown) - 40} more")
            lines.append(f"Unknown extra tensors ({len(self.unknown)}): " + "; ".join(shown))
        else:
            lines.append("Unknown extra tensors: none")
        for title, items in (("Missing", self.missing), ("Mismatched", self.mismatched)):
            lines.append(f"{title}: none" if not items else f"{title} ({len(items)}):\n  " + "\n  ".join(items))
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)


class ConvMergeOperator(torch.nn.Module):
    """A learned token downsampler used as the merge operator: [B, dim, h, w] -> [B, dim, h//k, w//k] (strided conv)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if weight.ndim == 5:  # Conv3d [dim, dim, 1, k, k]: one latent frame at a time
            weight = weight[:, :, 0]
        self.register_buffer("weight", weight.detach())
        self.register_buffer("bias", None if bias is None else bias.detach())
        self.kernel = int(weight.shape[-1])

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(grid)
        return F.conv2d(grid, self.weight.to(grid), bias, stride=self.kernel)


@dataclass(frozen=True, eq=False)
class MemV2VModules:
    """The MEMV2V_MODULES value: camera modules per block, tokenizers per kernel, mergers, all loaded from ``source``.

    ``tokenizers`` maps kernels like (1, 4, 4) to (weight [dim, C, 1, 4, 4], bias); ``merger`` is the merge
    operator built from the first merger whose layout is a strided conv (None: Apply Memory pools by averaging).
    """

    camera: dict[int, CameraWeights]
    tokenizers: dict[Kernel, tuple[torch.Tensor, torch.Tensor | None]]
    mergers: dict[str, dict[str, torch.Tensor]]
    merger: ConvMergeOperator | None
    source: str
    report: ModuleReport

    @property
    def dim(self) -> int | None:
        return self.report.dim

    @property
    def kind(self) -> str:
        return self.report.kind

    def summary(self) -> str:
        loaded = (f"Loaded: camera modules for {len(self.camera)} block(s), tokenizers "
                  f"{', '.join(_kernel_text(k) for k in sorted(self.tokenizers)) or 'none'}, merge operator "
                  f"{'from ' + self.merger_name if self.merger is not None else 'none (average pooling)'}")
        return self.report.summary() + "\n" + loaded

    @property
    def merger_name(self) -> str | None:
        usable = [m.module for m in self.report.mergers.values() if m.operator_kernel]
        return usable[0] if usable and self.merger is not None else None


def _as_info(value: Any) -> TensorInfo:
    if isinstance(value, torch.Tensor):
        return TensorInfo(tuple(value.shape), dtype_name(value.dtype))
    shape, dtype = value
    return TensorInfo(tuple(int(s) for s in shape), dtype_name(dtype))


def _detect_prefix(names: list[str]) -> str:
    """The prefix shared by the DiT's keys ("", "model.", "dit.", "module.", "pipe.dit." ...)."""
    counts: Counter[str] = Counter()
    for name in names:
        match = _BLOCK_KEY.match(name)
        if match:
            counts[match.group(1)] += 1
            continue
        for anchor in _ROOT_ANCHORS:
            if name.endswith(anchor) and (len(name) == len(anchor) or name[-len(anchor) - 1] == "."):
                counts[name[: -len(anchor)]] += 1
    return counts.most_common(1)[0][0] if counts else ""


def _ranges(values: Any) -> str:
    """Sorted ints as compact ranges: 0-2, 5, 7-9."""
    values = sorted(set(values))
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def _blocks_text(blocks: list[int]) -> str:
    """blocks.3 for one block, blocks.{1, 4-6} for several."""
    return f"blocks.{blocks[0]}" if len(blocks) == 1 else f"blocks.{{{_ranges(blocks)}}}"


def _kernel_text(kernel: Any) -> str:
    return "x".join(str(k) for k in kernel) if kernel else "?"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _split_module(name: str) -> tuple[str, str]:
    return tuple(name.rsplit(".", 1)) if "." in name else (name, "")  # type: ignore[return-value]


@dataclass
class _Scan:
    """Working state of identify_modules: keys sorted into the DiT, camera parts, candidates and the rest."""

    dit: dict[str, TensorInfo] = field(default_factory=dict)
    camera: dict[int, dict[str, TensorInfo]] = field(default_factory=dict)
    tokenizer_modules: dict[str, dict[str, TensorInfo]] = field(default_factory=dict)
    merger_modules: dict[str, dict[str, TensorInfo]] = field(default_factory=dict)
    unknown: dict[str, TensorInfo] = field(default_factory=dict)


def _sort_keys(keys: dict[str, TensorInfo]) -> _Scan:
    scan = _Scan()
    for name, info in keys.items():
        in_block = _IN_BLOCK.match(name)
        if in_block:
            block, rest = int(in_block.group(1)), in_block.group(2)
            if rest.split(".", 1)[0] in DIT_BLOCK_ROOTS:
                scan.dit[name] = info
                continue
            if rest in CAMERA_PARTS:
                scan.camera.setdefault(block, {})[rest] = info
                continue
        elif name.split(".", 1)[0] in DIT_ROOTS:
            scan.dit[name] = info
            continue
        module, leaf = _split_module(name)
        lowered = module.lower()
        if TOKENIZER_NAME.search(lowered) and leaf in ("weight", "bias"):
            scan.tokenizer_modules.setdefault(module, {})[leaf] = info
        elif MERGER_NAME.search(lowered) and leaf:
            scan.merger_modules.setdefault(module, {})[leaf] = info
        else:
            scan.unknown[name] = info
    return scan


def _dit_shape(dit: dict[str, TensorInfo]) -> tuple[bool, int | None, int, int | None, tuple | None, str | None]:
    """(has_dit, dim, depth, in_dim, patch size, dtype) of the Wan DiT keys."""
    patch = dit.get("patch_embedding.weight")
    modulation = dit.get("head.modulation")
    has_dit = patch is not None and modulation is not None and len(patch.shape) == 5
    dim = modulation.shape[-1] if modulation is not None else (patch.shape[0] if patch is not None else None)
    depth = len({int(m.group(1)) for m in map(_IN_BLOCK.match, dit) if m})
    in_dim = patch.shape[1] if has_dit else None
    patch_size = tuple(patch.shape[2:]) if has_dit else None
    dtypes = Counter(info.dtype for info in dit.values())
    return has_dit, dim, depth, in_dim, patch_size, dtypes.most_common(1)[0][0] if dtypes else None


def _check_camera(scan: _Scan, dim: int | None, depth: int, has_dit: bool,
                  missing: list[str], mismatched: list[str]) -> tuple[tuple[int, ...], int]:
    """Complete, well-shaped camera blocks; problems go to ``missing`` / ``mismatched``. Returns (blocks, depth)."""
    if not scan.camera:
        return (), depth
    if not has_dit:
        depth = max(depth, max(scan.camera) + 1)
    expected = {"cam_encoder.weight": (dim, CAMERA_INPUT), "cam_encoder.bias": (dim,),
                "projector.weight": (dim, dim), "projector.bias": (dim,)}
    absent: dict[str, list[int]] = {part: [] for part in CAMERA_PARTS}
    good = []
    for block in range(depth):
        parts = scan.camera.get(block, {})
        ok = True
        for part in CAMERA_PARTS:
            info = parts.get(part)
            if info is None:
                absent[part].append(block)
                ok = False
            elif info.shape != expected[part] or info.dtype not in FLOAT_DTYPES:
                layer = "Linear 12->dim" if part.startswith("cam") else "Linear dim->dim"
                mismatched.append(f"blocks.{block}.{part}: {list(info.shape)} {info.dtype}, expected "
                                  f"{list(expected[part])} floating point ({layer}, dim {dim})")
                ok = False
        if ok:
            good.append(block)
    for part, blocks in absent.items():
        if blocks:
            missing.append(f"{_blocks_text(blocks)}.{part}: not in the file (every one of the {depth} blocks "
                           "needs cam_encoder and projector)")
    beyond = sorted(b for b in scan.camera if b >= depth)
    if beyond:
        mismatched.append(f"{_blocks_text(beyond)}: camera modules for blocks the DiT does not have "
                          f"(it has {depth} blocks)")
    return tuple(good), depth


def _check_tokenizers(scan: _Scan, dim: int | None, unknown: dict[str, TensorInfo], mismatched: list[str],
                      key_map: dict[str, str], raw: dict[str, str]) -> dict[Kernel, TokenizerInfo]:
    found: dict[Kernel, TokenizerInfo] = {}
    for module in sorted(scan.tokenizer_modules, key=_natural_key):
        params = scan.tokenizer_modules[module]
        weight, bias = params.get("weight"), params.get("bias")
        if weight is None or len(weight.shape) not in (4, 5):
            unknown.update({f"{module}.{leaf}": info for leaf, info in params.items()})
            continue
        kernel: Kernel = (1, *weight.shape[2:]) if len(weight.shape) == 4 else tuple(weight.shape[2:])  # type: ignore
        problems = []
        if dim is not None and weight.shape[0] != dim:
            problems.append(f"produces {weight.shape[0]}-wide tokens, the model's width is {dim}")
        if bias is not None and bias.shape != (weight.shape[0],):
            problems.append(f"bias {list(bias.shape)} does not match {weight.shape[0]} outputs")
        if kernel[0] != 1:
            problems.append(f"temporal kernel {kernel[0]}: memory tokens keep one latent frame (use 1)")
        if any(info.dtype not in FLOAT_DTYPES for info in params.values()):
            problems.append("not floating point")
        if kernel in found:
            problems.append(f"kernel {_kernel_text(kernel)} already comes from {found[kernel].module}")
        if problems:
            mismatched.append(f"{module}.weight {list(weight.shape)}: " + "; ".join(problems))
            continue
        found[kernel] = TokenizerInfo(kernel, module, int(weight.shape[1]), bias is not None)
        for leaf in params:
            key_map[f"{module}.{leaf}"] = raw[f"{module}.{leaf}"]
    return found


def _merge_kernel(params: dict[str, TensorInfo], dim: int | None) -> int | None:
    """k when the module is a strided k x k conv [dim, dim, (1,) k, k] (+ bias [dim]); None for any other layout."""
    weight, bias = params.get("weight"), params.get("bias")
    if weight is None or set(params) - {"weight", "bias"} or weight.dtype not in FLOAT_DTYPES:
        return None
    shape = weight.shape
    if len(shape) == 5 and shape[2] == 1:
        shape = shape[:2] + shape[3:]
    if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3] or shape[2] < 2:
        return None
    if dim is not None and shape[0] != dim:
        return None
    if bias is not None and bias.shape != (shape[0],):
        return None
    return int(shape[2])


def identify_modules(keys: Mapping[str, Any]) -> ModuleReport:
    """Sort a checkpoint's keys ({name: (shape, dtype)} or {name: tensor}) into the DiT and the added modules.

    Prefixes ("model.", "dit.", "module.", "pipe.dit." ...) are recognised from the DiT's own keys and stripped.
    Camera modules are ``blocks.N.cam_encoder`` / ``blocks.N.projector``; tokenizers are modules named like a patch
    embedder / tokenizer (other than the base ``patch_embedding``) with a Conv weight; mergers are modules named
    like a downsampler / merger. Everything else that is not part of a Wan DiT is listed in ``unknown``.
    """
    infos = {name: _as_info(value) for name, value in keys.items()}
    prefix = _detect_prefix(list(infos))
    normalised: dict[str, TensorInfo] = {}
    raw: dict[str, str] = {}
    notes: list[str] = []
    for name in sorted(infos, key=lambda n: not n.startswith(prefix)):  # prefixed keys first: they win collisions
        short = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if short in normalised:
            notes.append(f"{name!r} and {raw[short]!r} have the same name without the prefix; using {raw[short]!r}")
            continue
        normalised[short] = infos[name]
        raw[short] = name

    scan = _sort_keys(normalised)
    has_dit, dim, depth, in_dim, patch_size, dtype = _dit_shape(scan.dit)
    if dim is None:
        widths = Counter(p[part].shape[0] for p in scan.camera.values()
                         for part in ("cam_encoder.weight", "projector.weight") if part in p)
        widths.update(m["weight"].shape[0] for m in scan.tokenizer_modules.values() if "weight" in m)
        dim = widths.most_common(1)[0][0] if widths else None
    if not has_dit and scan.dit:
        notes.append(f"{len(scan.dit)} Wan DiT tensor(s) but not a whole DiT (no patch_embedding.weight and "
                     "head.modulation); load the DiT from its own file")
    elif not has_dit and (scan.camera or scan.tokenizer_modules or scan.merger_modules):
        notes.append("no Wan DiT in this file: load the base DiT from its own file with Load Diffusion Model")

    missing: list[str] = []
    mismatched: list[str] = []
    key_map: dict[str, str] = {}
    camera_blocks, depth = _check_camera(scan, dim, depth, has_dit, missing, mismatched)
    for block in camera_blocks:
        for part in CAMERA_PARTS:
            key_map[f"blocks.{block}.{part}"] = raw[f"blocks.{block}.{part}"]
    unknown = dict(scan.unknown)
    tokenizers = _check_tokenizers(scan, dim, unknown, mismatched, key_map, raw)

    mergers: dict[str, MergerInfo] = {}
    for module in sorted(scan.merger_modules, key=_natural_key):
        params = scan.merger_modules[module]
        kernel = _merge_kernel(params, dim)
        ordered = sorted(params, key=lambda leaf: (leaf != "weight", leaf))
        mergers[module] = MergerInfo(module, {leaf: params[leaf].shape for leaf in ordered}, kernel)
        for leaf in params:
            key_map[f"{module}.{leaf}"] = raw[f"{module}.{leaf}"]
    operators = [m.module for m in mergers.values() if m.operator_kernel]
    if len(operators) > 1:
        notes.append(f"{len(operators)} mergers have a conv layout; Apply Memory takes one merge operator and uses "
                     f"{operators[0]} at every merge block")
    lookalikes = [f"{name} {list(info.shape)}" for name, info in unknown.items()
                  if name.endswith(".weight") and len(info.shape) == 5 and info.shape[0] == dim and info.shape[2] == 1]
    if lookalikes:
        notes.append("unknown tensors shaped like patch embedders [dim, C, 1, kh, kw] under names this pack does not "
                     f"recognise: {', '.join(lookalikes[:6])}; they are not used (please report the names)")
    if (tokenizers or mergers) and not scan.camera:
        missing.append("blocks.N.cam_encoder / blocks.N.projector: no camera modules at all (ReCamMaster and "
                       "Memory-V2V have them in every block)")

    return ModuleReport(
        dim=dim, depth=depth, has_dit=has_dit, in_dim=in_dim, patch_size=patch_size, dtype=dtype,
        camera_blocks=camera_blocks, tokenizers=tokenizers, mergers=mergers,
        unknown=tuple((raw[n], info.shape, info.dtype) for n, info in sorted(unknown.items(),
                                                                              key=lambda kv: _natural_key(kv[0]))),
        missing=tuple(missing), mismatched=tuple(mismatched), prefix=prefix, key_map=key_map,
        tensor_count=len(infos), notes=tuple(notes),
    )


def inspect_checkpoint(path: str | os.PathLike) -> ModuleReport:
    """identify_modules on a file's index (no tensor data read), with the file's name, format and wrapper recorded."""
    index = read_checkpoint_index(path)
    report = identify_modules(index.tensors)
    notes = report.notes
    if index.ignored:
        shown = ", ".join(index.ignored[:5]) + (" ..." if len(index.ignored) > 5 else "")
        notes = notes + (f"ignored {len(index.ignored)} non-tensor entr{'y' if len(index.ignored) == 1 else 'ies'}: "
                         f"{shown}",)
    return _replace(report, source=os.fspath(path), file_format=index.file_format, wrapper=index.wrapper,
                     wrapper_sole_key=index.wrapper_sole_key, nested=index.nested, notes=notes)


def _replace(report: ModuleReport, **changes: Any) -> ModuleReport:
    return dataclasses.replace(report, **changes)


def load_modules(path: str | os.PathLike, report: ModuleReport | None = None, *,
                 allow_partial: bool = False) -> MemV2VModules:
    """Read only the identified modules' tensors (never the DiT) into a MemV2VModules.

    Raises CheckpointError when the file holds no ReCamMaster / Memory-V2V modules, or (unless ``allow_partial``)
    when some are missing or mismatched; with ``allow_partial`` only the complete, well-shaped modules are loaded.
    """
    path = os.fspath(path)
    report = report if report is not None else inspect_checkpoint(path)
    if not report.source:
        report = _replace(report, source=path)
    report.require(allow_partial)
    tensors = read_tensors(path, sorted(set(report.key_map.values())))
    get = {short: tensors[name] for short, name in report.key_map.items()}

    camera = {block: CameraWeights(*(get[f"blocks.{block}.{part}"] for part in CAMERA_PARTS))
              for block in report.camera_blocks}
    tokenizers: dict[Kernel, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for kernel, info in report.tokenizers.items():
        weight = get[f"{info.module}.weight"]
        if weight.ndim == 4:  # a Conv2d patch embedder is a Conv3d with temporal size 1
            weight = weight.unsqueeze(2)
        tokenizers[kernel] = (weight, get.get(f"{info.module}.bias"))
    mergers = {module: {leaf: get[f"{module}.{leaf}"] for leaf in info.params}
               for module, info in report.mergers.items()}
    operator = None
    for module, info in report.mergers.items():
        if info.operator_kernel:
            operator = ConvMergeOperator(mergers[module]["weight"], mergers[module].get("bias"))
            break
    modules = MemV2VModules(camera, tokenizers, mergers, operator, path, report)
    log.info("Memory-V2V modules from %s: %s camera blocks, tokenizers %s, %d merger(s)", path, len(camera),
             sorted(tokenizers), len(mergers))
    return modules


def convert_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, str]:
    """Rewrite a checkpoint as safetensors with bare Wan key names (wrapper and DiT prefix removed).

    For files ComfyUI's Load Diffusion Model cannot detect (keys under "dit." or "pipe.dit.", nested dicts) and to
    leave pickles behind. It reads every tensor (the whole file in memory once). Returns {new name: old name}.
    """
    src, dst = check_path(src), os.fspath(dst)
    if not dst.lower().endswith(".safetensors"):
        raise CheckpointError(f"output file {dst!r} must end in .safetensors.")
    if is_safetensors(src):
        with safe_open(src, framework="pt", device="cpu") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    else:
        tensors = torch_tensors(src)[0]
    prefix = _detect_prefix(list(tensors))
    renamed: dict[str, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name in sorted(tensors, key=lambda n: not n.startswith(prefix)):
        short = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if short in out:
            raise CheckpointError(f"{src!r}: {name!r} and {renamed[short]!r} both become {short!r} without the "
                                  f"prefix {prefix!r}; rename one of them first.")
        out[short] = tensors[name].detach().contiguous().clone()  # clone: safetensors refuses shared storage
        renamed[short] = name
    tmp = dst + ".tmp"
    save_file(out, tmp)
    os.replace(tmp, dst)
    return renamed
