"""Memory nodes: dynamic tokenization of the retrieved memories, and the Wan DiT that attends to them while sampling."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.samplers
import nodes as comfy_nodes
from comfy_api.latest import io

from ..memv2v_core.memory.camera_rows import USER_CAMERAS
from ..memv2v_core.memory.context import (MemoryContext, SegmentFacts, TokenBudget, build_context, context_layout,
                                          previous_segment_entry, token_budget)
from ..memv2v_core.memory.positions import DEFAULT_STORY_GAP, MODES
from ..memv2v_core.memory.stream import PAPER_MERGE_BLOCKS
from ..memv2v_core.memory.tokenize import KernelPlan
from .patches.camera_patch import apply_camera, check_camera_inputs
from .patches.memory_patch import MERGE_CHOICES, MemoryCall, apply_memory, learned_weights, merge_settings, wan_diffusion_model
from .socket_types import Camera, Context, Modules, Selection

log = logging.getLogger(__name__)

KERNELS = ("1x2x2", "1x4x4", "1x8x8", "1x16x16")
MODE_CHOICES = ("auto", *MODES)


def _kernel(name: str, text: str) -> tuple[int, int, int]:
    try:
        kernel = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        kernel = ()
    if len(kernel) != 3:
        raise ValueError(f"{name} ({text!r}) must be a kernel like '1x4x4' (frames x rows x columns).")
    return kernel  # type: ignore[return-value]


def _video_latent(name: str, latent: dict | None):
    samples = None if latent is None else latent.get("samples")
    if samples is None or samples.ndim != 5 or samples.shape[0] != 1:
        shape = None if samples is None else tuple(samples.shape)
        raise ValueError(f"{name} has shape {shape}; connect one video latent [1, C, T, H, W] (batch 1), "
                         "e.g. from VAE Encode of the user's video.")
    return samples


def _memories(selection) -> tuple[list[tuple], str | None]:
    """(entry_id, latent, score, camera) per selected entry, read from the bank now (only these entries)."""
    memories, formats = [], set()
    for item in selection.items:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if item.entry_id not in selection.bank:
            raise ValueError(f"selection: entry {item.entry_id} is no longer in bank '{selection.bank.name}' (hidden, "
                             "removed or damaged since retrieval); queue again so retrieval runs on the bank as it is now.")
        entry = selection.bank.entry(item.entry_id)
        latent = selection.bank.load_latent(item.entry_id)
        latent = latent.unsqueeze(0) if latent.ndim == 4 else latent
        camera = selection.bank.load_tensor(item.entry_id, "camera") if entry.has("camera") else None
        memories.append((item.entry_id, latent, item.score, camera))
        formats.add(entry.latent_format)
    if len(formats) > 1:
        raise ValueError(f"selection mixes latent formats {sorted(formats)}; a context needs memories of one VAE "
                         "family (select from one bank).")
    return memories, next(iter(formats), None)


def _previous_segment(selection, segment_index: int, source_id: str) -> tuple[str | None, str | None]:
    """Mode edit: (entry id of segment i-1 of this source among the selected, or None; a note when it is missing)."""
    index = None if segment_index < 0 else segment_index
    facts = []
    for item in selection.items if selection is not None else ():
        entry = selection.bank.entry(item.entry_id)
        facts.append(SegmentFacts(item.entry_id, entry.segment_index, entry.source_id,
                                  bool((item.details or {}).get("previous"))))
    found = previous_segment_entry(facts, index, source_id or None)
    if found is not None or index == 0:
        return found, None
    which = "segment i-1" if index is None else f"segment {index - 1}"
    how = ("" if index is not None else " (retrieval marked none; connect segment_index and source_id from Split "
           "Segments to find it at any rank)")
    return None, (f"previous segment missing: {which} of this video is not among the selected memories{how}; every "
                  "memory uses the memory range 2T..3T-1")


def describe_budget(context: MemoryContext, budget: TokenBudget) -> str:
    """One line per stream (role, entry, kernel, frames, tokens) and the total against the naive all-1x2x2 context."""
    lines = [f"mode {context.mode}, target {context.target_frames} latent frames: {budget.target:,} tokens"]
    for stream, tokens in zip(context.streams, budget.per_stream):
        label = stream.role if stream.entry_id is None else f"{stream.role} #{stream.rank + 1} {stream.entry_id[:10]}"
        score = "" if stream.score is None else f", score {stream.score:.3f}"
        kernel = "x".join(map(str, stream.kernel))
        lines.append(f"  {label}: {kernel}, {stream.frames} frames, {tokens:,} tokens{score}")
    lines.append(f"total {budget.total:,} tokens vs {budget.naive_total:,} with every stream at 1x2x2 "
                 f"({budget.saving:.1%} fewer)")
    return "\n".join(lines)


class DynamicTokenize(io.ComfyNode):
    """Memory-V2V dynamic tokenization: fine tokens for what matters most, coarse tokens for the rest."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        kernel_tip = " Coarser kernels cost fewer tokens (1x4x4 = 4x fewer than 1x2x2)."
        return io.Schema(
            node_id="MemV2V_DynamicTokenize",
            display_name="Memory-V2V Dynamic Tokenize",
            category="MemoryV2V/tokenization",
            description=("Builds the memory context for sampling: the user video at 1x2x2, the best-ranked memories "
                         "at 1x4x4 and the rest at 1x8x8, each with its own temporal position range (novel view "
                         "synthesis: user T..2T-1, memories 2T..3T-1; editing: previous segment T..2T-1, memory "
                         "frames reversed; story: memories before the shot). Only the selected bank entries are "
                         "read. Shows the token budget against tokenizing everything at 1x2x2."),
            inputs=[
                Selection.Input("selection", optional=True,
                                tooltip="Retrieved memories, best first (from FOV or Segment Retrieve). Empty or "
                                        "missing: the context holds only the user video."),
                io.Latent.Input("latent", optional=True,
                                tooltip="The user's input video latent (VAE Encode). Required for mode nvs; in the "
                                        "other modes it only sets the target's frame count and size."),
                io.Combo.Input("mode", options=list(MODE_CHOICES), default="auto",
                               tooltip="How memories relate to the target: nvs (novel view synthesis), edit "
                                       "(long-video editing, first memory = previous segment), story (keyframes "
                                       "before the shot). auto: the selection's mode, else nvs."),
                io.Int.Input("fine_ranks", default=3, min=0, max=64,
                             tooltip="How many of the best-ranked memories get the fine kernel (paper: top 3)."),
                io.Combo.Input("user_kernel", options=list(KERNELS), default="1x2x2",
                               tooltip="Kernel of the user video (paper: the model's own 1x2x2)." + kernel_tip),
                io.Combo.Input("fine_kernel", options=list(KERNELS), default="1x4x4",
                               tooltip="Kernel of the best-ranked memories (paper: 1x4x4)." + kernel_tip),
                io.Combo.Input("coarse_kernel", options=list(KERNELS), default="1x8x8",
                               tooltip="Kernel of the remaining memories (paper: 1x8x8)." + kernel_tip),
                io.Boolean.Input("reverse_memory", default=True,
                                 tooltip="Mode edit: flip each memory's frame order so the frame nearest in time to "
                                         "the target gets the position nearest the target (as Memory-V2V does)."),
                io.Float.Input("story_gap", default=DEFAULT_STORY_GAP, min=0.1, max=100.0, step=0.5,
                               tooltip="Mode story: temporal distance S between memory keyframes "
                                       "(positions -M*S .. -S; StoryMem-style, default 5)."),
                io.Int.Input("target_frames", default=0, min=0, max=4096,
                             tooltip="Latent frames of the video to generate; 0 = the frame count of 'latent'."),
                io.Int.Input("segment_index", default=-1, min=-1, max=100000, optional=True,
                             tooltip="Mode edit: index i of the segment being edited (Split Segments' index). Only "
                                     "the memory that is segment i-1 of this source takes the previous segment's "
                                     "positions, wherever it is ranked. -1: take the one retrieval marked."),
                io.String.Input("source_id", default="", optional=True,
                                tooltip="Mode edit: Split Segments' source_id, so segment i-1 of another video never "
                                        "counts as the previous segment. Empty: segment index only."),
            ],
            outputs=[
                Context.Output(display_name="context",
                               tooltip="The memory context for Apply Memory or the Merged DiT Sampler."),
                io.String.Output(display_name="budget",
                                 tooltip="Tokens per stream and in total, against every stream at 1x2x2."),
            ],
        )

    @classmethod
    def execute(cls, mode: str, fine_ranks: int, user_kernel: str, fine_kernel: str, coarse_kernel: str,
                reverse_memory: bool, story_gap: float, target_frames: int, selection=None,
                latent: dict | None = None, segment_index: int = -1, source_id: str = "") -> io.NodeOutput:
        context, text = make_context(mode, fine_ranks, user_kernel, fine_kernel, coarse_kernel, reverse_memory,
                                     story_gap, target_frames, selection, latent, segment_index, source_id)
        return io.NodeOutput(context, text, ui={"text": [text]})


