"""Edit a whole long video in one queue run: every segment is read, retrieved, tokenized, sampled, stored in the bank
and written to the output video in turn, so memory holds one segment, never the video.

Glue only: each step calls the same functions the per-segment nodes use (Segment Retrieve's retrieval, Dynamic
Tokenize's context, Edit Conditioning's source encoding, Apply Memory's patch, KSampler's sampling, Bank Add's
records); ``memv2v_core.long_edit`` decides which segments a re-run can take from the bank.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from types import SimpleNamespace

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import io

from ..memv2v_core import video_io
from ..memv2v_core.bank.inputs import run_text
from ..memv2v_core.bank.provenance import sampler_node_provenance
from ..memv2v_core.long_edit import (file_digest, graph_digest, resume_point, segment_extra, segment_key,
                                     stored_segments, value_digest)
from ..memv2v_core.retrieval.descriptors import DEFAULT_TOP_K
from ..memv2v_core.segments import (BLENDS, DEFAULT_LENGTH, DEFAULT_OVERLAP, blend_weights, plan_segments,
                                    source_fingerprint)
from .bank_nodes import _as_queued, _input_types, _latent_format, _model_identity
from .edit_nodes import check_model_takes_source, encode_source, source_conditioning
from .embedder_nodes import clip_vision_file, retrieve_segment, segment_embedder
from .memory_nodes import KERNELS, MERGE_INPUTS, make_context, patch_model
from .segment_nodes import LENGTH_TOOLTIP, MAX_FRAMES, OVERLAP_TOOLTIP, _decode
from .socket_types import Bank, Embedder

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/segments"
STORY_GAP = 5.0  # Dynamic Tokenize's default; unused in mode edit


_Inputs = SimpleNamespace  # the node's inputs by name, for the loop
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime) -> content hash: a re-run does not read the file again


@dataclass
class _Source:
    """The video to edit: a file (or in-memory file) read one segment at a time, or an IMAGE batch in memory."""

    frames: int
    frame_rate: object  # Fraction for files, float for IMAGE batches
    source_id: str
    stream: object = None  # a path or a seekable binary file object (video_io source)
    info: object = None
    images: torch.Tensor | None = None
    size: tuple[int, int] | None = None  # (height, width) to resize to; None: as stored
    has_audio: bool = False

    def read(self, start: int, end: int) -> torch.Tensor:
        if self.images is None:
            return video_io.read_frames(self.stream, start, end, self.size, info=self.info)
        frames = self.images[start:end]
        if self.size is None or tuple(frames.shape[1:3]) == self.size:
            return frames
        height, width = self.size
        return comfy.utils.common_upscale(frames.movedim(-1, 1), width, height, "bilinear", "disabled").movedim(1, -1)


def _content_id(stream) -> str:
    """The source's id for the bank: a hash of the file's bytes (cached by path, size and modification time)."""
    if isinstance(stream, str):
        stat = os.stat(stream)
        key = (os.path.abspath(stream), stat.st_size, stat.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = file_digest(stream)
        return "src-" + _DIGESTS[key][:12]
    digest = hashlib.sha256()
    stream.seek(0)
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    stream.seek(0)
    return "src-" + digest.hexdigest()[:12]


def _open_source(video, file: str, image, width: int, height: int, fps: float) -> _Source:
    """Exactly one of video / file / image, probed (a file's header only) and identified by its content."""
    file = (file or "").strip()
    given = [name for name, value in (("video", video), ("file", file or None), ("image", image)) if value is not None]
    if len(given) != 1:
        which = "none is given" if not given else f"{' and '.join(given)} are all given"
        raise ValueError(f"video / file / image: {which}; give exactly one source video (Load Video to 'video', a "
                         "file name in ComfyUI's input folder to 'file', or an IMAGE batch to 'image').")
    if (width == 0) != (height == 0):
        raise ValueError(f"width={width}, height={height}: set both to resize, or both to 0 to keep the source size")
    size = (height, width) if width and height else None
    if image is not None:
        return _Source(int(image.shape[0]), fps, source_fingerprint(image), images=image, size=size)
    if video is not None:
        name, stream = "video", video.get_stream_source()
    else:
        name, stream = "file", folder_paths.get_annotated_filepath(file)
        if not stream or not os.path.isfile(stream):
            raise ValueError(f"file: '{file}' is not a file in ComfyUI's input folder "
                             f"({folder_paths.get_input_directory()}); put the video there or connect Load Video to "
                             "'video'.")
    try:
        info = video_io.probe(stream)
    except ValueError as error:  # VideoDecodeError: says what is wrong with the file and how to re-encode it
        raise ValueError(f"{name}: {error}") from None
    return _Source(int(info.frames), info.frame_rate, _content_id(stream), stream=stream, info=info, size=size,
                   has_audio=bool(info.has_audio))


class StreamStitch:
    """Temporary: joins segments as ``segments.stitch`` does (same overlap rule), writing each frame once no later
    segment can touch it. To be replaced by the streaming stitch of ``memv2v_core.segments``."""

    def __init__(self, plan, num_frames: int, blend: str, write):
        self.plan, self.num_frames, self.blend, self.write = list(plan), num_frames, blend, write
        self.index, self.pending, self.pending_start = 0, None, 0

    def add(self, segment: torch.Tensor) -> None:
        start, end = self.plan[self.index]
        segment = segment.float()
        if self.pending is None:
            held = segment
        else:
            shared = self.pending_start + self.pending.shape[0] - start
            earlier = self.pending[start - self.pending_start:]
            if self.blend == "cut":
                half = shared // 2
                joined = torch.cat([earlier[:half], segment[half:]])
            else:
                weight = blend_weights(shared, self.blend).to(segment.dtype).view(shared, 1, 1, 1)
                joined = torch.cat([earlier + weight * (segment[:shared] - earlier), segment[shared:]])
            held = torch.cat([self.pending[:start - self.pending_start], joined])
        self.index += 1
        keep_from = self.plan[self.index][0] if self.index < len(self.plan) else end
        first = self.pending_start
        if keep_from > first:
            self.write(held[:keep_from - first])
        self.pending, self.pending_start = held[keep_from - first:], keep_from

    def finish(self) -> None:
        if self.pending is not None and self.pending.shape[0]:
            self.write(self.pending)


def _send_text(text: str, node_id) -> None:
    """Show the segment's line on the node while the loop runs (the final summary comes with the ui text)."""
    try:
        from server import PromptServer

        PromptServer.instance.send_progress_text(text, node_id)
    except Exception:  # noqa: BLE001 - no server (called from Python) or an older one: the log has the line
        pass
    logger.info("Memory-V2V Long Video Edit: %s", text)


class LongVideoEdit(io.ComfyNode):
    """Edit every segment of a long video in one queue run, each remembering the edited earlier ones."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_LongVideoEdit",
            display_name="Memory-V2V Long Video Edit",
            category=CATEGORY,
            description="Edits a whole video of any length in one queue run: for each segment in turn it reads only "
                        "that segment from the file, retrieves the edited earlier segments from the bank (previous "
                        "first, then the most similar), samples the edit with ComfyUI's own sampler (LoRAs and other "
                        "model patches apply), adds it to the bank, and appends it to the output video on disk. "
                        "Interrupted or crashed? Queue again: segments already in the bank for this source and these "
                        "settings are taken from there and the edit continues at the first missing one.",
            is_output_node=True,
            hidden=[io.Hidden.prompt, io.Hidden.unique_id, io.Hidden.extra_pnginfo, io.Hidden.dynprompt],
            inputs=[
                io.Model.Input("model", tooltip="The editing model: a Wan V2V model that takes the source by channel "
                                                "concatenation, such as LucyEdit (after Model Sampling / LoRAs)."),
                io.Conditioning.Input("positive", tooltip="The edit instruction's conditioning."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning."),
                io.Vae.Input("vae", tooltip="The model's VAE (Wan 2.2 VAE for LucyEdit): encodes each source segment "
                                            "and decodes each edited one."),
                Bank.Input("bank", tooltip="The memory bank that keeps the edited segments (Bank Load); a re-run "
                                           "resumes from what it holds."),
                io.Video.Input("video", optional=True,
                               tooltip="The source video (Load Video). Read one segment at a time, never whole. "
                                       "Give this, 'file' or 'image'."),
                io.String.Input("file", default="", optional=True,
                                tooltip="Instead of 'video': the source video's file name in ComfyUI's input folder."),
                io.Image.Input("image", optional=True,
                               tooltip="Instead of 'video': the source as an IMAGE batch (already all in memory)."),
                io.Float.Input("fps", default=16.0, min=0.01, max=1000.0, step=0.01, optional=True,
                               tooltip="Only for an IMAGE source: the output's frame rate (a video keeps its own)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Describes each source segment for retrieval: Load CLIP Vision with "
                                            "DINOv2 (as in the paper). Connect this or 'embedder'; keep the same "
                                            "file for every run on a video."),
                Embedder.Input("embedder", optional=True,
                               tooltip="Instead of clip_vision: Memory-V2V Embedder Load (open_clip or the "
                                       "colour-histogram fallback)."),
                io.Int.Input("width", default=832, min=0, max=8192, step=16,
                             tooltip="Width the source is resized to while it is read (a multiple of 16 for the "
                                     "Wan 2.2 VAE); 0 with height 0 keeps the source size."),
                io.Int.Input("height", default=480, min=0, max=8192, step=16,
                             tooltip="Height the source is resized to while it is read; 0 with width 0 keeps it."),
                io.Int.Input("segment_length", default=DEFAULT_LENGTH, min=1, max=MAX_FRAMES, tooltip=LENGTH_TOOLTIP),
                io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=MAX_FRAMES, tooltip=OVERLAP_TOOLTIP),
                io.Combo.Input("blend", options=list(BLENDS), default="cut",
                               tooltip="How overlapping frames are joined in the output: 'cut' at the middle of the "
                                       "overlap (as the paper stitches), 'linear' or 'ease' cross-fade."),
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed, the same for every segment (as the per-segment workflow)."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="Sampling steps per segment."),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="uni_pc",
                               tooltip="Sampling algorithm."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="simple",
                               tooltip="Noise schedule."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the latent is re-noised (1 = edit from noise)."),
                io.Int.Input("top_k", default=DEFAULT_TOP_K, min=0, max=64,
                             tooltip="How many earlier segments each segment remembers, the previous one included."),
                io.Boolean.Input("recent_first", default=True,
                                 tooltip="Always remember the immediately previous segment first (keeps seams "
                                         "coherent)."),
                io.Int.Input("fine_ranks", default=3, min=0, max=64,
                             tooltip="How many of the best-ranked memories get the fine kernel (paper: top 3)."),
                io.Combo.Input("fine_kernel", options=list(KERNELS), default="1x4x4",
                               tooltip="Kernel of the best-ranked memories (paper: 1x4x4); coarser = fewer tokens."),
                io.Combo.Input("coarse_kernel", options=list(KERNELS), default="1x8x8",
                               tooltip="Kernel of the remaining memories (paper: 1x8x8)."),
                io.Boolean.Input("reverse_memory", default=True,
                                 tooltip="Flip each memory's frame order so the frame nearest in time to the target "
                                         "gets the position nearest the target (as Memory-V2V does)."),
                *MERGE_INPUTS,
                io.String.Input("filename_prefix", default="memv2v/long_edit",
                                tooltip="Where the edited video goes, under ComfyUI's output folder."),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The edited video, read from the written file."),
                io.String.Output(display_name="path", tooltip="The written video file's full path."),
                io.String.Output(display_name="report", tooltip="What each segment did: edited or resumed from "
                                                                "the bank, and its memories."),
            ],
        )

    @classmethod
    def validate_inputs(cls, segment_length=None, overlap=None, **_):
        if isinstance(segment_length, int) and isinstance(overlap, int) and overlap >= segment_length:
            return (f"overlap={overlap} must be less than segment_length={segment_length}; use e.g. "
                    f"{min(DEFAULT_OVERLAP, segment_length - 1)}")
        return True

    @classmethod
    def execute(cls, model, positive, negative, vae, bank, width: int, height: int, segment_length: int,
                overlap: int, blend: str, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                denoise: float, top_k: int, recent_first: bool, fine_ranks: int, fine_kernel: str,
                coarse_kernel: str, reverse_memory: bool, merge_blocks: str, merge_ratio: float, merge_mode: str,
                filename_prefix: str, video=None, file: str = "", image=None, fps: float = 16.0, clip_vision=None,
                embedder=None) -> io.NodeOutput:
        a = _Inputs(**{k: v for k, v in locals().items() if k != "cls"})
        node_id = str(cls.hidden.unique_id)
        stride = vae.temporal_compression_decode() or 1
        source = _open_source(video, file, image, width, height, fps)
        try:
            plan = plan_segments(source.frames, segment_length, overlap, stride)
        except ValueError as error:
            raise ValueError(f"segment_length / overlap: {error}") from None
        count = len(plan)
        clip_file = clip_vision_file(cls.hidden.dynprompt, node_id) if clip_vision is not None else ""
        seg_embedder, embedder_input = segment_embedder(embedder, clip_vision, clip_file)
        api_prompt = _as_queued(cls.hidden.prompt) if isinstance(cls.hidden.prompt, dict) else None
        found = sampler_node_provenance(api_prompt, node_id, _input_types) if api_prompt else None
        keys = [segment_key(_key_settings(a, source, stride, seg_embedder, api_prompt, node_id), window)
                for window in plan]
        bank.refresh()
        stored = stored_segments((bank.entry(i) for i in bank.retrieval_ids()), keys)
        first = resume_point(stored, count)
        loop = _Loop(cls, a, bank, source, plan, keys, found, api_prompt, seg_embedder, embedder_input, node_id)

        path, subfolder = _output_path(filename_prefix, source)
        lines = []
        with video_io.VideoWriter(path, source.frame_rate, audio_from=source.stream if source.has_audio else None
                                  ) as writer:
            stitcher = StreamStitch(plan, source.frames, blend, writer.write)
            for index, (start, end) in enumerate(plan):
                comfy.model_management.throw_exception_if_processing_interrupted()
                if index < first:
                    entry_id = stored[index].entry_id
                    latent = bank.load_latent(entry_id)
                    line = f"segment {index + 1}/{count} resumed from bank ({entry_id})"
                    loop.progress.update_absolute((index + 1) * steps)
                else:
                    latent, entry_id, line = loop.edit(index)
                _send_text(line, node_id)
                lines.append(line)
                comfy.model_management.throw_exception_if_processing_interrupted()  # stored: stop before decoding
                stitcher.add(_decode(vae, latent, end - start, entry_id, index))  # one decoded segment at a time
            stitcher.finish()
        edited = count - first
        summary = f"segment {count}/{count} edited, {first} resumed from bank ({edited} edited in this run)"
        report = "\n".join([summary, *lines, f"written: {path} ({source.frames} frames)"])
        saved = {"filename": os.path.basename(path), "subfolder": subfolder, "type": "output"}
        ui = {"text": [report], "images": [saved], "animated": (True,)}
        return io.NodeOutput(_video_from_file(str(path)), str(path), report, ui=ui)


def _key_settings(a, source: _Source, stride: int, embedder, api_prompt, node_id: str) -> dict:
    """Everything that decides a segment's edit, besides its window (``memv2v_core.long_edit.segment_key``)."""
    identity = getattr(embedder, "identity", None)
    return {
        "source_id": source.source_id, "frames": source.frames, "size": source.size, "stride": stride,
        "segment_length": a.segment_length, "overlap": a.overlap,
        "sampler": {"seed": a.seed, "steps": a.steps, "cfg": a.cfg, "sampler_name": a.sampler_name,
                    "scheduler": a.scheduler, "denoise": a.denoise},
        "retrieval": {"top_k": a.top_k, "recent_first": a.recent_first,
                      "embedder": getattr(identity, "key", None) or getattr(embedder, "name", type(embedder).__name__)},
        "tokenize": {"fine_ranks": a.fine_ranks, "fine_kernel": a.fine_kernel, "coarse_kernel": a.coarse_kernel,
                     "reverse_memory": a.reverse_memory},
        "merge": {"blocks": a.merge_blocks, "ratio": a.merge_ratio, "mode": a.merge_mode},
        "conditioning": value_digest([a.positive, a.negative]),
        "model": _model_identity(a.model),
        "sigmas": value_digest(a.model.get_model_object("model_sampling").sigmas),  # e.g. the sampling shift
        # the graph upstream of the model, prompts, VAE and encoder: loader files, LoRAs and their strengths
        "graph": graph_digest(api_prompt, node_id, ("model", "positive", "negative", "vae", "clip_vision",
                                                    "embedder")) if api_prompt else None,
    }


def _output_path(prefix: str, source: _Source) -> tuple[str, str]:
    """(full path of a new .mp4 under the output folder, its subfolder), numbered like SaveVideo's files."""
    height, width = source.size or ((source.info.height, source.info.width) if source.info else
                                    tuple(source.images.shape[1:3]))
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory(),
                                                                          width, height)
    return os.path.join(folder, f"{name}_{counter:05}_.mp4"), subfolder


