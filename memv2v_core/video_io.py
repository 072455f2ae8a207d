"""Video files in bounded memory: read a video's facts from its header, decode just the frames of one segment, and
write a video as it is made.

Frames are ComfyUI IMAGE batches: float32 ``[frames, height, width, 3]`` in 0..1, the values ComfyUI's own
``VideoFromFile.get_components`` gives (``rgb24 / 255``), so a segment read here equals the same frames of a full
decode bit for bit.

Frame numbering: frame ``i`` is the ``i``-th frame a full decode outputs (presentation order). For a constant frame
rate file :func:`read_frames` seeks to the keyframe before ``start`` and numbers frames by their timestamps
(``(pts - first pts) * time_base * frame_rate``), checking that the numbers are consecutive; when they are not
(a variable-frame-rate file, missing timestamps), it decodes from the first frame instead and numbers frames by
count, which is exact but slower. Variable-frame-rate files (one warning per file) are numbered by count too, but
from a keyframe: :func:`probe` demuxes the file once and numbers each keyframe by the frames shown before it, so a
read seeks to the keyframe before ``start`` and counts from there. Their frames are taken in order and ``fps`` is
the average rate, so an edit keeps every frame but not its original timing.

Sources are a file path or a seekable binary file object (e.g. the ``BytesIO`` of ComfyUI's ``VideoFromFile``).
Nothing here imports ComfyUI.
"""

from __future__ import annotations

import bisect
import errno
import io
import logging
import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import av
import numpy as np
import torch

logger = logging.getLogger(__name__)

Source = Union[str, os.PathLike, BinaryIO]
RESIZE = "BILINEAR"  # libswscale bilinear, applied by PyAV while converting to RGB (no full-size copy)
_warned_vfr: set[str] = set()


class VideoDecodeError(ValueError):
    """The file has no video stream or FFmpeg cannot decode it."""


class VideoWriteError(OSError):
    """Writing the output video failed (disk full, folder not writable, ...); no partial file was left behind."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says (see :func:`probe`).

    ``fps`` is ``frame_rate`` (an exact Fraction, e.g. 30000/1001) as a float. ``frames_from_header`` is False when
    the container does not store a frame count and it was counted from the packets (demuxed, not decoded).
    ``variable_frame_rate`` is True when the average rate differs from the rate every timestamp fits on.
    ``first_pts`` (in ``time_base`` units) is the timestamp of frame 0.
    """

    frames: int
    fps: float
    frame_rate: Fraction
    width: int
    height: int
    has_audio: bool
    variable_frame_rate: bool
    frames_from_header: bool
    time_base: Fraction
    first_pts: int
    codec: str
    keyframes: tuple[tuple[int, int], ...] = ()  # variable rate only: (pts, frame index) of each keyframe

    @property
    def duration(self) -> float:
        """Seconds: frames / fps."""
        return float(self.frames / self.frame_rate)


