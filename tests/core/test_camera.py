"""Trajectory conventions, relative re-expression, resampling, the ReCamMaster embedding, presets and the preview."""

import math

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from memv2v_core.camera.trajectory import (DEFAULT_HFOV_DEG, Trajectory, check_c2w, intrinsics_from_fov, latent_frame_count,
                                recammaster_embedding)
from memv2v_core.camera.files import load_recammaster
from memv2v_core.camera.presets import PRESET_NAMES, RECAMMASTER_CAM_INDEX, SUBJECT_DISTANCE, preset_trajectory
from memv2v_core.retrieval.preview import PreviewTrack, TARGET_COLOR, UNCOVERED_COLOR, render_camera_preview
from memv2v_core.retrieval.fov import fov_mask


def random_rigid(frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(frames, 1, 1)
    c2w[:, :3, :3] = axis_angle_to_rotation_matrix(torch.randn(frames, 3, generator=generator))
    c2w[:, :3, 3] = torch.randn(frames, 3, generator=generator)
    return c2w


def rotation_angle_deg(rotation: torch.Tensor) -> float:
    """Angle of a rotation, stable near zero: atan2(|axis * sin|, cos)."""
    r = rotation.double()
    sine = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]).norm() / 2
    return math.degrees(math.atan2(float(sine), float((torch.trace(r) - 1) / 2)))


def view_direction(trajectory: Trajectory, frame: int = -1) -> torch.Tensor:
    return trajectory.rotations[frame][:, 2]


# --- conventions and validation ------------------------------------------------------------------------------

def test_default_intrinsics_are_a_24mm_lens_on_832x480():
    k = intrinsics_from_fov()
    assert k[0, 0] == pytest.approx(416 / math.tan(math.radians(DEFAULT_HFOV_DEG / 2)), rel=1e-6)
    assert k[0, 0] == pytest.approx(554.67, abs=0.05)  # 24 mm focal on a 36 mm sensor, scaled to 832 px
    assert k[1, 1] == k[0, 0] and (k[0, 2], k[1, 2]) == (416, 240)
    assert Trajectory.identity(3).hfov_deg == pytest.approx(73.74, abs=1e-3)


def test_validation_names_the_frame_and_the_problem():
    poses = random_rigid(5)
    poses[3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"frame 3 .*NaN"):
        Trajectory(poses, name="mine")
    scaled = random_rigid(5)
    scaled[2, :3, :3] *= 1.5
    with pytest.raises(ValueError, match=r"trajectory 'x': frame 2 is not a rigid rotation"):
        Trajectory(scaled, name="x")
    mirrored = random_rigid(4)
    mirrored[1, :3, 0] *= -1  # orthonormal but det -1
    with pytest.raises(ValueError, match=r"frame 1 .*det R = -1"):
        check_c2w(mirrored)
    with pytest.raises(ValueError, match=r"shape \[frames, 4, 4\]"):
        Trajectory(torch.eye(4))
    with pytest.raises(ValueError, match="at least 3"):
        check_c2w(random_rigid(2), min_frames=3)


def test_relative_to_uses_the_reference_first_camera():
    poses = random_rigid(6, seed=1)
    reference = Trajectory(random_rigid(3, seed=2))
    relative = Trajectory(poses).relative_to(reference)
    r_ref, c_ref = reference.rotations[0], reference.centers[0]
    assert torch.allclose(relative.rotations, r_ref.T @ poses[:, :3, :3], atol=1e-5)
    assert torch.allclose(relative.centers, (poses[:, :3, 3] - c_ref) @ r_ref, atol=1e-5)
    own = Trajectory(poses).relative_to()
    assert own.starts_at_identity() and not Trajectory(poses).starts_at_identity()
    # Poses between frames are unchanged by re-expression.
    before = torch.linalg.inv(poses[2]) @ poses[4]
    after = torch.linalg.inv(own.c2w[2]) @ own.c2w[4]
    assert torch.allclose(before, after, atol=1e-5)


