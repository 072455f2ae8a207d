"""Long-video editing nodes: cut the source video into model-sized segments, one per queue run, and stitch the
edited segments back into one video with exactly the source's frame count.

Glue only: ComfyUI IMAGE / VIDEO / VAE in, ``memv2v_core.segments`` does the arithmetic. A VIDEO loaded from a file
is never decoded whole: ``memv2v_core.video_io`` reads its frame count from the header and decodes one segment at a
time, so memory grows with a segment, not with the video. IMAGE inputs (already in memory) work as they always did.
"""

from __future__ import annotations

import io as io_module
import logging
import os
from fractions import Fraction

import torch
from comfy_api.latest import Input, io

from ..memv2v_core.retrieval.descriptors import latest_segments, source_segments
from ..memv2v_core.segments import (BLENDS, DEFAULT_LENGTH, DEFAULT_OVERLAP, WAN_TEMPORAL_STRIDE, check_segment_length,
                                    check_source_frames, plan_segments, source_fingerprint, source_fingerprint_of,
                                    split_segment, stitch_stream)
from ..memv2v_core.video_io import VideoInfo, VideoWriter, is_file_source, probe, read_frames
from .socket_types import Bank

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/segments"
MAX_FRAMES = 100_000

LENGTH_TOOLTIP = ("Frames per segment. Must be 4k+1 for Wan's VAEs (81 = Wan's native length; 33 = the clip length "
                  "Memory-V2V's editing model was trained on). Use the same value in Split and Stitch.")
OVERLAP_TOOLTIP = ("Frames shared by consecutive segments (0 = none). The last segment is shifted back to end at the "
                   "last frame, so it may overlap more. Use the same value in Split and Stitch.")
STRIDE_TOOLTIP = ("Frames per latent frame of the model's VAE (4 for Wan 2.1 / 2.2): segment lengths must be "
                  "1 + k * this.")


