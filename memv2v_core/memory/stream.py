"""The memory-token stream carried through a sequence of DiT blocks, independent of any host.

For each block: append the memory tokens after the video tokens, extend RoPE and modulation to them, run the real
block, split the memory off again and keep it for the next block. At the merge blocks the least responsive memory
frames are pooled first. The caller's main loop, head and unpatchify only ever see the video tokens.

Wiring into a host (sketch, for ComfyUI's WanModel ``dm``): build the state once per model call from
``context.embed_context(...)`` with ``MemoryStreamState.from_embedded``; in the ``("double_block", i)`` patch call
``state.run_block(block_fn, args["img"], args["pe"], args["vec"], rope_fn, i, qk_fn)`` with
``block_fn = lambda img, pe, vec: original_block({**args, "img": img, "pe": pe, "vec": vec})["img"]`` and
``rope_fn = lambda ids: dm.rope_embedder(ids.unsqueeze(0)).movedim(1, 2)`` (what ``dm.rope_encode`` does with its ids).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from .merge import (
    DEFAULT_CHUNK,
    MERGE_MODES,
    FrameOperator,
    default_pool_factor,
    frame_responsiveness,
    merge_count,
    merge_frames,
    merge_plan,
)
from .tokenize import TokenLayout

if TYPE_CHECKING:
    from .context import MemoryTokens

log = logging.getLogger(__name__)

BlockFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x, pe, vec) -> x: one DiT block on a token sequence with its RoPE table and modulation."""
RopeFn = Callable[[torch.Tensor], torch.Tensor]
"""ids [N, 3] float -> pe [1, N, ...]: the model's own RoPE embedder on real-valued (t, h, w) ids."""
QkFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]
"""(x_cat, pe_cat, vec_cat) -> (q, k), each [B, N, heads, d]: the block's self-attention queries and keys."""

PAPER_MERGE_BLOCKS = (10, 20)
PAPER_DEPTH = 30


def default_merge_blocks(
    depth: int, paper_blocks: Sequence[int] = PAPER_MERGE_BLOCKS, paper_depth: int = PAPER_DEPTH
) -> tuple[int, ...]:
    """Merge at the input of 0-based blocks 10 and 20 of 30, scaled to ``depth`` (e.g. 13 and 27 of 40).

    Block 0 is never used (responsiveness is least stable early, papers §2.6 Table 1).
    """
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth ({depth!r}) must be the model's number of blocks, e.g. 30.")
    scaled = (round(block * depth / paper_depth) for block in paper_blocks)
    return tuple(sorted({b for b in scaled if 1 <= b < depth}))


@dataclass(frozen=True)
class MergeSettings:
    """Where and how memory frames are merged (``for_model`` gives the documented defaults for a model and memory count).

    ``ratio`` of the memory frames present (least responsive first) are pooled ``factor`` x ``factor`` at the input of
    each block in ``blocks``, or dropped with ``mode="discard"``. ``plan_rows`` picks the batch rows whose
    responsiveness decides the plan (the conditional rows; None = all rows averaged), so every row merges the same frames.
    ``fixed_frames`` ((block, frames) pairs) replaces the ranking by a plan made earlier, e.g. by the conditional pass
    of the same step when a host runs the unconditional pass as a separate call: at a merge block it names, exactly
    those frames are merged (none at a merge block it leaves out), and no q/k is computed.
    """

    blocks: tuple[int, ...] = PAPER_MERGE_BLOCKS
    ratio: float = 0.5
    factor: int = 2
    mode: str = "merge"
    operator: FrameOperator | None = None
    chunk: int = DEFAULT_CHUNK
    plan_rows: tuple[int, ...] | None = None
    fixed_frames: tuple[tuple[int, tuple[int, ...]], ...] | None = None

    def __post_init__(self) -> None:
        merge_count(0, self.ratio)  # validates the ratio
        if self.mode not in MERGE_MODES:
            raise ValueError(f"merge mode ({self.mode!r}) must be one of {MERGE_MODES}.")
        if not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"merge factor ({self.factor!r}) must be an integer >= 1, e.g. 2 for 2x2 pooling.")
        if self.chunk <= 0:
            raise ValueError(f"chunk ({self.chunk!r}) must be a positive number of queries, e.g. {DEFAULT_CHUNK}.")

    @classmethod
    def for_model(
        cls, depth: int, memory_count: int, ratio: float = 0.5, factor: int | None = None, **kwargs
    ) -> "MergeSettings":
        """Paper defaults for a model of ``depth`` blocks: blocks scaled from 10/20 of 30, factor grown with the memory count."""
        factor = default_pool_factor(memory_count) if factor is None else factor
        return cls(blocks=default_merge_blocks(depth), ratio=ratio, factor=factor, **kwargs)


