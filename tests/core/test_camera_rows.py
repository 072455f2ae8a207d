"""Camera rows per video for ReCamMaster-style conditioning: the target, the user video (by default the target's rows,
as ReCamMaster tiles them; or identity; or its own trajectory), memories relative to the target; trajectories per
video frame or per latent frame; the camera embedding of a sequence with tokens the pack does not own."""

import json

import numpy as np
import pytest
import torch

from memv2v_core.camera.files import load_recammaster
from memv2v_core.camera.trajectory import Trajectory, recammaster_embedding
from memv2v_core.memory.camera_rows import (CAMERA_INPUT, IDENTITY_ROW, USER_CAMERAS, check_grid, memory_rows,
                                             sequence_embedding, stored_camera_rows, target_trajectory, user_rows,
                                             video_frames)
from memv2v_core.camera.presets import preset_trajectory
from memv2v_core.memory.context import build_context

T = 3  # latent frames -> 9 video frames


def context_with(memories, height=4, width=4, frames=T):
    user = torch.randn(1, 16, frames, height, width)
    return build_context(user, memories, "nvs", target_frames=T)


def recammaster_rows(path, cam_index: int) -> torch.Tensor:
    """ReCamMaster's cam_encoder input [21, 12] written out with numpy (inference_recammaster.py L94-151)."""
    data = json.loads(path.read_text())
    poses = []
    for frame in range(0, 81, 4):
        rows = [[float(v) for v in row.strip("[] ").split()]
                for row in data[f"frame{frame}"][f"cam{cam_index:02d}"].strip().split("] [")]
        m = np.array(rows).T[:, [1, 2, 0, 3]]
        m[:3, 1] *= -1.0
        m[:3, 3] /= 100.0
        poses.append(m)
    first_inverse = np.linalg.inv(poses[0])
    return torch.tensor(np.stack([(first_inverse @ p)[:3].reshape(12) for p in poses]), dtype=torch.float32)


def test_video_frames_follow_the_wan_vae_stride():
    assert video_frames(21) == 81 and video_frames(1) == 1 and video_frames(T) == 9


def test_target_is_cut_to_the_video_and_a_length_that_does_not_fit_is_refused():
    assert target_trajectory(preset_trajectory("pan_left", 20), T).num_frames == 9
    assert target_trajectory(preset_trajectory("pan_left", 9), T).num_frames == 9
    for frames in (5, 2):
        with pytest.raises(ValueError, match=f"has {frames} frames but the video has 9.*set frames to 9.*9 poses.*3 "
                                             "\\(one per latent frame\\)"):
            target_trajectory(preset_trajectory("pan_left", frames), T)
    with pytest.raises(ValueError, match="MEMV2V_CAMERA"):
        target_trajectory(torch.eye(4), T)


def test_one_pose_per_latent_frame_is_used_per_latent_frame():
    video_rate = preset_trajectory("arc_right", 9)
    latent_rate = video_rate.with_poses(video_rate.c2w[::4])  # frames 0, 4, 8
    assert target_trajectory(latent_rate, T).num_frames == T
    assert torch.equal(recammaster_embedding(target_trajectory(latent_rate, T), T),
                       recammaster_embedding(target_trajectory(video_rate, T), T))


def test_recammaster_file_drives_81_frames_as_target_and_as_memory(shared_data):
    path = shared_data / "recammaster" / "camera_extrinsics.json"
    for cam in (1, 5, 10):
        camera = load_recammaster(path, cam)  # Camera Load: 21 poses, one per latent frame of 81 video frames
        expected = recammaster_rows(path, cam)
        target = target_trajectory(camera, 21)  # refused before: "the trajectory has 21 frames but the video has 81"
        torch.testing.assert_close(recammaster_embedding(target, 21), expected, atol=1e-6, rtol=0)
        # The same camera read per video frame (81 poses) gives the same rows bit for bit.
        every_frame = target_trajectory(load_recammaster(path, cam, stride=1), 21)
        assert every_frame.num_frames == 81
        assert torch.equal(recammaster_embedding(every_frame, 21), recammaster_embedding(target, 21))
        # As a stored memory (the bank keeps the 21 poses), relative to a target that starts at the same camera.
        other = target_trajectory(load_recammaster(path, 2), 21)
        torch.testing.assert_close(stored_camera_rows(camera.c2w, 21, other.c2w[0], "memory"), expected, atol=1e-6,
                                   rtol=0)
        with pytest.raises(ValueError, match="has 21 frames but the video has 101"):
            target_trajectory(camera, 26)


