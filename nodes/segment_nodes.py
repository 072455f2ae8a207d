"""Long-video editing nodes: cut the source video into model-sized segments, one per queue run, and stitch the
edited segments back into one video with exactly the source's frame count.

Glue only: ComfyUI IMAGE / VIDEO / VAE in, ``memv2v_core.segments`` does the arithmetic.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..memv2v_core.retrieval.descriptors import latest_segments, source_segments
from ..memv2v_core.segments import (BLENDS, DEFAULT_LENGTH, DEFAULT_OVERLAP, WAN_TEMPORAL_STRIDE, check_segment_length,
                                    plan_segments, source_fingerprint, split_segment, stitch)
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


def _frames_of(image, video, image_name: str, video_name: str) -> torch.Tensor | None:
    """The frames of whichever of the two inputs is connected (IMAGE batch, or a VIDEO's decoded images)."""
    if image is not None and video is not None:
        raise ValueError(f"{image_name} and {video_name} are both connected; connect only one of them")
    if video is not None:
        return video.get_components().images
    return image


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
                                       "'image'."),
                io.Int.Input("segment_length", default=DEFAULT_LENGTH, min=1, max=MAX_FRAMES, tooltip=LENGTH_TOOLTIP),
                io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=MAX_FRAMES, tooltip=OVERLAP_TOOLTIP),
                io.Int.Input("index", default=0, min=0, max=MAX_FRAMES, control_after_generate=True,
                             tooltip="Which segment to output (0 = the first). Set its control to 'increment' to "
                                     "step through the video one queue run at a time; past the last segment the "
                                     "node stops with a message."),
                io.Int.Input("vae_temporal_stride", default=WAN_TEMPORAL_STRIDE, min=1, max=16, optional=True,
                             tooltip=STRIDE_TOOLTIP),
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
            ],
        )

    @classmethod
    def validate_inputs(cls, segment_length=None):
        # ComfyUI 0.3.64 repeats a validate_inputs message once per input named here, so only segment_length is:
        # one line, on the input it concerns. Wan's stride is assumed (the stride and overlap are checked when the
        # node runs, with the same messages).
        if isinstance(segment_length, int):
            if not 1 <= segment_length <= MAX_FRAMES:
                return f"segment_length={segment_length} must lie in 1..{MAX_FRAMES}; 81 is Wan's native length"
            try:
                check_segment_length(segment_length, WAN_TEMPORAL_STRIDE)
            except ValueError as error:
                return str(error)
        return True

    @classmethod
    def execute(cls, segment_length: int, overlap: int, index: int, image=None, video=None,
                vae_temporal_stride: int = WAN_TEMPORAL_STRIDE) -> io.NodeOutput:
        frames = _frames_of(image, video, "image", "video")
        if frames is None:
            raise ValueError("image / video: neither is connected; connect the source video to one of them")
        count = len(plan_segments(frames.shape[0], segment_length, overlap, vae_temporal_stride))
        if index >= count:
            raise ValueError(f"index={index}: the video ({frames.shape[0]} frames) has {count} segments, numbered "
                             f"0..{count - 1}, so all are done. Set index back to 0 for another pass; its control "
                             "should be 'increment' (ComfyUI gives new index widgets 'randomize').")
        part = split_segment(frames, index, segment_length, overlap, vae_temporal_stride)
        source_id = source_fingerprint(frames)
        text = (f"segment {part.index + 1} of {part.count} (index {part.index}): frames {part.start}..{part.end - 1} "
                f"of {frames.shape[0]}; source_id {source_id}")
        return io.NodeOutput(part.frames, part.index, part.count, part.start, part.end, source_id,
                             ui={"text": [text]})


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


def _decode(vae, latent: torch.Tensor, frames: int, entry_id: str, segment_index: int) -> torch.Tensor:
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
                        "the source video when 'fill_missing' is on. Overlaps are joined by a cut or a cross-fade.",
            is_input_list=True,
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
                               tooltip="The source video as a VIDEO, instead of 'source'."),
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
            ],
            outputs=[
                io.Image.Output(display_name="video",
                                tooltip="The stitched video, exactly as many frames as the source."),
                io.String.Output(display_name="report", tooltip="Where each segment came from, and what was missing."),
            ],
        )

    @classmethod
    def execute(cls, segment_length: list, overlap: list, blend: list, bank: list | None = None,
                vae: list | None = None, segments: list | None = None, source: list | None = None,
                source_video: list | None = None, num_frames: list | None = None, source_id: list | None = None,
                fill_missing: list | None = None, vae_temporal_stride: list | None = None) -> io.NodeOutput:
        first = lambda values, default=None: values[0] if values else default  # noqa: E731 - inputs arrive as lists
        frames = _frames_of(first(source), first(source_video), "source", "source_video")
        count = int(first(num_frames, 0))
        if frames is not None:
            if count and count != frames.shape[0]:
                raise ValueError(f"num_frames={count} but the source has {frames.shape[0]} frames; set num_frames to 0")
            count = frames.shape[0]
        if count <= 0:
            raise ValueError("num_frames: connect the source video (source or source_video) or set num_frames to its "
                             "frame count")
        plan = plan_segments(count, first(segment_length), first(overlap),
                             first(vae_temporal_stride, WAN_TEMPORAL_STRIDE))
        if first(fill_missing, False) and frames is None:
            raise ValueError("fill_missing is on but no source video is connected; connect 'source' or turn it off")

        if segments:
            pieces, origin = _segment_list(segments, plan), "the segments input"
        else:
            pieces, origin = cls._from_bank(first(bank), first(vae), first(source_id, ""), plan,
                                            first(fill_missing, False))
        missing = [i for i, p in enumerate(pieces) if p is None]
        if missing and not first(fill_missing, False):
            raise ValueError(f"bank: segments {', '.join(map(str, missing))} (of {len(plan)}, numbered from 0) of "
                             f"source_id '{first(source_id, '')}' are not in {origin} yet. Edit and add them, or turn "
                             "on fill_missing to take them from the source video.")
        video = stitch(pieces, plan, count, first(blend), fill=frames if first(fill_missing, False) else None)
        report = (f"stitched {len(plan) - len(missing)} of {len(plan)} segments from {origin} into {count} frames "
                  f"({first(blend)})" + (f"; segments {missing} taken from the source" if missing else ""))
        return io.NodeOutput(video, report, ui={"text": [report]})

    @classmethod
    def _from_bank(cls, bank, vae, source_id: str, plan: list, fill_missing: bool) -> tuple[list, str]:
        if bank is None:
            raise ValueError("bank / segments: neither is connected; connect the bank (with a vae) or the decoded "
                             "segments")
        if vae is None:
            raise ValueError("vae: the bank holds latents; connect the VAE that decodes them (or connect 'segments')")
        entries, notes = source_segments(bank, source_id, strict=True)
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
        import comfy.model_management
        import comfy.utils

        progress = comfy.utils.ProgressBar(len(plan))

        def decoder(entry, index: int, frames: int):
            def decode() -> torch.Tensor:  # called by stitch, one segment at a time, so only one is held decoded
                comfy.model_management.throw_exception_if_processing_interrupted()
                images = _decode(vae, bank.load_latent(entry.entry_id), frames, entry.entry_id, index)
                progress.update(1)
                return images
            return decode

        pieces = [None if index not in by_index else decoder(by_index[index], index, end - start)
                  for index, (start, end) in enumerate(plan)]
        for note in notes:
            logger.info("Stitch Segments: %s", note)
        return pieces, f"bank '{getattr(bank, 'name', '?')}'"


NODES = [SplitSegments, StitchSegments]
