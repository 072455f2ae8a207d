"""Dynamic tokenization: kernels per memory rank, training-free tokenizer weights, coarse tokens with fine-grid positions.

Memory-V2V tokenizes the user video with the base 1x2x2 patch size, the top-ranked memories with 1x4x4 and the rest
with 1x8x8 (algorithms.md §1.4). Coarse tokens get the spatial position of the centre of the area they cover, measured
in units of the model's own 1x2x2 token grid, so coarse and fine tokens of the same place share RoPE positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

Kernel = tuple[int, int, int]

BASE_KERNEL: Kernel = (1, 2, 2)


def _check_kernel(name: str, kernel: Sequence[int]) -> Kernel:
    """Return ``kernel`` as a (t, h, w) tuple of positive ints with t == 1, or raise a ValueError naming ``name``."""
    values = tuple(kernel)
    if len(values) != 3 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f"{name} ({kernel!r}) must be three positive integers (t, h, w), e.g. (1, 4, 4).")
    if values[0] != 1:
        raise ValueError(
            f"{name} ({kernel!r}) has temporal size {values[0]}; memory tokens keep one latent frame per token, "
            "use a temporal size of 1, e.g. (1, 4, 4)."
        )
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class KernelPlan:
    """Which patch kernel each context stream gets: the user video, the ``fine_ranks`` best memories, the rest.

    Ranks are 0-based positions in the retrieval order (rank 0 = best), so the default sends ranks 0-2 to 1x4x4.
    """

    user: Kernel = (1, 2, 2)
    fine: Kernel = (1, 4, 4)
    coarse: Kernel = (1, 8, 8)
    fine_ranks: int = 3

    def __post_init__(self) -> None:
        for name in ("user", "fine", "coarse"):
            object.__setattr__(self, name, _check_kernel(f"KernelPlan.{name}", getattr(self, name)))
        if not isinstance(self.fine_ranks, int) or self.fine_ranks < 0:
            raise ValueError(f"KernelPlan.fine_ranks ({self.fine_ranks!r}) must be an integer >= 0, e.g. 3.")

    def kernel_for_rank(self, rank: int) -> Kernel:
        """The kernel of the memory at 0-based retrieval rank ``rank``."""
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank ({rank!r}) must be a 0-based integer >= 0 (0 = best retrieved memory).")
        return self.fine if rank < self.fine_ranks else self.coarse


def derive_kernel(base_weight: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Training-free tokenizer weight: "average-pool the latent, then apply the base kernel" as one strided conv.

    The base kernel [dim, C, 1, kh, kw] is nearest-upsampled to ``kernel`` and divided by the area factor, so that
    conv(latent, derived, stride=kernel) == conv(avg_pool(latent, kernel / base), base, stride=base).
    """
    target = _check_kernel("kernel", kernel)
    if base_weight.ndim != 5:
        raise ValueError(
            f"base_weight has shape {tuple(base_weight.shape)}; pass the model's Conv3d patch embedding weight "
            "[dim, C, 1, 2, 2] (WanModel.patch_embedding.weight)."
        )
    base = tuple(base_weight.shape[2:])
    if base[0] != target[0] or target[1] % base[1] or target[2] % base[2]:
        raise ValueError(
            f"kernel {target} is not a multiple of the base patch size {base}; use e.g. (1, {2 * base[1]}, {2 * base[2]})."
        )
    fh, fw = target[1] // base[1], target[2] // base[2]
    upsampled = base_weight.repeat_interleave(fh, dim=3).repeat_interleave(fw, dim=4)
    return upsampled / (fh * fw)


