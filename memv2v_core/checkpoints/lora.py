"""StoryMem's LoRAs in ComfyUI's LoRA format: read, validate, rename, and add the alpha that gives rsLoRA's scale.

StoryMem (Kevin-thu/StoryMem, ``Wan2.2-MI2V-A14B/`` and ``Wan2.2-MM2V-A14B/``, ``backbone_{high,low}_noise.pth``)
ships PEFT state dicts: keys ``base_model.model.blocks.N.<module>.lora_{A,B}.weight`` for the attention projections
and both FFN linears, trained with ``LoraConfig(r=128, lora_alpha=128, use_rslora=True)``, so the official update is
``W + alpha / sqrt(r) * B @ A`` (x11.31) and the files hold no alpha tensors. ComfyUI's LoRA loader maps none of the
keys, and with renamed keys but no alpha it would apply ``1.0 * B @ A``. The converted dict uses the keys ComfyUI maps
for Wan (``diffusion_model.blocks.N.<module>.lora_{A,B}.weight``) plus one ``.alpha`` per layer: ComfyUI scales by
``alpha_tensor / rank``, so ``alpha_tensor = scale * rank`` reproduces the trained scale at strength 1.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch

from .files import (SAFETENSORS_SUFFIXES, TORCH_SUFFIXES, CheckpointError, is_safetensors, read_checkpoint_index,
                    read_tensors, torch_tensors)

STORYMEM_RANK = 128
STORYMEM_ALPHA = 128.0
PEFT_PREFIX = "base_model.model."
COMFY_PREFIX = "diffusion_model."
TARGET_MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                  "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
LORA_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES

_PEFT_KEY = re.compile(r"^base_model\.model\.blocks\.(\d+)\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])"
                       r"\.lora_([AB])(\.default)?\.weight$")
_COMFY_STYLE = re.compile(r"^(diffusion_model\.|lora_unet_|transformer\.|lycoris_)")


def lora_scale(rank: int, alpha: float, rs_lora: bool = True) -> float:
    """The factor PEFT applies to ``B @ A``: ``alpha / sqrt(rank)`` with rsLoRA, else ``alpha / rank``."""
    return alpha / math.sqrt(rank) if rs_lora else alpha / rank


def comfy_alpha(rank: int, alpha: float, rs_lora: bool = True) -> float:
    """The ``.alpha`` value for which ComfyUI's ``alpha / rank`` equals PEFT's scale (r*sqrt(r) when r = alpha)."""
    return lora_scale(rank, alpha, rs_lora) * rank


@dataclass(frozen=True)
class StoryMemLora:
    """A StoryMem LoRA converted to ComfyUI's key format (``tensors``), with what it patches and at which scale."""

    tensors: dict[str, torch.Tensor]
    modules: tuple[str, ...]  # "blocks.N.<module>", in block order
    rank: int
    alpha: float
    rs_lora: bool
    source: str

    @property
    def scale(self) -> float:
        return lora_scale(self.rank, self.alpha, self.rs_lora)

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(sorted({int(m.split(".")[1]) for m in self.modules}))

    @property
    def width(self) -> int:
        """The DiT width the LoRA was made for (in-features of the attention projections): 5120 for Wan 2.2 A14B."""
        key = next(k for k in self.tensors if k.endswith(".lora_A.weight") and "_attn." in k)
        return int(self.tensors[key].shape[1])

    def targets(self) -> dict[str, tuple[int, int]]:
        """``diffusion_model.<module>.weight`` -> the [out, in] shape its update ``B @ A`` has."""
        shapes = {}
        for module in self.modules:
            down = self.tensors[f"{COMFY_PREFIX}{module}.lora_A.weight"]
            up = self.tensors[f"{COMFY_PREFIX}{module}.lora_B.weight"]
            shapes[f"{COMFY_PREFIX}{module}.weight"] = (int(up.shape[0]), int(down.shape[1]))
        return shapes

    def summary(self) -> str:
        kind = f"rsLoRA: {self.alpha:g}/sqrt({self.rank})" if self.rs_lora else f"LoRA: {self.alpha:g}/{self.rank}"
        return (f"{os.path.basename(self.source)}: {len(self.modules)} layers in {len(self.blocks)} blocks "
                f"(width {self.width}), rank {self.rank}, scale {self.scale:.4f} ({kind})")


