"""Which stored keyframes condition the next shot: StoryMem's sink + window, a training-free OneStory-style relevance
ranking, or both (sink always, the rest by relevance).

StoryMem (``pipeline.py``): with more than ``max_memories`` (8) keyframes in the bank, keep the first ``sink`` (3) and
the most recent ``max_memories - sink``. OneStory learns a frame selector from the next caption; without its weights
(none are published) we rank stored keyframes by CLIP text-image similarity to the next shot's caption plus image
similarity to the last shot (ours, see ``design/algorithms.md`` §3). Chosen keyframes are returned in story order,
so the oldest sits furthest in the past on the temporal axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

MEMORY_MODES = ("sink_window", "relevance", "hybrid")
MAX_MEMORIES = 8  # pipeline.py's max_memory_size default (its README and example script use 10)
SINK = 3  # pipeline.py's fix


@dataclass(frozen=True)
class MemorySelection:
    """Chosen keyframes in story order: ``indices`` into the stored list, their ``ids``, why each was chosen
    (``reasons``: "sink", "window", "relevance" or "all" when everything fits) and their relevance ``scores`` (None
    where no relevance was computed); ``all_scores`` has one score per stored keyframe, or is None."""

    mode: str
    indices: tuple[int, ...]
    ids: tuple[str, ...]
    reasons: tuple[str, ...]
    scores: tuple[float | None, ...]
    all_scores: tuple[float, ...] | None
    stored: int

    def __len__(self) -> int:
        return len(self.indices)

    def table(self) -> str:
        """A small table for a node's display: one row per chosen keyframe."""
        rows = [f"{self.mode}: {len(self.indices)} of {self.stored} stored keyframes"]
        for index, id_, reason, score in zip(self.indices, self.ids, self.reasons, self.scores):
            rows.append(f"  #{index:<3} {id_:<24} {reason:<9} " + ("-" if score is None else f"{score:.3f}"))
        return "\n".join(rows)


def relevance_scores(
    keyframe_embeddings: torch.Tensor,
    *,
    caption_embedding: torch.Tensor | None = None,
    last_shot_embeddings: torch.Tensor | None = None,
    text_weight: float = 1.0,
    image_weight: float = 1.0,
) -> torch.Tensor:
    """Relevance of each stored keyframe [N, D] to the next shot: ``text_weight`` x cosine to the caption's text
    embedding [D] plus ``image_weight`` x mean cosine to the last shot's frame embeddings [K, D] (its keyframes or
    last frame). Text and image embeddings must come from one CLIP model (one shared space). Returns [N] float32."""
    keys = _matrix(keyframe_embeddings, "keyframe_embeddings", allow_empty=True)
    if caption_embedding is None and last_shot_embeddings is None:
        raise ValueError("relevance needs caption_embedding (the next shot's caption, CLIP text tower) or "
                         "last_shot_embeddings (frames of the last shot, CLIP image tower); pass at least one.")
    keys = F.normalize(keys, dim=1)
    scores = torch.zeros(keys.shape[0])
    if caption_embedding is not None:
        text = _matrix(caption_embedding, "caption_embedding", keys.shape[1])
        if text.shape[0] != 1:
            raise ValueError(f"caption_embedding has {text.shape[0]} rows; pass one caption embedding [D].")
        scores += text_weight * (keys @ F.normalize(text, dim=1)[0])
    if last_shot_embeddings is not None:
        last = _matrix(last_shot_embeddings, "last_shot_embeddings", keys.shape[1])
        scores += image_weight * (keys @ F.normalize(last, dim=1).T).mean(dim=1)
    return scores


def select_memories(
    stored: int | Sequence[str],
    *,
    mode: str = "sink_window",
    max_memories: int = MAX_MEMORIES,
    sink: int = SINK,
    scores: torch.Tensor | Sequence[float] | None = None,
) -> MemorySelection:
    """Choose up to ``max_memories`` of the stored keyframes (a count, or their ids in story order).

    "sink_window": the first ``sink`` plus the most recent rest (StoryMem). "relevance": the ``max_memories`` best
    ``scores`` (see ``relevance_scores``). "hybrid": the first ``sink`` always, the rest by score. With at most
    ``max_memories`` stored keyframes all are used, as in StoryMem.
    """
    if isinstance(stored, (str, bool)) or (isinstance(stored, int) and stored < 0):
        raise ValueError(f"stored ({stored!r}) must be a count >= 0 or the stored keyframes' ids in story order.")
    ids = [f"keyframe {i}" for i in range(stored)] if isinstance(stored, int) else [str(s) for s in stored]
    count = len(ids)
    if mode not in MEMORY_MODES:
        raise ValueError(f"mode ({mode!r}) must be one of {MEMORY_MODES}.")
    for name, value in (("max_memories", max_memories), ("sink", sink)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} ({value!r}) must be an integer >= 0.")
    if sink > max_memories and mode != "relevance":
        raise ValueError(f"sink ({sink}) must not be greater than max_memories ({max_memories}); the sink is part of "
                         "the memory budget.")
    values = None
    if scores is not None:
        values = [float(s) for s in torch.as_tensor(scores, dtype=torch.float32).flatten()]
        if len(values) != count:
            raise ValueError(f"scores has {len(values)} values for {count} stored keyframes; pass one per keyframe "
                             "(relevance_scores gives them).")
    elif mode != "sink_window":
        raise ValueError(f"mode {mode!r} ranks keyframes by relevance: pass scores (from relevance_scores), or use "
                         "mode 'sink_window'.")

    if count <= max_memories:
        chosen = {i: "all" for i in range(count)}
    elif mode == "sink_window":
        window = max_memories - sink  # bank[-0:] would be the whole bank in the official slice; 0 means no window
        chosen = {i: "sink" for i in range(sink)} | {i: "window" for i in range(count - window, count)}
    else:
        head = sink if mode == "hybrid" else 0
        chosen = {i: "sink" for i in range(head)}
        # best first; among equal scores the more recent keyframe wins
        rest = sorted(range(head, count), key=lambda i: (-values[i], -i))[:max_memories - head]
        chosen |= {i: "relevance" for i in rest}
    indices = tuple(sorted(chosen))
    return MemorySelection(
        mode, indices, tuple(ids[i] for i in indices), tuple(chosen[i] for i in indices),
        tuple(None if values is None else values[i] for i in indices), None if values is None else tuple(values), count)


def _matrix(value, name: str, dim: int | None = None, allow_empty: bool = False) -> torch.Tensor:
    if isinstance(value, torch.Tensor) and value.ndim == 1:
        value = value.unsqueeze(0)
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or (value.shape[0] == 0 and not allow_empty) or \
            (dim is not None and value.shape[1] != dim):
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        want = f"[rows, {dim}]" if dim is not None else "[rows, D]"
        raise ValueError(f"{name} is {got}; expected {want} embeddings" +
                         (" from the same CLIP model as the keyframe embeddings." if dim is not None else "."))
    return value.detach().float().cpu()
