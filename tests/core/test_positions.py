"""Temporal RoPE ids: disjoint NVS and editing ranges, reversal at inference, StoryMem's negative shift."""

import pytest
import torch

from memv2v_core.memory.context import build_context
from memv2v_core.memory.positions import apply_temporal_ids, range_ids, temporal_ids

T = 21


def _list(t):
    return [float(v) for v in t.tolist()]


def test_nvs_ranges_target_user_and_shared_memory_range():
    ids = temporal_ids("nvs", T, ["user", "memory", "memory"], [T, T, T])
    assert _list(ids.target) == list(range(0, 21))
    assert _list(ids.streams[0]) == list(range(21, 42))
    assert _list(ids.streams[1]) == list(range(42, 63))
    assert torch.equal(ids.streams[1], ids.streams[2])  # every memory shares 2T..3T-1


def test_edit_ranges_are_reversed_so_the_last_frame_is_nearest_the_target():
    ids = temporal_ids("edit", T, ["previous", "memory", "memory"], [T, T, T])
    assert _list(ids.target) == list(range(0, 21))
    assert _list(ids.streams[0]) == list(range(41, 20, -1))  # frame 0 -> 2T-1, last frame -> T
    assert _list(ids.streams[1]) == list(range(62, 41, -1))  # last frame -> 2T
    assert ids.streams[0][-1] == T and ids.streams[1][-1] == 2 * T


def test_edit_without_reversal_keeps_chronological_order():
    ids = temporal_ids("edit", T, ["previous", "memory"], [T, T], reverse=False)
    assert _list(ids.streams[0]) == list(range(21, 42))
    assert _list(ids.streams[1]) == list(range(42, 63))


def test_story_memories_sit_in_the_past_with_gap_s():
    ids = temporal_ids("story", 21, ["memory"] * 3, [1, 1, 1])
    assert [_list(s) for s in ids.streams] == [[-15.0], [-10.0], [-5.0]]
    assert _list(ids.target) == list(range(21))
    wider = temporal_ids("story", 5, ["memory", "memory"], [2, 1], story_gap=3.0)
    assert [_list(s) for s in wider.streams] == [[-9.0, -6.0], [-3.0]]  # M = 3 memory frames in total


def test_shorter_streams_keep_unit_spacing_from_the_slot_nearest_the_target():
    ids = temporal_ids("nvs", T, ["user", "memory"], [5, 5])
    assert _list(ids.streams[0]) == [21, 22, 23, 24, 25]
    assert _list(ids.streams[1]) == [42, 43, 44, 45, 46]
    edit = temporal_ids("edit", T, ["previous", "memory"], [5, 5])
    assert _list(edit.streams[0]) == [25, 24, 23, 22, 21]
    assert _list(edit.streams[1]) == [46, 45, 44, 43, 42]


def test_longer_streams_are_spread_over_their_range_and_never_spill():
    ids = temporal_ids("nvs", T, ["user", "memory"], [31, 41])
    for stream, (low, high) in zip(ids.streams, [(21, 41), (42, 62)]):
        assert stream.min() == low and stream.max() == high
        assert bool((stream.diff() > 0).all())
    reversed_ids = temporal_ids("edit", T, ["previous"], [31]).streams[0]
    assert reversed_ids[0] == 41 and reversed_ids[-1] == 21
    assert torch.equal(range_ids(21, 21, 31, reverse=True), range_ids(21, 21, 31).flip(0))


@pytest.mark.parametrize(
    "mode, roles, words",
    [("nvs", ["previous"], "'previous' is not used in mode 'nvs'"), ("edit", ["user"], "'user' is not used in mode"),
     ("story", ["user"], "'user' is not used in mode 'story'"), ("bogus", ["memory"], "mode \\('bogus'\\) must be")],
)
def test_roles_outside_their_mode_are_rejected(mode, roles, words):
    with pytest.raises(ValueError, match=words):
        temporal_ids(mode, T, roles, [T])


def test_apply_temporal_ids_maps_local_frame_indices():
    positions = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0.5, 2.5], [2.0, 1.5, 1.5]])
    out = apply_temporal_ids(positions, torch.tensor([10.0, 9.0, 8.0]))
    assert out[:, 0].tolist() == [10.0, 9.0, 8.0]
    assert torch.equal(out[:, 1:], positions[:, 1:])


def test_build_context_in_edit_mode_marks_the_previous_segment_and_reverses():
    latents = [torch.zeros(1, 4, 3, 4, 4) for _ in range(3)]
    context = build_context(
        None, [(f"s{i}", lat, None, None) for i, lat in enumerate(latents)], mode="edit", target_frames=3
    )
    assert [s.role for s in context.streams] == ["previous", "memory", "memory"]
    assert _list(context.streams[0].temporal_ids) == [5, 4, 3]
    assert _list(context.streams[2].temporal_ids) == [8, 7, 6]
    with pytest.raises(ValueError, match="user_latent"):
        build_context(latents[0], [], mode="edit")


def test_build_context_in_story_mode_uses_the_negative_shift():
    frames = [torch.zeros(1, 4, 1, 4, 4) for _ in range(2)]
    context = build_context(
        None, [(f"k{i}", f, None, None) for i, f in enumerate(frames)], mode="story", target_frames=4
    )
    assert [_list(s.temporal_ids) for s in context.streams] == [[-10.0], [-5.0]]
    with pytest.raises(ValueError, match="target_frames"):
        build_context(None, [], mode="story")
