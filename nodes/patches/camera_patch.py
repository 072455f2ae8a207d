"""ReCamMaster camera conditioning inside ComfyUI's native Wan DiT, one trajectory per video as Memory-V2V does it.

Every block that has camera modules gets an object patch on its ``self_attn``: the patch adds
``cam_encoder(extrinsics)`` of each token's own video to the self-attention input and applies the ``projector`` to its
output (ReCamMaster's ``DiTBlock``), then the block carries on unchanged. A keyed DIFFUSION_MODEL wrapper puts the
per-call camera rows into ``transformer_options``; the memory part of the sequence is mapped to its frames through the
memory stream's current layout, so merged memory frames keep their own camera. Tokens the host appends after the video
that are not the pack's (newer ComfyUI's in-context ``context_latents``) get no camera embedding. No ComfyUI code is
copied.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

import comfy.ops
import comfy.patcher_extension

from ...memv2v_core.camera.trajectory import recammaster_embedding
from ...memv2v_core.memory.camera_rows import (CAMERA_INPUT, USER_CAMERAS, check_grid, memory_rows, sequence_embedding,
                                                target_trajectory)
from ...memv2v_core.memory.context import MemoryContext
from .memory_patch import STATE_KEY

log = logging.getLogger(__name__)

CAMERA_KEY = "memv2v_camera_call"
WRAPPER_KEY = "memv2v.camera"
SIZE_KEY = "memv2v.camera_bytes"  # attachment: the camera bytes this clone's size includes


@dataclass(frozen=True, eq=False)
class CameraCall:
    """One model call's camera rows: the target's per latent frame and the context's per memory-layout frame, and how
    many tokens the host puts between the video and the memory (newer ComfyUI's context_latents)."""

    video_rows: torch.Tensor  # [T, 12]
    tokens_per_frame: int
    memory_rows: torch.Tensor  # [frames of the context layout, 12]
    foreign_tokens: int = 0


class CameraSelfAttention(torch.nn.Module):
    """The block's own self-attention with ReCamMaster's cam_encoder before it and projector after it.

    The inner module's children are registered under their own names, so weight keys such as
    ``blocks.0.self_attn.q.weight`` (LoRAs, low-VRAM casting) still resolve to the same parameters while patched.
    The camera layers are ComfyUI cast ops: ComfyUI moves them with the model when it fits and otherwise leaves them
    on the offload device and casts them per use, as it does the model's own layers (``apply_camera`` counts them in
    the model's size).
    """

    def __init__(self, inner: torch.nn.Module, enc_w: torch.Tensor, enc_b: torch.Tensor, proj_w: torch.Tensor,
                 proj_b: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not a child: its children are registered below instead
        for name, child in inner.named_children():
            self.add_module(name, child)
        self.cam_encoder = comfy.ops.manual_cast.Linear(CAMERA_INPUT, enc_w.shape[0], device="meta")
        self.projector = comfy.ops.manual_cast.Linear(proj_w.shape[1], proj_w.shape[0], device="meta")
        for layer, weight, bias in ((self.cam_encoder, enc_w, enc_b), (self.projector, proj_w, proj_b)):
            layer.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
            layer.bias = torch.nn.Parameter(bias.detach(), requires_grad=False)

    def camera_embedding(self, x: torch.Tensor, call: CameraCall, options: Mapping) -> torch.Tensor:
        """Per-token cam_encoder output [1, L, dim] for the sequence x: video tokens, then tokens the host appended
        (none of ours: zero), then the memory tokens."""
        video = self.cam_encoder(call.video_rows.to(x)).repeat_interleave(call.tokens_per_frame, dim=0)
        memory = options.get(STATE_KEY)
        layout = None if memory is None else memory.state.layout
        tokens = None
        if layout is not None:
            if layout.num_frames != call.memory_rows.shape[0]:
                raise RuntimeError(
                    f"camera conditioning: the memory stream has {layout.num_frames} frames but the camera rows were "
                    f"made for {call.memory_rows.shape[0]}; Apply Memory must be the node that adds memory tokens.")
            tokens = self.cam_encoder(call.memory_rows.to(x))[layout.token_frame(device=x.device)]
        return sequence_embedding(video, tokens, x.shape[1], call.foreign_tokens).unsqueeze(0)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor, transformer_options: Mapping = {}, **kwargs):
        call = transformer_options.get(CAMERA_KEY) if transformer_options is not None else None
        if call is None:
            raise RuntimeError(
                "camera conditioning: this call carries no camera state (the model's blocks did not pass "
                "transformer_options to self-attention); this Wan variant cannot use ReCamMaster camera modules."
            )
        x = x + self.camera_embedding(x, call, transformer_options)
        y = self.inner(x, freqs, transformer_options=transformer_options, **kwargs)
        return self.projector(y)

    def camera_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for layer in (self.cam_encoder, self.projector)
                   for p in layer.parameters())


