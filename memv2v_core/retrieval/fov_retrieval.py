"""VideoFOV retrieval over a memory bank: rank stored generations by how much of the target's view they cover.

Stored cameras live in the scene frame, whose origin is the user video's first camera; every preset and ReCamMaster
trajectory starts there. Each entry's mask is therefore computed once in that frame and cached in the bank (slot
``fov.mask_key(params)``), so a stored generation is never re-projected. A target that does not start at the
scene origin puts the sphere's centre at its own first camera (as the paper does): then the candidates are
projected relative to it, and those masks are not cached because they hold for that target only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..camera.trajectory import Trajectory
from .fov import (DEFAULT_LAMBDA, DEFAULT_TOP_K, MASK_NAME, PACKED_BYTES, FOVParams, combine_scores, fov_mask,
                  fov_overlap, make_params, mask_key, rank_scores)
from .selection import SelectedMemory, Selection

logger = logging.getLogger(__name__)


def _usable_mask(value: torch.Tensor | None) -> torch.Tensor | None:
    if value is None or value.dtype != torch.uint8 or value.numel() != PACKED_BYTES:
        return None
    return value.reshape(PACKED_BYTES)


def _entry_mask(bank: Any, entry_id: str, params: FOVParams, reference: Trajectory | None) -> torch.Tensor | None:
    """The entry's packed mask: cached when valid for these settings, else projected from its camera (None: none)."""
    key = mask_key(params)
    if reference is None:
        cached = _usable_mask(bank.load_tensor(entry_id, key))
        if cached is not None:
            return cached
    camera = bank.load_tensor(entry_id, "camera")
    if camera is None:
        return None
    trajectory = Trajectory(camera, name=f"bank entry {entry_id}")
    mask = fov_mask(trajectory, params, reference=reference)
    if reference is None:
        if key == MASK_NAME and bank.entry(entry_id).has(MASK_NAME):
            logger.warning("memory bank entry %s: stored fov_mask is unusable; recomputed (not cached: stored data "
                           "is never rewritten)", entry_id)
        else:
            bank.put_cache(entry_id, key, mask)
    return mask


@dataclass(frozen=True)
class FOVRanking:
    """Everything one retrieval computed: the selection, one row per entry, and each scored entry's packed mask."""

    selection: Selection
    rows: list[dict]
    masks: dict[str, torch.Tensor]
    target_mask: torch.Tensor


def rank_bank_by_fov(bank: Any, target: Trajectory, top_k: int = DEFAULT_TOP_K, lam: float = DEFAULT_LAMBDA,
                     params: FOVParams | None = None, *, lineage_of: str | None = None, **fov_params) -> FOVRanking:
    """``select_by_fov`` with its masks kept (for the preview)."""
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be 0 or more (6 is the top of Memory-V2V's trained range)")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda={lam} must lie in [0, 1] (0.5 in the paper: half IoU, half containment)")
    params = make_params(params, **fov_params)
    reference = None if target.starts_at_identity() else target
    target_mask = fov_mask(target, params, reference=target)

    rows: list[dict] = []
    masks: dict[str, torch.Tensor] = {}
    for entry_id in bank.retrieval_ids(lineage_of=lineage_of):
        row = {"entry_id": entry_id, "iou": None, "containment": None, "score": None, "rank": None}
        rows.append(row)
        try:
            mask = _entry_mask(bank, entry_id, params, reference)
        except ValueError as error:  # a damaged entry or an invalid stored camera: skip it, keep retrieving
            logger.warning("FOV retrieval skips memory bank entry %s: %s", entry_id, error)
            row["skipped"] = f"unreadable: {error}"
            continue
        if mask is None:
            row["skipped"] = "no camera"
            continue
        masks[entry_id] = mask

    items: list[SelectedMemory] = []
    if masks:
        ids = list(masks)
        iou, containment = fov_overlap(target_mask, torch.stack([masks[i] for i in ids]))
        scores = combine_scores(iou, containment, lam)
        by_id = {row["entry_id"]: row for row in rows}
        for entry_id, i, c, s in zip(ids, iou.tolist(), containment.tolist(), scores.tolist()):
            by_id[entry_id].update(iou=i, containment=c, score=s)
        for rank, (index, score) in enumerate(rank_scores(scores.tolist(), top_k), start=1):
            by_id[ids[index]]["rank"] = rank
            items.append(SelectedMemory(ids[index], score, {"iou": float(iou[index]),
                                                            "containment": float(containment[index])}))
    return FOVRanking(Selection(bank, tuple(items), mode="nvs"), rows, masks, target_mask)


def select_by_fov(bank: Any, target: Trajectory, top_k: int = DEFAULT_TOP_K, lam: float = DEFAULT_LAMBDA,
                  params: FOVParams | None = None, *, lineage_of: str | None = None,
                  **fov_params) -> tuple[Selection, list[dict]]:
    """Rank the bank's entries by lam * IoU + (1 - lam) * containment of the target's FOV; keep the ``top_k`` best.

    Candidates are ``bank.retrieval_ids(lineage_of)``: visible entries only (hidden ones are never retrieved);
    ``lineage_of`` an entry id: only that entry and its ancestors (a turn that starts from an earlier turn); else
    the bank's active branch when it has one. Returns the Selection (mode "nvs", best first; each item's details
    hold iou and containment) and one row per candidate in bank order: entry_id, iou, containment, score, rank
    (1-based or None) and, for entries that could not be scored (no camera, damaged), a ``skipped`` reason with
    None scores. An empty bank gives an empty selection; ``top_k`` larger than the bank keeps every scored entry.
    FOV settings: ``params`` or keywords width, height, hfov_deg, radius (see fov.FOVParams).
    """
    ranking = rank_bank_by_fov(bank, target, top_k, lam, params, lineage_of=lineage_of, **fov_params)
    return ranking.selection, ranking.rows


def format_score_table(rows: list[dict], labels: dict[str, str] | None = None) -> str:
    """A fixed-width text table of retrieval rows, best first (for the node's STRING output and on-node text).

    ``labels`` (entry id -> e.g. its prompt) adds a column so artists recognise their earlier turns.
    """
    if not rows:
        return "memory bank is empty: nothing to retrieve"
    labels = labels or {}
    lines = [f"{'rank':>4}  {'entry':<16}  {'IoU':>6}  {'contain':>7}  {'score':>6}" + ("  label" if labels else "")]
    ordered = sorted(rows, key=lambda r: (r["score"] is None, r["rank"] is None, r["rank"] or 0, -(r["score"] or 0)))
    for row in ordered:
        rank = "-" if row["rank"] is None else str(row["rank"])
        label = labels.get(row["entry_id"], "")
        if row["score"] is None:
            text = f"{rank:>4}  {row['entry_id'][:16]:<16}  skipped: {row.get('skipped', 'not scored')}"
            lines.append(text + (f"  ({label[:40]})" if label else ""))
        else:
            lines.append(f"{rank:>4}  {row['entry_id'][:16]:<16}  {row['iou']:6.3f}  {row['containment']:7.3f}  "
                         f"{row['score']:6.3f}" + (f"  {label[:40]}" if label else ""))
    return "\n".join(lines)
