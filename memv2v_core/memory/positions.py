"""Temporal RoPE ids for each context stream: disjoint ranges (Memory-V2V) or a negative shift (StoryMem).

Memory-V2V keeps every category in its own temporal range so positions never leave what the model saw in training
(papers §2.7): target 0..T-1, user input / previous segment T..2T-1, memories 2T..3T-1. StoryMem puts memory
keyframes in the past at -M*S .. -S (papers §3.3).

Streams whose frame count n differs from T (our rule): when n <= T the frames keep unit spacing from the range start
(the slot nearest the target's range), which frame 0 takes in chronological order and the last frame takes when reversed;
when n > T they are spread evenly over the T slots of the range (real-valued ids) so they never spill into another
category's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

MODES = ("nvs", "edit", "story")
ROLES = ("user", "previous", "memory")
DEFAULT_STORY_GAP = 5.0


def range_ids(start: float, slots: int, frames: int, reverse: bool = False) -> torch.Tensor:
    """Temporal ids of ``frames`` frames placed in the range [start, start + slots - 1] (see the module rule).

    With ``reverse`` the last frame gets ``start`` (the slot nearest a range that lies below this one).
    """
    if frames <= 0:
        return torch.zeros(0, dtype=torch.float32)
    if frames <= slots:
        ids = start + torch.arange(frames, dtype=torch.float32)
    else:
        ids = torch.linspace(start, start + slots - 1, frames, dtype=torch.float32)
    return ids.flip(0) if reverse else ids


@dataclass(frozen=True)
class TemporalIds:
    """Temporal ids of the target frames and of each context stream's frames (float tensors, one id per frame)."""

    target: torch.Tensor
    streams: tuple[torch.Tensor, ...]


def nvs_ids(target_frames: int, roles: Sequence[str], stream_frames: Sequence[int]) -> TemporalIds:
    """Novel view synthesis: target 0..T-1, user T..2T-1, every memory shares 2T..3T-1 (chronological order)."""
    t = target_frames
    streams = []
    for role, frames in zip(roles, stream_frames):
        if role == "user":
            streams.append(range_ids(t, t, frames))
        elif role == "memory":
            streams.append(range_ids(2 * t, t, frames))
        else:
            raise ValueError(
                f"stream role {role!r} is not used in mode 'nvs'; use 'user' or 'memory' "
                "('previous' belongs to mode 'edit')."
            )
    return TemporalIds(range_ids(0, t, t), tuple(streams))


def edit_ids(
    target_frames: int, roles: Sequence[str], stream_frames: Sequence[int], reverse: bool = True
) -> TemporalIds:
    """Long-video editing: target 0..T-1, previous segment T..2T-1, other memories 2T..3T-1.

    At most one stream may be 'previous', and only the memory that really is segment i-1 of the same source
    (``context.build_context`` takes it by entry id); without it every memory uses 2T..3T-1.

    At inference the memories lie before the target in time while training saw them after it, so with ``reverse``
    each memory's frame order is flipped: its last frame (nearest in time to the target) gets the lowest id of its range.
    """
    if list(roles).count("previous") > 1:
        raise ValueError(
            f"{list(roles).count('previous')} streams have role 'previous'; only segment i-1 itself may take the "
            "range T..2T-1, so give every other memory the role 'memory'."
        )
    t = target_frames
    streams = []
    for role, frames in zip(roles, stream_frames):
        if role == "previous":
            streams.append(range_ids(t, t, frames, reverse))
        elif role == "memory":
            streams.append(range_ids(2 * t, t, frames, reverse))
        else:
            raise ValueError(
                f"stream role {role!r} is not used in mode 'edit'; the source segment enters through the model's own "
                "conditioning, so pass the previous segment as role 'previous' and the others as 'memory'."
            )
    return TemporalIds(range_ids(0, t, t), tuple(streams))