def describe(source: Source) -> str:
    """A short name of a source for messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def _open(source: Source):
    if not isinstance(source, (str, os.PathLike)):
        source.seek(0)
    elif not Path(source).is_file():
        raise VideoDecodeError(f"video file {describe(source)} does not exist; check the path (or load the video "
                               "again)")
    try:
        return av.open(source if not isinstance(source, os.PathLike) else os.fspath(source), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as error:
        raise VideoDecodeError(f"video {describe(source)} cannot be opened by FFmpeg ({error}); it is not a video "
                               "file or it is damaged. Re-encode it, e.g. `ffmpeg -i in.ext -c:v libx264 "
                               "-pix_fmt yuv420p out.mp4`, and load that.") from error


def _video_stream(container, source: Source):
    if not container.streams.video:
        raise VideoDecodeError(f"video {describe(source)} has no video stream (streams: "
                               f"{[s.type for s in container.streams] or 'none'}); load a video file")
    return container.streams.video[0]


def probe(source: Source) -> VideoInfo:
    """Frame count, frame rate, size and audio of a video, from its header.

    The frame count is the container's (``stream.frames``); when the container does not store it (e.g. Matroska,
    WebM), the video packets are counted by demuxing, which reads the file but decodes nothing. The first frame is
    decoded once to learn its timestamp. Raises :class:`VideoDecodeError` for a file FFmpeg cannot read.
    """
    with _open(source) as container:
        stream = _video_stream(container, source)
        try:
            first = next(iter(container.decode(stream)), None)
        except av.FFmpegError as error:
            raise VideoDecodeError(f"video {describe(source)}: its first frame cannot be decoded ({error}); the file "
                                   "is damaged or uses a codec FFmpeg lacks. Re-encode it, e.g. `ffmpeg -i in.ext "
                                   "-c:v libx264 -pix_fmt yuv420p out.mp4`.") from error
        if first is None:
            raise VideoDecodeError(f"video {describe(source)} has a video stream but no decodable frame; the file is "
                                   "empty or damaged")
        average = stream.average_rate or stream.guessed_rate or stream.base_rate
        base = stream.base_rate or stream.guessed_rate
        if not average:
            raise VideoDecodeError(f"video {describe(source)} states no frame rate; re-encode it with one, e.g. "
                                   "`ffmpeg -i in.ext -r 30 out.mp4`")
        frames, from_header = int(stream.frames or 0), bool(stream.frames)
        time_base = Fraction(stream.time_base or Fraction(1, 1))
        first_pts = int(first.pts if first.pts is not None else 0)
        count, on_grid = _scan_packets(source, None if not frames else SCAN_PACKETS, first_pts, time_base,
                                       Fraction(average))
        variable = not on_grid or (bool(base) and Fraction(base) != Fraction(average))
        return VideoInfo(
            frames=frames or count, fps=float(average), frame_rate=Fraction(average),
            width=stream.codec_context.width, height=stream.codec_context.height,
            has_audio=bool(container.streams.audio), variable_frame_rate=variable,
            frames_from_header=from_header, time_base=time_base, first_pts=first_pts,
            codec=stream.codec_context.name, keyframes=_keyframe_index(source) if variable else ())


def _keyframe_index(source: Source) -> tuple[tuple[int, int], ...]:
    """(pts, frame index) of every keyframe of a variable-rate video, from one demux pass (nothing decoded): a
    keyframe's index is the number of frames shown before it. Empty when a packet lacks its timestamp (the reader
    then decodes from the first frame)."""
    stamps, keys = [], []
    with _open(source) as container:
        stream = _video_stream(container, source)
        for packet in container.demux(stream):
            if packet.size:
                if packet.pts is None:
                    return ()
                stamps.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
    stamps.sort()
    return tuple((pts, bisect.bisect_left(stamps, pts)) for pts in sorted(keys))


SCAN_PACKETS = 240  # packets whose timestamps probe checks against the frame rate's grid (demuxed, not decoded)


def _scan_packets(source: Source, limit: int | None, first_pts: int, time_base: Fraction,
                  rate: Fraction) -> tuple[int, bool]:
    """Count video packets (up to ``limit``) and say whether their timestamps sit one frame apart on the rate's
    grid, as a constant-frame-rate file's do."""
    stamps = []
    with _open(source) as container:
        stream = _video_stream(container, source)
        for packet in container.demux(stream):
            if packet.size:
                stamps.append(packet.pts)
                if limit is not None and len(stamps) >= limit:
                    break
    if any(pts is None for pts in stamps):
        return len(stamps), False
    exact = sorted((pts - first_pts) * time_base * rate for pts in stamps)
    indices = [round(x) for x in exact]
    on_grid = all(abs(x - i) <= Fraction(1, 4) for x, i in zip(exact, indices))
    settled = len(indices) - (16 if limit is not None and len(indices) >= limit else 0)  # reordering at the cut
    consecutive = all(indices[k] == indices[0] + k for k in range(max(settled, 0)))
    return len(stamps), on_grid and consecutive


