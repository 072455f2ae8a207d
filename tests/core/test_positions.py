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
        None, [(f"s{i}", lat, None, None) for i, lat in enumerate(latents)], mode="edit", target_frames=3,
        previous_entry="s0",
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


def _edit_context(previous_entry):
    memories = [(f"seg{i}", torch.zeros(1, 4, 5, 4, 4), 0.9 - 0.1 * n, None) for n, i in enumerate((1, 3, 0))]
    return build_context(None, memories, "edit", target_frames=5, previous_entry=previous_entry)


def test_edit_without_the_previous_segment_gives_every_memory_the_memory_range():
    context = _edit_context(None)
    assert [s.role for s in context.streams] == ["memory"] * 3 and context.previous is None
    for stream in context.streams:  # nobody takes T..2T-1 = 5..9
        assert _list(stream.temporal_ids) == [14.0, 13.0, 12.0, 11.0, 10.0]


def test_edit_previous_segment_ranked_second_alone_takes_the_previous_range():
    context = _edit_context("seg3")  # retrieval ranked seg1 first, seg3 (= i-1) second
    assert [s.role for s in context.streams] == ["memory", "previous", "memory"]
    assert context.previous is context.streams[1]
    assert _list(context.streams[1].temporal_ids) == [9.0, 8.0, 7.0, 6.0, 5.0]  # T..2T-1, reversed
    assert _list(context.streams[0].temporal_ids) == _list(context.streams[2].temporal_ids) == [14.0, 13.0, 12.0,
                                                                                                11.0, 10.0]
    assert [s.kernel for s in context.streams] == [(1, 4, 4)] * 3  # kernels still follow the retrieval rank
    assert [s.rank for s in context.streams] == [0, 1, 2]


def test_previous_entry_must_be_one_of_the_memories_and_only_in_edit_mode():
    with pytest.raises(ValueError, match="previous_entry \\('seg7'\\) appears 0 times"):
        _edit_context("seg7")
    with pytest.raises(ValueError, match="only mode 'edit' has a previous segment"):
        build_context(torch.zeros(1, 4, 5, 4, 4), [("a", torch.zeros(1, 4, 5, 4, 4), 1.0, None)], "nvs",
                      previous_entry="a")
    with pytest.raises(ValueError, match="2 streams have role 'previous'"):
        temporal_ids("edit", T, ["previous", "previous"], [T, T])


def _newer_comfy_video_ids(t, h, w, rope_options, dtype=torch.float32):
    """Video RoPE ids as newer ComfyUI's WanModel.rope_encode builds them (patch 1x2x2 already applied: t, h, w are
    token counts): lengths scaled by (len-1)*scale+1, starts shifted, then linspace per axis in the latent dtype."""
    t_len, h_len, w_len = float(t), float(h), float(w)
    t_start = h_start = w_start = 0.0
    t_len = (t_len - 1.0) * rope_options.get("scale_t", 1.0) + 1.0
    h_len = (h_len - 1.0) * rope_options.get("scale_y", 1.0) + 1.0
    w_len = (w_len - 1.0) * rope_options.get("scale_x", 1.0) + 1.0
    t_start += rope_options.get("shift_t", 0.0)
    h_start += rope_options.get("shift_y", 0.0)
    w_start += rope_options.get("shift_x", 0.0)
    ids = torch.zeros(t, h, w, 3, dtype=dtype)
    ids[..., 0] += torch.linspace(t_start, t_start + (t_len - 1), steps=t, dtype=dtype).reshape(-1, 1, 1)
    ids[..., 1] += torch.linspace(h_start, h_start + (h_len - 1), steps=h, dtype=dtype).reshape(1, -1, 1)
    ids[..., 2] += torch.linspace(w_start, w_start + (w_len - 1), steps=w, dtype=dtype).reshape(1, 1, -1)
    return ids.reshape(-1, 3)


ROPE_OPTIONS = {"scale_t": 0.5, "shift_t": 3.0, "scale_y": 2.0, "shift_y": -1.5, "scale_x": 1.25, "shift_x": 4.0}


def test_memory_positions_move_as_scale_rope_moves_the_video_positions():
    from memv2v_core.memory.positions import scale_shift_positions

    t, h, w = 4, 3, 5
    grid = _newer_comfy_video_ids(t, h, w, {})  # plain ids: (i, j, k)
    moved = _newer_comfy_video_ids(t, h, w, ROPE_OPTIONS)
    # a memory token at a video token's place lands on that token's moved place ...
    torch.testing.assert_close(scale_shift_positions(grid, ROPE_OPTIONS), moved, rtol=0, atol=1e-5)
    # ... and memory positions off the grid (coarse centres, other temporal ranges) move by the same affine map
    memory = torch.tensor([[2 * t + 0.0, 0.5, 2.5], [t + 3.0, 1.5, 1.5], [-10.0, 0.0, 0.0]])
    expected = torch.tensor([[3.0 + 0.5 * 8, -1.5 + 2.0 * 0.5, 4.0 + 1.25 * 2.5],
                             [3.0 + 0.5 * 7, -1.5 + 2.0 * 1.5, 4.0 + 1.25 * 1.5],
                             [3.0 - 0.5 * 10, -1.5, 4.0]])
    torch.testing.assert_close(scale_shift_positions(memory, ROPE_OPTIONS), expected, rtol=0, atol=1e-6)
    # missing keys are ComfyUI's defaults (scale 1, shift 0): nothing moves
    assert torch.equal(scale_shift_positions(memory, {}), memory)


def test_scaled_positions_are_rounded_through_the_latent_dtype_like_the_video_ids():
    from memv2v_core.memory.positions import scale_shift_positions

    options = {"scale_t": 1.1, "shift_x": 0.3}
    grid = _newer_comfy_video_ids(21, 2, 2, {})
    video_bf16 = _newer_comfy_video_ids(21, 2, 2, options, dtype=torch.bfloat16).float()
    memory = scale_shift_positions(grid, options, dtype=torch.bfloat16)
    assert memory.dtype == torch.float32
    assert torch.equal(memory, memory.to(torch.bfloat16).float())  # representable in bf16, as the video ids are
    assert float((memory - video_bf16).abs().max()) <= 0.125  # one bf16 step at |t| < 32: same grid as the video
    with pytest.raises(ValueError, match="rope_options\\['scale_t'\\]"):
        scale_shift_positions(grid, {"scale_t": "wide"})


def test_the_previous_segment_is_found_by_index_and_source_not_by_rank():
    from memv2v_core.memory.context import SegmentFacts, previous_segment_entry

    selected = [SegmentFacts("e1", 1, "vid"), SegmentFacts("e3", 3, "vid"), SegmentFacts("x3", 3, "other"),
                SegmentFacts("e0", 0, "vid")]
    assert previous_segment_entry(selected, 4, "vid") == "e3"  # ranked second: still found
    assert previous_segment_entry(selected, 4, "other") == "x3"  # another video's segment 3 is not ours
    assert previous_segment_entry(selected, 3, "vid") is None  # segment 2 was not retrieved / not in the bank
    assert previous_segment_entry(selected, 0, "vid") is None  # segment 0 has no previous segment
    with pytest.raises(ValueError, match="segment 3 of several source videos"):
        previous_segment_entry(selected, 4, None)
    assert previous_segment_entry(selected[:2], 2, None) == "e1"
    # index unknown: retrieval's mark decides, and without one there is no previous segment
    marked = [SegmentFacts("a"), SegmentFacts("b", marked_previous=True)]
    assert previous_segment_entry(marked, None) == "b"
    assert previous_segment_entry(marked[:1], None) is None
