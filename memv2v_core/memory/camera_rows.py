"""Camera rows for ReCamMaster-style conditioning, one trajectory per video (Memory-V2V), host-independent.

Each video in the sequence gets its own 12-number camera input per latent frame (the top 3x4 of its camera-to-world
pose, row-major): the target relative to its own first camera; the user (source) video by ``user_camera``, by default
the target's rows frame by frame as ReCamMaster does (its ``cam_emb.repeat(1, 2, 1)`` over [target, source]); each
memory its stored trajectory relative to the target's first camera. The nodes add ``cam_encoder(rows)`` to the
self-attention input of every block that has camera modules.
"""

from __future__ import annotations

from typing import Any

import torch

from ..camera.trajectory import TEMPORAL_STRIDE, Trajectory, recammaster_embedding
from .context import MemoryContext

CAMERA_INPUT = 12
# The identity pose's top 3x4, row-major: the target's first camera.
IDENTITY_ROW = torch.eye(4)[:3].reshape(CAMERA_INPUT)
# The user video's camera: the target's rows (ReCamMaster), the identity pose, or the user video's own trajectory.
USER_CAMERAS = ("target", "identity", "own trajectory")


def video_frames(latent_frames: int, stride: int = TEMPORAL_STRIDE) -> int:
    """Video frames behind ``latent_frames`` Wan latent frames (21 -> 81)."""
    return (latent_frames - 1) * stride + 1


def _nearest_size(latent: int, unit: int) -> int:
    return max(unit, round(latent / unit) * unit)


def check_grid(context: MemoryContext, patch_size: tuple[int, ...], vae_stride: int = 8) -> None:
    """The user video's latent must tile the model's patches; otherwise say which pixel size to resize to."""
    for stream in context.streams:
        if stream.role != "user":
            continue
        height, width = stream.latent.shape[-2:]
        ph, pw = patch_size[1], patch_size[2]
        if height % ph or width % pw:
            good_h, good_w = _nearest_size(height, ph) * vae_stride, _nearest_size(width, pw) * vae_stride
            raise ValueError(
                f"latent: the user video's latent is {width}x{height} (about {width * vae_stride}x"
                f"{height * vae_stride} px), which does not tile the model's {ph}x{pw} patches; resize the video to "
                f"a multiple of {ph * vae_stride} px, e.g. {good_w}x{good_h} (nearest valid size) before VAE Encode."
            )


def fits_latent_frames(frames: int, latent_frames: int) -> bool:
    """Whether ``frames`` poses describe ``latent_frames`` latent frames: one per latent frame, or at least one per
    video frame (a longer trajectory is cut at the video's end)."""
    return frames == latent_frames or frames >= video_frames(latent_frames)


def fit_trajectory(trajectory: Trajectory, latent_frames: int) -> Trajectory:
    """``trajectory`` as the poses of a video of ``latent_frames`` latent frames, without resampling in time.

    Exactly ``latent_frames`` poses are one per latent frame (ReCamMaster's camera_extrinsics.json gives 21 for 81
    frames) and are used as they are; a trajectory with at least one pose per video frame is cut to the video's
    ``video_frames(latent_frames)`` poses, which ``recammaster_embedding`` then samples at frames 0, 4, 8, ...
    Any other length does not fit (see ``fits_latent_frames``) and is returned unchanged.
    """
    frames, needed = trajectory.num_frames, video_frames(latent_frames)
    if frames == latent_frames or frames <= needed:
        return trajectory
    return trajectory.with_poses(trajectory.c2w[:needed])


def target_trajectory(camera: Any, latent_frames: int, name: str = "camera") -> Trajectory:
    """A camera for a video of ``latent_frames`` latent frames (see ``fit_trajectory``); refuses other lengths.

    ``name`` is the input the camera came from, for the error message.
    """
    if not isinstance(camera, Trajectory):
        raise ValueError(f"{name} is a {type(camera).__name__}; connect a MEMV2V_CAMERA (Memory-V2V Camera Preset "
                         "or Camera Load).")
    needed = video_frames(latent_frames)
    if not fits_latent_frames(camera.num_frames, latent_frames):
        raise ValueError(
            f"{name}: the trajectory has {camera.num_frames} frames but the video has {needed} "
            f"({latent_frames} latent frames); set frames to {needed} in Memory-V2V Camera Preset, or use a "
            f"trajectory file with {needed} poses (one per video frame, longer is cut) or {latent_frames} (one per "
            "latent frame)."
        )
    return fit_trajectory(camera, latent_frames)


