"""Edit a whole long video in one queue run: every segment is read, retrieved, tokenized, sampled, stored in the bank
and written to the output video in turn, so memory holds one segment, never the video.

Glue only: each step calls the same functions the per-segment nodes use (Segment Retrieve's retrieval, Dynamic
Tokenize's context, Edit Conditioning's source encoding, Apply Memory's patch, KSampler's sampling, Bank Add's
records); ``memv2v_core.long_edit`` decides which segments a re-run can take from the bank.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from types import SimpleNamespace

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import InputImpl, io

from ..memv2v_core.video_io import VideoWriter, VideoWriteError
from ..memv2v_core.bank.inputs import run_text
from ..memv2v_core.bank.provenance import sampler_node_provenance
from ..memv2v_core.long_edit import (graph_digest, resume_point, segment_extra, segment_key,
                                     stored_segments, value_digest)
from ..memv2v_core.retrieval.descriptors import DEFAULT_TOP_K
from ..memv2v_core.segments import (BLENDS, DEFAULT_LENGTH, DEFAULT_OVERLAP, SOURCE_FRAMES_KEY, check_source_frames,
                                    plan_segments, stitch_stream)
from .bank_nodes import as_queued, input_types, latent_format_of, model_identity
from .edit_nodes import check_model_takes_source, encode_source, source_conditioning
from .embedder_nodes import clip_vision_file, retrieve_segment, segment_embedder
from .memory_nodes import KERNELS, MERGE_INPUTS, make_context, patch_model
from .segment_nodes import (FILE_FORMATS, LENGTH_TOOLTIP, MAX_FRAMES, OVERLAP_TOOLTIP, decode_segment, output_path,
                            own_handle, segment_length_problem, size_of, source_of)
from .socket_types import Bank, Embedder

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/segments"
STORY_GAP = 5.0  # Dynamic Tokenize's default; unused in mode edit


_Inputs = SimpleNamespace  # the node's inputs by name, for the loop


def _open_source(video, file: str, image, width: int, height: int):
    """Exactly one of video / file / image, as Split Segments opens it (a file: header only, read a segment at a
    time, center-cropped to width x height)."""
    file = (file or "").strip()
    given = [name for name, value in (("video", video), ("file", file or None), ("image", image)) if value is not None]
    if len(given) != 1:
        which = "none is given" if not given else f"{' and '.join(given)} are all given"
        raise ValueError(f"video / file / image: {which}; give exactly one source video (Load Video to 'video', a "
                         "file name in ComfyUI's input folder to 'file', or an IMAGE batch to 'image').")
    name = given[0]
    if name == "file":
        path = folder_paths.get_annotated_filepath(file)
        inputs = os.path.abspath(folder_paths.get_input_directory())
        if os.path.commonpath((inputs, os.path.abspath(path))) != inputs:  # '../x' or '/x': not the input folder's
            raise ValueError(f"file: '{file}' lies outside ComfyUI's input folder ({inputs}); give a name inside it "
                             "(e.g. 'clip.mp4' or 'videos/clip.mp4'), or connect Load Video to 'video'.")
        if not path or not os.path.isfile(path):
            raise ValueError(f"file: '{file}' is not a file in ComfyUI's input folder "
                             f"({folder_paths.get_input_directory()}); put the video there or connect Load Video to "
                             "'video'.")
        video = InputImpl.VideoFromFile(path)
    size = size_of(width, height, "image" if name == "image" else "video")
    return source_of(image, video, "image", name, size)


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
                        "settings are taken from there and the edit continues at the first missing one. A changed "
                        "source file (trimmed or re-encoded) is a new source: its segments start over.",
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
                             tooltip="Width each segment is decoded at (a multiple of 16 for the Wan 2.2 VAE), the "
                                     "middle cut out when the aspect differs, as Split Segments does. 0 with height "
                                     "0: the video's own size (required for an IMAGE source: resize it before)."),
                io.Int.Input("height", default=480, min=0, max=8192, step=16,
                             tooltip="Height each segment is decoded at (see width)."),
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
                io.Combo.Input("file_format", options=list(FILE_FORMATS), default="mp4", optional=True,
                               tooltip="mp4: H.264 (libx264, crf 18), plays everywhere, lossy. mkv-lossless: FFV1, "
                                       "keeps every 8-bit pixel exactly (large files, no browser preview)."),
            ],
            outputs=[
                io.Video.Output(display_name="video", tooltip="The edited video, read from the written file."),
                io.String.Output(display_name="path", tooltip="The written video file's full path."),
                io.String.Output(display_name="report", tooltip="What each segment did: edited or resumed from "
                                                                "the bank, and its memories."),
            ],
        )

    @classmethod
    def validate_inputs(cls, segment_length=None):
        return segment_length_problem(segment_length)

    @classmethod
    def execute(cls, model, positive, negative, vae, bank, width: int, height: int, segment_length: int,
                overlap: int, blend: str, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                denoise: float, top_k: int, recent_first: bool, fine_ranks: int, fine_kernel: str,
                coarse_kernel: str, reverse_memory: bool, merge_blocks: str, merge_ratio: float, merge_mode: str,
                filename_prefix: str, video=None, file: str = "", image=None, fps: float = 16.0, clip_vision=None,
                embedder=None, file_format: str = "mp4") -> io.NodeOutput:
        a = _Inputs(**{k: v for k, v in locals().items() if k != "cls"})
        node_id = str(cls.hidden.unique_id)
        stride = vae.temporal_compression_decode() or 1
        if overlap >= segment_length:
            raise ValueError(f"overlap={overlap} must be less than segment_length={segment_length}; use e.g. "
                             f"{min(DEFAULT_OVERLAP, segment_length - 1)}")
        source = _open_source(video, file, image, width, height)
        try:
            plan = plan_segments(source.count, segment_length, overlap, stride)
        except ValueError as error:
            raise ValueError(f"segment_length / overlap: {error}") from None
        rate = source.frame_rate or Fraction(fps).limit_denominator(1001 * 1000)
        source_id = source.fingerprint()  # as Split Segments gives it: the per-segment nodes see the same video
        count = len(plan)
        clip_file = clip_vision_file(cls.hidden.dynprompt, node_id) if clip_vision is not None else ""
        seg_embedder, embedder_input = segment_embedder(embedder, clip_vision, clip_file)
        api_prompt = as_queued(cls.hidden.prompt) if isinstance(cls.hidden.prompt, dict) else None
        found = sampler_node_provenance(api_prompt, node_id, input_types) if api_prompt else None
        settings = _key_settings(a, source, source_id, stride, seg_embedder, api_prompt, node_id)
        keys = [segment_key(settings, window) for window in plan]
        bank.refresh()
        made = latent_format_of({"samples": torch.empty(0)}, model)
        if bank.latent_format is not None and bank.latent_format != made:
            raise ValueError(f"bank: '{bank.name}' holds {bank.latent_format} latents but this model makes {made}; "
                             "a bank serves one VAE family: give Bank Load another name for this model.")
        visible = [bank.entry(i) for i in bank.retrieval_ids()]
        check_source_frames([e for e in visible if e.source_id == source_id], source.count, source_id)
        stored = stored_segments(visible, keys)
        first = resume_point(stored, count)
        loop = _Loop(cls, a, bank, source, source_id, plan, keys, found, api_prompt, seg_embedder, embedder_input,
                     node_id)
        lines: list[str] = []

        def segment(index: int):
            def produce() -> torch.Tensor:  # called by the stitch in order, one segment at a time
                comfy.model_management.throw_exception_if_processing_interrupted()
                if index < first:
                    entry_id = stored[index].entry_id
                    line = f"segment {index + 1}/{count} resumed from bank ({entry_id})"
                    loop.progress.update_absolute((index + 1) * steps)
                else:
                    entry_id, line = loop.edit(index)
                loop.used[index] = entry_id  # what later segments remember: this run's entries, never another's
                _send_text(line, node_id)
                lines.append(line)
                comfy.model_management.throw_exception_if_processing_interrupted()  # stored: stop before decoding
                start, end = plan[index]
                # Always decode what the bank holds, edited now or earlier: the same tensor, so the same frames.
                return decode_segment(vae, bank.load_latent(entry_id), end - start, entry_id, index)
            return produce

        path, subfolder = output_path(filename_prefix, file_format)
        try:
            with VideoWriter(path, rate, lossless=file_format != "mp4",
                             audio_from=own_handle(source.audio_file)) as writer:
                stitch_stream([segment(i) for i in range(count)], plan, source.count, writer.write, blend)
        except VideoWriteError as error:  # names the path and the fix; the bank keeps every stored segment
            raise RuntimeError(f"filename_prefix: {error}") from None
        summary = f"segment {count}/{count} edited, {first} resumed from bank ({count - first} edited in this run)"
        report = "\n".join([summary, *lines, f"written: {path} ({source.count} frames at {float(rate):.3f} fps"
                             + (", audio from the source)" if source.audio_file is not None else ")")])
        saved = {"filename": os.path.basename(str(path)), "subfolder": subfolder, "type": "output"}
        ui = {"text": [report], "images": [saved], "animated": (True,)}
        return io.NodeOutput(InputImpl.VideoFromFile(str(path)), str(path), report, ui=ui)


def _key_settings(a, source, source_id: str, stride: int, embedder, api_prompt, node_id: str) -> dict:
    """Everything that decides a segment's edit, besides its window (``memv2v_core.long_edit.segment_key``)."""
    identity = getattr(embedder, "identity", None)
    return {
        "source_id": source_id, "shape": list(source.shape), "stride": stride,
        "segment_length": a.segment_length, "overlap": a.overlap,
        "sampler": {"seed": a.seed, "steps": a.steps, "cfg": a.cfg, "sampler_name": a.sampler_name,
                    "scheduler": a.scheduler, "denoise": a.denoise},
        "retrieval": {"top_k": a.top_k, "recent_first": a.recent_first,
                      "embedder": getattr(identity, "key", None) or getattr(embedder, "name", type(embedder).__name__)},
        "tokenize": {"fine_ranks": a.fine_ranks, "fine_kernel": a.fine_kernel, "coarse_kernel": a.coarse_kernel,
                     "reverse_memory": a.reverse_memory},
        "merge": {"blocks": a.merge_blocks, "ratio": a.merge_ratio, "mode": a.merge_mode},
        "conditioning": value_digest([a.positive, a.negative]),
        "model": model_identity(a.model),
        "sigmas": value_digest(a.model.get_model_object("model_sampling").sigmas),  # e.g. the sampling shift
        # the graph upstream of the model, prompts, VAE and encoder: loader files, LoRAs and their strengths
        "graph": graph_digest(api_prompt, node_id, ("model", "positive", "negative", "vae", "clip_vision",
                                                    "embedder")) if api_prompt else None,
    }