def rows_for_conditional(cond_or_uncond: Sequence[int], batch: int) -> tuple[int, ...] | None:
    """Batch rows of the conditional branch, given a host's per-chunk list of 0 (cond) / 1 (uncond) flags.

    Each flag covers ``batch // len(cond_or_uncond)`` consecutive rows; None when there is no conditional chunk.
    """
    if not cond_or_uncond or batch % len(cond_or_uncond):
        return None
    per_chunk = batch // len(cond_or_uncond)
    rows = tuple(i * per_chunk + r for i, flag in enumerate(cond_or_uncond) if flag == 0 for r in range(per_chunk))
    return rows or None


def per_token_modulation(vec: torch.Tensor, video_tokens: int, memory_tokens: int) -> torch.Tensor:
    """Expand a per-frame modulation [B, F, 6, dim] (F > 1) to one entry per token of [video, memory].

    Video tokens are expanded exactly like the Wan block's own ``repeat_e``. Memory tokens take the first frame's
    modulation: memories are clean latents, and with per-frame timesteps (Wan 2.2 TI2V) the first frame is the one
    that carries the clean conditioning image (timestep 0); when no frame is clean all frames share one timestep.
    Any other modulation shape is already shared by all tokens and is returned unchanged.
    """
    if vec.ndim != 4 or vec.shape[1] <= 1:
        return vec
    frames = vec.shape[1]
    repeats = video_tokens // frames
    if repeats * frames == video_tokens:
        video = torch.repeat_interleave(vec, repeats, dim=1)
    else:
        video = torch.repeat_interleave(vec, repeats + 1, dim=1)[:, :video_tokens]
    memory = vec[:, :1].expand(-1, memory_tokens, -1, -1)
    return torch.cat([video, memory], dim=1)


def _video_group(frames: int, video_tokens: int) -> int:
    """Tokens per modulation entry of the video, as Wan's ``repeat_e`` spreads F entries over L tokens."""
    repeats = video_tokens // frames
    return repeats if repeats * frames == video_tokens else repeats + 1


def _expanded_group(entries: int, tokens: int) -> int:
    """Tokens each of ``entries`` covers when Wan's ``repeat_e`` spreads them over ``tokens`` (0: it would not)."""
    if entries == 1:
        return tokens  # broadcast
    repeats = tokens // entries
    if repeats == 1:
        return 1 if entries == tokens else 0  # repeat_e returns e unchanged: only right when already per token
    return repeats if repeats * entries == tokens else repeats + 1


