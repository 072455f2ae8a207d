"""Camera rows for ReCamMaster-style conditioning, one trajectory per video (Memory-V2V), host-independent.

Each video in the sequence gets its own 12-number camera input per latent frame (the top 3x4 of its camera-to-world
pose, row-major): the target relative to its own first camera, the user video at the identity pose (it is the target's
first camera), each memory its stored trajectory relative to the target's first camera. The nodes add
``cam_encoder(rows)`` to the self-attention input of every block that has camera modules.
"""

from __future__ import annotations

from typing import Any

import torch

from ..camera.trajectory import TEMPORAL_STRIDE, Trajectory, recammaster_embedding
from .context import MemoryContext

CAMERA_INPUT = 12
# The identity pose's top 3x4, row-major: the user video's camera (it is the target's first camera).
IDENTITY_ROW = torch.eye(4)[:3].reshape(CAMERA_INPUT)


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


def target_trajectory(camera: Any, latent_frames: int) -> Trajectory:
    """The target camera cut to the generated video's length; refuses a trajectory shorter than the video."""
    if not isinstance(camera, Trajectory):
        raise ValueError(f"camera is a {type(camera).__name__}; connect a MEMV2V_CAMERA (Memory-V2V Camera Preset "
                         "or Camera Load).")
    needed = video_frames(latent_frames)
    if camera.num_frames < needed:
        raise ValueError(
            f"camera: the trajectory has {camera.num_frames} frames but the video has {needed} "
            f"({latent_frames} latent frames); set frames to {needed} in Memory-V2V Camera Preset (or use a longer "
            "trajectory file)."
        )
    return camera.with_poses(camera.c2w[:needed])


def memory_rows(context: MemoryContext, target: Trajectory) -> torch.Tensor:
    """Camera rows per frame of the context's token layout: the user video at the identity pose, each memory its
    stored trajectory relative to the target's first camera."""
    rows = []
    for stream in context.streams:
        if stream.role == "user":
            rows.append(IDENTITY_ROW.expand(stream.frames, CAMERA_INPUT))
            continue
        if stream.camera is None:
            raise ValueError(
                f"selection: memory {stream.entry_id} has no camera trajectory, but camera conditioning gives every "
                "memory its own camera; store turns with Bank Add's camera input connected, or retrieve with FOV "
                "Retrieve (it skips entries without a camera)."
            )
        c2w = torch.as_tensor(stream.camera, dtype=torch.float32)
        needed = video_frames(stream.frames)
        stored = Trajectory(c2w[:needed] if c2w.shape[0] >= needed else c2w, name=f"memory {stream.entry_id}")
        rows.append(recammaster_embedding(stored, stream.frames, reference=target.c2w[0]))
    return torch.cat(rows, dim=0) if rows else torch.zeros(0, CAMERA_INPUT)