def make_context(mode: str, fine_ranks: int, user_kernel: str, fine_kernel: str, coarse_kernel: str,
                 reverse_memory: bool, story_gap: float, target_frames: int, selection=None, latent: dict | None = None,
                 segment_index: int = -1, source_id: str = "") -> tuple[MemoryContext, str]:
    """Dynamic Tokenize's work (also the long-edit loop's): the memory context and its token-budget text."""
    if mode == "auto":
        mode = getattr(selection, "mode", None) or "nvs"
    plan = KernelPlan(_kernel("user_kernel", user_kernel), _kernel("fine_kernel", fine_kernel),
                      _kernel("coarse_kernel", coarse_kernel), fine_ranks)
    if mode == "nvs" and latent is None:
        raise ValueError("latent is not connected; mode nvs needs the user's input video latent (VAE Encode).")
    samples = None if latent is None else _video_latent("latent", latent)
    memories, latent_format = _memories(selection) if selection is not None else ([], None)
    frames = target_frames or (None if samples is None else int(samples.shape[2]))
    if frames is None:
        raise ValueError(f"target_frames is 0 and 'latent' is not connected; in mode {mode} set target_frames to "
                         "the latent frame count of the video to generate, or connect its latent.")
    previous, missing = _previous_segment(selection, segment_index, source_id) if mode == "edit" else (None, None)
    context = build_context(samples if mode == "nvs" else None, memories, mode, plan, frames,
                            reverse_memory=reverse_memory, story_gap=story_gap, latent_format=latent_format,
                            previous_entry=previous)
    target_hw = tuple(samples.shape[-2:]) if samples is not None else None
    if target_hw is None and not context.streams:
        raise ValueError("the context is empty and 'latent' is not connected; connect the target latent so the "
                         "budget can be sized, or select some memories.")
    text = describe_budget(context, token_budget(context, target_hw))
    if missing is not None:
        log.warning("Memory-V2V Dynamic Tokenize: %s", missing)
        text += "\n" + missing
    return context, text