def test_user_video_gets_the_targets_rows_by_default_as_recammaster_tiles_them():
    target = target_trajectory(preset_trajectory("pan_right", 9), T)
    stored = preset_trajectory("tilt_up", 9)
    context = context_with([("m1", torch.randn(1, 16, T, 4, 4), 0.9, stored.c2w)])
    rows = memory_rows(context, target)
    assert rows.shape == (2 * T, CAMERA_INPUT)  # user frames, then the memory's frames (layout order)
    # ReCamMaster: cam_emb.repeat(1, 2, 1) -> source frame j gets target row j; the rows are [R | t] row-major.
    relative = torch.linalg.inv(target.c2w[0]) @ target.c2w[::4]
    torch.testing.assert_close(rows[:T], relative[:, :3, :].reshape(T, 12))
    assert torch.equal(rows[:T], recammaster_embedding(target, T))
    assert not torch.allclose(rows[1:T], IDENTITY_ROW.expand(T - 1, CAMERA_INPUT))  # the pan moves
    expected = recammaster_embedding(stored, T, reference=target.c2w[0])
    torch.testing.assert_close(rows[T:], expected)
    # Relative to the target's first camera, not its own: a target that starts elsewhere moves the memory's rows.
    moved = target.with_poses(target.c2w @ torch.tensor([[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert not torch.allclose(memory_rows(context, moved)[T:], rows[T:])


def test_user_camera_identity_and_own_trajectory_keep_the_memories_rows():
    target = target_trajectory(preset_trajectory("pan_right", 9), T)
    stored = preset_trajectory("tilt_up", 9)
    context = context_with([("m1", torch.randn(1, 16, T, 4, 4), 0.9, stored.c2w)])
    default = memory_rows(context, target)
    identity = memory_rows(context, target, "identity")
    assert torch.equal(identity[:T], IDENTITY_ROW.expand(T, CAMERA_INPUT))
    own = preset_trajectory("zoom_in", 9)
    with_own = memory_rows(context, target, "own trajectory", own)
    torch.testing.assert_close(with_own[:T], recammaster_embedding(own, T, reference=target.c2w[0]))
    for rows in (identity, with_own):
        assert torch.equal(rows[T:], default[T:])  # each memory keeps its own stored trajectory
    # One pose per latent frame works for the user's own trajectory too.
    torch.testing.assert_close(memory_rows(context, target, "own trajectory", own.with_poses(own.c2w[::4]))[:T],
                               with_own[:T])
    assert USER_CAMERAS == ("target", "identity", "own trajectory")


def test_user_camera_refusals_name_the_input_and_the_fix():
    target = target_trajectory(preset_trajectory("pan_right", 9), T)
    with pytest.raises(ValueError, match="user_trajectory is not connected.*own trajectory"):
        user_rows("own trajectory", T, target, T)
    with pytest.raises(ValueError, match="user_trajectory: the trajectory has 5 frames"):
        user_rows("own trajectory", T, target, T, preset_trajectory("pan_left", 5))
    with pytest.raises(ValueError, match="user video has 4 latent frames and the target 3.*identity or own"):
        memory_rows(context_with([], frames=4), target)
    with pytest.raises(ValueError, match="user_camera \\('sideways'\\) must be one of target, identity"):
        user_rows("sideways", T, target, T)


def test_a_stored_trajectory_of_another_length_is_resampled_over_its_path():
    stored = preset_trajectory("pan_left", 81)
    odd = stored.c2w[::20]  # 5 poses over the whole path: neither per latent (3) nor per video frame (9)
    rows = stored_camera_rows(odd, T, torch.eye(4), "memory")
    torch.testing.assert_close(rows, recammaster_embedding(Trajectory(odd), T), atol=1e-6, rtol=0)
    torch.testing.assert_close(rows[[0, 2]], recammaster_embedding(stored, 2), atol=1e-5, rtol=0)  # first, last


def test_a_memory_without_camera_is_refused_by_name():
    context = context_with([("no-cam", torch.randn(1, 16, T, 4, 4), 0.5, None)])
    with pytest.raises(ValueError, match="memory no-cam has no camera"):
        memory_rows(context, target_trajectory(preset_trajectory("pan_left", 9), T))


def test_tokens_the_pack_does_not_own_get_no_camera_embedding():
    video, memory = torch.randn(6, 4) + 1, torch.randn(5, 4) + 1
    full = sequence_embedding(video, memory, 6 + 3 + 5, foreign_tokens=3)  # [video, 3 in-context, memory]
    assert torch.equal(full[:6], video) and torch.equal(full[9:], memory)
    assert torch.equal(full[6:9], torch.zeros(3, 4))
    assert torch.equal(sequence_embedding(video, None, 8, foreign_tokens=2)[6:], torch.zeros(2, 4))
    assert sequence_embedding(video, None, 6) is video
    with pytest.raises(RuntimeError, match="sees 12 tokens.*6 video, 0 in-context and 5 memory tokens \\(11\\)"):
        sequence_embedding(video, memory, 12)


def test_a_latent_that_does_not_tile_the_patches_gets_the_nearest_valid_size():
    check_grid(context_with([], 4, 6), (1, 2, 2))  # tiles: no error
    with pytest.raises(ValueError, match=r"latent is 7x5 .* multiple of 16 px, e\.g\. 64x32"):
        check_grid(context_with([], 5, 7), (1, 2, 2))
