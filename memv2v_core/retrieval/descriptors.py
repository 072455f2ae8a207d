"""Segment descriptors and segment retrieval for long-video editing (Memory-V2V §3.4, Alg. 2).

A segment's descriptor is the mean of its frames' L2-normalised image embeddings. Earlier source segments are
ranked by cosine similarity to the current one; the immediately previous segment always comes first (it keeps the
seam between consecutive segments coherent), then the most similar, up to ``top_k``. Each bank entry of an edited
segment holds the source segment's descriptor as its "descriptor" tensor.

Which bank entries take part (our rule): entries with a segment index below the current one; when several share a
segment index (the segment was edited again) the newest wins. With a ``source_id`` only that video's segments are
candidates and other videos' segments are ignored with a note; it is an error when, past segment 0, the bank holds
none of this video's segments but does hold another video's (a changed or mistyped source_id would silently drop
the memory). Without a ``source_id`` the bank must hold segments of at most one video.

Which descriptors compare (our rule): each stored descriptor carries its embedder's identity key in the entry's
extra ("embedder_id"); a descriptor of another embedder is refused even when the sizes agree (DINOv2-L and CLIP-H
both give 1024 values, in unrelated spaces). Entries stored before identities were recorded have none: they are
compared by size only, as they always were, and a note says how many.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..segments import SOURCE_FRAMES_KEY
from .selection import SelectedMemory, Selection

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 4
DESCRIPTOR_NAME = "descriptor"      # the bank tensor that holds a segment's descriptor
EMBEDDER_KEY = "embedder"           # entry.extra key naming the embedder that made it (when recorded)
EMBEDDER_ID_KEY = "embedder_id"     # entry.extra key holding that embedder's identity key (absent in older entries)

Candidate = tuple[str, int, "torch.Tensor | None"]  # (entry_id, segment_index, descriptor)


@dataclass(frozen=True)
class SegmentDescriptor:
    """A source segment's descriptor and what made it; Bank Add stores ``vector`` as the entry's "descriptor"."""

    vector: torch.Tensor
    embedder: str
    segment_index: int | None = None
    source_id: str | None = None
    frames: int = 0
    embedder_id: str | None = None  # the embedder's identity key and the size; None when the embedder has none
    source_frames: int = 0  # the whole source video's frame count when known (0: not given)

    @property
    def dim(self) -> int:
        return self.vector.numel()

    def bank_extra(self) -> dict[str, str]:
        """What Bank Add stores in the entry's extra beside the descriptor: the embedder's name and identity, and
        the source's frame count when known (``segments.check_source_frames`` refuses a changed source by it)."""
        extra = {EMBEDDER_KEY: self.embedder}
        if self.embedder_id is not None:
            extra[EMBEDDER_ID_KEY] = self.embedder_id
        if self.source_frames > 0:
            extra[SOURCE_FRAMES_KEY] = int(self.source_frames)
        return extra


def segment_descriptor(frame_embeddings: torch.Tensor) -> torch.Tensor:
    """[N, D] per-frame embeddings -> [D]: the mean of the L2-normalised rows (float32)."""
    if not isinstance(frame_embeddings, torch.Tensor) or frame_embeddings.ndim != 2 or frame_embeddings.shape[0] == 0:
        shape = list(frame_embeddings.shape) if isinstance(frame_embeddings, torch.Tensor) else frame_embeddings
        raise ValueError(f"frame_embeddings is {shape}; expected [frames, dim] with at least one frame")
    embeddings = frame_embeddings.detach().float().cpu()
    if not torch.isfinite(embeddings).all():
        raise ValueError("frame_embeddings hold NaN or infinite values; the embedder failed on these frames")
    return F.normalize(embeddings, dim=1).mean(0)


def describe_segment(embedder: Any, frames: torch.Tensor, segment_index: int | None = None,
                     source_id: str | None = None) -> SegmentDescriptor:
    """Embed a segment's frames with ``embedder`` (``embed_frames`` protocol) and average them."""
    vector = segment_descriptor(embedder.embed_frames(frames))
    identity = getattr(embedder, "identity", None)
    embedder_id = f"{identity.key}|dim={vector.numel()}" if identity is not None else None
    return SegmentDescriptor(vector, getattr(embedder, "name", type(embedder).__name__), segment_index, source_id,
                             frames=int(frames.shape[0]), embedder_id=embedder_id)