def camera_blocks(modules: Any, dim: int, depth: int) -> dict[int, tuple[torch.Tensor, ...]]:
    """The modules' camera weights by block, checked against the model's width and depth."""
    camera = getattr(modules, "camera", None) or {}
    source = getattr(modules, "source", "")
    beyond = sorted(b for b in camera if not 0 <= b < depth)
    if beyond:
        raise ValueError(f"modules: camera modules for blocks {beyond} but the model has {depth} blocks; load the "
                         f"modules made for this base model (file {source!r}).")
    for block, weights in camera.items():
        enc_w, _, proj_w, _ = weights
        if tuple(enc_w.shape) != (dim, CAMERA_INPUT) or tuple(proj_w.shape) != (dim, dim):
            raise ValueError(
                f"modules: block {block}'s cam_encoder is {list(enc_w.shape)} and projector {list(proj_w.shape)}, "
                f"but the model's width is {dim} (expected [{dim}, 12] and [{dim}, {dim}]); load the modules made "
                "for this base model."
            )
    return {int(b): tuple(w) for b, w in camera.items()}


def check_camera_inputs(modules: Any, camera: Any, context: MemoryContext, user_camera: str = "target",
                        user_trajectory: Any = None) -> bool:
    """Whether camera conditioning is on (modules with camera blocks); refuses a missing or unused camera."""
    if user_camera not in USER_CAMERAS:
        raise ValueError(f"user_camera ({user_camera!r}) must be one of {', '.join(USER_CAMERAS)}.")
    if user_trajectory is not None and user_camera != "own trajectory":
        raise ValueError(f"user_trajectory is connected, but user_camera is {user_camera!r}, so it would be ignored; "
                         "set user_camera to 'own trajectory' or disconnect 'user_trajectory'.")
    has_camera_modules = bool(getattr(modules, "camera", None))
    if has_camera_modules and camera is None:
        blocks = len(modules.camera)
        raise ValueError(
            f"camera is not connected, but the modules hold ReCamMaster camera encoders for {blocks} block(s), so "
            "the target camera is required; connect Memory-V2V Camera Preset (or Camera Load) to 'camera'."
        )
    if camera is not None and not has_camera_modules:
        raise ValueError(
            "camera is connected, but no camera modules are loaded, so it would be ignored; connect Memory-V2V Load "
            "Modules with a ReCamMaster / Memory-V2V checkpoint to 'modules', or disconnect 'camera'."
        )
    if user_trajectory is not None and not has_camera_modules:
        raise ValueError(
            "user_trajectory is connected, but no camera modules are loaded, so it would be ignored; connect "
            "Memory-V2V Load Modules with a ReCamMaster / Memory-V2V checkpoint to 'modules', or disconnect "
            "'user_trajectory'."
        )
    if has_camera_modules and context.mode != "nvs":
        raise ValueError(f"camera: camera conditioning is for novel view synthesis, but the context's mode is "
                         f"{context.mode!r}; set Dynamic Tokenize's mode to nvs or disconnect 'camera'.")
    return has_camera_modules


# --- install -------------------------------------------------------------------------------------------------------
def _target_rows(rows: torch.Tensor, frames: int, options: Mapping) -> torch.Tensor:
    """The target rows for this call's frames: all of them, or a context window's frames."""
    if frames == rows.shape[0]:
        return rows
    window = options.get("context_window")
    index = getattr(window, "index_list", None)
    if index is not None and len(index) == frames and max(index) < rows.shape[0]:
        return rows[torch.as_tensor(index, dtype=torch.long)]
    raise ValueError(
        f"camera: the model sees {frames} latent frames but the target camera was made for {rows.shape[0]}; set "
        "Dynamic Tokenize's target_frames (and the camera's frames) to the generated video's length."
    )