class _Source:
    """A source video for the segment nodes: an IMAGE batch in memory, or a video file read a segment at a time."""

    def __init__(self, frames: torch.Tensor | None = None, file=None, info: VideoInfo | None = None,
                 size: tuple[int, int] | None = None, frame_rate: Fraction | None = None):
        self.frames, self.file, self.info, self.size = frames, file, info, size
        self.frame_rate = info.frame_rate if info is not None else frame_rate
        if frames is not None:
            self.count, self.shape = int(frames.shape[0]), tuple(frames.shape)
        else:
            height, width = size or (info.height, info.width)
            self.count, self.shape = info.frames, (info.frames, height, width, 3)

    def read(self, start: int, end: int, size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.frames is not None:
            return self.frames[start:end]
        return read_frames(self.file, start, end, size or self.size, info=self.info, crop=True)

    def fingerprint(self) -> str:
        if self.frames is not None:
            return source_fingerprint(self.frames)
        key = _cache_key(self.file, self.size)
        if key is None or key not in _FINGERPRINTS:
            value = source_fingerprint_of(self.shape, lambda i: self.read(i, i + 1))
            if key is None:
                return value
            _FINGERPRINTS.clear() if len(_FINGERPRINTS) > 64 else None
            _FINGERPRINTS[key] = value
        return _FINGERPRINTS[key]

    @property
    def audio_file(self):
        return self.file if self.info is not None and self.info.has_audio else None


_FINGERPRINTS: dict[tuple, str] = {}  # a file's source_id per (path, size, mtime, frame size): 16 seeks saved per run


def _cache_key(file, size) -> tuple | None:
    if not isinstance(file, (str, os.PathLike)):
        return None  # an in-memory file object: no stable identity
    stat = os.stat(file)
    return os.path.realpath(file), stat.st_size, stat.st_mtime_ns, size


def _video_file(video):
    """The file (path, or the BytesIO of an uploaded video) behind a VIDEO; None when it holds decoded frames."""
    getter = getattr(type(video), "get_stream_source", None)
    # Only a class that overrides it streams a file: VideoInput's default encodes the whole video first (and
    # ComfyUI 0.3.64's fails for Create Video's VIDEO), so a VIDEO of frames is read from its components.
    if getter is None or getter is getattr(Input.Video, "get_stream_source", None):
        return None
    source = video.get_stream_source()
    return source if is_file_source(source) else None


def size_of(width: int, height: int, connected: str) -> tuple[int, int] | None:
    """The (height, width) a VIDEO is decoded at from the width/height widgets (None: its own size); ``connected``
    names the input in use, since an IMAGE cannot be resized while decoding."""
    if not width and not height:
        return None
    if not width or not height:
        raise ValueError(f"width={width}, height={height}: set both (the frame size each segment is decoded at) or "
                         "leave both at 0 for the video's own size")
    if connected == "image":
        raise ValueError(f"width={width}, height={height} resize a VIDEO input while it is decoded; an IMAGE is "
                         "already decoded: leave both at 0 (resize it before with Image Scale)")
    return height, width


def source_of(image, video, image_name: str, video_name: str, size: tuple[int, int] | None = None) -> _Source | None:
    """Whichever of the two inputs is connected: an IMAGE batch, a VIDEO file (read lazily), or a VIDEO's frames."""
    if image is not None and video is not None:
        raise ValueError(f"{image_name} and {video_name} are both connected; connect only one of them")
    if video is None:
        return None if image is None else _Source(frames=image)
    file = _video_file(video)
    if file is not None:
        try:
            return _Source(file=file, info=probe(file), size=size)
        except ValueError as error:
            raise ValueError(f"{video_name}: {error}") from None
    components = video.get_components()  # a VIDEO made from frames: they are in memory already
    frames = components.images
    if size is not None:
        raise ValueError(f"{video_name}: this VIDEO holds decoded frames, not a file, so width/height cannot resize "
                         "it while decoding; leave them at 0 (resize the frames before Create Video)")
    return _Source(frames=frames, frame_rate=Fraction(components.frame_rate))


class SplitSegments(io.ComfyNode):
    """Cut the segment at ``index`` out of a long video; the index steps on after each queue run."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_SplitSegments",
            display_name="Memory-V2V Split Segments",
            category=CATEGORY,
            description="Cuts a long video into model-sized segments and outputs the one at 'index'. Set the index "
                        "widget's control to 'increment' and queue once per segment: each run edits the next "
                        "segment. Also outputs the source_id that keeps this video's segments apart in the bank.",
            inputs=[
                io.Image.Input("image", optional=True,
                               tooltip="The whole source video as an IMAGE batch (e.g. from a video loader). "
                                       "Connect this or 'video'."),
                io.Video.Input("video", optional=True,
                               tooltip="The whole source video as a VIDEO (e.g. from Load Video). Connect this or "
                                       "'image'. A video file is never decoded whole: only this segment's frames "
                                       "are, so any length fits in memory."),
                io.Int.Input("segment_length", default=DEFAULT_LENGTH, min=1, max=MAX_FRAMES, tooltip=LENGTH_TOOLTIP),
                io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=MAX_FRAMES, tooltip=OVERLAP_TOOLTIP),
                io.Int.Input("index", default=0, min=0, max=MAX_FRAMES, control_after_generate=True,
                             tooltip="Which segment to output (0 = the first). Set its control to 'increment' to "
                                     "step through the video one queue run at a time; past the last segment it "
                                     "wraps to 0 (a new pass) and says so."),
                io.Int.Input("vae_temporal_stride", default=WAN_TEMPORAL_STRIDE, min=1, max=16, optional=True,
                             tooltip=STRIDE_TOOLTIP),
                io.Int.Input("width", default=0, min=0, max=16384, optional=True,
                             tooltip="VIDEO input only: decode each segment at this width (and height), cutting the "
                                     "middle when the aspect differs, like Image Scale with crop 'center'. 0 = the "
                                     "video's own size."),
                io.Int.Input("height", default=0, min=0, max=16384, optional=True,
                             tooltip="VIDEO input only: decode each segment at this height (see width). 0 = the "
                                     "video's own size."),
            ],
            outputs=[
                io.Image.Output(display_name="segment",
                                tooltip="The frames of this segment, for encoding and editing."),
                io.Int.Output(display_name="index", tooltip="This segment's index, for Segment Retrieve and Bank Add."),
                io.Int.Output(display_name="count", tooltip="How many segments the video has."),
                io.Int.Output(display_name="start", tooltip="First frame of the segment in the source video."),
                io.Int.Output(display_name="end", tooltip="Frame after the segment's last (end is exclusive)."),
                io.String.Output(display_name="source_id",
                                 tooltip="A short id of the source video's content, for Bank Add, Segment Retrieve "
                                         "and Stitch Segments, so segments of different videos never mix."),
                io.Int.Output(display_name="frames",
                              tooltip="The whole source video's frame count, for Segment Retrieve's source_frames: "
                                      "a source whose length changed since earlier segments were stored is "
                                      "refused."),
            ],
        )

    @classmethod
    def validate_inputs(cls, segment_length=None):
        return segment_length_problem(segment_length)

    @classmethod
    def execute(cls, segment_length: int, overlap: int, index: int, image=None, video=None,
                vae_temporal_stride: int = WAN_TEMPORAL_STRIDE, width: int = 0, height: int = 0) -> io.NodeOutput:
        size = size_of(width, height, "image" if image is not None and video is None else "video")
        source = source_of(image, video, "image", "video", size)
        if source is None:
            raise ValueError("image / video: neither is connected; connect the source video to one of them")
        plan = plan_segments(source.count, segment_length, overlap, vae_temporal_stride)
        wrapped = ""
        if index >= len(plan):  # the 'increment' control ran past the end: start the next pass, do not stop
            wrapped = (f"index {index} is past the last segment ({len(plan) - 1}): all {len(plan)} segments are "
                       "done, so this run starts a new pass at segment 0.\n")
            logger.warning("Split Segments: %s", wrapped.strip())
            index = 0
        if source.frames is not None:
            part = split_segment(source.frames, index, segment_length, overlap, vae_temporal_stride)
            frames, start, end = part.frames, part.start, part.end
        else:
            start, end = plan[index]
            frames = source.read(start, end)
        source_id = source.fingerprint()
        text = wrapped + (f"segment {index + 1} of {len(plan)} (index {index}): frames {start}..{end - 1} of "
                          f"{source.count}; source_id {source_id}")
        return io.NodeOutput(frames, index, len(plan), start, end, source_id, source.count, ui={"text": [text]})


def _segment_list(images: list, plan: list[tuple[int, int]]) -> list[torch.Tensor]:
    """One IMAGE per segment, or a single IMAGE holding every segment one after another."""
    lengths = [end - start for start, end in plan]
    if len(images) == len(plan) and all(im.shape[0] == n for im, n in zip(images, lengths)):
        return list(images)
    if len(images) == 1 and images[0].shape[0] == sum(lengths):
        return list(torch.split(images[0], lengths))
    got = [int(im.shape[0]) for im in images]
    raise ValueError(f"segments: got {len(images)} IMAGE(s) with {got} frames, but the plan has {len(plan)} segments "
                     f"of {lengths} frames. Pass one IMAGE per segment (a list) or one IMAGE with all segments in "
                     "order; check segment_length and overlap match Split Segments.")


def decode_segment(vae, latent: torch.Tensor, frames: int, entry_id: str, segment_index: int) -> torch.Tensor:
    """A bank entry's latent decoded to IMAGE frames, refusing a VAE of other channels or another frame count."""
    channels = getattr(vae, "latent_channels", None)
    if channels is not None and latent.shape[-4] != channels:
        raise ValueError(f"vae: bank entry {entry_id} (segment {segment_index}) holds {latent.shape[-4]}-channel "
                         f"latents but this VAE takes {channels}; connect the VAE of the model that made the bank "
                         "(Wan 2.1: 16 channels, Wan 2.2: 48).")
    images = vae.decode(latent if latent.ndim == 5 else latent.unsqueeze(0))
    images = images.reshape(-1, *images.shape[-3:])  # video VAEs return [batch, frames, H, W, C]
    if images.shape[0] != frames:
        raise ValueError(f"bank: entry {entry_id} (segment {segment_index}) decodes to {images.shape[0]} frames, but "
                         f"its window has {frames}; it was made with another segment_length, or the vae is not the "
                         "one that encoded it")
    return images


class StitchSegments(io.ComfyNode):
    """Assemble the edited segments, in order, into one video with exactly the source's frame count."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_StitchSegments",
            display_name="Memory-V2V Stitch Segments",
            category=CATEGORY,
            description="Joins the edited segments into one video with exactly the source's frame count. Segments "
                        "come from the bank (the newest edit of each segment of this source_id, decoded with the "
                        "VAE) or from the 'segments' input. Missing segments are listed in an error, or taken from "
                        "the source video when 'fill_missing' is on. Overlaps are joined by a cut or a cross-fade. "
                        "With a filename_prefix it writes the video to the output folder as it stitches (one "
                        "segment decoded at a time), with the source's frame rate and audio.",
            is_input_list=True,
            is_output_node=True,
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            inputs=[
                io.Int.Input("segment_length", default=DEFAULT_LENGTH, min=1, max=MAX_FRAMES, tooltip=LENGTH_TOOLTIP),
                io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=MAX_FRAMES, tooltip=OVERLAP_TOOLTIP),
                io.Combo.Input("blend", options=list(BLENDS), default="cut",
                               tooltip="How overlapping frames are joined: 'cut' switches to the later segment at "
                                       "the middle of the overlap (as the paper stitches); 'linear' and 'ease' "
                                       "cross-fade over the whole overlap (ease: smoothstep)."),
                Bank.Input("bank", optional=True,
                           tooltip="The memory bank holding the edited segments (Bank Add with segment_index and "
                                   "source_id). Needs 'vae'. Leave open when 'segments' is connected."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE that decodes the bank's segment latents."),
                io.Image.Input("segments", optional=True,
                               tooltip="Instead of the bank: the decoded edited segments, one IMAGE per segment (a "
                                       "list) or one IMAGE with all segments in order."),
                io.Image.Input("source", optional=True,
                               tooltip="The source video (IMAGE): gives the frame count, and the frames of missing "
                                       "segments when 'fill_missing' is on."),
                io.Video.Input("source_video", optional=True,
                               tooltip="The source video as a VIDEO, instead of 'source'. A video file is not "
                                       "decoded whole: its header gives the frame count, frame rate and audio, and "
                                       "missing segments are decoded one at a time."),
                io.Int.Input("num_frames", default=0, min=0, max=MAX_FRAMES, optional=True,
                             tooltip="The source's frame count when no source is connected (0: take it from the "
                                     "source)."),
                io.String.Input("source_id", default="", optional=True,
                                tooltip="Which video's segments to take from the bank: Split Segments' source_id. "
                                        "Empty: the bank must hold segments of one video only."),
                io.Boolean.Input("fill_missing", default=False, optional=True,
                                 tooltip="Off: stop with a list of the segments not edited yet. On: take them from "
                                         "the source video (needs 'source') to preview a partial edit."),
                io.Int.Input("vae_temporal_stride", default=WAN_TEMPORAL_STRIDE, min=1, max=16, optional=True,
                             tooltip=STRIDE_TOOLTIP),
                io.String.Input("filename_prefix", default="", optional=True,
                                tooltip="Non-empty: write the stitched video to ComfyUI's output folder under this "
                                        "prefix while stitching, so memory holds two segments, never the whole "
                                        "video (then leave the 'video' IMAGE output unconnected: it would hold "
                                        "every frame). The saved_video output points at the file."),
                io.Combo.Input("file_format", options=list(FILE_FORMATS), default="mp4", optional=True,
                               tooltip="mp4: H.264 (libx264, crf 18), plays everywhere, lossy. mkv-lossless: FFV1, "
                                       "keeps every 8-bit pixel exactly (large files, no browser preview)."),
                io.Float.Input("fps", default=0.0, min=0.0, max=1000.0, step=0.001, optional=True,
                               tooltip="Frame rate of the written file. 0: the source VIDEO's exact rate (needed "
                                       "when the source is an IMAGE)."),
            ],
            outputs=[
                io.Image.Output(display_name="video",
                                tooltip="The stitched video, exactly as many frames as the source (all in memory: "
                                        "for long videos use filename_prefix and saved_video instead)."),
                io.String.Output(display_name="report", tooltip="Where each segment came from, and what was missing."),
                io.Video.Output(display_name="saved_video",
                                tooltip="The written file as a VIDEO (with filename_prefix set): the source's frame "
                                        "count, frame rate and audio."),
            ],
        )

    @classmethod
    def execute(cls, segment_length: list, overlap: list, blend: list, bank: list | None = None,
                vae: list | None = None, segments: list | None = None, source: list | None = None,
                source_video: list | None = None, num_frames: list | None = None, source_id: list | None = None,
                fill_missing: list | None = None, vae_temporal_stride: list | None = None,
                filename_prefix: list | None = None, file_format: list | None = None,
                fps: list | None = None) -> io.NodeOutput:
        first = lambda values, default=None: values[0] if values else default  # noqa: E731 - inputs arrive as lists
        video = source_of(first(source), first(source_video), "source", "source_video")
        count = int(first(num_frames, 0))
        if video is not None:
            if count and count != video.count:
                raise ValueError(f"num_frames={count} but the source has {video.count} frames; set num_frames to 0")
            count = video.count
        if count <= 0:
            raise ValueError("num_frames: connect the source video (source or source_video) or set num_frames to its "
                             "frame count")
        plan = plan_segments(count, first(segment_length), first(overlap),
                             first(vae_temporal_stride, WAN_TEMPORAL_STRIDE))
        fill = first(fill_missing, False)
        if fill and video is None:
            raise ValueError("fill_missing is on but no source video is connected; connect 'source' or turn it off")
        prefix = (first(filename_prefix, "") or "").strip()
        rate = cls._frame_rate(first(fps, 0.0), video, prefix)

        if segments:
            pieces, origin = _segment_list(segments, plan), "the segments input"
        else:
            pieces, origin = cls._from_bank(first(bank), first(vae), first(source_id, ""), plan, fill, count)
        missing = [i for i, p in enumerate(pieces) if p is None]
        if missing and not fill:
            raise ValueError(f"bank: segments {', '.join(map(str, missing))} (of {len(plan)}, numbered from 0) of "
                             f"source_id '{first(source_id, '')}' are not in {origin} yet. Edit and add them, or turn "
                             "on fill_missing to take them from the source video.")
        reader = None
        if fill and video.frames is not None:
            reader = video.frames  # in memory already: stitch resizes it to the segments' size
        elif fill:
            def reader(start: int, end: int, height: int, width: int) -> torch.Tensor:
                _check_interrupted()  # a file: decode just this window, at the segments' size
                return video.read(start, end, (height, width) if height else None)

        keep = not prefix or cls._image_output_used()
        held = _Collector(count) if keep else None
        report = (f"stitched {len(plan) - len(missing)} of {len(plan)} segments from {origin} into {count} frames "
                  f"({first(blend)})" + (f"; segments {missing} taken from the source" if missing else ""))
        saved, ui_out = None, {}
        if prefix:
            path, subfolder = output_path(prefix, first(file_format, "mp4"))
            audio = video.audio_file if video is not None else None
            with VideoWriter(path, rate, lossless=first(file_format, "mp4") != "mp4",
                             audio_from=own_handle(audio)) as writer:
                def emit(frames: torch.Tensor) -> None:
                    writer.write(frames)
                    if held is not None:
                        held(frames)
                stitch_stream(pieces, plan, count, emit, first(blend), fill=reader)
            from comfy_api.latest import InputImpl, ui

            saved = InputImpl.VideoFromFile(str(path))
            report += (f"; wrote {path.name} ({count} frames at {float(rate):.3f} fps"
                       + (", audio from the source" if audio is not None else "") + ")")
            ui_out = ui.PreviewVideo([ui.SavedResult(path.name, subfolder, io.FolderType.output)]).as_dict()
        else:
            stitch_stream(pieces, plan, count, held, first(blend), fill=reader)
        return io.NodeOutput(held.out if held is not None else None, report, saved,
                             ui={**ui_out, "text": [report]})

    @classmethod
    def _frame_rate(cls, fps: float, video: "_Source | None", prefix: str) -> Fraction | None:
        if fps and fps > 0:
            return Fraction(fps).limit_denominator(1001 * 1000)
        if video is not None and video.frame_rate is not None:
            return video.frame_rate
        if prefix:
            raise ValueError("fps: 0, and the source is an IMAGE, which has no frame rate; set fps to the source's "
                             "rate, or connect the source as a VIDEO (source_video)")
        return None

    @classmethod
    def _image_output_used(cls) -> bool:
        """Whether any node of the queued prompt reads the 'video' IMAGE output (then it must hold every frame)."""
        hidden = getattr(cls, "hidden", None)
        prompt, node_id = getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None)
        if not isinstance(prompt, dict) or node_id is None:
            return True
        return any(isinstance(value, list) and len(value) == 2 and str(value[0]) == str(node_id) and value[1] == 0
                   for node in prompt.values() for value in node.get("inputs", {}).values())

    @classmethod
    def _from_bank(cls, bank, vae, source_id: str, plan: list, fill_missing: bool,
                   num_frames: int) -> tuple[list, str]:
        if bank is None:
            raise ValueError("bank / segments: neither is connected; connect the bank (with a vae) or the decoded "
                             "segments")
        if vae is None:
            raise ValueError("vae: the bank holds latents; connect the VAE that decodes them (or connect 'segments')")
        entries, notes = source_segments(bank, source_id, strict=True)
        check_source_frames(entries, num_frames, source_id)
        by_index = latest_segments(entries)
        beyond = sorted(i for i in by_index if i >= len(plan))
        if beyond:
            logger.warning("Stitch Segments: bank entries for segments %s lie beyond the plan's %d segments (another "
                           "segment_length/overlap?); ignored", beyond, len(plan))
        missing = [i for i in range(len(plan)) if i not in by_index]
        if missing and not fill_missing:  # say so before minutes of decoding, not after
            raise ValueError(f"bank: segments {', '.join(map(str, missing))} (of {len(plan)}, numbered from 0) of "
                             f"source_id '{source_id}' are not in bank '{getattr(bank, 'name', '?')}' yet. Edit and "
                             "add them, or turn on fill_missing to take them from the source video.")
        import comfy.utils

        progress = comfy.utils.ProgressBar(len(plan))

        def decoder(entry, index: int, frames: int):
            def decode() -> torch.Tensor:  # called by stitch, one segment at a time, so only one is held decoded
                _check_interrupted()
                images = decode_segment(vae, bank.load_latent(entry.entry_id), frames, entry.entry_id, index)
                progress.update(1)
                return images
            return decode

        pieces = [None if index not in by_index else decoder(by_index[index], index, end - start)
                  for index, (start, end) in enumerate(plan)]
        for note in notes:
            logger.info("Stitch Segments: %s", note)
        return pieces, f"bank '{getattr(bank, 'name', '?')}'"


FILE_FORMATS = {"mp4": ".mp4", "mkv-lossless": ".mkv"}


class _Collector:
    """Gathers emitted chunks into one preallocated IMAGE (no second copy at the end)."""

    def __init__(self, count: int):
        self.count, self.out, self.filled = count, None, 0

    def __call__(self, frames: torch.Tensor) -> None:
        if self.out is None:
            self.out = torch.empty((self.count, *frames.shape[1:]), dtype=frames.dtype, device=frames.device)
        self.out[self.filled:self.filled + frames.shape[0]] = frames
        self.filled += frames.shape[0]


def segment_length_problem(segment_length) -> str | bool:
    """A ``validate_inputs`` result for ``segment_length`` alone: ComfyUI 0.3.64 repeats a message once per input
    the method names (and a ``**kwargs`` names them all, skipping ComfyUI's own checks), so one line, on this input.
    Wan's stride is assumed; the VAE's stride and the overlap are checked when the node runs."""
    if isinstance(segment_length, int):
        if not 1 <= segment_length <= MAX_FRAMES:
            return f"segment_length={segment_length} must lie in 1..{MAX_FRAMES}; 81 is Wan's native length"
        try:
            check_segment_length(segment_length, WAN_TEMPORAL_STRIDE)
        except ValueError as error:
            return str(error)
    return True


def own_handle(file):
    """The audio source for a writer: a path as it is; an in-memory file as a second handle on its bytes, since
    the writer keeps it open while the segments (or missing ones, for fill_missing) are read from the first."""
    return io_module.BytesIO(file.getvalue()) if isinstance(file, io_module.BytesIO) else file


def _check_interrupted() -> None:
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def output_path(prefix: str, file_format: str):
    """A new file in ComfyUI's output folder, numbered like Save Video's."""
    from pathlib import Path

    import folder_paths

    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format={file_format!r} is not one of {', '.join(FILE_FORMATS)}")
    output = folder_paths.get_output_directory()
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output)
    except Exception as error:  # noqa: BLE001 - ComfyUI raises a bare Exception for a path outside the folder
        if type(error) is not Exception or "outside the output folder" not in str(error):
            raise
        raise ValueError(f"filename_prefix: '{prefix}' points outside ComfyUI's output folder ({output}); use a "
                         "relative name without '..', e.g. 'memv2v/long_edit'") from None
    return Path(folder) / f"{name}_{counter:05}_{FILE_FORMATS[file_format]}", subfolder


NODES = [SplitSegments, StitchSegments]