USER_CAMERA_TEXT = {"target": "the target's camera per frame (ReCamMaster)", "identity": "the identity pose",
                    "own trajectory": "its own trajectory"}


def _apply_summary(context: MemoryContext, merge, modules=None, camera=None, user_camera: str = "target") -> str:
    tokens = context_layout(context).num_tokens
    if context.memory_count == 0:  # nothing to merge: a plan would only mislead (e.g. the no-memory workflow)
        merging = "no memory, so no merging"
    else:
        merging = ("merging off" if merge is None else
                   f"{merge.mode} {merge.ratio:.0%} of memory frames ({merge.factor}x{merge.factor}) at the input of "
                   f"blocks {','.join(map(str, merge.blocks)) or 'none'}")
    text = f"memory: {len(context.streams)} streams, {tokens:,} tokens; {merging}"
    if camera is not None and getattr(modules, "camera", None):
        text += (f"\ncamera: {camera.name or 'target'} on {len(modules.camera)} block(s); user video: "
                 f"{USER_CAMERA_TEXT.get(user_camera, user_camera)}; each memory its own trajectory")
    return text


def _describe_call(call: MemoryCall) -> str:
    if not call.state.events:
        return f"memory call {call.cond_or_uncond}: {call.state.num_tokens} tokens, no merge"
    parts = []
    candidates = [frame for frame, ok in enumerate(call.state.layout.mergeable) if ok]
    for event in call.state.events:
        scores = call.responsiveness.get(event.block_index)
        scores = None if scores is None or not candidates else scores[:, candidates]
        spread = "" if scores is None else f", responsiveness {float(scores.min()):.3g}..{float(scores.max()):.3g}"
        parts.append(f"block {event.block_index}: {len(event.frames)} frames, tokens {event.tokens_before}->"
                     f"{event.tokens_after}{spread}")
    return f"memory call {call.cond_or_uncond}: " + "; ".join(parts)


