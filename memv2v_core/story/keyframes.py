"""StoryMem keyframe extraction (``extract_keyframes.py``): which frames of a finished shot enter the memory.

First frame (the first that passes the optional quality gate), then every frame whose image similarity to the last
chosen keyframe is below a threshold (0.9); while more than 3 are chosen the threshold drops by 0.01 and the scan
reruns. Keyframes more than 0.9 similar to a keyframe already stored are skipped. As in the official loop, frame 1
is never a candidate (the scan starts at frame 2). The official embedder is OpenAI CLIP ViT-B/32 (cosine of
L2-normalised image embeddings); here any embedder is injected, and the quality gate (HPSv3 >= 3.0 officially) is
an optional callable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from ..retrieval.embedders import check_frames

SIMILARITY_THRESHOLD = 0.9  # MIN_FRAME_SIMILARITY
MAX_KEYFRAMES = 3  # MAX_KEYFRAME_NUM
THRESHOLD_STEP = 0.01  # ADAPTIVE_ALPHA
DUPLICATE_THRESHOLD = 0.9  # the constant, not the lowered threshold
QUALITY_THRESHOLD = 3.0  # HPSV3_QUALITY_THRESHOLD
FIRST_CANDIDATE = 2  # ``for i in range(2, T)`` in the official scan

Embedder = Callable[[torch.Tensor], torch.Tensor]
QualityGate = Callable[[torch.Tensor], Any]


@dataclass(frozen=True)
class KeyframeSelection:
    """The keyframes of one shot and how they were found.

    ``indices``: frame indices kept (ascending); ``embeddings``: their L2-normalised embeddings [K, D] (store them
    with the keyframes, the next shot's duplicate check needs them); ``candidates``: frames chosen before the
    duplicate check; ``duplicates``: (frame, stored keyframe, similarity) for each frame skipped as a near-duplicate;
    ``threshold``: the similarity threshold of the final scan; ``gate_ran``: whether a quality gate scored the frames
    (``quality`` holds its scores, else None); ``frame_count``: frames in the shot.
    """

    indices: tuple[int, ...]
    embeddings: torch.Tensor
    candidates: tuple[int, ...]
    duplicates: tuple[tuple[int, int, float], ...]
    threshold: float
    gate_ran: bool
    quality: tuple[float, ...] | None
    frame_count: int

    def summary(self) -> str:
        """One line for a node's display."""
        kept = ", ".join(str(i) for i in self.indices) or "none"
        text = f"keyframes {kept} of {self.frame_count} frames (threshold {self.threshold:.2f}"
        if self.duplicates:
            text += "; skipped as stored: " + ", ".join(f"{f} (~#{s} {sim:.2f})" for f, s, sim in self.duplicates)
        text += "; quality gate ran" if self.gate_ran else "; no quality gate"
        if self.gate_ran and not self.candidates:
            text += ": every frame is below the quality threshold"
        return text + ")"


def embed(embedder: Any, frames: torch.Tensor, name: str = "embedder") -> torch.Tensor:
    """Run an embedder (a callable or an object with ``embed_frames``) on [N, H, W, 3] frames -> [N, D] float32."""
    function = getattr(embedder, "embed_frames", embedder)
    if not callable(function):
        raise ValueError(f"{name} is a {type(embedder).__name__}; pass a callable frames [N, H, W, 3] -> [N, D] or an "
                         "object with embed_frames (e.g. memv2v_core.retrieval.embedders.ColorHistogramEmbedder).")
    out = function(frames)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != frames.shape[0]:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} returned {got} for {frames.shape[0]} frames; it must return one embedding per "
                         "frame, [N, D].")
    return out.detach().float().cpu()


