"""Camera rows per video for ReCamMaster-style conditioning: target, user video at identity, memories relative."""

import pytest
import torch

from memv2v_core.camera.trajectory import recammaster_embedding
from memv2v_core.memory.camera_rows import (CAMERA_INPUT, IDENTITY_ROW, check_grid, memory_rows, target_trajectory,
                                             video_frames)
from memv2v_core.camera.presets import preset_trajectory
from memv2v_core.memory.context import build_context

T = 3  # latent frames -> 9 video frames


def context_with(memories, height=4, width=4):
    user = torch.randn(1, 16, T, height, width)
    return build_context(user, memories, "nvs", target_frames=T)


def test_video_frames_follow_the_wan_vae_stride():
    assert video_frames(21) == 81 and video_frames(1) == 1 and video_frames(T) == 9


def test_target_is_cut_to_the_video_and_a_short_one_is_refused():
    assert target_trajectory(preset_trajectory("pan_left", 20), T).num_frames == 9
    with pytest.raises(ValueError, match="has 5 frames but the video has 9.*set frames to 9"):
        target_trajectory(preset_trajectory("pan_left", 5), T)
    with pytest.raises(ValueError, match="MEMV2V_CAMERA"):
        target_trajectory(torch.eye(4), T)


def test_user_video_sits_at_the_identity_and_memories_relative_to_the_target():
    target = target_trajectory(preset_trajectory("pan_right", 9), T)
    stored = preset_trajectory("tilt_up", 9)
    context = context_with([("m1", torch.randn(1, 16, T, 4, 4), 0.9, stored.c2w)])
    rows = memory_rows(context, target)
    assert rows.shape == (2 * T, CAMERA_INPUT)  # user frames, then the memory's frames (layout order)
    assert torch.equal(rows[:T], IDENTITY_ROW.expand(T, CAMERA_INPUT))
    expected = recammaster_embedding(stored, T, reference=target.c2w[0])
    torch.testing.assert_close(rows[T:], expected)
    # Relative to the target's first camera, not its own: a target that starts elsewhere moves the memory's rows.
    moved = target.with_poses(target.c2w @ torch.tensor([[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert not torch.allclose(memory_rows(context, moved)[T:], rows[T:])


def test_a_memory_without_camera_is_refused_by_name():
    context = context_with([("no-cam", torch.randn(1, 16, T, 4, 4), 0.5, None)])
    with pytest.raises(ValueError, match="memory no-cam has no camera"):
        memory_rows(context, target_trajectory(preset_trajectory("pan_left", 9), T))


def test_a_latent_that_does_not_tile_the_patches_gets_the_nearest_valid_size():
    check_grid(context_with([], 4, 6), (1, 2, 2))  # tiles: no error
    with pytest.raises(ValueError, match=r"latent is 7x5 .* multiple of 16 px, e\.g\. 64x32"):
        check_grid(context_with([], 5, 7), (1, 2, 2))