def grouped_modulation(vec: torch.Tensor, video_tokens: int, memory_tokens: int) -> torch.Tensor:
    """The per-token modulation of ``per_token_modulation`` in its shortest form that Wan's block expands back.

    Returns [B, G, 6, dim] with one entry per run of ``h`` tokens, ``h`` the largest group size that lines up with
    every frame boundary and the video/memory boundary and that ``repeat_e`` reproduces (G = ceil(N / h)). The block
    then adds its modulation to G entries and expands each use to [B, N, dim] as it does without memory, instead of
    holding [B, N, 6, dim] tensors (N = video + memory tokens) through the whole block. The values every token sees
    are copies of the same entries, so the block's output is bit-identical to ``per_token_modulation``'s. h = 1 (no
    saving, still exact) when nothing larger fits. Any other modulation shape is returned unchanged.
    """
    if vec.ndim != 4 or vec.shape[1] <= 1:
        return vec
    frames = vec.shape[1]
    step = _video_group(frames, video_tokens)
    total = video_tokens + memory_tokens
    boundary = math.gcd(step, video_tokens) if memory_tokens else step
    for h in sorted((d for d in _divisors(boundary)), reverse=True):
        entries = -(-total // h)
        if _expanded_group(entries, total) == h:
            starts = torch.arange(entries, device=vec.device) * h  # built where vec is: no copy per block call
            index = torch.where(starts < video_tokens, starts // step, torch.zeros_like(starts))
            return vec[:, index]
    return per_token_modulation(vec, video_tokens, memory_tokens)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


@dataclass(frozen=True)
class MergeEvent:
    """What one merge block did: the frames it merged and the memory token count before and after."""

    block_index: int
    frames: tuple[int, ...]
    tokens_before: int
    tokens_after: int


@dataclass(eq=False)
class MemoryStreamState:
    """Memory tokens [B or 1, M, dim], their RoPE ids [M, 3] and layout, carried through one model call."""

    tokens: torch.Tensor
    positions: torch.Tensor
    layout: TokenLayout
    merge: MergeSettings | None = None
    events: list[MergeEvent] = field(default_factory=list)
    responsiveness: torch.Tensor | None = None
    _memory_pe: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (
            self.tokens.ndim != 3
            or self.tokens.shape[1] != self.layout.num_tokens
            or self.positions.shape != (self.layout.num_tokens, 3)
        ):
            raise ValueError(
                f"tokens {tuple(self.tokens.shape)} and positions {tuple(self.positions.shape)} must be [B, M, dim] and "
                f"[M, 3] with M = {self.layout.num_tokens} tokens of the layout."
            )

    @classmethod
    def from_embedded(cls, embedded: "MemoryTokens", merge: MergeSettings | None = None) -> "MemoryStreamState":
        """The stream of an embedded context (``context.embed_context``)."""
        return cls(embedded.tokens, embedded.positions, embedded.layout, merge)

    @classmethod
    def empty(cls, dim: int = 0) -> "MemoryStreamState":
        """A stream without memory: every block runs exactly as without the stream."""
        return cls(torch.zeros(1, 0, dim), torch.zeros(0, 3), TokenLayout.empty())

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[1])

    def memory_pe(self, rope_fn: RopeFn, like: torch.Tensor) -> torch.Tensor:
        """RoPE table of the memory tokens (cached until the next merge), on ``like``'s device and dtype."""
        if self._memory_pe is None:
            self._memory_pe = rope_fn(self.positions.to(like.device))
        return self._memory_pe.to(device=like.device, dtype=like.dtype)

    def _concat(
        self, x: torch.Tensor, pe_x: torch.Tensor, vec: torch.Tensor, rope_fn: RopeFn
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        memory = self.tokens.to(device=x.device, dtype=x.dtype)
        if memory.shape[0] != batch:
            if memory.shape[0] != 1:
                raise ValueError(
                    f"memory tokens have batch {memory.shape[0]} but x has batch {batch}; build the memory with batch 1."
                )
            memory = memory.expand(batch, -1, -1)
        pe_memory = self.memory_pe(rope_fn, pe_x)
        if pe_memory.shape[0] != pe_x.shape[0]:
            pe_memory = pe_memory.expand(pe_x.shape[0], *pe_memory.shape[1:])
        x_cat = torch.cat([x, memory], dim=1)
        pe_cat = torch.cat([pe_x, pe_memory], dim=1)
        return x_cat, pe_cat, grouped_modulation(vec, x.shape[1], self.num_tokens)

    def _merges_at(self, block_index: int) -> bool:
        return self.merge is not None and block_index in self.merge.blocks and self.merge.ratio > 0

    def _merge(
        self,
        x: torch.Tensor,
        pe_x: torch.Tensor,
        vec: torch.Tensor,
        rope_fn: RopeFn,
        block_index: int,
        qk_fn: QkFn | None,
    ) -> None:
        """Rank the memory frames present by responsiveness to the video queries and pool the least responsive."""
        settings = self.merge
        assert settings is not None
        sizes = torch.tensor(self.layout.frame_sizes, dtype=torch.long)
        candidates = torch.tensor(self.layout.mergeable, dtype=torch.bool) & (sizes > 0)
        if merge_count(int(candidates.sum()), settings.ratio) == 0:
            return
        if settings.fixed_frames is not None:
            self._merge_fixed(dict(settings.fixed_frames).get(block_index, ()), candidates, block_index)
            return
        if qk_fn is None:
            raise ValueError(
                f"block {block_index} is a merge block but qk_fn is None; pass a qk_fn that returns the block's "
                "self-attention (q, k), or remove the block from MergeSettings.blocks."
            )
        x_cat, pe_cat, vec_cat = self._concat(x, pe_x, vec, rope_fn)
        q, k = qk_fn(x_cat, pe_cat, vec_cat)
        video_tokens = x.shape[1]
        token_frame = self.layout.token_frame(device=k.device)
        candidate_frames = torch.nonzero(candidates).flatten().to(k.device)
        remap = torch.full((self.layout.num_frames,), -1, dtype=torch.long, device=k.device)
        remap[candidate_frames] = torch.arange(candidate_frames.numel(), device=k.device)
        keep = remap[token_frame] >= 0
        scores = frame_responsiveness(
            q[:, :video_tokens],
            k[:, video_tokens:][:, keep],
            remap[token_frame][keep],
            int(candidate_frames.numel()),
            settings.chunk,
        )
        full = torch.zeros((scores.shape[0], self.layout.num_frames), dtype=scores.dtype, device=scores.device)
        full[:, candidate_frames] = scores
        self.responsiveness = full
        if settings.plan_rows is not None:
            scores = scores[list(settings.plan_rows)]
        candidate_list = candidate_frames.tolist()  # one device sync, not one per merged frame
        chosen = tuple(int(candidate_list[i]) for i in merge_plan(scores, settings.ratio))
        self._apply_plan(chosen, block_index)

    def _merge_fixed(self, frames: Sequence[int], candidates: torch.Tensor, block_index: int) -> None:
        """Merge the frames a plan made earlier names (checked against this stream's layout)."""
        chosen = tuple(int(f) for f in frames)
        if any(not 0 <= f < len(candidates) or not bool(candidates[f]) for f in chosen):
            raise ValueError(
                f"fixed_frames names frames {chosen} at block {block_index}, but this stream's mergeable frames are "
                f"{torch.nonzero(candidates).flatten().tolist()}; a fixed plan must come from a stream with the same "
                "context (the conditional pass of the same step)."
            )
        if chosen:
            self.responsiveness = None
            self._apply_plan(chosen, block_index)

    def _apply_plan(self, chosen: tuple[int, ...], block_index: int) -> None:
        settings = self.merge
        assert settings is not None
        before = self.num_tokens
        self.tokens, self.positions, self.layout = merge_frames(
            self.tokens, self.positions, self.layout, chosen, settings.factor, settings.operator, settings.mode
        )
        self._memory_pe = None
        self.events.append(MergeEvent(block_index, chosen, before, self.num_tokens))
        log.debug(
            "merge at block %d: %d frames, memory tokens %d -> %d", block_index, len(chosen), before, self.num_tokens
        )

    def run_block(
        self,
        block_fn: BlockFn,
        x: torch.Tensor,
        pe_x: torch.Tensor,
        vec: torch.Tensor,
        rope_fn: RopeFn,
        block_index: int,
        qk_fn: QkFn | None = None,
    ) -> torch.Tensor:
        """Run one block on [x, memory] and return the video part; the memory part stays in the state.

        Without memory tokens this is exactly ``block_fn(x, pe_x, vec)`` (nothing is concatenated).
        """
        if self.num_tokens and self._merges_at(block_index):
            self._merge(x, pe_x, vec, rope_fn, block_index, qk_fn)
        if self.num_tokens == 0:
            return block_fn(x, pe_x, vec)
        x_cat, pe_cat, vec_cat = self._concat(x, pe_x, vec, rope_fn)
        out = block_fn(x_cat, pe_cat, vec_cat)
        video_tokens = x.shape[1]
        self.tokens = out[:, video_tokens:]
        return out[:, :video_tokens]