def test_resample_picks_every_fourth_frame_and_interpolates_between():
    trajectory = preset_trajectory("arc_right", 81)
    assert torch.equal(trajectory.resample(21).c2w, trajectory.c2w[::4])
    # Input poses come back bit for bit at both ends of every interval (weight 0 and weight 1), on any CPU.
    doubled = preset_trajectory("arc_right", 9).resample(17)
    assert torch.equal(doubled.c2w[::2], preset_trajectory("arc_right", 9).c2w)
    halfway = preset_trajectory("pan_right", 3).resample(5)  # frame 1 of 5 lies halfway between frames 0 and 1 of 3
    assert rotation_angle_deg(halfway.rotations[1]) == pytest.approx(19.8758 / 4, abs=1e-3)
    zoom = preset_trajectory("zoom_in", 2).resample(11)
    assert torch.allclose(zoom.centers[:, 2], torch.linspace(0, 1.9876, 11), atol=1e-5)
    assert Trajectory.identity(1).resample(7).num_frames == 7
    with pytest.raises(ValueError, match="at least 1"):
        trajectory.resample(0)


def test_recammaster_embedding_is_relative_3x4_rows_per_latent_frame():
    assert latent_frame_count(81) == 21 and latent_frame_count(33) == 9 and latent_frame_count(1) == 1
    trajectory = preset_trajectory("zoom_in", 81)
    embedding = recammaster_embedding(trajectory, 21)
    assert embedding.shape == (21, 12)
    assert torch.equal(embedding[0], torch.eye(4)[:3].reshape(12))
    assert torch.allclose(embedding[-1], torch.tensor([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1.9876]), atol=1e-5)
    assert torch.allclose(embedding[5], trajectory.c2w[20, :3].reshape(12))
    # Moved to another start, the embedding is unchanged (relative to its own first camera) ...
    moved = Trajectory(random_rigid(1, seed=3)[0] @ trajectory.c2w)
    assert torch.allclose(recammaster_embedding(moved, 21), embedding, atol=1e-4)
    # ... and relative to another trajectory's first camera it is that camera's view of the path.
    start = random_rigid(1, seed=4)[0]
    reference = Trajectory(start[None] @ random_rigid(2, seed=5))
    expected = (torch.linalg.inv(reference.c2w[0]) @ trajectory.c2w[::4])[:, :3].reshape(21, 12)
    assert torch.allclose(recammaster_embedding(trajectory, 21, reference=reference), expected, atol=1e-5)


# --- presets: semantics in the OpenCV convention --------------------------------------------------------------

def test_pan_tilt_zoom_move_the_view_the_way_their_names_say():
    right, left = view_direction(preset_trajectory("pan_right")), view_direction(preset_trajectory("pan_left"))
    assert right[0] > 0.3 and left[0] < -0.3  # +x is right
    up, down = view_direction(preset_trajectory("tilt_up")), view_direction(preset_trajectory("tilt_down"))
    assert up[1] < -0.15 and down[1] > 0.15  # +y is down, so looking up has a negative y component
    zoom_in = preset_trajectory("zoom_in")
    assert torch.allclose(zoom_in.rotations[-1], torch.eye(3))
    assert zoom_in.centers[-1, 2] == pytest.approx(1.9876) and preset_trajectory("zoom_out").centers[-1, 2] < -1.9
    for name in PRESET_NAMES:
        assert preset_trajectory(name).starts_at_identity(atol=0)


def test_translate_arc_and_orbit_keep_facing_the_subject():
    assert SUBJECT_DISTANCE == 4.0  # ReCamMaster's translate and arc cameras aim 4 units ahead
    translate_up = preset_trajectory("translate_up")
    assert translate_up.centers[-1, 1] == pytest.approx(-0.99379)  # up is -y
    assert view_direction(translate_up)[1] > 0  # and it tilts down towards the subject
    arc_left = preset_trajectory("arc_left")
    assert arc_left.centers[-1, 0] < -1.9 and view_direction(arc_left)[0] > 0.4  # moves left, turns right
    for name in ("orbit_left", "orbit_right", "arc_right", "translate_down"):
        trajectory = preset_trajectory(name, 33, subject_distance=3.0)
        to_subject = torch.tensor([0.0, 0.0, 3.0]) - trajectory.centers
        cosine = (to_subject * trajectory.rotations[:, :, 2]).sum(1) / to_subject.norm(dim=1)
        assert torch.allclose(cosine, torch.ones(33), atol=1e-5), name
        assert torch.allclose(trajectory.rotations[:, 1, 0], torch.zeros(33), atol=1e-6)  # x stays level: no roll
    orbit = preset_trajectory("orbit_right", 41, subject_distance=2.5)
    assert torch.allclose((orbit.centers - torch.tensor([0.0, 0.0, 2.5])).norm(dim=1), torch.full((41,), 2.5),
                          atol=1e-5)
    assert orbit.centers[-1, 0] == pytest.approx(2.5, abs=1e-5)  # a quarter turn to the right