def check_same_embedder(current: Any, stored_id: str | None, stored_name: str | None, where: str) -> bool:
    """Refuse a stored descriptor made by another embedder than ``current`` (a ``SegmentDescriptor``); ``where``
    names the stored one. False when either side has no identity (then only the sizes can be checked)."""
    current_id = current.embedder_id if isinstance(current, SegmentDescriptor) else None
    if current_id is None or stored_id is None:
        return False
    if current_id != stored_id:
        stored = f"{stored_name} [{stored_id}]" if stored_name else f"[{stored_id}]"
        raise ValueError(f"embedder: {current.embedder} [{current_id}] is not the embedder {where} was described "
                         f"with: {stored} ({_difference(current_id, stored_id)}). Descriptors of different image "
                         "encoders cannot be compared, even of the same size. Connect the embedder the earlier "
                         "segments were described with (the same model file), or start a new bank or source_id.")
    return True


def _difference(key: str, other: str) -> str:
    """Which part of two identity keys differs, in words (keys: kind|architecture|layout=..|weights=..|dim=..)."""
    fields = [lambda k: k.split("|")[:2], lambda k: [p for p in k.split("|") if p.startswith("layout=")],
              lambda k: [p for p in k.split("|") if p.startswith("weights=")]]
    words = ["another kind of model", "the same architecture with another layout or preprocessing",
             "the same architecture with other weights"]
    for get, word in zip(fields, words):
        if get(key) != get(other):
            return word
    return "another embedder"


@dataclass(frozen=True)
class SegmentScore:
    """One candidate segment: its cosine similarity to the current segment (None without a descriptor) and its
    rank in the selection (1 = first; None = not selected)."""

    entry_id: str
    segment_index: int
    similarity: float | None
    rank: int | None = None
    previous: bool = False


def _vector(value: Any, name: str) -> torch.Tensor:
    vector = value.vector if isinstance(value, SegmentDescriptor) else value
    if not isinstance(vector, torch.Tensor) or vector.numel() == 0:
        raise ValueError(f"{name} is {type(vector).__name__}; expected a descriptor vector [D]")
    return vector.detach().reshape(-1).double().cpu()


def _newest_earlier(candidates: Sequence[Candidate], current_index: int) -> list[Candidate]:
    """Candidates before ``current_index``, one per segment index (the last listed, i.e. the newest edit)."""
    by_index: dict[int, Candidate] = {}
    for candidate in candidates:
        if candidate[1] < current_index:
            by_index[candidate[1]] = candidate
    return list(by_index.values())


def score_segments(current: Any, candidates: Sequence[Candidate], current_index: int, top_k: int = DEFAULT_TOP_K,
                   recent_first: bool = True) -> list[SegmentScore]:
    """Every usable candidate with its similarity, selected ones first in rank order (see ``rank_segments``)."""
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be 0 or more (4 by default: the previous segment and 3 more)")
    if current_index < 0:
        raise ValueError(f"segment_index={current_index} must be 0 or more")
    query = _vector(current, "the current segment's descriptor")
    kept = _newest_earlier(candidates, current_index)
    similarity: dict[str, float | None] = {}
    for entry_id, segment_index, descriptor in kept:
        if descriptor is None:
            similarity[entry_id] = None
            continue
        stored = _vector(descriptor, f"the descriptor of entry {entry_id}")
        if stored.numel() != query.numel():
            raise ValueError(f"the embedder gives {query.numel()}-value descriptors but entry {entry_id} (segment "
                             f"{segment_index}) holds a {stored.numel()}-value one: they come from different "
                             "embedders. Use the embedder the bank's segments were described with, or a new "
                             "source_id / bank.")
        if isinstance(descriptor, SegmentDescriptor):
            check_same_embedder(current, descriptor.embedder_id, descriptor.embedder,
                                f"entry {entry_id} (segment {segment_index})")
        similarity[entry_id] = float(F.cosine_similarity(query, stored, dim=0, eps=1e-12))

    previous = next((c for c in kept if c[1] == current_index - 1), None) if recent_first else None
    ranked = sorted((c for c in kept if similarity[c[0]] is not None and c is not previous),
                    key=lambda c: (-similarity[c[0]], -c[1]))  # ties: the more recent segment first
    order = ([previous] if previous is not None else []) + ranked
    rank_of = {c[0]: position + 1 for position, c in enumerate(order[:top_k])}
    scores = [SegmentScore(entry_id, index, similarity[entry_id], rank_of.get(entry_id),
                           previous is not None and entry_id == previous[0])
              for entry_id, index, _ in kept]
    return sorted(scores, key=lambda s: (s.rank is None, s.rank or 0,
                                         -(s.similarity if s.similarity is not None else -math.inf)))


