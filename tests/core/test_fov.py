"""VideoFOV masks and scores: the grid, packing, visibility semantics, scores, ranking and the ten-preset matrix."""

import math

import numpy as np
import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from memv2v_core.camera.files import load_recammaster
from memv2v_core.camera.trajectory import Trajectory
from memv2v_core.camera.presets import RECAMMASTER_CAM_INDEX, preset_trajectory
from memv2v_core.retrieval.fov import (GRID_COLS, GRID_POINTS, GRID_ROWS, PACKED_BYTES, FOVParams, fov_mask, fov_overlap,
                             fov_scores, mask_key, pack_mask, popcount, popcount_table, retrieve, sphere_directions,
                             unpack_mask)


def grid(mask: torch.Tensor) -> torch.Tensor:
    return unpack_mask(mask).reshape(GRID_ROWS, GRID_COLS)


def column_range(mask: torch.Tensor) -> tuple[int, int]:
    columns = grid(mask).any(0).nonzero().flatten()
    return int(columns.min()), int(columns.max())


def row_range(mask: torch.Tensor) -> tuple[int, int]:
    rows = grid(mask).any(1).nonzero().flatten()
    return int(rows.min()), int(rows.max())


def single_pose(trajectory: Trajectory, frame: int) -> Trajectory:
    return trajectory.with_poses(trajectory.c2w[frame][None])


def test_grid_is_the_papers_latitude_longitude_cell_centres():
    directions = sphere_directions()
    assert directions.shape == (GRID_POINTS, 3) == (64800, 3)
    assert torch.allclose(directions.norm(dim=1), torch.ones(GRID_POINTS), atol=1e-6)
    as_grid = directions.reshape(GRID_ROWS, GRID_COLS, 3)
    # Row 0 is latitude -89.5 (up, -y); longitude 0 (+z) lies between columns 179 and 180; +x is to the right.
    assert as_grid[0, 0, 1] == pytest.approx(-math.cos(math.radians(0.5)), abs=1e-6)
    assert torch.allclose(as_grid[90, 180], torch.tensor([math.cos(math.radians(0.5)) * math.sin(math.radians(0.5)),
                                                          math.sin(math.radians(0.5)),
                                                          math.cos(math.radians(0.5)) ** 2]), atol=1e-6)
    assert as_grid[90, 270, 0] > 0.99  # longitude +90.5: the camera's right


def test_pack_and_unpack_round_trip_in_numpy_packbits_order():
    bits = torch.rand(3, GRID_POINTS, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_mask(bits)
    assert packed.shape == (3, PACKED_BYTES) and packed.dtype == torch.uint8
    assert np.array_equal(packed.numpy(), np.packbits(bits.numpy(), axis=-1))
    assert torch.equal(unpack_mask(packed), bits)
    assert torch.equal(popcount(packed), bits.sum(1)) and torch.equal(popcount_table(packed), bits.sum(1))
    with pytest.raises(ValueError, match="bit-packed uint8 tensor"):
        unpack_mask(torch.zeros(8100, dtype=torch.int32))


def test_static_camera_sees_a_centred_window_of_its_field_of_view():
    mask = fov_mask(Trajectory.identity(1))
    first, last = column_range(mask)
    assert last - first + 1 == pytest.approx(73.74, abs=1.5) and (first + last) / 2 == pytest.approx(179.5, abs=1)
    top, bottom = row_range(mask)
    vertical = 2 * math.degrees(math.atan(math.tan(math.radians(73.74 / 2)) * 480 / 832))
    assert bottom - top + 1 == pytest.approx(vertical, abs=1.5) and (top + bottom) / 2 == pytest.approx(89.5, abs=1)
    narrow = fov_mask(Trajectory.identity(1), hfov_deg=30.0)
    assert column_range(narrow)[1] - column_range(narrow)[0] + 1 == pytest.approx(30, abs=1.5)


def test_identical_trajectories_score_one():
    for name in ("pan_left", "arc_right", "zoom_out", "orbit_left"):
        trajectory = preset_trajectory(name)
        assert fov_scores(trajectory, [trajectory]) == [pytest.approx(1.0)]


def test_a_pure_pan_shifts_the_fov_sideways():
    pan = preset_trajectory("pan_right", 81)
    start, end = fov_mask(single_pose(pan, 0)), fov_mask(single_pose(pan, -1))
    shift = sum(column_range(end)) / 2 - sum(column_range(start)) / 2
    assert shift == pytest.approx(19.88, abs=1.0)  # to the right, by the pan angle
    assert row_range(end) == row_range(start)  # and not up or down
    tilt = preset_trajectory("tilt_up", 81)
    tilt_end = fov_mask(single_pose(tilt, -1))
    assert sum(row_range(tilt_end)) / 2 - 89.5 == pytest.approx(-9.94, abs=1.0)  # tilt up: towards row 0
    union = fov_mask(pan)
    assert column_range(union)[0] == column_range(start)[0] and column_range(union)[1] == column_range(end)[1]


def test_a_dolly_barely_changes_the_fov():
    static = fov_mask(Trajectory.identity(1))
    # Paper radius 1: moving forward inside the sphere only shrinks each frame's patch, so the union is unchanged.
    assert fov_scores(static, [fov_mask(preset_trajectory("zoom_in"))]) == [pytest.approx(1.0, abs=0.02)]
    far = FOVParams(radius=100.0)  # a large sphere compares viewing directions: both dollies stay put
    for name in ("zoom_in", "zoom_out"):
        iou, _ = fov_overlap(fov_mask(Trajectory.identity(1), far), fov_mask(preset_trajectory(name), far)[None])
        assert float(iou[0]) > 0.9, name


def test_disjoint_views_score_near_zero():
    backwards = torch.eye(4)[None].clone()
    backwards[0, :3, :3] = axis_angle_to_rotation_matrix(torch.tensor([[0.0, math.pi, 0.0]]))
    assert fov_scores(Trajectory.identity(1), [Trajectory(backwards)]) == [pytest.approx(0.0, abs=1e-3)]


def test_containment_is_the_share_of_the_target_covered():
    static = Trajectory.identity(1)
    iou, containment = fov_overlap(fov_mask(static), fov_mask(preset_trajectory("pan_right"))[None])
    assert float(containment[0]) == pytest.approx(1.0) and float(iou[0]) < 0.9  # the pan sees all of it and more
    lam_one = fov_scores(static, [preset_trajectory("pan_right")], lam=1.0)
    assert lam_one == [pytest.approx(float(iou[0]))]
    empty = torch.zeros(PACKED_BYTES, dtype=torch.uint8)
    iou, containment = fov_overlap(empty, torch.stack([empty, fov_mask(static)]))
    assert iou.tolist() == [0.0, 0.0] and containment.tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"lambda=1.5 must lie in \[0, 1\]"):
        fov_scores(static, [static], lam=1.5)