class _Loop:
    """The per-segment work of one run, with one progress bar over all segments' sampling steps."""

    def __init__(self, node_cls, a: _Inputs, bank, source: _Source, plan, keys, found, api_prompt, embedder,
                 embedder_input: str, node_id: str):
        self.node_cls, self.a, self.bank, self.source, self.plan, self.keys = node_cls, a, bank, source, plan, keys
        self.found, self.api_prompt, self.node_id = found, api_prompt, node_id
        self.embedder, self.embedder_input = embedder, embedder_input
        self.progress = comfy.utils.ProgressBar(len(plan) * a.steps)
        self.previewer = latent_preview.get_previewer(a.model.load_device, a.model.model.latent_format)
        self.checked = False

    def edit(self, index: int) -> tuple[torch.Tensor, str, str]:
        """Read, retrieve, encode, tokenize, sample and store one segment: (latent, entry id, report line)."""
        a, (start, end), count = self.a, self.plan[index], len(self.plan)
        frames = self.source.read(start, end)
        result, descriptor, _ = retrieve_segment(self.bank, frames, index, self.source.source_id, a.top_k,
                                                 a.recent_first, self.embedder, self.embedder_input)
        source_latent = encode_source(a.vae, frames)
        del frames
        if not self.checked:
            check_model_takes_source(a.model, int(source_latent.shape[1]))
            self.checked = True
        empty = {"samples": torch.zeros_like(source_latent)}
        context, _ = make_context("edit", a.fine_ranks, "1x2x2", a.fine_kernel, a.coarse_kernel, a.reverse_memory,
                                  STORY_GAP, 0, result.selection, empty, index, self.source.source_id)
        positive, negative = source_conditioning(a.positive, a.negative, source_latent)
        patched, _ = patch_model(a.model, context, a.merge_blocks, a.merge_ratio, a.merge_mode)
        samples = self._sample(patched, positive, negative, empty["samples"], index * a.steps)
        # Only a finished segment reaches the bank: an interruption raises inside the sampler above.
        entry_id = self._store(samples, descriptor, result.selection, index)
        memories = ", ".join(item.entry_id[:10] for item in result.selection.items) or "none"
        return samples, entry_id, (f"segment {index + 1}/{count} edited: frames {start}..{end - 1}, memories "
                                   f"[{memories}] -> {entry_id}")

    def _sample(self, model, positive, negative, latent: torch.Tensor, offset: int) -> torch.Tensor:
        """As ComfyUI's KSampler samples (nodes.common_ksampler), with steps counted on the overall bar."""
        a = self.a

        def callback(step, x0, x, total_steps):
            preview = self.previewer.decode_latent_to_preview_image("JPEG", x0) if self.previewer else None
            self.progress.update_absolute(offset + min(step + 1, a.steps), None, preview)

        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, a.seed, None)
        return comfy.sample.sample(model, noise, a.steps, a.cfg, a.sampler_name, a.scheduler, positive, negative,
                                   latent, denoise=a.denoise, callback=callback,
                                   disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=a.seed)

    def _store(self, samples: torch.Tensor, descriptor, selection, index: int) -> str:
        """Add the edited segment with what really made it: seed and settings, prompt text, models, its window."""
        a, window, count, found = self.a, self.plan[index], len(self.plan), self.found
        stage = {"node": self.node_id, "class_type": "MemV2V_LongVideoEdit", "seed": a.seed, "steps": a.steps,
                 "cfg": a.cfg, "sampler_name": a.sampler_name, "scheduler": a.scheduler, "denoise": a.denoise}
        provenance = {"source": "graph" if found is not None else "node", "node": self.node_id,
                      "models": found.models if found is not None else [],
                      "long_edit": {"segment": index, "count": count, "window": list(window),
                                    "source_frames": self.source.frames,
                                    "size": list(self.source.size) if self.source.size else None}}
        if found is not None and found.notes:
            provenance["notes"] = found.notes
        extra = {**descriptor.bank_extra(),
                 **segment_extra(self.keys[index], index, count, window, self.source.frames)}
        return self.bank.add(samples, latent_format=_latent_format({"samples": samples}, a.model),
                             descriptor=descriptor.vector, segment_index=index, source_id=self.source.source_id,
                             prompt=(found.prompt if found is not None else None) or "",
                             parents=[item.entry_id for item in selection.items], seed=a.seed,
                             sampler={"stages": [stage]}, model=_model_identity(a.model), extra=extra,
                             provenance=provenance, run=self._run_record())

    def _run_record(self) -> dict | None:
        """The queued prompt (and UI workflow), as Bank Add keeps it, so the browser can open the graph."""
        if self.api_prompt is None:
            return None
        pnginfo = self.node_cls.hidden.extra_pnginfo
        workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
        full = {"prompt": self.api_prompt, "workflow": workflow, "node": self.node_id,
                "retrieval_ids": self.bank.retrieval_ids()}
        for run in (full, {**full, "workflow": None}):  # keep what fits the entry file's header
            try:
                run_text(run)
                return run
            except ValueError:
                continue
        return None


def _video_from_file(path: str):
    from comfy_api.input_impl import VideoFromFile

    return VideoFromFile(path)


NODES = [LongVideoEdit]