def _in_context_tokens(latents: Any, patch: tuple[int, ...]) -> int:
    """Tokens newer ComfyUI appends after the video for in-context latents (each padded to the patch size)."""
    if latents is None:
        return 0
    latents = [latents] if isinstance(latents, torch.Tensor) else list(latents)
    return sum(math.ceil(lat.shape[-3] / patch[0]) * math.ceil(lat.shape[-2] / patch[1]) *
               math.ceil(lat.shape[-1] / patch[2]) for lat in latents)


def _make_wrapper(video_rows: torch.Tensor, mem_rows: torch.Tensor, user_hw: tuple[int, int] | None):
    def camera_wrapper(executor, x, timestep, text, clip_fea=None, time_dim_concat=None, transformer_options=None,
                       **kwargs):
        options = transformer_options if transformer_options is not None else {}
        dm = executor.class_obj
        if time_dim_concat is not None:
            raise ValueError("camera: camera conditioning does not support time_dim_concat frames (Phantom-style "
                             "conditioning); remove that conditioning or disconnect 'camera'.")
        height, width = x.shape[-2:]
        if user_hw is not None and (height, width) != user_hw:
            raise ValueError(
                f"latent_image: the generated latent is {width}x{height} but the user video's is {user_hw[1]}x"
                f"{user_hw[0]}; ReCamMaster re-renders the video at its own size, so make both the same size."
            )
        if getattr(dm, "ref_conv", None) is not None and kwargs.get("reference_latent") is not None:
            raise ValueError("camera: camera conditioning does not support a reference_latent (Wan Fun reference "
                             "tokens before the video); remove that conditioning or disconnect 'camera'.")
        patch = dm.patch_size
        per_frame = math.ceil(height / patch[1]) * math.ceil(width / patch[2])
        call = CameraCall(_target_rows(video_rows, x.shape[2], options).to(x.device), per_frame,
                          mem_rows.to(x.device), _in_context_tokens(kwargs.get("context_latents"), patch))
        return executor(x, timestep, text, clip_fea, time_dim_concat, {**options, CAMERA_KEY: call}, **kwargs)

    return camera_wrapper


def apply_camera(patched: Any, modules: Any, camera: Any, context: MemoryContext, user_camera: str = "target",
                 user_trajectory: Any = None) -> Any:
    """Add camera conditioning to ``patched`` (a clone; changed in place and returned). Checks everything first.

    ``user_camera`` (one of ``USER_CAMERAS``) sets the user video's camera; ``user_trajectory`` is its own trajectory.
    """
    dm = patched.get_model_object("diffusion_model")
    blocks = camera_blocks(modules, int(dm.dim), len(dm.blocks))
    check_grid(context, tuple(dm.patch_size))
    target = target_trajectory(camera, context.target_frames)
    video_rows = recammaster_embedding(target, context.target_frames)
    mem_rows = memory_rows(context, target, user_camera, user_trajectory)
    user = next((s for s in context.streams if s.role == "user"), None)
    user_hw = None if user is None else tuple(int(v) for v in user.latent.shape[-2:])
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 _make_wrapper(video_rows, mem_rows, user_hw))
    added = 0
    for index, weights in sorted(blocks.items()):
        name = f"diffusion_model.blocks.{index}.self_attn"
        inner = patched.get_model_object(name)
        inner = inner.inner if isinstance(inner, CameraSelfAttention) else inner  # a second Apply Memory replaces
        layer = CameraSelfAttention(inner, *weights)
        patched.add_object_patch(name, layer)
        added += layer.camera_bytes()
    # ComfyUI sizes a model once, without object patches; its load and offload decisions should see these weights
    patched.size = patched.model_size() - patched.attachments.get(SIZE_KEY, 0) + added
    patched.attachments[SIZE_KEY] = added
    log.debug("camera conditioning on %d blocks, target %s, user video: %s", len(blocks), target, user_camera)
    return patched