def check_range(info: VideoInfo, start: int, end: int, name: str = "video") -> None:
    """Refuse a frame range outside ``0 <= start < end <= info.frames``."""
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= info.frames):
        raise ValueError(f"frames [{start}, {end}) of {name}: the video has {info.frames} frames, numbered "
                         f"0..{info.frames - 1}; ask for 0 <= start < end <= {info.frames}")


def read_frames(source: Source, start: int, end: int, size: tuple[int, int] | None = None, *,
                info: VideoInfo | None = None, crop: bool = False) -> torch.Tensor:
    """Frames ``[start, end)`` of a video as a float32 IMAGE batch ``[end - start, H, W, 3]`` in 0..1.

    Decodes only from the keyframe before ``start`` up to ``end`` (see the module docstring for how frames are
    numbered), so memory holds just these frames. ``size=(height, width)`` resizes each frame while it is converted
    to RGB (libswscale bilinear via PyAV's ``VideoFrame.reformat``); with ``crop=True`` the frame is scaled to cover
    ``size`` keeping its aspect and the middle is cut out (like ComfyUI's ImageScale with crop "center"). Pass
    ``info`` from :func:`probe` to skip probing again when reading many segments of one file. The result equals
    frames ``[start:end]`` of a full decode bit for bit (with the same ``size`` and ``crop``).
    """
    info = info or probe(source)
    check_range(info, start, end, describe(source))
    height, width = _check_size(size, info)
    out = torch.empty((end - start, height, width, 3), dtype=torch.float32)
    resize = None if size is None else cover_size(info.height, info.width, height, width) if crop else (height, width)
    resize = None if resize == (info.height, info.width) else resize  # the video's own size: no scaler pass
    with _open(source) as container:
        stream = _video_stream(container, source)
        stream.thread_type = "AUTO"
        got = None
        if info.variable_frame_rate:
            _warn_vfr(source, info)
            if start > 0 and info.keyframes:
                got = _read_from_keyframe(container, stream, info, start, end, out, resize)
        elif start > 0:
            got = _read_seeking(container, stream, info, start, end, out, resize)
            if got is None:
                logger.warning("video %s: frame timestamps are not on a constant %s fps grid; decoding from the "
                               "first frame and numbering frames by count", describe(source), info.frame_rate)
        if got is None:
            container.seek(0) if start > 0 else None
            got = _read_counting(container.decode(stream), start, end, out, resize)
    if got != end - start:
        raise VideoDecodeError(f"video {describe(source)}: decoding gave only {start + got} of the {info.frames} "
                               f"frames its header lists, so frames [{start + got}, {end}) are missing; the file is "
                               "truncated or damaged. Re-encode it, e.g. `ffmpeg -i in.ext -c:v libx264 out.mp4`.")
    return out


def _check_size(size, info: VideoInfo) -> tuple[int, int]:
    if size is None:
        return info.height, info.width
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"size={size!r}: give (height, width) in pixels, both 1 or more, or None for the video's "
                         f"own {info.height}x{info.width}")
    return int(size[0]), int(size[1])


def cover_size(height: int, width: int, target_height: int, target_width: int) -> tuple[int, int]:
    """The smallest size with the source's aspect that covers the target (the size before a center crop)."""
    scale = max(target_height / height, target_width / width)
    return max(target_height, round(height * scale)), max(target_width, round(width * scale))


def _store(out: torch.Tensor, i: int, frame, resize: tuple[int, int] | None) -> None:
    height, width = out.shape[1:3]
    if resize is not None:
        frame = frame.reformat(width=resize[1], height=resize[0], format="rgb24", interpolation=RESIZE)
    array = frame.to_ndarray(format="rgb24")
    if array.shape[:2] != (height, width):  # crop: the middle of the covering frame
        top, left = (array.shape[0] - height) // 2, (array.shape[1] - width) // 2
        array = array[top:top + height, left:left + width]
    out[i].copy_(torch.from_numpy(np.ascontiguousarray(array))).div_(255.0)  # == ComfyUI's rgb24 / 255.0


