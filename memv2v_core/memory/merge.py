"""Adaptive token merging: rank memory frames by responsiveness, then pool the least responsive ones.

Responsiveness of memory frame t (papers §2.6): R_t = max over target queries q of softmax_t(q . mean(K_t) / sqrt(d)).
It needs only per-frame mean keys, so its cost is N_target x F_memory and it never forms the attention matrix.
Merging pools a frame's token grid (2x2 average by default, or a learned operator); positions are pooled alike.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .tokenize import TokenLayout

MERGE_MODES = ("merge", "discard")
DEFAULT_CHUNK = 4096

FrameOperator = Callable[[torch.Tensor], torch.Tensor]


def frame_mean_keys(
    k_memory: torch.Tensor, token_frame: torch.Tensor, num_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean key per frame [B, F, heads, d] (fp32) and a [F] mask of frames that have at least one token."""
    batch, _, heads, dim = k_memory.shape
    token_frame = token_frame.to(k_memory.device)
    sums = torch.zeros((batch, num_frames, heads, dim), dtype=torch.float32, device=k_memory.device)
    sums.index_add_(1, token_frame, k_memory.float())
    counts = torch.bincount(token_frame, minlength=num_frames)[:num_frames]
    return sums / counts.clamp(min=1).to(sums)[None, :, None, None], counts > 0


def frame_responsiveness(
    q_target: torch.Tensor,
    k_memory: torch.Tensor,
    token_frame: torch.Tensor,
    num_frames: int,
    chunk: int = DEFAULT_CHUNK,
) -> torch.Tensor:
    """R [B, F]: per query and head a softmax over memory frames, heads averaged, max over target queries.

    q_target [B, Nt, heads, d], k_memory [B, Nm, heads, d], token_frame [Nm] frame id per memory token. Queries are
    processed ``chunk`` at a time, so the largest intermediate is chunk x heads x F. Frames without tokens get 0.
    """
    if (
        q_target.ndim != 4
        or k_memory.ndim != 4
        or (q_target.shape[0], *q_target.shape[2:]) != (k_memory.shape[0], *k_memory.shape[2:])
    ):
        raise ValueError(
            f"q_target {tuple(q_target.shape)} and k_memory {tuple(k_memory.shape)} must be [B, N, heads, d] with the "
            "same B, heads and d; pass the block's self-attention queries and keys split per head."
        )
    if token_frame.shape != (k_memory.shape[1],):
        raise ValueError(
            f"token_frame has shape {tuple(token_frame.shape)} but k_memory has {k_memory.shape[1]} tokens; pass one "
            "frame id per memory token (TokenLayout.token_frame())."
        )
    if chunk <= 0:
        raise ValueError(f"chunk ({chunk!r}) must be a positive number of queries, e.g. {DEFAULT_CHUNK}.")
    batch, n_target, _, dim = q_target.shape
    result = torch.zeros((batch, num_frames), dtype=torch.float32, device=q_target.device)
    if num_frames == 0 or n_target == 0:
        return result
    mean_keys, present = frame_mean_keys(k_memory, token_frame, num_frames)
    if not bool(present.any()):
        return result
    absent_bias = torch.zeros(num_frames, dtype=torch.float32, device=q_target.device).masked_fill(
        ~present, float("-inf")
    )
    scale = 1.0 / math.sqrt(dim)
    result.fill_(float("-inf"))
    for start in range(0, n_target, chunk):
        queries = q_target[:, start : start + chunk].float()
        logits = torch.einsum("bqhd,bfhd->bqhf", queries, mean_keys) * scale + absent_bias
        weights = logits.softmax(dim=-1).mean(dim=2)  # heads averaged after the softmax
        result = torch.maximum(result, weights.amax(dim=1))
    return result.masked_fill(~present, 0.0)


def merge_count(num_candidates: int, ratio: float) -> int:
    """How many of ``num_candidates`` frames a merge ``ratio`` selects (rounded down: never more than asked)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"merge ratio ({ratio!r}) must be between 0 and 1, e.g. 0.5 for the least responsive half.")
    return int(math.floor(num_candidates * ratio + 1e-9))


def merge_plan(
    responsiveness: torch.Tensor, ratio: float = 0.5, candidates: torch.Tensor | None = None
) -> tuple[int, ...]:
    """The least responsive ``ratio`` of the candidate frames, as ascending frame ids.

    ``responsiveness`` is [F] or [B, F] (rows averaged). Ties keep frame order (stable sort: the earlier frame goes first).
    """
    scores = responsiveness.float()
    if scores.ndim == 2:
        scores = scores.mean(dim=0)
    if scores.ndim != 1:
        raise ValueError(f"responsiveness has shape {tuple(responsiveness.shape)}; pass [F] or [B, F].")
    frames = torch.arange(scores.shape[0], device=scores.device)
    if candidates is not None:
        frames = frames[candidates.to(device=scores.device, dtype=torch.bool)]
    count = merge_count(int(frames.numel()), ratio)
    if count == 0:
        return ()
    order = torch.sort(scores[frames], stable=True).indices[:count]
    return tuple(sorted(int(f) for f in frames[order].tolist()))


def pooled_grid(rows: int, cols: int, factor: int) -> tuple[int, int]:
    """Grid of a rows x cols frame after ``factor`` x ``factor`` pooling (partial windows at odd edges are kept)."""
    return math.ceil(rows / factor), math.ceil(cols / factor)


def pool_grid_mean(grid: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean over each factor x factor window of [B, C, h, w]; edge windows average only the cells that exist."""
    batch, channels, rows, cols = grid.shape
    out_rows, out_cols = pooled_grid(rows, cols, factor)
    pad = (0, out_cols * factor - cols, 0, out_rows * factor - rows)
    sums = (
        torch.nn.functional.pad(grid, pad).reshape(batch, channels, out_rows, factor, out_cols, factor).sum(dim=(3, 5))
    )
    ones = torch.nn.functional.pad(grid.new_ones((1, 1, rows, cols)), pad)
    counts = ones.reshape(1, 1, out_rows, factor, out_cols, factor).sum(dim=(3, 5))
    return sums / counts


