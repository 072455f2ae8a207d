"""The memory context: which latents condition the target, with which kernel and which temporal ids.

Built by dynamic tokenization from the user video and the ranked memories; holds no model weights, because the
sampling wrapper embeds the streams with the model's (or the pack's) tokenizer weights, once per sampling run and
device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .positions import DEFAULT_STORY_GAP, MODES, apply_temporal_ids, temporal_ids
from .tokenize import BASE_KERNEL, Kernel, KernelPlan, TokenLayout, embed_latent, grid_size, tokens_per_stream

MERGEABLE_ROLES = ("previous", "memory")

WeightsForKernel = Callable[[Kernel], "tuple[torch.Tensor, torch.Tensor | None]"]


@dataclass(frozen=True, eq=False)
class ContextStream:
    """One conditioning video: its role, its stored latent [1, C, T, H, W], kernel, temporal ids and retrieval facts.

    ``rank`` is the 0-based retrieval rank (None for the user video).
    """

    role: str
    entry_id: str | None
    latent: torch.Tensor
    kernel: Kernel
    temporal_ids: torch.Tensor
    rank: int | None = None
    score: float | None = None
    camera: Any | None = None

    @property
    def frames(self) -> int:
        return int(self.latent.shape[2])

    @property
    def mergeable(self) -> bool:
        """Token merging only ever touches memories, never the user video (papers §8.2 item 10)."""
        return self.role in MERGEABLE_ROLES


@dataclass(frozen=True, eq=False)
class MemoryContext:
    """The conditioning of one generation: mode ("nvs", "edit", "story"), target frame count and ordered streams.

    ``latent_format`` names the VAE family of the stored latents (e.g. "wan21"), so a mismatching model can be refused
    before sampling; None when unknown.
    """

    mode: str
    target_frames: int
    streams: tuple[ContextStream, ...]
    plan: KernelPlan = field(default_factory=KernelPlan)
    latent_format: str | None = None

    @property
    def memory_count(self) -> int:
        """Number of memory videos (the user video does not count)."""
        return sum(1 for s in self.streams if s.mergeable)

    @property
    def previous(self) -> ContextStream | None:
        """Mode "edit": the stream of segment i-1 (range T..2T-1), or None when it is not among the memories."""
        return next((s for s in self.streams if s.role == "previous"), None)

    @property
    def channels(self) -> int | None:
        return int(self.streams[0].latent.shape[1]) if self.streams else None


def _check_latent(name: str, latent: Any, channels: int | None) -> torch.Tensor:
    if not isinstance(latent, torch.Tensor) or latent.ndim != 5 or latent.shape[0] != 1:
        shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else type(latent).__name__
        raise ValueError(f"{name} has shape {shape}; pass one stored latent [1, C, T, H, W] (batch 1).")
    if channels is not None and latent.shape[1] != channels:
        raise ValueError(
            f"{name} has {latent.shape[1]} channels but the other streams have {channels}; all memories must come from "
            "the same VAE (e.g. all Wan 2.1 16-channel latents)."
        )
    return latent


@dataclass(frozen=True)
class SegmentFacts:
    """What a selected memory says about itself: bank entry id, segment index and source id (None when not a
    segment), and whether retrieval marked it as the previous segment."""

    entry_id: str
    segment_index: int | None = None
    source_id: str | None = None
    marked_previous: bool = False


def previous_segment_entry(
    memories: Sequence[SegmentFacts], segment_index: int | None, source_id: str | None = None
) -> str | None:
    """The entry id of segment ``segment_index - 1`` of ``source_id`` among ``memories`` (any rank), else None.

    With ``segment_index=None`` (unknown here) the memory retrieval marked as the previous segment is taken. With
    ``source_id=None`` the segment index alone decides, which is refused when segments of several videos match.
    """
    if segment_index is None:
        return next((m.entry_id for m in memories if m.marked_previous), None)
    if segment_index <= 0:
        return None
    matches = [m for m in memories if m.segment_index == segment_index - 1
               and (source_id is None or m.source_id == source_id)]
    sources = sorted({repr(m.source_id) for m in matches})
    if len(sources) > 1:
        raise ValueError(
            f"source_id is empty but the selection holds segment {segment_index - 1} of several source videos "
            f"({', '.join(sources)}); connect Split Segments' source_id so only this video's previous segment counts."
        )
    return matches[0].entry_id if matches else None


def build_context(
    user_latent: torch.Tensor | None,
    memories: Sequence[tuple[str, torch.Tensor, float | None, Any]],
    mode: str = "nvs",
    plan: KernelPlan | None = None,
    target_frames: int | None = None,
    *,
    reverse_memory: bool = True,
    story_gap: float = DEFAULT_STORY_GAP,
    latent_format: str | None = None,
    previous_entry: str | None = None,
) -> MemoryContext:
    """Apply ranks -> kernels and mode -> temporal ids to the user latent and the ranked memories (best first).

    ``memories`` holds (entry_id, latent, score, camera) tuples in retrieval order. In mode "edit" only the memory
    whose entry id is ``previous_entry`` (the bank entry that really is segment i-1 of the same source, wherever
    retrieval ranked it) takes the previous segment's range T..2T-1; with ``previous_entry=None`` (segment i-1 not
    retrieved) every memory takes 2T..3T-1. Rank still decides the kernel. ``target_frames`` defaults to the user
    latent's frame count. In mode "story" the
    default plan gives OneStory-style importance kernels; StoryMem's full-resolution keyframes need
    ``KernelPlan(fine=(1, 2, 2), coarse=(1, 2, 2))``. ``latent_format`` is recorded on the context as given.
    """
    plan = plan or KernelPlan()
    if mode not in MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {MODES}.")
    if user_latent is not None and mode != "nvs":
        raise ValueError(
            f"user_latent was given in mode {mode!r}; only mode 'nvs' conditions on a user video through memory tokens. "
            "Pass user_latent=None (editing feeds the source segment through the model's own conditioning)."
        )
    if target_frames is None:
        if user_latent is None:
            raise ValueError(
                "target_frames is None and there is no user_latent; pass the target's latent frame count, e.g. 21."
            )
        target_frames = int(user_latent.shape[2])
    if previous_entry is not None:
        if mode != "edit":
            raise ValueError(
                f"previous_entry ({previous_entry!r}) was given in mode {mode!r}; only mode 'edit' has a previous "
                "segment. Pass previous_entry=None."
            )
        listed = [str(m[0]) for m in memories if len(m) == 4]
        if listed.count(str(previous_entry)) != 1:
            raise ValueError(
                f"previous_entry ({previous_entry!r}) appears {listed.count(str(previous_entry))} times among the "
                f"memories {listed}; pass the entry id of segment i-1 once, or None when it was not retrieved."
            )

    roles: list[str] = []
    entries: list[tuple[str | None, torch.Tensor, float | None, Any, int | None, Kernel]] = []
    channels = None
    if user_latent is not None:
        channels = int(_check_latent("user_latent", user_latent, None).shape[1])
        roles.append("user")
        entries.append((None, user_latent, None, None, None, plan.user))
    for rank, memory in enumerate(memories):
        if len(memory) != 4:
            raise ValueError(
                f"memories[{rank}] has {len(memory)} items; pass (entry_id, latent, score, camera) tuples."
            )
        entry_id, latent, score, camera = memory
        latent = _check_latent(f"memories[{rank}] ({entry_id!r}) latent", latent, channels)
        channels = int(latent.shape[1])
        is_previous = previous_entry is not None and str(entry_id) == str(previous_entry)
        roles.append("previous" if is_previous else "memory")
        entries.append(
            (str(entry_id), latent, None if score is None else float(score), camera, rank, plan.kernel_for_rank(rank))
        )

    ids = temporal_ids(
        mode, target_frames, roles, [int(e[1].shape[2]) for e in entries], reverse=reverse_memory, story_gap=story_gap
    )
    streams = tuple(
        ContextStream(role, entry_id, latent, kernel, stream_ids, rank, score, camera)
        for role, (entry_id, latent, score, camera, rank, kernel), stream_ids in zip(roles, entries, ids.streams)
    )
    return MemoryContext(mode, target_frames, streams, plan, latent_format)


@dataclass(frozen=True)
class TokenBudget:
    """Token counts: the target, each stream, their total, and the total if every stream used the base 1x2x2 kernel."""

    target: int
    per_stream: tuple[int, ...]
    total: int
    naive_total: int

    @property
    def saving(self) -> float:
        """Fraction of tokens saved against the naive all-1x2x2 context."""
        return 1.0 - self.total / self.naive_total if self.naive_total else 0.0


def token_budget(
    context: MemoryContext, target_hw: tuple[int, int] | None = None, base_kernel: Kernel = BASE_KERNEL
) -> TokenBudget:
    """Token budget of ``context``; ``target_hw`` (latent H, W) defaults to the first stream's size."""
    if target_hw is None:
        if not context.streams:
            raise ValueError("the context has no streams; pass target_hw=(latent H, latent W) to size the target.")
        target_hw = tuple(context.streams[0].latent.shape[-2:])  # type: ignore[assignment]
    rows, cols = grid_size(target_hw[0], target_hw[1], base_kernel)
    target = context.target_frames * rows * cols
    per_stream = tuple(tokens_per_stream(s.latent.shape, s.kernel) for s in context.streams)
    naive = tuple(tokens_per_stream(s.latent.shape, base_kernel) for s in context.streams)
    return TokenBudget(target, per_stream, target + sum(per_stream), target + sum(naive))