def story_ids(
    target_frames: int, roles: Sequence[str], stream_frames: Sequence[int], gap: float = DEFAULT_STORY_GAP
) -> TemporalIds:
    """StoryMem: shot frames 0..f-1; the M memory latent frames (all streams, in order) at -M*S, ..., -S.

    Memory frame m of M sits at -(M - m) * S, so memories are in the past and S apart (S = ``gap``, default 5, ours).
    A multi-frame memory simply contributes several consecutive memory frames, as in the paper's formula.
    """
    if gap <= 0:
        raise ValueError(f"story gap ({gap!r}) must be > 0 latent frames; StoryMem-style defaults use 5.")
    for role in roles:
        if role != "memory":
            raise ValueError(
                f"stream role {role!r} is not used in mode 'story'; every story stream is a 'memory' keyframe."
            )
    total = sum(stream_frames)
    streams, start = [], 0
    for frames in stream_frames:
        m = torch.arange(start, start + frames, dtype=torch.float32)
        streams.append(-(total - m) * gap)
        start += frames
    return TemporalIds(torch.arange(target_frames, dtype=torch.float32), tuple(streams))


def temporal_ids(
    mode: str,
    target_frames: int,
    roles: Sequence[str],
    stream_frames: Sequence[int],
    *,
    reverse: bool = True,
    story_gap: float = DEFAULT_STORY_GAP,
) -> TemporalIds:
    """Temporal ids for ``mode`` ("nvs", "edit" or "story"), one float tensor per stream."""
    if not isinstance(target_frames, int) or target_frames <= 0:
        raise ValueError(f"target_frames ({target_frames!r}) must be a positive number of latent frames, e.g. 21.")
    if len(roles) != len(stream_frames):
        raise ValueError(f"got {len(roles)} roles but {len(stream_frames)} frame counts; pass one of each per stream.")
    if mode == "nvs":
        return nvs_ids(target_frames, roles, stream_frames)
    if mode == "edit":
        return edit_ids(target_frames, roles, stream_frames, reverse)
    if mode == "story":
        return story_ids(target_frames, roles, stream_frames, story_gap)
    raise ValueError(f"mode ({mode!r}) must be one of {MODES}.")


def apply_temporal_ids(positions: torch.Tensor, frame_ids: torch.Tensor) -> torch.Tensor:
    """Replace the 0-based local frame index in column 0 of ``positions`` [N, 3] by the stream's temporal ids."""
    out = positions.clone()
    out[:, 0] = frame_ids.to(positions)[positions[:, 0].long()]
    return out


ROPE_OPTION_KEYS = ("scale_t", "scale_y", "scale_x", "shift_t", "shift_y", "shift_x")


def rope_option_values(rope_options: Mapping[str, Any]) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """((scale_t, scale_y, scale_x), (shift_t, shift_y, shift_x)) of ComfyUI's ``rope_options`` (ScaleROPE node).

    Missing keys take ComfyUI's defaults (scale 1, shift 0); _y is height and _x is width.
    """
    if not isinstance(rope_options, Mapping):
        raise ValueError(
            f"rope_options is a {type(rope_options).__name__}; it must be a dict with keys {ROPE_OPTION_KEYS} "
            "(what ComfyUI's ScaleROPE node sets)."
        )
    values = {}
    for key in ROPE_OPTION_KEYS:
        value = rope_options.get(key, 1.0 if key.startswith("scale") else 0.0)
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"rope_options[{key!r}] ({value!r}) must be a number, e.g. 1.0.") from None
    return ((values["scale_t"], values["scale_y"], values["scale_x"]),
            (values["shift_t"], values["shift_y"], values["shift_x"]))


def scale_shift_positions(
    positions: torch.Tensor, rope_options: Mapping[str, Any], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(t, h, w) positions [N, 3] moved as ComfyUI's ``rope_options`` move the video's: p' = shift + scale * p per axis.

    Newer ComfyUI builds the video ids as ``linspace(shift, shift + (n-1)*scale, n)``, i.e. shift + i*scale for the
    token at grid index i; memory positions are in the same grid units, so the same map keeps every memory token
    where it was relative to the video. With ``dtype`` the result is rounded through it, as the video ids (built in
    the latent's dtype) are; the returned tensor keeps ``positions``' dtype.
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions have shape {tuple(positions.shape)}; pass (t, h, w) positions [N, 3].")
    scale, shift = rope_option_values(rope_options)
    out = positions * positions.new_tensor(scale) + positions.new_tensor(shift)
    return out if dtype is None else out.to(dtype).to(positions.dtype)
