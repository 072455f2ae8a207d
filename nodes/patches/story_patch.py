"""StoryMem's negative temporal RoPE shift on ComfyUI's own WanModel, as one keyed DIFFUSION_MODEL wrapper.

StoryMem feeds its M memory keyframes as the first M latent frames of the video (channel-concat conditioning) and
gives them temporal positions -M*S, ..., -S, while the shot's frames keep 0..f-1 and the spatial positions are
unchanged (corrected upstream ``model_memory.py``: ``MEMORY_ROPE_SHIFT = 5``). ComfyUI's ``WanModel._forward`` builds
its video positions with ``rope_encode`` (a ``linspace``, which cannot express that sequence) and passes no options
to it in 0.3.64, so the wrapper overrides ``rope_encode`` on the model for the duration of one call: the video call
gets the StoryMem ids, any other call (context-latent streams, other variants' extra ropes) goes to the original.
Newer ComfyUI's ``rope_options`` (ScaleROPE) are applied on top, as ComfyUI applies them to plain video positions.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

import comfy.ldm.wan.model as wan_model
import comfy.patcher_extension

from ...memv2v_core.story.conditioning import story_temporal_ids  # the one definition of the ids (re-exported here)

log = logging.getLogger(__name__)

WRAPPER_KEY = "memv2v.story_rope"  # distinct from memory_patch's "memv2v.memory": both wrappers compose
DEFAULT_GAP = 5  # StoryMem's MEMORY_ROPE_SHIFT


def story_rope_ids(memory_frames: int, frames: int, height: int, width: int, gap: float = DEFAULT_GAP,
                   rope_options: dict | None = None, device=None, dtype=None) -> torch.Tensor:
    """Position ids [1, frames*height*width, 3] (t, h, w) for a token grid whose first ``memory_frames`` are memory.

    ``rope_options`` (ComfyUI >= 0.3.68, ScaleROPE) maps each axis as ComfyUI maps plain video positions:
    t' = shift_t + scale_t * t, h' = shift_y + scale_y * h, w' = shift_x + scale_x * w. Ids are float32 unless a
    ``dtype`` is given.
    """
    axes = [story_temporal_ids(memory_frames, frames - memory_frames, gap).double(),
            torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64)]
    if rope_options:
        for axis, suffix in enumerate(("t", "y", "x")):
            axes[axis] = (rope_options.get(f"shift_{suffix}", 0.0)
                          + rope_options.get(f"scale_{suffix}", 1.0) * axes[axis])
    ids = torch.zeros(frames, height, width, 3, dtype=torch.float32)
    ids[..., 0] = axes[0].float().view(-1, 1, 1)
    ids[..., 1] = axes[1].float().view(1, -1, 1)
    ids[..., 2] = axes[2].float().view(1, 1, -1)
    ids = ids.reshape(1, -1, 3).to(device)
    return ids if dtype is None else ids.to(dtype)


def _check_model(model_patcher: Any) -> wan_model.WanModel:
    get = getattr(model_patcher, "get_model_object", None)
    dm = get("diffusion_model") if callable(get) else None
    if not isinstance(dm, wan_model.WanModel):
        kind = type(dm).__name__ if dm is not None else type(model_patcher).__name__
        raise ValueError(f"model: the diffusion model is a {kind}, not a Wan DiT; StoryMem's RoPE shift needs "
                         "ComfyUI's native WanModel. Load a Wan 2.2 I2V expert with Load Diffusion Model.")
    if type(dm).rope_encode is not wan_model.WanModel.rope_encode:
        raise ValueError(f"model: {type(dm).__name__} builds its own positions (it overrides rope_encode), so "
                         "StoryMem's shift cannot be applied to it; use a plain Wan 2.1 / 2.2 model.")
    if dm.patch_size[0] != 1:
        raise ValueError(f"model: temporal patch size {dm.patch_size[0]} merges latent frames into one token frame; "
                         "StoryMem's per-frame positions need temporal patch size 1 (every Wan model).")
    return dm


def _video_frames(dm: wan_model.WanModel, x: torch.Tensor, time_dim_concat: torch.Tensor | None) -> int:
    """The ``t`` that ``WanModel._forward`` passes to ``rope_encode`` for the video."""
    if time_dim_concat is None:
        return x.shape[2]
    pt = dm.patch_size[0]
    return math.ceil(x.shape[2] / pt) * pt + math.ceil(time_dim_concat.shape[2] / pt) * pt


def _make_wrapper(memory_frames: int, gap: float) -> Callable:
    def story_rope_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                           transformer_options=None, **kwargs):
        if memory_frames == 0:
            return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        dm = executor.class_obj
        if dm.ref_conv is not None and "reference_latent" in kwargs:
            raise ValueError("StoryMem RoPE shift: this model prepends a reference frame (ref_conv with "
                             "reference_latent), which StoryMem's positions do not define; remove the reference "
                             "latent or the StoryMem patch.")
        frames = _video_frames(dm, x, time_dim_concat)
        if frames <= memory_frames:
            raise ValueError(f"memory_frames ({memory_frames}): the model sees only {frames} latent frames, so no "
                             "shot frame follows the memory. Use a latent of memory_frames + shot frames (StoryMem: "
                             "M + 21); context windows cannot split a StoryMem latent.")
        height, width = x.shape[3], x.shape[4]
        original = dm.rope_encode
        own = dm.__dict__.get("rope_encode")

        def rope_encode(t, h, w, t_start=0, steps_t=None, steps_h=None, steps_w=None, device=None, dtype=None,
                        **extra):
            if ((t, h, w) != (frames, height, width) or t_start != 0 or extra.get("source_id", 0)
                    or any(s is not None for s in (steps_t, steps_h, steps_w))):
                return original(t, h, w, t_start=t_start, steps_t=steps_t, steps_h=steps_h, steps_w=steps_w,
                                device=device, dtype=dtype, **extra)
            pt, ph, pw = dm.patch_size
            rope_options = (extra.get("transformer_options") or {}).get("rope_options")  # only where core passes it
            # float32 ids, not the latent's dtype: memory positions reach -M*S (past 256 bf16 rounds them), and the
            # rotary table converts ids to float32 anyway.
            ids = story_rope_ids(memory_frames, (t + pt // 2) // pt, (h + ph // 2) // ph, (w + pw // 2) // pw, gap,
                                 rope_options, device=device)
            return dm.rope_embedder(ids).movedim(1, 2)

        dm.rope_encode = rope_encode
        try:
            return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        finally:
            if own is None:
                del dm.rope_encode
            else:
                dm.rope_encode = own

    return story_rope_wrapper


def apply_story_rope(model_patcher: Any, memory_frames: int, gap: float = DEFAULT_GAP) -> Any:
    """A clone of ``model_patcher`` whose first ``memory_frames`` latent frames sit at -M*S..-S, the rest at 0..f-1.

    ``memory_frames`` 0 leaves the model's output bit-identical. Applying it again replaces the earlier shift.
    """
    if isinstance(memory_frames, bool) or not isinstance(memory_frames, int) or memory_frames < 0:
        raise ValueError(f"memory_frames ({memory_frames!r}) must be a whole number >= 0: the count of memory "
                         "latent frames at the start of the latent (one per memory image).")
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not math.isfinite(gap) or gap <= 0:
        raise ValueError(f"gap ({gap!r}) must be a positive number of latent frames between memories; StoryMem "
                         f"uses {DEFAULT_GAP}.")
    _check_model(model_patcher)
    patched = model_patcher.clone()
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
    patched.add_wrapper_with_key(kind, WRAPPER_KEY, _make_wrapper(memory_frames, float(gap)))
    return patched