def context_layout(context: MemoryContext) -> TokenLayout:
    """The token layout ``embed_context`` will produce, from shapes alone (no weights, no convolution)."""
    layouts = []
    for index, stream in enumerate(context.streams):
        rows, cols = grid_size(stream.latent.shape[-2], stream.latent.shape[-1], stream.kernel)
        layouts.append(
            TokenLayout(((rows, cols),) * stream.frames, (index,) * stream.frames, (stream.mergeable,) * stream.frames)
        )
    return TokenLayout.concat(layouts)


@dataclass(frozen=True, eq=False)
class MemoryTokens:
    """The embedded context: tokens [1, N, dim], RoPE ids [N, 3] (t with the stream's temporal ids) and the layout."""

    tokens: torch.Tensor
    positions: torch.Tensor
    layout: TokenLayout


def embed_context(
    context: MemoryContext,
    weights_for: WeightsForKernel,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    grid_unit: Kernel = BASE_KERNEL,
) -> MemoryTokens:
    """Embed every stream with ``weights_for(kernel) -> (weight, bias)`` and join them in stream order.

    Typical ``weights_for``: ``tokenize.DerivedTokenizer(model.patch_embedding.weight, model.patch_embedding.bias)``.
    Convolutions run in the weight's dtype (WanModel keeps its patch embedding in fp32); ``dtype`` casts the tokens.
    """
    tokens, positions, layouts = [], [], []
    for index, stream in enumerate(context.streams):
        weight, bias = weights_for(stream.kernel)
        if device is not None:
            weight = weight.to(device)
            bias = None if bias is None else bias.to(device)
        t, p, layout = embed_latent(stream.latent, weight, bias, stream.kernel, grid_unit, index, stream.mergeable)
        tokens.append(t if dtype is None else t.to(dtype))
        positions.append(apply_temporal_ids(p, stream.temporal_ids))
        layouts.append(layout)
    if not tokens:
        raise ValueError(
            "the context has no streams; there is nothing to embed (skip the memory for this call instead)."
        )
    return MemoryTokens(torch.cat(tokens, dim=1), torch.cat(positions, dim=0), TokenLayout.concat(layouts))