def test_scores_are_relative_to_the_target_first_camera():
    target, candidate = preset_trajectory("pan_right"), preset_trajectory("arc_left")
    move = torch.eye(4)
    move[:3, :3] = axis_angle_to_rotation_matrix(torch.tensor([[0.3, -1.1, 0.4]]))[0]
    move[:3, 3] = torch.tensor([5.0, -2.0, 7.0])
    moved_target, moved_candidate = target.with_poses(move @ target.c2w), candidate.with_poses(move @ candidate.c2w)
    assert fov_scores(moved_target, [moved_candidate]) == pytest.approx(fov_scores(target, [candidate]), abs=1e-3)
    assert torch.equal(fov_mask(moved_candidate, reference=moved_target),
                       fov_mask(moved_candidate.relative_to(moved_target)))


def test_retrieve_ranks_best_first_and_tolerates_any_k():
    target = preset_trajectory("pan_right")
    candidates = [preset_trajectory(n) for n in ("tilt_up", "pan_right", "zoom_out", "arc_right")]
    ranked = retrieve(target, candidates, k=2)
    assert [index for index, _ in ranked] == [1, 3] and ranked[0][1] == pytest.approx(1.0)
    everything = retrieve(target, candidates, k=10)
    assert len(everything) == 4 and [s for _, s in everything] == sorted((s for _, s in everything), reverse=True)
    assert retrieve(target, candidates, k=0) == [] and retrieve(target, [], k=3) == []
    same = retrieve(target, [candidates[0], candidates[0]], k=2)
    assert [index for index, _ in same] == [0, 1]  # ties keep the input order
    with pytest.raises(ValueError, match="top_k=-1"):
        retrieve(target, candidates, k=-1)


def test_mask_key_names_the_settings():
    assert mask_key() == "fov_mask" and mask_key(FOVParams()) == "fov_mask"
    assert mask_key(FOVParams(radius=10.0)) == "fov_mask_832x480_hfov73p74_r10"
    assert len({mask_key(FOVParams(radius=r)) for r in (1.0, 2.0, 2.5)}) == 3
    with pytest.raises(ValueError, match="sphere radius -1"):
        FOVParams(radius=-1)
    with pytest.raises(ValueError, match="unknown FOV setting"):
        fov_mask(Trajectory.identity(1), focal=3)


def test_ten_recammaster_trajectories_score_sensibly(shared_data):
    path = shared_data / "recammaster" / "camera_extrinsics.json"
    names = list(RECAMMASTER_CAM_INDEX)
    masks = torch.stack([fov_mask(load_recammaster(path, i)) for i in RECAMMASTER_CAM_INDEX.values()])
    preset_masks = torch.stack([fov_mask(preset_trajectory(name)) for name in names])
    rows = [fov_overlap(masks[i], masks) for i in range(10)]
    iou = torch.stack([r[0] for r in rows])
    score = torch.stack([0.5 * r[0] + 0.5 * r[1] for r in rows])
    assert torch.allclose(iou, iou.T) and torch.allclose(iou.diagonal(), torch.ones(10, dtype=iou.dtype))
    s = {(a, b): float(score[names.index(a), names.index(b)]) for a in names for b in names}
    assert s["pan_left", "arc_left"] > s["pan_left", "tilt_up"]
    assert s["pan_right", "arc_right"] > s["pan_right", "tilt_down"]
    assert s["tilt_up", "translate_up"] > s["tilt_up", "translate_down"]
    assert s["pan_right", "arc_right"] == pytest.approx(s["pan_left", "arc_left"], abs=0.01)  # mirror symmetry
    assert s["zoom_in", "pan_right"] > s["zoom_in", "zoom_out"]
    # Presets and parsed file give (nearly) the same masks.
    agree = [float(fov_overlap(masks[i], preset_masks[i][None])[0][0]) for i in range(10)]
    assert min(agree) > 0.99
