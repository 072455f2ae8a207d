"""Editing a whole long video in one run: which segments are already done, so a run resumes where the last stopped.

Every segment the one-run loop stores carries, in its bank entry's extra (``LONG_EDIT_KEY``), a resume key: a hash of
everything that decides the edit of that segment (the source video's id, the segment's window, the sizes, the prompt
conditioning, the models and every sampling, retrieval and tokenization setting). A later run with the same key
for a segment takes the stored latent instead of editing it again. Resuming is only sound for a leading run of done
segments: a segment edited after a missing one would have seen other memories, so from the first missing segment
on everything is edited again (identical results are stored once by the bank).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping, Sequence

import torch

LONG_EDIT_KEY = "long_edit"   # entry.extra key: {"key", "index", "count", "window", "frames"}
KEY_VERSION = 1               # part of every key: a change of what the key covers starts afresh


def value_digest(value: Any) -> str:
    """A stable sha256 of nested lists / tuples / dicts of tensors and plain values (e.g. a CONDITIONING): tensors
    by dtype, shape and bytes; other objects by their type name (their identity is covered elsewhere)."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(repr(value).encode())
    else:
        digest.update(f"<{type(value).__module__}.{type(value).__qualname__}>".encode())


def segment_key(settings: Mapping[str, Any], window: tuple[int, int]) -> str:
    """The resume key of one segment: ``settings`` (JSON-able; the same for every segment of a run) and its window."""
    payload = json.dumps({"v": KEY_VERSION, "settings": settings, "window": list(window)}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def segment_extra(key: str, index: int, count: int, window: tuple[int, int], frames: int) -> dict:
    """What the loop stores in the entry's extra beside the descriptor's keys."""
    return {LONG_EDIT_KEY: {"key": key, "index": index, "count": count, "window": list(window), "frames": frames}}


def stored_segments(entries: Iterable[Any], keys: Sequence[str]) -> dict[int, Any]:
    """segment index -> the newest entry whose resume key is ``keys[index]`` (entries in insertion order)."""
    wanted = {key: index for index, key in enumerate(keys)}
    found: dict[int, Any] = {}
    for entry in entries:
        record = (entry.extra or {}).get(LONG_EDIT_KEY) if isinstance(entry.extra, dict) else None
        index = wanted.get(record.get("key")) if isinstance(record, dict) else None
        if index is not None and entry.segment_index == index:
            found[index] = entry
    return found


def resume_point(stored: Mapping[int, Any], count: int) -> int:
    """The first segment to edit: the first one of ``count`` not stored (``count`` when all are)."""
    return next((index for index in range(count) if index not in stored), count)


def graph_digest(prompt: Mapping[str, Any], node_id: str, input_names: Iterable[str]) -> str | None:
    """A hash of what feeds ``node_id``'s ``input_names`` in an API prompt: every upstream node's class and widget
    values, linked by position (node ids do not count), so the same model chain (loader files, LoRA strengths,
    sampling shift, prompt text) gives the same hash in any graph. None when the node is not in the prompt."""
    node = prompt.get(node_id) if isinstance(prompt, Mapping) else None
    if not isinstance(node, Mapping):
        return None
    memo: dict[str, str] = {}

    def of(current: str, trail: tuple[str, ...]) -> str:
        if current in memo:
            return memo[current]
        entry = prompt.get(current)
        if not isinstance(entry, Mapping) or current in trail:
            return "missing" if not isinstance(entry, Mapping) else "cycle"
        parts = {}
        for name, value in sorted((entry.get("inputs") or {}).items()):
            if _is_link(value):
                parts[name] = [of(value[0], trail + (current,)), value[1]]
            else:
                parts[name] = value
        text = json.dumps({"class": entry.get("class_type"), "inputs": parts}, sort_keys=True, default=str)
        memo[current] = hashlib.sha256(text.encode()).hexdigest()
        return memo[current]

    inputs = node.get("inputs") or {}
    feeds = {name: [of(inputs[name][0], (node_id,)), inputs[name][1]] for name in sorted(input_names)
             if _is_link(inputs.get(name))}
    return hashlib.sha256(json.dumps(feeds, sort_keys=True).encode()).hexdigest()


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and type(value[1]) is int