def rank_segments(current: Any, candidates: Sequence[Candidate], current_index: int, top_k: int = DEFAULT_TOP_K,
                  recent_first: bool = True) -> list[tuple[str, float]]:
    """The selected ``(entry_id, cosine similarity)`` pairs, best first; with ``recent_first`` the previous segment
    (index ``current_index - 1``) leads whatever its score (NaN when it has no descriptor)."""
    return [(s.entry_id, s.similarity if s.similarity is not None else math.nan)
            for s in score_segments(current, candidates, current_index, top_k, recent_first) if s.rank is not None]


@dataclass(frozen=True)
class SegmentRetrieval:
    """What segment retrieval found: the selection (mode "edit", previous segment first), every candidate's
    score, and notes on what was left out and why."""

    selection: Selection
    scores: list[SegmentScore]
    notes: list[str] = field(default_factory=list)
    current_index: int = 0
    source_id: str | None = None


def _source_name(source_id: str | None) -> str:
    return repr(source_id) if source_id is not None else "(no source_id)"


def source_segments(bank: Any, source_id: str | None, strict: bool = True,
                    lineage_of: str | None = None) -> tuple[list[Any], list[str]]:
    """The bank's segment entries of one source video, in insertion order, with notes (see the module rule).

    Only entries retrieval may use (``bank.retrieval_ids``: visible ones, on the active branch or in
    ``lineage_of``'s lineage). ``strict``: refuse a bank that holds other videos' segments but none of
    ``source_id``'s.
    """
    source_id = source_id or None
    segments = [e for e in (bank.entry(i) for i in bank.retrieval_ids(lineage_of=lineage_of))
                if e.segment_index is not None]
    sources = {e.source_id for e in segments}
    if source_id is None:
        if len(sources) > 1:
            raise ValueError("source_id is empty but the bank holds segments of several source videos ("
                             + ", ".join(sorted(_source_name(s) for s in sources)) + "); set source_id to this "
                             "video's id (Split Segments outputs one) so they do not mix")
        return segments, []
    mine = [e for e in segments if e.source_id == source_id]
    others = sorted(_source_name(s) for s in sources if s != source_id)
    if strict and not mine and others:
        raise ValueError(f"source_id '{source_id}': the bank holds no segments of this video, but holds segments of "
                         f"{', '.join(others)}. Use the source_id the earlier segments were added with, or another "
                         "bank for a new video.")
    notes = [f"ignored {len(segments) - len(mine)} segment entries of other source videos ({', '.join(others)})"] \
        if others else []
    return mine, notes


def latest_segments(entries: Sequence[Any]) -> dict[int, Any]:
    """segment index -> its newest entry (the last added), for entries in insertion order."""
    return {entry.segment_index: entry for entry in entries}