def _merge_one_frame(
    frame_tokens: torch.Tensor,
    frame_positions: torch.Tensor,
    grid: tuple[int, int],
    factor: int,
    operator: FrameOperator | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Pool one frame: tokens [B, n, dim] and positions [n, 3] on a rows x cols grid."""
    rows, cols = grid
    batch, _, dim = frame_tokens.shape
    as_grid = frame_tokens.transpose(1, 2).reshape(batch, dim, rows, cols)
    pos_grid = frame_positions.t().reshape(1, 3, rows, cols)
    pooled_pos = pool_grid_mean(pos_grid.float(), factor)
    kernel = getattr(operator, "kernel", 1)
    if operator is None or rows < kernel or cols < kernel:  # a learned kernel larger than the grid: pool instead
        pooled = pool_grid_mean(as_grid.float(), factor).to(as_grid.dtype)  # fp32 sums keep bf16 tokens exact enough
    else:
        pooled = operator(as_grid)
        out_rows, out_cols = pooled.shape[-2:]
        if (
            pooled.ndim != 4
            or pooled.shape[:2] != (batch, dim)
            or out_rows > pooled_pos.shape[2]
            or out_cols > pooled_pos.shape[3]
        ):
            raise ValueError(
                f"the merge operator turned a frame of shape {tuple(as_grid.shape)} into {tuple(pooled.shape)}; it must "
                f"return [B, dim, h', w'] with h' <= ceil(h/{factor}) and w' <= ceil(w/{factor})."
            )
        pooled_pos = pooled_pos[:, :, :out_rows, :out_cols]  # floor-size outputs drop the partial edge windows
    new_grid = (int(pooled.shape[2]), int(pooled.shape[3]))
    tokens = pooled.reshape(batch, dim, -1).transpose(1, 2)
    positions = pooled_pos.reshape(3, -1).t().to(frame_positions.dtype)
    return tokens, positions, new_grid


def merge_frames(
    tokens: torch.Tensor,
    positions: torch.Tensor,
    layout: TokenLayout,
    frames: Sequence[int],
    factor: int = 2,
    operator: FrameOperator | None = None,
    mode: str = "merge",
) -> tuple[torch.Tensor, torch.Tensor, TokenLayout]:
    """Pool (or with ``mode="discard"`` drop) the tokens of ``frames``; other frames are untouched, order preserved.

    tokens [B, M, dim], positions [M, 3]. Pooling is a ``factor`` x ``factor`` mean of each frame's grid (pooled tokens
    sit at the mean position of what they replace), or ``operator([B, dim, h, w]) -> [B, dim, h', w']`` when given.
    A discarded frame stays in the layout with an empty (0, 0) grid, so frame ids stay stable.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode ({mode!r}) must be one of {MERGE_MODES}.")
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"merge factor ({factor!r}) must be an integer >= 1, e.g. 2 for 2x2 pooling.")
    if tokens.shape[1] != layout.num_tokens or positions.shape[0] != layout.num_tokens:
        raise ValueError(
            f"tokens ({tokens.shape[1]}) and positions ({positions.shape[0]}) must both match the layout's "
            f"{layout.num_tokens} tokens; pass the layout that describes these tokens."
        )
    selected = set(int(f) for f in frames)
    bad = [f for f in selected if not 0 <= f < layout.num_frames]
    if bad:
        raise ValueError(f"frames {sorted(bad)} are out of range for a layout of {layout.num_frames} frames.")
    if not selected:
        return tokens, positions, layout

    out_tokens, out_positions, grids = [], [], []
    for frame, (start, grid) in enumerate(zip(layout.frame_offsets(), layout.frame_grids)):
        end = start + grid[0] * grid[1]
        frame_tokens, frame_positions = tokens[:, start:end], positions[start:end]
        if frame in selected and grid[0] * grid[1] > 0:
            if mode == "discard":
                frame_tokens, frame_positions, grid = frame_tokens[:, :0], frame_positions[:0], (0, 0)
            else:
                frame_tokens, frame_positions, grid = _merge_one_frame(
                    frame_tokens, frame_positions, grid, factor, operator
                )
        out_tokens.append(frame_tokens)
        out_positions.append(frame_positions)
        grids.append(grid)
    new_layout = TokenLayout(tuple(grids), layout.frame_stream, layout.mergeable)
    return torch.cat(out_tokens, dim=1), torch.cat(out_positions, dim=0), new_layout


def default_pool_factor(memory_count: int, videos_per_step: int = 6, base: int = 2) -> int:
    """Pooling factor that grows with the number of memory videos: 2 up to 6 memories, 4 up to 12, 6 up to 18 ...

    The paper scales the merge reduction with the number of conditioning videos (papers §2.6); the steps of 6
    (the top of the trained memory range) are ours.
    """
    if memory_count < 0 or videos_per_step <= 0 or base < 1:
        raise ValueError(
            f"memory_count ({memory_count}), videos_per_step ({videos_per_step}) and base ({base}) must be >= 0, > 0, >= 1."
        )
    return base * max(1, math.ceil(memory_count / videos_per_step))