def _read_counting(frames: Iterator, start: int, end: int, out: torch.Tensor, resize) -> int:
    """Number frames by their position in a decode from the first frame."""
    got = 0
    for index, frame in enumerate(frames):
        if index >= start:
            _store(out, index - start, frame, resize)
            got += 1
        if index + 1 >= end:
            break
    return got


def _frame_index(pts, info: VideoInfo) -> int | None:
    if pts is None:
        return None
    exact = (pts - info.first_pts) * info.time_base * info.frame_rate
    index = round(exact)
    return index if abs(exact - index) <= Fraction(1, 4) else None


def _read_seeking(container, stream, info: VideoInfo, start: int, end: int, out: torch.Tensor,
                  resize) -> int | None:
    """Seek to the keyframe before ``start`` and decode forward; None when timestamps cannot be trusted."""
    target = info.first_pts + int(start / info.frame_rate / info.time_base)
    back = Fraction(0)  # seconds to seek further back when the keyframe found lies after ``start``
    while True:
        position = target - int(back / info.time_base)
        if position <= info.first_pts:  # the start is in the first GOP: decode from the first frame
            return _from_start(container, stream, start, end, out, resize)
        container.seek(position, stream=stream, backward=True, any_frame=False)
        got, expected, too_late = 0, None, False
        for frame in container.decode(stream):
            index = _frame_index(frame.pts, info)
            if index is None:
                return None
            if expected is None:
                if not frame.key_frame:
                    continue  # leading pictures of an open GOP may reference frames before the seek point
                if index > start:
                    too_late = True
                    break
                expected = index
            if index != expected:
                return None  # a gap or a repeat: not constant frame rate after all
            expected += 1
            if index >= start:
                _store(out, index - start, frame, resize)
                got += 1
            if index + 1 >= end:
                break
        if not too_late:
            return got
        back = back * 2 if back else Fraction(2)


def _read_from_keyframe(container, stream, info: VideoInfo, start: int, end: int, out: torch.Tensor,
                        resize) -> int | None:
    """A variable-rate read from the last keyframe at or before ``start`` (its index from :func:`probe`'s keyframe
    index), so a segment deep into a long file does not decode everything before it; None when the decoder does
    not land on that keyframe (the caller then decodes from the first frame)."""
    at = bisect.bisect_right([index for _, index in info.keyframes], start) - 1
    if at < 0 or info.keyframes[at][1] == 0:
        return None
    key_pts, index = info.keyframes[at]
    container.seek(key_pts, stream=stream, backward=True, any_frame=False)
    got, first = 0, True
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        if frame.pts < key_pts:
            continue  # an earlier GOP's tail, or an open GOP's leading pictures, shown before the keyframe
        if first and frame.pts != key_pts:
            return None
        first = False
        if index >= start:
            _store(out, index - start, frame, resize)
            got += 1
        index += 1
        if index >= end:
            break
    return got


def _from_start(container, stream, start, end, out, resize) -> int:
    container.seek(0)
    return _read_counting(container.decode(stream), start, end, out, resize)


def _warn_vfr(source: Source, info: VideoInfo) -> None:
    key = describe(source)
    if key not in _warned_vfr:
        _warned_vfr.add(key)
        logger.warning("video %s has a variable frame rate: its %d frames are taken in order at the average rate "
                       "%.3f fps (the original timing is not kept). Convert it to a constant rate to keep the timing, "
                       "e.g. `ffmpeg -i in.ext -fps_mode cfr -r %s out.mp4`.",
                       key, info.frames, info.fps, info.frame_rate)


def iter_segments(source: Source, windows, size: tuple[int, int] | None = None, *, info: VideoInfo | None = None,
                  crop: bool = False):
    """``read_frames`` for each ``(start, end)`` window in turn; one segment in memory at a time."""
    info = info or probe(source)
    for start, end in windows:
        yield read_frames(source, start, end, size, info=info, crop=crop)