def _describe(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def convert_storymem_lora(
    state: Mapping[str, torch.Tensor],
    *,
    rank: int = STORYMEM_RANK,
    alpha: float = STORYMEM_ALPHA,
    rs_lora: bool = True,
    source: str = "state dict",
) -> StoryMemLora:
    """Validate a StoryMem PEFT state dict and return it in ComfyUI's LoRA format (tensors shared, not copied).

    ``rank``/``alpha``/``rs_lora`` are the training's ``LoraConfig`` (StoryMem: 128, 128, rsLoRA); ``rank`` must
    equal the file's rank. Any other key, a half pair, or mixed ranks is a CheckpointError naming the file and fix.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank ({rank!r}) must be a positive integer: the LoRA rank r the file was trained with "
                         f"(StoryMem: {STORYMEM_RANK}).")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha ({alpha!r}) must be a positive number: the lora_alpha the file was trained with "
                         f"(StoryMem: {STORYMEM_ALPHA:g}).")
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, value in state.items():
        match = _PEFT_KEY.match(key)
        if match is None or not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        block, module, which, _ = match.groups()
        slot = pairs.setdefault((int(block), module), {})
        if which in slot:
            raise CheckpointError(f"LoRA file {source!r} holds blocks.{block}.{module}.lora_{which} twice (with and "
                                  "without '.default'); it is not a StoryMem LoRA as released. Re-download it.")
        slot[which] = value
    if unknown:
        if all(_COMFY_STYLE.match(k) for k in unknown) and not pairs:
            raise CheckpointError(
                f"LoRA file {source!r} is already in a ComfyUI LoRA key format (keys like {_describe(unknown, 2)}), "
                "not StoryMem's PEFT layout. Load it with ComfyUI's own LoraLoaderModelOnly instead; it applies the "
                "scale stored in its .alpha tensors.")
        raise CheckpointError(
            f"LoRA file {source!r} is not StoryMem's PEFT layout: {len(unknown)} of {len(state)} keys are not "
            f"'base_model.model.blocks.N.{{self_attn,cross_attn}}.{{q,k,v,o}}' or '...ffn.{{0,2}}' "
            f"'.lora_A.weight'/'.lora_B.weight' (found {_describe(unknown)}). Use StoryMem's "
            "backbone_high_noise.pth / backbone_low_noise.pth (Kevin-thu/StoryMem, Wan2.2-MI2V-A14B or "
            "Wan2.2-MM2V-A14B); other LoRAs load with ComfyUI's LoraLoaderModelOnly.")
    if not pairs:
        raise CheckpointError(f"LoRA file {source!r} holds no tensors; it is empty or damaged. Re-download it.")
    tensors: dict[str, torch.Tensor] = {}
    modules: list[str] = []
    ranks: dict[int, str] = {}
    order = sorted(pairs, key=lambda bm: (bm[0], TARGET_MODULES.index(bm[1])))
    for block, module in order:
        slot = pairs[(block, module)]
        name = f"blocks.{block}.{module}"
        if set(slot) != {"A", "B"}:
            lacking = "lora_B" if "A" in slot else "lora_A"
            raise CheckpointError(f"LoRA file {source!r}: {name} has no {lacking}.weight; the file is incomplete. "
                                  "Re-download it.")
        down, up = slot["A"], slot["B"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise CheckpointError(
                f"LoRA file {source!r}: {name} has lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)}; StoryMem "
                "pairs are lora_A [r, in] and lora_B [out, r] with the same r. Re-download the file.")
        ranks.setdefault(int(down.shape[0]), name)
        tensors[f"{COMFY_PREFIX}{name}.lora_A.weight"] = down
        tensors[f"{COMFY_PREFIX}{name}.lora_B.weight"] = up
        tensors[f"{COMFY_PREFIX}{name}.alpha"] = torch.tensor(comfy_alpha(rank, alpha, rs_lora), dtype=torch.float32)
        modules.append(name)
    if len(ranks) > 1:
        found = ", ".join(f"{r} ({where})" for r, where in sorted(ranks.items()))
        raise CheckpointError(f"LoRA file {source!r} mixes ranks {found}; StoryMem's LoRAs have one rank "
                              f"({STORYMEM_RANK}). Re-download the file.")
    file_rank = next(iter(ranks))
    if file_rank != rank:
        raise ValueError(f"rank ({rank}) does not match LoRA file {source!r}, whose rank is {file_rank}; set rank to "
                         f"{file_rank} (and alpha to the lora_alpha it was trained with) so the scale is right.")
    return StoryMemLora(tensors, tuple(modules), rank, float(alpha), bool(rs_lora), source)


def read_lora_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a LoRA file: safetensors read tensor by tensor, pickles only with ``weights_only=True``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"LoRA file {path!r} does not exist; put StoryMem's backbone_*_noise.pth in "
                              "ComfyUI's models/loras folder and pick it there.")
    if not path.lower().endswith(LORA_SUFFIXES):
        raise CheckpointError(f"LoRA file {path!r} is not a {'/'.join(LORA_SUFFIXES)} file; use StoryMem's .pth "
                              "files as downloaded, or a safetensors copy.")
    if is_safetensors(path):
        return read_tensors(path, list(read_checkpoint_index(path).tensors))
    return torch_tensors(path)[0]  # memory-mapped: nothing is copied until ComfyUI patches a weight


def load_storymem_lora(
    path: str | os.PathLike, *, rank: int = STORYMEM_RANK, alpha: float = STORYMEM_ALPHA, rs_lora: bool = True
) -> StoryMemLora:
    """Read a StoryMem LoRA file (.pth or .safetensors) and convert it (see ``convert_storymem_lora``)."""
    return convert_storymem_lora(read_lora_state(path), rank=rank, alpha=alpha, rs_lora=rs_lora,
                                 source=os.fspath(path))


def save_comfy_lora(lora: StoryMemLora, path: str | os.PathLike) -> str:
    """Write the converted LoRA as a safetensors file ComfyUI's LoraLoaderModelOnly applies at the right scale.

    Written to a temporary name and renamed, so a half-written file never appears under ``path``.
    """
    from safetensors.torch import save_file

    path = os.fspath(path)
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        raise ValueError(f"path ({path!r}) must end in .safetensors; converted LoRAs are only written as safetensors.")
    tmp = f"{path}.tmp{os.getpid()}"
    metadata = {"memv2v_source": os.path.basename(lora.source), "memv2v_rank": str(lora.rank),
                "memv2v_alpha": repr(lora.alpha), "memv2v_rs_lora": str(lora.rs_lora),
                "memv2v_scale": repr(lora.scale)}
    try:
        save_file({k: v.detach().contiguous() for k, v in lora.tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def convert_storymem_file(src: str | os.PathLike, dst: str | os.PathLike, **config) -> StoryMemLora:
    """One-time conversion of a StoryMem .pth into a ComfyUI-format .safetensors (``config``: rank, alpha, rs_lora).

    The LoRA keeps its licence (StoryMem's weights are cc-by-nc-4.0): convert for your own use, do not redistribute.
    """
    lora = load_storymem_lora(src, **config)
    save_comfy_lora(lora, dst)
    return lora