def _log_call(call: MemoryCall) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s (frames merged: %s)", _describe_call(call),
                  [event.frames for event in call.state.events])


def patch_model(model, context, merge_blocks: str, merge_ratio: float, merge_mode: str, modules=None, observer=None,
                camera=None, user_camera: str = "target", user_trajectory=None):
    """Validate and apply ``context`` (and, with camera modules, the target ``camera`` and the user video's camera
    ``user_camera`` / ``user_trajectory``) to ``model``.

    Shared by Apply Memory and the Merged DiT Sampler; every check runs before the model is patched.
    """
    dm = wan_diffusion_model(model)
    learned = learned_weights(modules, int(dm.dim))
    if not isinstance(context, MemoryContext):
        raise ValueError(f"context is a {type(context).__name__}; connect Memory-V2V Dynamic Tokenize's context.")
    with_camera = check_camera_inputs(modules, camera, context, user_camera, user_trajectory)
    merge = merge_settings(len(dm.blocks), context.memory_count, merge_blocks, merge_ratio, merge_mode,
                           None if learned is None else learned.merge_operator)
    patched = apply_memory(model, context, merge, learned, observer)
    if with_camera:
        patched = apply_camera(patched, modules, camera, context, user_camera, user_trajectory)
    return patched, merge


MERGE_INPUTS = [
    io.String.Input("merge_blocks", default="auto",
                    tooltip="0-based blocks at whose input memory frames are merged: 'auto' = blocks "
                            f"{PAPER_MERGE_BLOCKS[0]} and {PAPER_MERGE_BLOCKS[1]} of 30 scaled to the model's depth, "
                            "or a list such as '10,20'."),
    io.Float.Input("merge_ratio", default=0.5, min=0.0, max=1.0, step=0.05,
                   tooltip="Share of the memory frames merged at each merge block, least responsive first "
                           "(paper: 0.5). The user video is never merged."),
    io.Combo.Input("merge_mode", options=list(MERGE_CHOICES), default="merge",
                   tooltip="merge: pool each chosen frame's tokens 2x2 (or with the loaded merge operator); "
                           "discard: drop them (for comparison); off: keep every memory token."),
]
MODULES_INPUT = Modules.Input("modules", optional=True,
                              tooltip="Trained tokenizers / merge operator / ReCamMaster camera modules (Memory-V2V "
                                      "Load Modules). Missing kernels are derived training-free from the model's own "
                                      "patch embedding. Camera modules turn camera conditioning on (then 'camera' "
                                      "is required).")
CAMERA_INPUT = Camera.Input("camera", optional=True,
                            tooltip="The target camera trajectory (Memory-V2V Camera Preset / Camera Load): one pose "
                                    "per video frame (longer is cut) or one per latent frame (ReCamMaster's "
                                    "camera_extrinsics.json: 21 for 81 frames). Required when 'modules' hold camera "
                                    "encoders: every video then gets its own camera embedding (target, user video as "
                                    "'user_camera' says, each memory its stored trajectory).")
USER_CAMERA_INPUTS = [
    io.Combo.Input("user_camera", options=list(USER_CAMERAS), default="target", optional=True,  # older prompts lack it
                   tooltip="The user (source) video's camera embedding when camera modules are loaded. target: "
                           "frame j gets the target's camera j, as ReCamMaster was trained (the user video must have "
                           "the target's frame count). identity: every frame at the target's first camera. own "
                           "trajectory: the user video's known poses from 'user_trajectory', relative to the "
                           "target's first camera like a memory. Memories always keep their stored trajectories."),
    Camera.Input("user_trajectory", optional=True,
                 tooltip="Only with user_camera 'own trajectory': the user video's own camera trajectory (e.g. "
                         "Memory-V2V Camera Load), in the same world as the target (both starting at the user "
                         "video's first camera)."),
]