# -- writing -------------------------------------------------------------------------------------------------------

DEFAULT_CODEC = "libx264"        # lossy H.264, yuv420p, crf 18: plays everywhere
LOSSLESS_CODECS = {".mkv": ("ffv1", "bgr0", {}), ".mp4": ("libx264rgb", "rgb24", {"qp": "0"}),
                   ".mov": ("libx264rgb", "rgb24", {"qp": "0"})}


class VideoWriter:
    """Write a video chunk by chunk: ``with VideoWriter(path, fps) as w: w.write(frames)`` for each chunk.

    Frames are IMAGE batches (float 0..1, rounded to 8 bits). ``fps`` is kept exactly (pass the source's
    ``VideoInfo.frame_rate``). The default codec is H.264 (libx264, yuv420p, crf 18; lossy, even sizes only);
    ``lossless=True`` stores the 8-bit RGB exactly (FFV1 in .mkv, libx264rgb qp 0 in .mp4/.mov), so decoding the file
    gives back the written frames bit for bit. ``audio_from`` copies the audio stream of that file (remuxed, not
    re-encoded), interleaved as the video grows.

    The file is written to a hidden temporary name in the same folder and renamed to ``path`` only when it is
    complete: an error, an interruption or a full disk leaves no half-written file under ``path``
    (:class:`VideoWriteError` names the path and the fix).
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float | int, *, lossless: bool = False,
                 codec: str | None = None, pix_fmt: str | None = None, options: dict | None = None,
                 audio_from: Source | None = None, crf: int = 18):
        self.path = Path(path)
        self.frame_rate = Fraction(fps).limit_denominator(1_000_000) if not isinstance(fps, Fraction) else fps
        if self.frame_rate <= 0:
            raise ValueError(f"fps={fps}: the frame rate must be above 0 (pass the source's VideoInfo.frame_rate)")
        suffix = self.path.suffix.lower()
        if lossless:
            if suffix not in LOSSLESS_CODECS:
                raise ValueError(f"lossless=True needs a .mkv, .mp4 or .mov file, not {self.path.name}")
            default_codec, default_fmt, default_options = LOSSLESS_CODECS[suffix]
        else:
            default_codec, default_fmt, default_options = DEFAULT_CODEC, "yuv420p", {"crf": str(crf)}
        self.codec = codec or default_codec
        self.pix_fmt = pix_fmt or default_fmt
        self.options = dict(default_options if codec is None else {}, **(options or {}))
        self.audio_from = audio_from
        self.frames_written = 0
        self._temp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._container = None
        self._stream = None
        self._audio = None  # (input container, packet iterator, output stream, next packet)
        self._closed = False

    # context manager: commit on success, discard on any error
    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _fail(self, error: BaseException, doing: str) -> VideoWriteError:
        self.abort()
        full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        try:
            free = shutil.disk_usage(self.path.parent).free / 2**30
            space = f" ({free:.1f} GiB free there)"
        except OSError:
            space = ""
        fix = (f"free disk space in {self.path.parent}{space} or choose another output folder" if full else
               f"check that {self.path.parent} exists, is writable and has space{space}")
        return VideoWriteError(getattr(error, "errno", None) or errno.EIO,
                               f"writing video {self.path} failed while {doing}: {error}. No file was left at that "
                               f"path; {fix}, then run again (segments already stored in the bank are kept).")

    def _open(self, height: int, width: int) -> None:
        if self.pix_fmt in ("yuv420p", "nv12") and (height % 2 or width % 2):
            raise ValueError(f"frames of {height}x{width} pixels: H.264 in yuv420p needs an even height and width; "
                             "resize to even sizes, or write with lossless=True")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self._temp), mode="w")
            self._stream = self._container.add_stream(self.codec, rate=self.frame_rate)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = self.pix_fmt
            self._stream.time_base = 1 / self.frame_rate
            self._stream.codec_context.time_base = 1 / self.frame_rate
            self._stream.options = dict(self.options)
            if self.audio_from is not None:
                self._open_audio()
        except (OSError, av.FFmpegError) as error:
            raise self._fail(error, "opening the file") from error

    def _open_audio(self) -> None:
        source = _open(self.audio_from)
        if not source.streams.audio:
            source.close()
            return
        in_stream = source.streams.audio[0]
        out_stream = self._container.add_stream_from_template(in_stream)
        packets = (p for p in source.demux(in_stream) if p.dts is not None and p.size)
        self._audio = [source, packets, out_stream, None]

    def _mux_audio(self, until: float | None) -> None:
        """Copy source audio packets that start before ``until`` seconds (all when None)."""
        if self._audio is None:
            return
        source, packets, out_stream, pending = self._audio
        while True:
            packet = pending if pending is not None else next(packets, None)
            if packet is None:
                self._audio[3] = None
                return
            if until is not None and float(packet.pts * packet.time_base) >= until:
                self._audio[3] = packet
                return
            packet.stream = out_stream
            self._container.mux(packet)
            pending = None

    def write(self, frames: torch.Tensor) -> None:
        """Append ``frames`` ([F, H, W, 3] floats in 0..1, or one frame [H, W, 3]) to the video."""
        if self._closed:
            raise ValueError(f"video {self.path} is already closed; open a new VideoWriter")
        if frames.ndim == 3:
            frames = frames.unsqueeze(0)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames are {list(frames.shape)}; expected an IMAGE batch [frames, height, width, 3]")
        if self._container is None:
            self._open(int(frames.shape[1]), int(frames.shape[2]))
        elif (frames.shape[1], frames.shape[2]) != (self._stream.height, self._stream.width):
            self.abort()
            raise ValueError(f"frames of {frames.shape[1]}x{frames.shape[2]} after frames of "
                             f"{self._stream.height}x{self._stream.width}: every chunk of a video needs one size")
        try:
            for first in range(0, frames.shape[0], 8):  # 8 frames at a time: no full-chunk copy of the frames
                # round, not truncate: x / 255 * 255 may land just below x in float32
                pixels = (frames[first:first + 8].detach().float().cpu() * 255.0).round_().clamp_(0, 255)
                for array in pixels.to(torch.uint8).numpy():
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
                    frame.pts = self.frames_written
                    frame.time_base = 1 / self.frame_rate
                    for packet in self._stream.encode(frame):
                        self._container.mux(packet)
                    self.frames_written += 1
                self._mux_audio(float(self.frames_written / self.frame_rate))
        except (OSError, av.FFmpegError) as error:
            raise self._fail(error, f"writing frame {self.frames_written}") from error

    def close(self) -> Path:
        """Finish the file and move it to ``path``; returns the path."""
        if self._closed:
            return self.path
        if self._container is None:
            self.abort()
            raise ValueError(f"video {self.path}: no frames were written, so no file was made")
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._mux_audio(None)
            self._container.close()
            self._close_audio()
            os.replace(self._temp, self.path)
        except (OSError, av.FFmpegError) as error:
            raise self._fail(error, "finishing the file") from error
        self._closed = True
        return self.path

    def _close_audio(self) -> None:
        if self._audio is not None:
            self._audio[0].close()
            self._audio = None

    def abort(self) -> None:
        """Stop and delete the temporary file; nothing appears at ``path``."""
        self._closed = True
        for close in (lambda: self._container and self._container.close(), self._close_audio):
            try:
                close()
            except Exception:  # noqa: BLE001 - already failing; the temp file goes regardless
                pass
        self._container = None
        try:
            self._temp.unlink()
        except FileNotFoundError:
            pass


def is_file_source(source: object) -> bool:
    """True for what :func:`read_frames` can read: a path or a seekable binary file object."""
    return isinstance(source, (str, os.PathLike)) or (isinstance(source, io.IOBase) and source.seekable())