class _Loop:
    """The per-segment work of one run, with one progress bar over all segments' sampling steps."""

    def __init__(self, node_cls, a: _Inputs, bank, source, source_id: str, plan, keys, found, api_prompt, embedder,
                 embedder_input: str, node_id: str):
        self.node_cls, self.a, self.bank, self.source, self.plan, self.keys = node_cls, a, bank, source, plan, keys
        self.source_id = source_id
        self.found, self.api_prompt, self.node_id = found, api_prompt, node_id
        self.embedder, self.embedder_input = embedder, embedder_input
        self.progress = comfy.utils.ProgressBar(len(plan) * a.steps)
        self.previewer = latent_preview.get_previewer(a.model.load_device, a.model.model.latent_format)
        self.checked = False
        self.used: dict[int, str] = {}  # segment index -> the entry this run made or resumed for it

    def edit(self, index: int) -> tuple[str, str]:
        """Read, retrieve, encode, tokenize, sample and store one segment: (entry id, report line)."""
        a, (start, end), count = self.a, self.plan[index], len(self.plan)
        frames = self.source.read(start, end)
        result, descriptor, _ = retrieve_segment(self.bank, frames, index, self.source_id, a.top_k,
                                                 a.recent_first, self.embedder, self.embedder_input,
                                                 candidates=self.used)
        source_latent = encode_source(a.vae, frames)
        del frames
        if not self.checked:
            check_model_takes_source(a.model, int(source_latent.shape[1]))
            self.checked = True
        empty = {"samples": torch.zeros_like(source_latent)}
        context, _ = make_context("edit", a.fine_ranks, "1x2x2", a.fine_kernel, a.coarse_kernel, a.reverse_memory,
                                  STORY_GAP, 0, result.selection, empty, index, self.source_id)
        positive, negative = source_conditioning(a.positive, a.negative, source_latent)
        patched, _ = patch_model(a.model, context, a.merge_blocks, a.merge_ratio, a.merge_mode)
        samples = self._sample(patched, positive, negative, empty["samples"], index * a.steps)
        # Only a finished segment reaches the bank: an interruption raises inside the sampler above.
        entry_id = self._store(samples, descriptor, result.selection, index)
        memories = ", ".join(item.entry_id[:10] for item in result.selection.items) or "none"
        return entry_id, (f"segment {index + 1}/{count} edited: frames {start}..{end - 1}, memories [{memories}] "
                          f"-> {entry_id}")

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
                                    "source_frames": self.source.count, "size": list(self.source.shape[1:3])}}
        if found is not None and found.notes:
            provenance["notes"] = found.notes
        extra = {**descriptor.bank_extra(), SOURCE_FRAMES_KEY: self.source.count,
                 **segment_extra(self.keys[index], index, count, window, self.source.count)}
        return self.bank.add(samples, latent_format=latent_format_of({"samples": samples}, a.model),
                             descriptor=descriptor.vector, segment_index=index, source_id=self.source_id,
                             prompt=(found.prompt if found is not None else None) or "",
                             parents=[item.entry_id for item in selection.items], seed=a.seed,
                             sampler={"stages": [stage]}, model=model_identity(a.model), extra=extra,
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


NODES = [LongVideoEdit]