class DerivedTokenizer:
    """Tokenizer weights for any kernel, derived from the model's own patch embedding (cached per kernel).

    Call it with a kernel to get ``(weight, bias)``; the base kernel returns the base weights unchanged.
    """

    def __init__(self, base_weight: torch.Tensor, base_bias: torch.Tensor | None) -> None:
        self.base_weight = base_weight
        self.base_bias = base_bias
        self._cache: dict[Kernel, torch.Tensor] = {}

    @property
    def base_kernel(self) -> Kernel:
        return tuple(self.base_weight.shape[2:])  # type: ignore[return-value]

    def __call__(self, kernel: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = tuple(kernel)
        if key == self.base_kernel:
            return self.base_weight, self.base_bias
        if key not in self._cache:
            self._cache[key] = derive_kernel(self.base_weight, key)  # type: ignore[arg-type]
        return self._cache[key], self.base_bias


@dataclass(frozen=True)
class TokenLayout:
    """How a flat token sequence splits into frames: one (rows, cols) grid per frame, in token order.

    ``frame_stream`` says which context stream each frame came from and ``mergeable`` whether token merging may
    touch it (memory frames yes; the user video no).
    """

    frame_grids: tuple[tuple[int, int], ...]
    frame_stream: tuple[int, ...]
    mergeable: tuple[bool, ...]

    def __post_init__(self) -> None:
        n = len(self.frame_grids)
        if len(self.frame_stream) != n or len(self.mergeable) != n:
            raise ValueError(
                f"TokenLayout needs one stream id and one mergeable flag per frame; got {n} grids, "
                f"{len(self.frame_stream)} stream ids and {len(self.mergeable)} flags."
            )

    @classmethod
    def empty(cls) -> "TokenLayout":
        return cls((), (), ())

    @classmethod
    def concat(cls, layouts: Sequence["TokenLayout"]) -> "TokenLayout":
        """Layouts of consecutive token groups joined in order (stream ids are kept as given)."""
        return cls(
            tuple(g for layout in layouts for g in layout.frame_grids),
            tuple(s for layout in layouts for s in layout.frame_stream),
            tuple(m for layout in layouts for m in layout.mergeable),
        )

    @property
    def num_frames(self) -> int:
        return len(self.frame_grids)

    @property
    def frame_sizes(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.frame_grids)

    @property
    def num_tokens(self) -> int:
        return sum(self.frame_sizes)

    def frame_offsets(self) -> tuple[int, ...]:
        """Start index of each frame's tokens in the flat sequence."""
        offsets, start = [], 0
        for size in self.frame_sizes:
            offsets.append(start)
            start += size
        return tuple(offsets)

    def token_frame(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Frame id of every token, [num_tokens] long."""
        sizes = torch.tensor(self.frame_sizes, dtype=torch.long, device=device)
        return torch.repeat_interleave(torch.arange(self.num_frames, device=device), sizes)


def grid_size(height: int, width: int, kernel: Sequence[int]) -> tuple[int, int]:
    """Tokens per frame along (rows, cols) after replicate-padding H, W up to a multiple of the kernel."""
    return math.ceil(height / kernel[1]), math.ceil(width / kernel[2])


def tokens_per_stream(latent_shape: Sequence[int], kernel: Sequence[int]) -> int:
    """Token count of one stream of latent shape (T, H, W) (or [B, C, T, H, W]) under ``kernel``."""
    t, h, w = tuple(latent_shape)[-3:]
    rows, cols = grid_size(h, w, kernel)
    return math.ceil(t / kernel[0]) * rows * cols


def fine_grid_centres(count: int, kernel_size: int, unit: int) -> torch.Tensor:
    """Centres of ``count`` consecutive kernel cells, in units of the fine token grid whose cells are ``unit`` wide.

    A cell i covers latent pixels [i*k, (i+1)*k); its centre i*k + (k-1)/2 maps to fine index (centre - (unit-1)/2) / unit,
    e.g. 0, 1, 2 for k=2; 0.5, 2.5 for k=4; 1.5, 5.5 for k=8 (with unit 2).
    """
    index = torch.arange(count, dtype=torch.float32)
    return (index * kernel_size + (kernel_size - 1) / 2 - (unit - 1) / 2) / unit


def token_positions(
    frames: int, rows: int, cols: int, kernel: Sequence[int], grid_unit: Sequence[int] = BASE_KERNEL
) -> torch.Tensor:
    """(t, h, w) of every token of a frames x rows x cols grid, [frames*rows*cols, 3] float, t = 0-based frame index."""
    t = torch.arange(frames, dtype=torch.float32)
    h = fine_grid_centres(rows, kernel[1], grid_unit[1])
    w = fine_grid_centres(cols, kernel[2], grid_unit[2])
    grid = torch.stack(torch.meshgrid(t, h, w, indexing="ij"), dim=-1)
    return grid.reshape(-1, 3)


def embed_latent(
    latent: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: Sequence[int],
    grid_unit: Sequence[int] = BASE_KERNEL,
    stream: int = 0,
    mergeable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, TokenLayout]:
    """Tokenize a latent [B, C, T, H, W] with a strided conv: tokens [B, N, dim], positions [N, 3], layout.

    H and W are replicate-padded up to a multiple of the kernel. Padding to the next multiple leaves every token with
    at least one real latent row and column, so no token covers only padding and none is dropped.
    Positions: t is the latent frame index (temporal offsets come from ``positions``), h and w the centre of the
    covered area (padding included, so coarse grids stay regular) in units of the ``grid_unit`` token grid.
    """
    kernel = _check_kernel("kernel", kernel)
    if latent.ndim != 5:
        raise ValueError(f"latent has shape {tuple(latent.shape)}; pass a video latent [B, C, T, H, W].")
    if weight.ndim != 5 or tuple(weight.shape[2:]) != kernel or weight.shape[1] != latent.shape[1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)} but the latent has {latent.shape[1]} channels and the kernel is "
            f"{kernel}; pass a weight [dim, {latent.shape[1]}, {kernel[0]}, {kernel[1]}, {kernel[2]}] (see derive_kernel)."
        )
    _, _, frames, height, width = latent.shape
    rows, cols = grid_size(height, width, kernel)
    pad_h, pad_w = rows * kernel[1] - height, cols * kernel[2] - width
    x = latent.to(dtype=weight.dtype, device=weight.device)
    if pad_h or pad_w:
        # replicate padding is only defined for 3-D-spatial inputs in 5-D form: pad (W, H) and leave T alone
        x = F.pad(x, (0, pad_w, 0, pad_h, 0, 0), mode="replicate")
    out = F.conv3d(x, weight, bias, stride=kernel)
    tokens = out.flatten(2).transpose(1, 2)
    positions = token_positions(frames, rows, cols, kernel, grid_unit).to(device=tokens.device)
    layout = TokenLayout(((rows, cols),) * frames, (stream,) * frames, (mergeable,) * frames)
    return tokens, positions, layout
