"""Exact matmul FLOP counts of a Wan DiT block, and the memory-token schedule that token merging produces.

A multiply-add counts as 2 FLOPs, as in ``torch.utils.flop_counter``. Only matrix products are counted (linear layers,
QK^T and AV); norms, RoPE, softmax, modulation and GELU are elementwise and below 1% of a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .merge import merge_plan, pooled_grid


@dataclass(frozen=True)
class DiTShape:
    """The sizes that set a Wan DiT's FLOPs (defaults: Wan2.1-T2V-1.3B, algorithms.md §4)."""

    dim: int = 1536
    depth: int = 30
    heads: int = 12
    ffn: int = 8960
    text_tokens: int = 512


WAN21_1_3B = DiTShape()


@dataclass(frozen=True)
class BlockFlops:
    """FLOPs of one block (or a sum of blocks), split by part."""

    self_projections: int = 0
    self_scores: int = 0
    cross_attention: int = 0
    ffn: int = 0

    @property
    def self_attention(self) -> int:
        """q, k, v, o projections plus the quadratic QK^T and AV products."""
        return self.self_projections + self.self_scores

    @property
    def total(self) -> int:
        return self.self_attention + self.cross_attention + self.ffn

    def __add__(self, other: "BlockFlops") -> "BlockFlops":
        return BlockFlops(
            self.self_projections + other.self_projections,
            self.self_scores + other.self_scores,
            self.cross_attention + other.cross_attention,
            self.ffn + other.ffn,
        )


def block_flops(tokens: int, shape: DiTShape = WAN21_1_3B) -> BlockFlops:
    """FLOPs of one Wan attention block over a sequence of ``tokens`` tokens (video + memory).

    Self-attention: q, k, v, o are N x D x D each; QK^T and AV are N x N x D each (summed over heads).
    Cross-attention: q, o on the N tokens, k, v on the text tokens, QK^T and AV are N x text x D. FFN: N x D x ffn twice.
    """
    n, d, text = tokens, shape.dim, shape.text_tokens
    return BlockFlops(
        self_projections=4 * 2 * n * d * d,
        self_scores=2 * 2 * n * n * d,
        cross_attention=2 * 2 * n * d * d + 2 * 2 * text * d * d + 2 * 2 * n * text * d,
        ffn=2 * 2 * n * d * shape.ffn,
    )


def dit_flops(tokens_per_block: Sequence[int], shape: DiTShape = WAN21_1_3B) -> BlockFlops:
    """FLOPs of all blocks, given each block's sequence length (so shrinking memory can be counted per block)."""
    if len(tokens_per_block) != shape.depth:
        raise ValueError(
            f"got {len(tokens_per_block)} token counts for a {shape.depth}-block model; pass one per block."
        )
    total = BlockFlops()
    for tokens in tokens_per_block:
        total = total + block_flops(tokens, shape)
    return total


def responsiveness_flops(
    sequence_tokens: int, target_tokens: int, memory_frames: int, shape: DiTShape = WAN21_1_3B
) -> int:
    """Extra FLOPs of one merge decision: q and k projections of the whole sequence plus target queries x frame mean keys."""
    return 2 * 2 * sequence_tokens * shape.dim * shape.dim + 2 * target_tokens * memory_frames * shape.dim


ResponsivenessFn = Callable[[int, int], torch.Tensor]
"""(block_index, num_frames) -> responsiveness [num_frames] used to simulate which frames a merge block picks."""


@dataclass(frozen=True)
class MergeSchedule:
    """Memory tokens entering each block, and the candidate-frame count at each merge block."""

    memory_tokens: tuple[int, ...]
    merge_frames: tuple[tuple[int, int], ...]  # (block_index, frames considered)


def simulate_merges(
    frame_grids: Sequence[tuple[int, int]],
    mergeable: Sequence[bool],
    depth: int,
    merge_blocks: Sequence[int],
    ratio: float,
    factor: int,
    responsiveness: ResponsivenessFn,
) -> MergeSchedule:
    """Replay the runtime merge rule on frame grids: at each merge block, ``merge_plan`` picks the least responsive
    ``ratio`` of the memory frames present (already merged ones included) and each is pooled ``factor`` x ``factor``.
    """
    grids = list(frame_grids)
    per_block, considered = [], []
    for block in range(depth):
        if block in merge_blocks:
            candidates = torch.tensor([m and g[0] * g[1] > 0 for m, g in zip(mergeable, grids)], dtype=torch.bool)
            chosen = merge_plan(responsiveness(block, len(grids)), ratio, candidates)
            for frame in chosen:
                grids[frame] = pooled_grid(grids[frame][0], grids[frame][1], factor)
            considered.append((block, int(candidates.sum())))
        per_block.append(sum(r * c for r, c in grids))
    return MergeSchedule(tuple(per_block), tuple(considered))


def counted_block_flops(tokens: int, shape: DiTShape = WAN21_1_3B, device: str = "meta") -> int:
    """FLOPs of a Wan block's matmul skeleton counted by ``torch.utils.flop_counter`` (a cross-check of ``block_flops``).

    Runs on the meta device by default, so full-size sequences cost no memory and no compute.
    """
    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    d, heads = shape.dim, shape.heads
    x = torch.empty(1, tokens, d, device=device)
    text = torch.empty(1, shape.text_tokens, d, device=device)
    square = torch.empty(d, d, device=device)
    up, down = torch.empty(shape.ffn, d, device=device), torch.empty(d, shape.ffn, device=device)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, d // heads)).transpose(1, 2)

    with FlopCounterMode(display=False) as counter:
        q, k, v = (split(F.linear(x, square)) for _ in range(3))
        y = F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2), square)
        q = split(F.linear(y, square))
        k, v = split(F.linear(text, square)), split(F.linear(text, square))
        y = F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2), square)
        F.linear(F.gelu(F.linear(y, up), approximate="tanh"), down)
    return int(counter.get_total_flops())
