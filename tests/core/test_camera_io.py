"""Trajectory file parsers: ReCamMaster JSON (against an independent re-computation), RealEstate10K, plain JSON."""

import json
import math

import numpy as np
import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from memv2v_core.camera.trajectory import recammaster_embedding
from memv2v_core.camera.files import CameraFileError, detect_format, load_recammaster, load_trajectory


def recammaster_reference(path, cam_index: int) -> np.ndarray:
    """ReCamMaster's pose preprocessing written out independently with numpy: [21, 12] (its cam_encoder input)."""
    data = json.loads(path.read_text())
    poses = []
    for frame in range(0, 81, 4):
        text = data[f"frame{frame}"][f"cam{cam_index:02d}"]
        rows = [[float(v) for v in row.strip("[] ").split()] for row in text.strip().split("] [")]
        m = np.array(rows).T[:, [1, 2, 0, 3]]
        m[:3, 1] *= -1.0
        m[:3, 3] /= 100.0
        poses.append(m)
    first_inverse = np.linalg.inv(poses[0])
    return np.stack([(first_inverse @ p)[:3].reshape(12) for p in poses])


def unreal_matrix(rotation: np.ndarray, translation) -> str:
    """Format a pose as ReCamMaster's JSON does: rows of the transposed 4x4, translation in the last row."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[3, :3] = translation
    return " ".join("[" + " ".join(f"{v:g}" for v in row) + "]" for row in m) + " "


def write_recammaster(tmp_path, frames=81, cams=2, tweak=None):
    data = {}
    for frame in range(frames):
        data[f"frame{frame}"] = {}
        for cam in range(1, cams + 1):
            angle = math.radians(0.25 * frame * cam)
            rotation = np.array([[math.cos(angle), math.sin(angle), 0], [-math.sin(angle), math.cos(angle), 0],
                                 [0, 0, 1]])
            data[f"frame{frame}"][f"cam{cam:02d}"] = unreal_matrix(rotation, [3390 + frame, 1380, 240])
    if tweak:
        tweak(data)
    path = tmp_path / "camera_extrinsics.json"
    path.write_text(json.dumps(data))
    return path


# --- ReCamMaster ----------------------------------------------------------------------------------------------

def test_recammaster_file_matches_recammasters_own_preprocessing(shared_data):
    path = shared_data / "recammaster" / "camera_extrinsics.json"
    for cam_index in range(1, 11):
        trajectory = load_recammaster(path, cam_index)
        assert trajectory.num_frames == 21 and trajectory.starts_at_identity()
        expected = torch.from_numpy(recammaster_reference(path, cam_index)).float()
        assert torch.allclose(recammaster_embedding(trajectory, 21), expected, atol=1e-5), cam_index
    assert detect_format(path) == "recammaster"
    pan_right = load_trajectory(path, "auto", cam_index=1)
    assert pan_right.rotations[-1][0, 2] > 0.3  # cam01 turns the view to the right (+x)


def test_recammaster_synthetic_file_and_stride(tmp_path):
    path = write_recammaster(tmp_path)
    trajectory = load_recammaster(path, 2)
    # Unreal yaw towards +Y (right) becomes a turn towards +x in OpenCV axes; 0.5 deg per frame for cam02.
    assert trajectory.rotations[-1][0, 2] == pytest.approx(math.sin(math.radians(40)), abs=1e-4)
    assert trajectory.centers[-1, 2] == pytest.approx(0.8, abs=1e-4)  # 80 cm along Unreal X = forward
    assert load_trajectory(path, "recammaster", 2).metadata["cam_index"] == "2"


def test_recammaster_errors_name_file_camera_and_frame(tmp_path):
    path = write_recammaster(tmp_path, frames=61)
    with pytest.raises(CameraFileError, match=r"camera_extrinsics.json'.*cam01 lacks frame64.*all 81 frames"):
        load_recammaster(path, 1)
    path = write_recammaster(tmp_path)
    with pytest.raises(CameraFileError, match=r"cam_index 3 not found; it has cam01, cam02"):
        load_recammaster(path, 3)

    def nan(data):
        data["frame40"]["cam01"] = "[nan 0 0 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]"
    with pytest.raises(CameraFileError, match=r"frame40 cam01: contains NaN"):
        load_recammaster(write_recammaster(tmp_path, tweak=nan), 1)

    def scaled(data):
        data["frame12"]["cam01"] = "[2 0 0 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]"
    with pytest.raises(CameraFileError, match=r"frame12 cam01: rotation is not rigid"):
        load_recammaster(write_recammaster(tmp_path, tweak=scaled), 1)

    def short_row(data):
        data["frame8"]["cam01"] = "[1 0 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]"
    with pytest.raises(CameraFileError, match=r"frame8 cam01: expected 4 bracketed rows of 4 numbers"):
        load_recammaster(write_recammaster(tmp_path, tweak=short_row), 1)
    bad_json = tmp_path / "broken.json"
    bad_json.write_text("{not json")
    with pytest.raises(CameraFileError, match=r"broken.json' is not readable JSON"):
        load_trajectory(bad_json)
    with pytest.raises(CameraFileError, match="does not exist"):
        load_trajectory(tmp_path / "missing.json")


# --- RealEstate10K ---------------------------------------------------------------------------------------------

def realestate_lines(c2w: torch.Tensor) -> list[str]:
    lines = []
    for index, pose in enumerate(c2w):
        w2c = torch.linalg.inv(pose.double())[:3].reshape(12).tolist()
        lines.append(" ".join([str(1000 * index), "0.5", "0.9", "0.5", "0.5", "0", "0"] + [f"{v:.9f}" for v in w2c]))
    return lines


def test_realestate10k_reads_world_to_camera_rows_and_normalised_intrinsics(tmp_path):
    c2w = torch.eye(4).repeat(4, 1, 1)
    axis_angles = torch.tensor([[0.1, 0.2, 0.3]]).repeat(4, 1) * torch.arange(4)[:, None]
    c2w[:, :3, :3] = axis_angle_to_rotation_matrix(axis_angles)
    c2w[:, :3, 3] = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.0, 0.2], [0.2, -0.1, 0.4], [0.3, -0.2, 0.6]])
    path = tmp_path / "clip.txt"
    path.write_text("https://www.youtube.com/watch?v=xyz\n" + "\n".join(realestate_lines(c2w)) + "\n")
    trajectory = load_trajectory(path)
    assert torch.allclose(trajectory.c2w, c2w, atol=1e-5)
    assert trajectory.intrinsics[0, 0] == pytest.approx(0.5 * 832) and trajectory.intrinsics[1, 1] == pytest.approx(432)
    assert trajectory.metadata["format"] == "realestate10k"
    headerless = tmp_path / "headerless.txt"
    headerless.write_text("\n".join(realestate_lines(c2w)))
    assert torch.allclose(load_trajectory(headerless, "realestate10k").c2w, c2w, atol=1e-5)


def test_realestate10k_errors_name_the_line_and_frame(tmp_path):
    c2w = torch.eye(4).repeat(3, 1, 1)
    lines = realestate_lines(c2w)
    path = tmp_path / "short.txt"
    path.write_text("url\n" + lines[0] + "\n" + " ".join(lines[1].split()[:15]) + "\n")
    with pytest.raises(CameraFileError, match=r"short.txt', line 3 \(frame 1\): 15 values, expected 19"):
        load_trajectory(path)
    fields = lines[2].split()
    fields[7] = "3.0"  # stretch the rotation
    path.write_text("url\n" + "\n".join(lines[:2] + [" ".join(fields)]))
    with pytest.raises(ValueError, match=r"short.txt': frame 2 is not a rigid rotation"):
        load_trajectory(path)
    fields[7] = "nan"
    path.write_text("url\n" + "\n".join(lines[:2] + [" ".join(fields)]))
    with pytest.raises(CameraFileError, match=r"frame 2: NaN"):
        load_trajectory(path)
    path.write_text("url only\n")
    with pytest.raises(CameraFileError, match="no camera lines"):
        load_trajectory(path)


# --- plain JSON matrices ---------------------------------------------------------------------------------------

def test_matrices_json_list_and_object_forms(tmp_path):
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[0.0, 0, 0], [0, 0, 1], [0, 0, 2]])
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(c2w.tolist()))
    assert detect_format(listed) == "matrices"
    assert torch.equal(load_trajectory(listed).c2w, c2w)
    three_by_four = tmp_path / "rows.json"
    three_by_four.write_text(json.dumps(c2w[:, :3].tolist()))
    assert torch.equal(load_trajectory(three_by_four, "matrices").c2w, c2w)
    w2c = tmp_path / "w2c.json"
    w2c.write_text(json.dumps({"w2c": torch.linalg.inv(c2w).tolist(), "width": 640, "height": 360,
                               "intrinsics": [[500, 0, 320], [0, 500, 180], [0, 0, 1]]}))
    loaded = load_trajectory(w2c)
    assert torch.allclose(loaded.c2w, c2w) and (loaded.width, loaded.height) == (640, 360)
    assert loaded.intrinsics[0, 0] == 500


def test_opengl_convention_is_converted_to_opencv(tmp_path):
    path = tmp_path / "gl.json"
    path.write_text(json.dumps({"c2w": [torch.eye(4).tolist()], "convention": "opengl"}))
    trajectory = load_trajectory(path)
    # An OpenGL camera at the identity looks down -z with +y up: in OpenCV axes, forward is -z and down is -y.
    assert torch.equal(trajectory.rotations[0][:, 2], torch.tensor([0.0, 0.0, -1.0]))
    assert torch.equal(trajectory.rotations[0][:, 1], torch.tensor([0.0, -1.0, 0.0]))


def test_matrices_json_errors_name_the_frame(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([torch.eye(4).tolist(), torch.eye(3).tolist()]))
    with pytest.raises(CameraFileError, match=r"bad.json', frame 1: shape \[3, 3\], expected 4x4 or 3x4"):
        load_trajectory(path)
    nan_pose = torch.eye(4).tolist()
    nan_pose[0][3] = float("nan")
    path.write_text(json.dumps([torch.eye(4).tolist(), torch.eye(4).tolist(), nan_pose]))
    with pytest.raises(ValueError, match=r"bad.json': frame 2 contains NaN"):
        load_trajectory(path)
    sheared = torch.eye(4)
    sheared[0, 1] = 0.5
    path.write_text(json.dumps([sheared.tolist()]))
    with pytest.raises(ValueError, match=r"bad.json': frame 0 is not a rigid rotation"):
        load_trajectory(path)
    path.write_text(json.dumps({"poses": []}))
    with pytest.raises(CameraFileError, match=r"'c2w' \(or 'w2c'\) list; found keys \['poses'\]"):
        load_trajectory(path)
    path.write_text(json.dumps({"c2w": [torch.eye(4).tolist()], "convention": "unity"}))
    with pytest.raises(CameraFileError, match="convention 'unity' is unknown"):
        load_trajectory(path)
    with pytest.raises(CameraFileError, match="format 'colmap' is unknown"):
        load_trajectory(path, "colmap")
