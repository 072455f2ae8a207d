"""Shots of a story in the memory bank: each shot is one bank entry (its latent and up to 3 keyframes) whose ``extra``
holds the story id, the shot index and the cut flag.

A story is replayed shot by shot, and a shot may be generated again (another seed); the newest entry of a shot index
is that shot. "Before shot n" means the shots with a smaller index, so re-running shot n never sees itself or later
shots.
"""

from __future__ import annotations

from typing import Any, Iterable

STORY_ID, SHOT_INDEX, CUT = "story_id", "shot_index", "cut"  # keys in an entry's ``extra``


def story_extra(story_id: str, shot_index: int, cut: bool) -> dict:
    """The ``extra`` fields that mark a bank entry as shot ``shot_index`` of ``story_id``."""
    if not isinstance(story_id, str) or not story_id.strip():
        raise ValueError(f"story_id ({story_id!r}) must be a non-empty name; the shots of one story share it.")
    if isinstance(shot_index, bool) or not isinstance(shot_index, int) or shot_index < 0:
        raise ValueError(f"shot_index ({shot_index!r}) must be an integer >= 0 (0 = the first shot).")
    return {STORY_ID: story_id.strip(), SHOT_INDEX: shot_index, CUT: bool(cut)}


def shot_of(entry: Any) -> tuple[str, int, bool] | None:
    """(story id, shot index, cut) of a bank entry, or None when it is not a story shot."""
    extra = getattr(entry, "extra", None) or {}
    story_id, shot_index = extra.get(STORY_ID), extra.get(SHOT_INDEX)
    if not isinstance(story_id, str) or isinstance(shot_index, bool) or not isinstance(shot_index, int):
        return None
    return story_id, shot_index, bool(extra.get(CUT, False))


def story_shots(entries: Iterable[Any], story_id: str, before: int | None = None) -> list[Any]:
    """The shots of ``story_id`` in story order, one entry per shot index (the newest, by turn), only shots with an
    index below ``before`` (None or < 0: all)."""
    story_id = (story_id or "").strip()
    newest: dict[int, Any] = {}
    for entry in entries:
        shot = shot_of(entry)
        if shot is None or shot[0] != story_id or (before is not None and before >= 0 and shot[1] >= before):
            continue
        if shot[1] not in newest or entry.turn >= newest[shot[1]].turn:
            newest[shot[1]] = entry
    return [newest[index] for index in sorted(newest)]


def next_shot_index(entries: Iterable[Any], story_id: str) -> int:
    """The index after the last stored shot of ``story_id`` (0 for a new story)."""
    shots = story_shots(entries, story_id)
    return shot_of(shots[-1])[1] + 1 if shots else 0
