"""Long videos in model-sized segments: plan the windows, cut one out, and stitch edited segments back together.

Window rule: segments of ``length`` frames start every ``length - overlap`` frames; the last window is shifted back
so that it ends exactly at the video's last frame (its overlap with the window before it grows). No frame is dropped
and none is invented; a video exactly one segment long is one segment, a shorter one is refused.

Stitch rule: over the frames two consecutive windows share, the later segment takes over from the earlier one: at
the middle of the overlap ("cut", as the paper stitches), or by a cross-fade with linear or smoothstep ("ease")
weights. The fade is computed as ``a + w * (b - a)``, which is ``a`` bit for bit wherever ``a == b``, so stitching
unedited segments gives back the exact source for every blend.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BLENDS = ("cut", "linear", "ease")
DEFAULT_LENGTH = 81       # Wan's native clip length
DEFAULT_OVERLAP = 8
WAN_TEMPORAL_STRIDE = 4   # Wan 2.1 / 2.2 VAEs: 1 + 4k frames make 1 + k latent frames

Window = tuple[int, int]


def check_segment_length(length: int, temporal_stride: int = WAN_TEMPORAL_STRIDE) -> None:
    """Refuse a segment length the VAE cannot encode (it needs ``temporal_stride * k + 1`` frames)."""
    if temporal_stride < 1:
        raise ValueError(f"temporal_stride={temporal_stride} must be 1 or more (4 for Wan's VAEs)")
    if length < 1 or (length - 1) % temporal_stride:
        below = max(1, (length - 1) // temporal_stride * temporal_stride + 1)
        above = below + temporal_stride
        raise ValueError(f"segment_length={length} cannot be encoded by a VAE with temporal stride {temporal_stride}: "
                         f"it must be {temporal_stride}k+1 frames. Use {below} or {above} (81 is Wan's native length).")


def plan_segments(num_frames: int, length: int = DEFAULT_LENGTH, overlap: int = DEFAULT_OVERLAP,
                  temporal_stride: int = WAN_TEMPORAL_STRIDE) -> list[Window]:
    """Windows ``(start, end)`` (end exclusive) covering every frame once or more; see the module rule."""
    check_segment_length(length, temporal_stride)
    if not 0 <= overlap < length:
        raise ValueError(f"overlap={overlap} must be at least 0 and less than segment_length={length}; "
                         f"use e.g. {min(DEFAULT_OVERLAP, length - 1)}")
    if num_frames < length:
        shorter = (num_frames - 1) // temporal_stride * temporal_stride + 1 if num_frames >= 1 else 0
        fix = f"use segment_length={shorter} or less" if shorter >= 1 else "load a longer video"
        raise ValueError(f"the video has {num_frames} frames, fewer than one segment of segment_length={length}: "
                         f"{fix}.")
    step = length - overlap
    windows = []
    start = 0
    while start + length < num_frames:
        windows.append((start, start + length))
        start += step
    windows.append((num_frames - length, num_frames))  # the last window ends at the last frame
    return windows


@dataclass(frozen=True)
class SegmentSlice:
    """One segment cut from a video: its frames and where it lies."""

    frames: torch.Tensor
    index: int
    count: int
    start: int
    end: int


def split_segment(frames: torch.Tensor, index: int, length: int = DEFAULT_LENGTH, overlap: int = DEFAULT_OVERLAP,
                  temporal_stride: int = WAN_TEMPORAL_STRIDE) -> SegmentSlice:
    """The ``index``-th segment of ``frames`` ([F, H, W, C]) under :func:`plan_segments`."""
    _check_video("frames", frames)
    plan = plan_segments(frames.shape[0], length, overlap, temporal_stride)
    if not 0 <= index < len(plan):
        raise ValueError(f"index={index} is out of range: the video ({frames.shape[0]} frames) has {len(plan)} "
                         f"segments, numbered 0..{len(plan) - 1}. All segments are done when the index passes the "
                         "last one: set index back to 0 for another pass.")
    start, end = plan[index]
    return SegmentSlice(frames[start:end], index, len(plan), start, end)


def blend_weights(frames: int, blend: str) -> torch.Tensor:
    """Weight of the later segment on each of ``frames`` shared frames (float64; strictly between 0 and 1 for
    "linear" and "ease"; 0 then 1 at the middle for "cut")."""
    _check_blend(blend)
    if blend == "cut":
        return (torch.arange(frames) >= frames // 2).to(torch.float64)
    x = torch.arange(1, frames + 1, dtype=torch.float64) / (frames + 1)
    return x if blend == "linear" else x * x * (3.0 - 2.0 * x)


def missing_segments(segments: Sequence[torch.Tensor | None]) -> list[int]:
    """Indices of the segments not available yet (None)."""
    return [i for i, segment in enumerate(segments) if segment is None]


SegmentSource = Union[torch.Tensor, Callable[[], torch.Tensor], None]


def stitch(segments: Sequence[SegmentSource], plan: Sequence[Window], num_frames: int, blend: str = "cut",
           fill: torch.Tensor | None = None) -> torch.Tensor:
    """Assemble segments ([frames, H, W, C] each, in plan order) into one [num_frames, H, W, C] video.

    A segment may be a tensor or a callable that produces it (e.g. a VAE decode): callables are called once, in plan
    order, and each result is written into the output and dropped, so at most one decoded segment is held besides
    the output. A missing segment (None) is taken from ``fill`` (the source video, resized to the segments' size
    when it differs); without ``fill`` missing segments are an error that lists them.
    """
    _check_stitch(segments, plan, num_frames, blend)
    missing = missing_segments(segments)
    if fill is not None:
        _check_video("fill", fill)
        if fill.shape[0] != num_frames:
            raise ValueError(f"fill has {fill.shape[0]} frames but the video has {num_frames}; pass the source video "
                             "the segments were cut from")
    elif missing:
        raise ValueError(f"segments {', '.join(map(str, missing))} (of {len(plan)}, numbered from 0) are missing: "
                         "edit and store them first, or fill them from the source video.")
    first_present = next((i for i, s in enumerate(segments) if s is not None), None)
    produced = {} if first_present is None else {first_present: _produce(segments[first_present])}
    reference = produced.get(first_present, fill)
    height, width, channels = reference.shape[1:]
    dtype = reference.dtype if reference.is_floating_point() else torch.float32

    out = torch.empty((num_frames, height, width, channels), dtype=dtype, device=reference.device)
    written = 0  # frames [0, written) hold the stitch so far
    for index, ((start, end), item) in enumerate(zip(plan, segments)):
        segment = produced.pop(index) if index in produced else (
            _resized(fill[start:end], height, width) if item is None else _produce(item))
        _check_video(f"segment {index}", segment)
        if tuple(segment.shape) != (end - start, height, width, channels):
            raise ValueError(f"segment {index} has shape {list(segment.shape)} but window {start}..{end} needs "
                             f"{[end - start, height, width, channels]}; every segment must have its window's frame "
                             "count and the same size (decode edited latents with the same VAE and resolution)")
        segment = segment.to(device=reference.device, dtype=dtype)
        shared = written - start
        if shared > 0 and blend == "cut":
            half = shared // 2
            out[start + half:written] = segment[half:shared]  # copies: the later segment's frames, exactly
        elif shared > 0:
            weight = blend_weights(shared, blend).to(dtype=dtype, device=out.device).view(shared, 1, 1, 1)
            earlier = out[start:written]
            out[start:written] = earlier + weight * (segment[:shared] - earlier)  # == earlier wherever they agree
        out[written:end] = segment[max(shared, 0):]
        written = end
        reference = out if index == first_present else reference  # drop the first decoded segment once written
    return out


def _produce(item: SegmentSource) -> torch.Tensor:
    return item() if callable(item) else item


def source_fingerprint(frames: torch.Tensor) -> str:
    """A short id of a video's content (shape plus coarse thumbnails of up to 16 frames), to tell source videos
    apart in a bank without the artist naming them; stable across runs on the same decoded frames."""
    _check_video("frames", frames)
    return source_fingerprint_of(tuple(frames.shape), lambda index: frames[index:index + 1])


def fingerprint_frames(count: int) -> list[int]:
    """The frame indices :func:`source_fingerprint` looks at (up to 16, evenly spread, first and last included)."""
    return torch.linspace(0, count - 1, min(count, 16)).round().long().unique().tolist()


def source_fingerprint_of(shape: Sequence[int], read: Callable[[int], torch.Tensor]) -> str:
    """:func:`source_fingerprint` of a video held elsewhere (e.g. a file): ``shape`` is its [F, H, W, C] and
    ``read(i)`` returns frame ``i`` as [1, H, W, C]; only the :func:`fingerprint_frames` are read."""
    thumbs = torch.cat([F.adaptive_avg_pool2d(read(i).float().permute(0, 3, 1, 2), (8, 8))
                        for i in fingerprint_frames(int(shape[0]))])
    quantised = (thumbs.clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    digest = hashlib.sha256(repr(tuple(int(v) for v in shape)).encode())
    digest.update(quantised.numpy().tobytes())
    return "src-" + digest.hexdigest()[:12]


SOURCE_FRAMES_KEY = "source_frames"  # bank entry extra: the frame count of the video a segment was cut from


def check_source_frames(entries: Sequence, num_frames: int, source_id: str | None = None) -> None:
    """Refuse a source whose frame count differs from the one earlier segments were stored with (entries whose
    ``extra`` records :data:`SOURCE_FRAMES_KEY`; older entries record none and pass): its segment windows moved, so
    stored segments would land on the wrong frames."""
    stored = {}
    for entry in entries:
        value = (getattr(entry, "extra", None) or {}).get(SOURCE_FRAMES_KEY)
        if value is not None and int(value) != num_frames:
            stored.setdefault(int(value), []).append(getattr(entry, "segment_index", None))
    if stored:
        count, indices = next(iter(stored.items()))
        name = f"source_id '{source_id}'" if source_id else "this source"
        raise ValueError(f"source: the video now has {num_frames} frames, but segments {sorted(indices)} of {name} "
                         f"were stored from a video of {count} frames. The source changed since (trimmed, re-cut or "
                         "another file?), so its segment windows moved. Load the original video, or use a new bank "
                         "or source_id for this one; the stored segments are kept.")


Emit = Callable[[torch.Tensor], None]
Fill = Union[torch.Tensor, Callable[[int, int, int, int], torch.Tensor], None]


def stitch_stream(segments: Sequence[SegmentSource], plan: Sequence[Window], num_frames: int, emit: Emit,
                  blend: str = "cut", fill: Fill = None) -> int:
    """:func:`stitch`, written out as it goes: ``emit(frames)`` receives the stitched video in order, in chunks,
    each as soon as no later segment can change it; the chunks joined equal ``stitch(...)`` bit for bit.

    Memory holds the segment being added, its stitched copy and the frames the next window overlaps (up to a
    segment when the last window is shifted far back): a few segments, never the video.
    ``fill`` gives missing segments: the source video as a tensor, or ``fill(start, end, height, width)`` that
    returns those source frames at the segments' size (e.g. read from a file; 0, 0 when no segment is edited, for
    the source's own size). The first edited segment is produced first, so its size is known before any fill.
    Returns the number of frames emitted.
    """
    _check_stitch(segments, plan, num_frames, blend)
    missing = missing_segments(segments)
    if missing and fill is None:
        raise ValueError(f"segments {', '.join(map(str, missing))} (of {len(plan)}, numbered from 0) are missing: "
                         "edit and store them first, or fill them from the source video.")
    if isinstance(fill, torch.Tensor):
        _check_video("fill", fill)
        if fill.shape[0] != num_frames:
            raise ValueError(f"fill has {fill.shape[0]} frames but the video has {num_frames}; pass the source video "
                             "the segments were cut from")
    pending = None    # stitched frames [pending_start, written) that a later window still overlaps
    pending_start = written = emitted = 0
    shape = dtype = device = None
    first_present = next((i for i, s in enumerate(segments) if s is not None), None)
    early = {} if first_present is None else {first_present: _produce(segments[first_present])}
    if first_present is not None:
        _check_video(f"segment {first_present}", early[first_present])
        shape = tuple(early[first_present].shape[1:])
        dtype = early[first_present].dtype if early[first_present].is_floating_point() else torch.float32
        device = early[first_present].device
    for index, ((start, end), item) in enumerate(zip(plan, segments)):
        if index in early:
            segment = early.pop(index)
        elif item is not None:
            segment = _produce(item)
        else:
            segment = _fill_segment(fill, start, end, shape)
        _check_video(f"segment {index}", segment)
        if shape is None:  # nothing edited at all: the fill decides the size
            shape, dtype, device = tuple(segment.shape[1:]), (segment.dtype if segment.is_floating_point()
                                                              else torch.float32), segment.device
        if tuple(segment.shape) != (end - start, *shape):
            raise ValueError(f"segment {index} has shape {list(segment.shape)} but window {start}..{end} needs "
                             f"{[end - start, *shape]}; every segment must have its window's frame count and the "
                             "same size (decode edited latents with the same VAE and resolution)")
        segment = segment.to(device=device, dtype=dtype)
        shared = written - start
        if shared > 0:
            earlier = pending[start - pending_start:]
            if blend == "cut":
                half = shared // 2
                joined = torch.cat([earlier[:half], segment[half:]])
            else:  # stitch's earlier + weight * (later - earlier), in place in one new segment (same bits)
                weight = blend_weights(shared, blend).to(dtype=dtype, device=device).view(shared, 1, 1, 1)
                joined = torch.empty_like(segment)
                torch.sub(segment[:shared], earlier, out=joined[:shared])
                joined[:shared].mul_(weight).add_(earlier)
                joined[shared:] = segment[shared:]
        else:
            joined = segment
        del segment
        written = end
        final = plan[index + 1][0] if index + 1 < len(plan) else end  # no later window reaches before this
        if final > start:
            emit(joined[:final - start])
            emitted += final - start
        pending, pending_start = joined[final - start:].clone(), final  # a copy: the rest of joined can go
        del joined
    return emitted


def _fill_segment(fill: Fill, start: int, end: int, shape) -> torch.Tensor:
    if callable(fill):
        height, width = (shape[0], shape[1]) if shape is not None else (0, 0)
        return fill(start, end, height, width)
    frames = fill[start:end]
    return frames if shape is None else _resized(frames, shape[0], shape[1])


def _resized(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if frames.shape[1:3] == (height, width):
        return frames
    chw = frames.float().permute(0, 3, 1, 2)
    if height <= frames.shape[1] and width <= frames.shape[2]:  # shrinking: a box filter (exact pixel averages)
        resized = F.interpolate(chw, size=(height, width), mode="area")
    else:
        resized = F.interpolate(chw, size=(height, width), mode="bilinear", align_corners=False)
    return resized.clamp(0, 1).permute(0, 2, 3, 1).to(frames.dtype)


def _check_video(name: str, frames: object) -> None:
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] == 0:
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"{name} is {shape}; expected an IMAGE batch [frames, height, width, channels] with at least "
                         "one frame")


def _check_stitch(segments, plan, num_frames: int, blend: str) -> None:
    _check_blend(blend)
    _check_plan(plan, num_frames)
    if len(segments) != len(plan):
        raise ValueError(f"got {len(segments)} segments for a plan of {len(plan)} windows; pass one segment (or None) "
                         "per window, in order")


def _check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ValueError(f"blend={blend!r} is not one of {', '.join(BLENDS)}")


def _check_plan(plan: Sequence[Window], num_frames: int) -> None:
    """The windows must cover 0..num_frames without gaps, in order (as :func:`plan_segments` makes them)."""
    problem = None
    if not plan:
        problem = "it is empty"
    elif plan[0][0] != 0 or plan[-1][1] != num_frames:
        problem = f"it spans {plan[0][0]}..{plan[-1][1]}, not 0..{num_frames}"
    else:
        previous_start, previous_end = -1, 0
        for start, end in plan:
            if not (previous_start < start <= previous_end < end):  # in order, no gap, each adds frames
                problem = f"window {start}..{end} does not follow {max(previous_start, 0)}..{previous_end}"
                break
            previous_start, previous_end = start, end
    if problem:
        raise ValueError(f"the segment plan {list(plan)} is not valid for a {num_frames}-frame video ({problem}); "
                         "make it with plan_segments(num_frames, length, overlap)")