def stored_camera_rows(c2w: Any, latent_frames: int, reference: torch.Tensor, name: str) -> torch.Tensor:
    """Rows [latent_frames, 12] of a stored trajectory relative to ``reference`` (the target's first pose).

    Lengths that fit are used per latent frame or per video frame (``fit_trajectory``); any other stored length
    (older banks) is resampled in time over its whole path.
    """
    stored = fit_trajectory(Trajectory(torch.as_tensor(c2w, dtype=torch.float32), name=name), latent_frames)
    return recammaster_embedding(stored, latent_frames, reference=reference)


def user_rows(user_camera: str, frames: int, target: Trajectory, target_frames: int,
              user_trajectory: Any = None) -> torch.Tensor:
    """The user video's rows [frames, 12] for one of ``USER_CAMERAS``.

    ``target``: ReCamMaster's convention (``cam_emb.repeat(1, 2, 1)``): user frame j gets the target's row j, so the
    user video needs the target's frame count. ``identity``: every frame at the target's first camera.
    ``own trajectory``: ``user_trajectory`` (the user video's known poses, in the target's world) relative to the
    target's first camera, like a memory.
    """
    if user_camera == "target":
        if frames != target_frames:
            raise ValueError(
                f"user_camera: 'target' gives user frame j the target's camera j (ReCamMaster), but the user video "
                f"has {frames} latent frames and the target {target_frames}; generate as many frames as the user "
                "video has (Dynamic Tokenize target_frames = 0), or set user_camera to identity or own trajectory."
            )
        return recammaster_embedding(target, frames)
    if user_camera == "identity":
        return IDENTITY_ROW.expand(frames, CAMERA_INPUT).clone()
    if user_camera == "own trajectory":
        if user_trajectory is None:
            raise ValueError("user_trajectory is not connected, but user_camera is 'own trajectory'; connect the "
                             "user video's camera (Memory-V2V Camera Load) or set user_camera to target.")
        own = target_trajectory(user_trajectory, frames, name="user_trajectory")
        return recammaster_embedding(own, frames, reference=target.c2w[0])
    raise ValueError(f"user_camera ({user_camera!r}) must be one of {', '.join(USER_CAMERAS)}.")


def memory_rows(context: MemoryContext, target: Trajectory, user_camera: str = "target",
                user_trajectory: Any = None) -> torch.Tensor:
    """Camera rows per frame of the context's token layout: the user video by ``user_camera`` (see ``user_rows``),
    each memory its stored trajectory relative to the target's first camera."""
    rows = []
    for stream in context.streams:
        if stream.role == "user":
            rows.append(user_rows(user_camera, stream.frames, target, context.target_frames, user_trajectory))
            continue
        if stream.camera is None:
            raise ValueError(
                f"selection: memory {stream.entry_id} has no camera trajectory, but camera conditioning gives every "
                "memory its own camera; store turns with Bank Add's camera input connected, or retrieve with FOV "
                "Retrieve (it skips entries without a camera)."
            )
        rows.append(stored_camera_rows(stream.camera, stream.frames, target.c2w[0], f"memory {stream.entry_id}"))
    return torch.cat(rows, dim=0) if rows else torch.zeros(0, CAMERA_INPUT)


def sequence_embedding(video: torch.Tensor, memory: torch.Tensor | None, total_tokens: int,
                       foreign_tokens: int = 0) -> torch.Tensor:
    """The camera embedding [total_tokens, dim] of a self-attention sequence [video, foreign, memory].

    ``video`` and ``memory`` are the per-token embeddings of the video tokens and of the pack's memory tokens (None:
    no memory in this call). Foreign tokens are tokens the host appends after the video that are neither (newer
    ComfyUI's in-context ``context_latents``); they get no camera embedding, like every token but ReCamMaster's own.
    """
    memory_tokens = 0 if memory is None else memory.shape[0]
    expected = video.shape[0] + foreign_tokens + memory_tokens
    if total_tokens != expected:
        raise RuntimeError(
            f"camera conditioning: self-attention sees {total_tokens} tokens, but the call has {video.shape[0]} video, "
            f"{foreign_tokens} in-context and {memory_tokens} memory tokens ({expected}); another patch changed the "
            "token sequence. Apply Memory must be the node that adds memory tokens to this model."
        )
    parts = [video]
    if foreign_tokens:
        parts.append(video.new_zeros(foreign_tokens, video.shape[1]))
    if memory is not None:
        parts.append(memory)
    return torch.cat(parts, dim=0) if len(parts) > 1 else video