def select_keyframes(
    frames: torch.Tensor,
    embedder: Embedder | Any,
    *,
    stored_embeddings: torch.Tensor | None = None,
    threshold: float = SIMILARITY_THRESHOLD,
    max_keyframes: int = MAX_KEYFRAMES,
    step: float = THRESHOLD_STEP,
    duplicate_threshold: float = DUPLICATE_THRESHOLD,
    quality_gate: QualityGate | None = None,
    quality_threshold: float = QUALITY_THRESHOLD,
) -> KeyframeSelection:
    """Keyframes of a shot's frames [T, H, W, 3] (0..1), StoryMem's rules (see the module docstring).

    ``embedder`` maps frames [N, H, W, 3] to [N, D] (the official one is CLIP ViT-B/32; any ``FrameEmbedder``
    works). ``stored_embeddings`` [S, D]: the keyframes already in the memory, embedded with the same embedder.
    ``quality_gate`` maps frames [N, H, W, 3] to one score per frame (the official gate is HPSv3 with an empty
    prompt); frames scoring below ``quality_threshold`` are never keyframes. It runs once on all frames.
    """
    frames = check_frames(frames)
    if isinstance(max_keyframes, bool) or not isinstance(max_keyframes, int) or max_keyframes < 1:
        raise ValueError(f"max_keyframes ({max_keyframes!r}) must be an integer >= 1; StoryMem uses 3.")
    if not step > 0:
        raise ValueError(f"step ({step!r}) must be > 0: the threshold drops by it until at most max_keyframes "
                         "remain; StoryMem uses 0.01.")
    count = frames.shape[0]
    vectors = F.normalize(embed(embedder, frames), dim=1)
    stored = _check_stored(stored_embeddings, vectors.shape[1])

    quality = None
    usable = [True] * count
    if quality_gate is not None:
        quality = _scores(quality_gate(frames), count)
        usable = [score >= quality_threshold for score in quality]
    first = next((i for i in range(count) if usable[i]), None)
    if first is None:
        return KeyframeSelection((), vectors[:0], (), (), float(threshold), True, quality, count)

    while True:
        chosen = _scan(vectors, usable, first, threshold)
        if len(chosen) <= max_keyframes:
            break
        threshold -= step  # repeated subtraction, as the official loop does it

    kept, duplicates = [], []
    for index in chosen:
        if stored.shape[0]:
            similarity = stored @ vectors[index]
            best = int(similarity.argmax())
            if float(similarity[best]) > duplicate_threshold:
                duplicates.append((index, best, float(similarity[best])))
                continue
        kept.append(index)
    return KeyframeSelection(tuple(kept), vectors[kept], tuple(chosen), tuple(duplicates), float(threshold),
                             quality_gate is not None, quality, count)


def _scan(vectors: torch.Tensor, usable: Sequence[bool], first: int, threshold: float) -> list[int]:
    chosen, reference = [first], vectors[first]
    # The official scan starts at frame 2 whatever the first keyframe is; frames before a gated first keyframe
    # failed the gate, so starting after it is the same.
    for i in range(max(FIRST_CANDIDATE, first + 1), vectors.shape[0]):
        if float(reference @ vectors[i]) < threshold and usable[i]:
            chosen.append(i)
            reference = vectors[i]
    return chosen


def _check_stored(stored: torch.Tensor | None, dim: int) -> torch.Tensor:
    if stored is None:
        return torch.zeros(0, dim)
    if not isinstance(stored, torch.Tensor) or stored.ndim != 2 or (stored.shape[0] and stored.shape[1] != dim):
        got = list(stored.shape) if isinstance(stored, torch.Tensor) else type(stored).__name__
        raise ValueError(f"stored_embeddings is {got}; expected [stored keyframes, {dim}] from the same embedder as "
                         "the frames (embed the stored keyframe images again if the embedder changed).")
    return F.normalize(stored.detach().float().cpu(), dim=1) if stored.shape[0] else torch.zeros(0, dim)


def _scores(values: Any, count: int) -> tuple[float, ...]:
    scores = torch.as_tensor(values, dtype=torch.float64).flatten()
    if scores.numel() != count:
        raise ValueError(f"quality_gate returned {scores.numel()} scores for {count} frames; it must score every "
                         "frame, [N].")
    return tuple(float(s) for s in scores)