class ApplyMemory(io.ComfyNode):
    """Patch a Wan model so every block attends to the memory context; works with any sampler node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_ApplyMemory",
            display_name="Memory-V2V Apply Memory",
            category="MemoryV2V/sampling",
            description=("Adds the memory context to a native Wan model: memory tokens join the video tokens in "
                         "every block's attention (with their own RoPE positions) and leave before the output, and "
                         "at the merge blocks the least responsive memory frames are merged. Use the returned model "
                         "with KSampler, SamplerCustomAdvanced, LoRAs or context windows. Checks the context against "
                         "the model before sampling."),
            inputs=[
                io.Model.Input("model", tooltip="A native Wan 2.1 / 2.2 model (e.g. from Load Diffusion Model)."),
                Context.Input("context", tooltip="The memory context from Memory-V2V Dynamic Tokenize."),
                *MERGE_INPUTS,
                MODULES_INPUT,
                CAMERA_INPUT,
                *USER_CAMERA_INPUTS,
            ],
            outputs=[io.Model.Output(tooltip="The model with memory; connect it to any sampler.")],
        )

    @classmethod
    def execute(cls, model, context, merge_blocks: str, merge_ratio: float, merge_mode: str,
                modules=None, camera=None, user_camera: str = "target", user_trajectory=None) -> io.NodeOutput:
        patched, merge = patch_model(model, context, merge_blocks, merge_ratio, merge_mode, modules, _log_call,
                                     camera, user_camera, user_trajectory)
        summary = _apply_summary(context, merge, modules, camera, user_camera)
        return io.NodeOutput(patched, ui={"text": [summary]})


class MergedDiTSampler(io.ComfyNode):
    """Apply the memory context and sample with ComfyUI's own KSampler in one node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_MergedDiTSampler",
            display_name="Memory-V2V Merged DiT Sampler",
            category="MemoryV2V/sampling",
            description=("Memory-V2V sampling in one node: applies the memory context to the Wan model (merging the "
                         "least responsive memory frames at blocks 10 and 20 of 30) and runs ComfyUI's KSampler. "
                         "Shows which frames were merged."),
            inputs=[
                io.Model.Input("model", tooltip="A native Wan 2.1 / 2.2 model."),
                io.Conditioning.Input("positive", tooltip="The prompt's conditioning."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning (classifier-free guidance)."),
                io.Latent.Input("latent_image", tooltip="The latent to denoise (e.g. an empty video latent)."),
                Context.Input("context", tooltip="The memory context from Memory-V2V Dynamic Tokenize."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Sampling steps."),
                io.Float.Input("cfg", default=6.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, tooltip="Sampling algorithm."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, tooltip="Noise schedule."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the latent is re-noised (1 = generate from noise)."),
                *MERGE_INPUTS,
                MODULES_INPUT,
                CAMERA_INPUT,
                *USER_CAMERA_INPUTS,
            ],
            outputs=[io.Latent.Output(tooltip="The sampled latent.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, context, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, denoise: float, merge_blocks: str, merge_ratio: float,
                merge_mode: str, modules=None, camera=None, user_camera: str = "target",
                user_trajectory=None) -> io.NodeOutput:
        calls: list[str] = []  # summaries only: a call's state holds device tensors

        def observe(call: MemoryCall) -> None:
            _log_call(call)
            calls.append(_describe_call(call))

        patched, merge = patch_model(model, context, merge_blocks, merge_ratio, merge_mode, modules, observe, camera,
                                     user_camera, user_trajectory)
        (out,) = comfy_nodes.common_ksampler(patched, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                             latent_image, denoise=denoise)
        lines = [_apply_summary(context, merge, modules, camera, user_camera), f"{len(calls)} model calls with memory"]
        if calls:
            lines.append("last " + calls[-1])
        text = "\n".join(lines)
        return io.NodeOutput(out, ui={"text": [text]})


NODES = [DynamicTokenize, ApplyMemory, MergedDiTSampler]