def select_segments(bank: Any, source_id: str | None, current_index: int, descriptor: Any,
                    top_k: int = DEFAULT_TOP_K, recent_first: bool = True, *,
                    lineage_of: str | None = None, candidates: Mapping[int, str] | None = None) -> SegmentRetrieval:
    """Rank the bank's earlier segments of ``source_id`` against ``descriptor`` (see the module rule); hidden
    entries are skipped, and ``lineage_of`` / the active branch restrict the candidates as in ``source_segments``.

    ``candidates`` (segment index -> entry id): only these entries may be remembered, e.g. the ones a long-edit
    run made or resumed, so another run's newer edit of an earlier segment never conditions this run's."""
    segments, notes = source_segments(bank, source_id, strict=current_index > 0, lineage_of=lineage_of)
    source_id = source_id or None
    earlier = [e for e in segments if e.segment_index < current_index]
    if len(earlier) < len(segments):
        notes.append(f"ignored {len(segments) - len(earlier)} entries of segment {current_index} or later")
    if candidates is not None:
        chosen = [e for e in earlier if candidates.get(e.segment_index) == e.entry_id]
        if len(chosen) < len(earlier):
            notes.append(f"ignored {len(earlier) - len(chosen)} edits of earlier segments that this run did not use")
        earlier = chosen
    kept = list(latest_segments(earlier).values())
    if len(kept) < len(earlier):
        notes.append(f"{len(earlier) - len(kept)} older edits of a segment were replaced by its newest edit")

    query = _vector(descriptor, "descriptor")
    embedder = descriptor.embedder if isinstance(descriptor, SegmentDescriptor) else None
    candidates, undescribed, identified, legacy = [], 0, 0, 0
    for entry in kept:
        stored = bank.load_tensor(entry.entry_id, DESCRIPTOR_NAME) if entry.has(DESCRIPTOR_NAME) else None
        if stored is None and entry.segment_index != current_index - 1:
            undescribed += 1
        extra = entry.extra if isinstance(entry.extra, dict) else {}
        made_by, stored_id = extra.get(EMBEDDER_KEY), extra.get(EMBEDDER_ID_KEY)
        if stored is not None and stored.numel() != query.numel():
            raise ValueError(f"embedder: {embedder or 'this embedder'} gives {query.numel()}-value descriptors, but "
                             f"segment {entry.segment_index} (entry {entry.entry_id}) was stored with a "
                             f"{stored.numel()}-value one{f' by {made_by}' if made_by else ''}. Connect the embedder "
                             "the earlier segments were described with, or start a new bank or source_id.")
        if stored is not None:
            check_same_embedder(descriptor, stored_id, made_by, f"segment {entry.segment_index} (entry "
                                                                f"{entry.entry_id})")
            identified, legacy = identified + (stored_id is not None), legacy + (stored_id is None)
        candidates.append((entry.entry_id, entry.segment_index, stored))
    if undescribed:
        notes.append(f"{undescribed} segments have no stored descriptor and cannot be ranked (add them with the "
                     "descriptor output of Segment Retrieve)")
    current_id = descriptor.embedder_id if isinstance(descriptor, SegmentDescriptor) else None
    if current_id is not None and legacy:
        notes.append(f"{legacy} stored descriptors carry no embedder identity (stored before it was recorded): "
                     "compared by size only, so make sure this is the embedder they were made with")
    if current_id is None and identified:
        notes.append("the current descriptor carries no embedder identity: compared with the stored ones by size "
                     "only")
    if current_index > 0 and not any(c[1] == current_index - 1 for c in candidates):
        notes.append(f"segment {current_index - 1} (the previous one) is not in the bank yet; the best match takes "
                     "its place")

    scores = score_segments(query, candidates, current_index, top_k, recent_first)
    items = tuple(SelectedMemory(s.entry_id, s.similarity if s.similarity is not None else math.nan,
                                 {"similarity": s.similarity if s.similarity is not None else math.nan,
                                  "segment_index": float(s.segment_index), "previous": float(s.previous)})
                  for s in scores if s.rank is not None)
    for note in notes:
        logger.info("segment retrieval: %s", note)
    return SegmentRetrieval(Selection(bank, items, mode="edit"), scores, notes, current_index, source_id)


def format_segment_scores(result: SegmentRetrieval) -> str:
    """A text table of every candidate: rank, segment, similarity, entry; then the notes."""
    header = (f"segment {result.current_index}"
              + (f" of '{result.source_id}'" if result.source_id else "")
              + f": {len(result.selection)} of {len(result.scores)} earlier segments selected")
    lines = [header, "rank  segment  similarity  entry"]
    for score in result.scores:
        similarity = f"{score.similarity:10.4f}" if score.similarity is not None else "         -"
        rank = str(score.rank) if score.rank is not None else "-"
        lines.append(f"{rank:>4}  {score.segment_index:>7}  {similarity}  {score.entry_id}"
                     + ("  (previous, always first)" if score.previous else ""))
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)
