"""StoryMem conditioning for ComfyUI's own Wan I2V model: memory keyframes in front of the shot, one latent frame each.

The official code (StoryMem ``wan/memory2video.py``) builds a 4-channel mask at pixel-frame resolution and folds it
into latent frames. In every shot mode the 4 channels of a latent frame are equal, so one channel per latent frame
says the same thing: ComfyUI's ``WAN21.concat_cond`` takes that channel (0 = given), inverts it and repeats it 4x,
which reproduces the official mask exactly (``tests/core/test_story_conditioning.py`` checks it).
"""

from __future__ import annotations

import torch

from ..memory.positions import DEFAULT_STORY_GAP, story_ids

# Pixel frames of the previous shot that condition the next: 0 = cut (M2V), 1 = last frame (MI2V), 5 = last 5 (MM2V).
CONDITION_PIXEL_FRAMES = (0, 1, 5)
PIXEL_FRAMES_PER_LATENT = 4  # Wan 2.1 VAE: latent frame 0 is pixel frame 0, latent frame k>0 pixel frames 4k-3..4k


def given_latent_frames(condition_pixel_frames: int) -> int:
    """Shot latent frames that carry given pixels: 0 (cut), 1 (MI2V), 2 (MM2V: pixel frames 0 and 1-4)."""
    _check_condition_frames(condition_pixel_frames)
    if condition_pixel_frames == 0:
        return 0
    return (condition_pixel_frames - 1) // PIXEL_FRAMES_PER_LATENT + 1


def storymem_inputs(
    memory_latents: torch.Tensor | None, shot_latent: torch.Tensor, condition_pixel_frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(concat_latent_image, concat_mask)`` for a Wan I2V conditioning: memories first, then the shot.

    ``memory_latents`` [B, C, M, H, W]: one latent frame per keyframe, each image VAE-encoded alone (a batch of M
    images encoded together would be compressed in time); None or M = 0 for no memory. ``shot_latent`` [B, C, f, H, W]:
    the VAE encoding of the shot's pixel video [condition frames, then grey (0.5 in 0..1)]. ``condition_pixel_frames``
    0, 1 or 5. Returns the latents concatenated in time, [B, C, M+f, H, W], and a mask [1, 1, M+f, H, W] per latent
    frame, 0 where frames are given (memories and the condition latents) and 1 where the model generates, as
    ComfyUI's WanImageToVideo sets it. The sampler's latent needs M+f frames; decode only frames M.. of its output and
    drop the first ``condition_pixel_frames`` decoded frames (the official pipeline does both).
    """
    _check_condition_frames(condition_pixel_frames)
    shot = _check_latent(shot_latent, "shot_latent")
    batch, channels, frames, height, width = shot.shape
    given = given_latent_frames(condition_pixel_frames)
    if frames < max(given, 1):
        raise ValueError(
            f"shot_latent has {frames} latent frame(s) but condition_pixel_frames={condition_pixel_frames} conditions "
            f"{given}; encode the whole shot video (81 pixel frames = 21 latents), not just its condition frames."
        )
    if memory_latents is None:
        memory = shot.new_zeros(batch, channels, 0, height, width)
    else:
        memory = _check_latent(memory_latents, "memory_latents", allow_empty=True)
        if memory.shape[1] != channels or memory.shape[-2:] != shot.shape[-2:]:
            raise ValueError(
                f"memory_latents are {_shape(memory)} but shot_latent is {_shape(shot)}: channels and latent "
                f"height/width must match; resize every keyframe to the shot size ({height * 8}x{width * 8} px for "
                "the Wan 2.1 VAE) before encoding, with the same VAE."
            )
        if memory.shape[0] != batch:
            raise ValueError(
                f"memory_latents have batch {memory.shape[0]} but shot_latent has batch {batch}; put the keyframes "
                "on the frame axis (dim 2), one latent frame each, not on the batch axis."
            )
        memory = memory.to(device=shot.device, dtype=shot.dtype)
    count = memory.shape[2]
    latent = torch.cat([memory, shot], dim=2)
    mask = torch.ones(1, 1, count + frames, height, width, dtype=shot.dtype, device=shot.device)
    mask[:, :, :count + given] = 0.0  # memories and condition latents are contiguous: memories come first
    return latent, mask


def story_temporal_ids(memory_frames: int, shot_frames: int, gap: float = DEFAULT_STORY_GAP) -> torch.Tensor:
    """Temporal RoPE position of every latent frame, memory first: -M*S, ..., -S, then 0 .. f-1 (float32, [M+f]).

    The corrected official code (StoryMem after Jan 2026, ``MEMORY_ROPE_SHIFT = 5``) places the oldest memory furthest
    in the past; the shot's condition latents (MI2V/MM2V) are part of the shot, at 0 and 1.
    """
    for name, value, low in (("memory_frames", memory_frames, 0), ("shot_frames", shot_frames, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} ({value!r}) must be an integer >= {low} (latent frames).")
    ids = story_ids(shot_frames, ["memory"], [memory_frames], float(gap))
    return torch.cat([ids.streams[0], ids.target])


def _check_condition_frames(value) -> None:
    if isinstance(value, bool) or value not in CONDITION_PIXEL_FRAMES:
        raise ValueError(
            f"condition_pixel_frames ({value!r}) must be 0 (cut: memory only), 1 (MI2V: the previous shot's last "
            "frame) or 5 (MM2V: its last 5 frames)."
        )


def _check_latent(value, name: str, allow_empty: bool = False) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 5 or not value.is_floating_point():
        got = _shape(value) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"{name} is {got}; expected a float video latent [batch, channels, frames, height, width] from a Wan VAE "
            "encode (ComfyUI LATENT['samples'])."
        )
    if value.shape[2] == 0 and not allow_empty:
        raise ValueError(f"{name} has no frames ({_shape(value)}); encode at least one frame.")
    return value


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(s) for s in tensor.shape) + f" {str(tensor.dtype).replace('torch.', '')}"