def test_strength_scales_and_frame_count_keeps_the_total_motion():
    base = preset_trajectory("pan_right", 81)
    double = preset_trajectory("pan_right", 81, strength=2.0)
    assert rotation_angle_deg(double.rotations[-1]) == pytest.approx(2 * rotation_angle_deg(base.rotations[-1]),
                                                                      abs=1e-3)
    assert torch.allclose(preset_trajectory("arc_left", 200).c2w[-1], preset_trajectory("arc_left", 81).c2w[-1],
                          atol=1e-6)
    assert preset_trajectory("arc_left", 200).num_frames == 200
    static = preset_trajectory("translate_down", 9, strength=0.0)
    assert torch.allclose(static.c2w, torch.eye(4).expand(9, 4, 4))


def test_preset_errors_name_the_input_and_the_choices():
    with pytest.raises(ValueError, match="unknown; choose one of pan_right"):
        preset_trajectory("dolly_zoom")
    with pytest.raises(ValueError, match="frames=1 must be at least 2"):
        preset_trajectory("pan_left", 1)
    with pytest.raises(ValueError, match="subject_distance=0"):
        preset_trajectory("orbit_left", subject_distance=0)
    with pytest.raises(ValueError, match="strength=nan must be a finite number"):
        preset_trajectory("tilt_up", strength=float("nan"))


def test_motion_summary_reports_turn_and_travel():
    text = preset_trajectory("arc_right").motion_summary()
    assert text.startswith("arc_right: 81 frames, turns 29.8 deg, travels 2.06 units")


def test_the_ten_presets_match_the_real_recammaster_file(shared_data):
    path = shared_data / "recammaster" / "camera_extrinsics.json"
    for name, cam_index in RECAMMASTER_CAM_INDEX.items():
        parsed = load_recammaster(path, cam_index)
        preset = preset_trajectory(name, 81)
        last_rotation = parsed.rotations[-1].T @ preset.rotations[-1]
        assert rotation_angle_deg(last_rotation) < 0.01, name
        assert (parsed.centers[-1] - preset.centers[-1]).norm() < 1e-3, name
        # Not only the end: every one of the 21 poses agrees.
        assert torch.allclose(preset.resample(21).c2w, parsed.c2w, atol=2e-4), name


# --- preview --------------------------------------------------------------------------------------------------

def test_preview_draws_target_retrieved_memory_and_uncovered_area():
    target = preset_trajectory("pan_right", 81, strength=3.0)
    memory = preset_trajectory("pan_left")
    track = PreviewTrack("pan_left", memory, fov_mask(memory), rank=1, iou=0.3, containment=0.4, score=0.35)
    image = render_camera_preview(target, [track])
    assert image.shape[0] == 1 and image.shape[2] == 1024 and image.shape[3] == 3
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    pixels = image[0].reshape(-1, 3)
    for color in (TARGET_COLOR, UNCOVERED_COLOR, track.color):
        assert (pixels - torch.tensor(color)).abs().amax(1).lt(1e-4).sum() > 50, color
    alone = render_camera_preview(target)
    hatch = (alone[0].reshape(-1, 3) - torch.tensor(UNCOVERED_COLOR)).abs().amax(1).lt(1e-4).sum()
    assert hatch > (pixels - torch.tensor(UNCOVERED_COLOR)).abs().amax(1).lt(1e-4).sum()  # memory covers some
