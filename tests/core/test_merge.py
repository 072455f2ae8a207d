"""Adaptive token merging: frame responsiveness, the merge plan and frame pooling."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from memv2v_core.memory.merge import (
    default_pool_factor,
    frame_responsiveness,
    merge_frames,
    merge_plan,
    pool_grid_mean,
)
from memv2v_core.memory.tokenize import TokenLayout, embed_latent


def _reference_responsiveness(q, k, token_frame, frames):
    """Straightforward formula: mean key per frame, softmax over frames per query and head, mean heads, max queries."""
    mean_keys = torch.stack([k[:, token_frame == f].mean(dim=1) for f in range(frames)], dim=1)  # [B, F, H, d]
    logits = torch.einsum("bqhd,bfhd->bqhf", q, mean_keys) / math.sqrt(q.shape[-1])
    return logits.softmax(-1).mean(2).amax(1)


def test_the_frame_whose_keys_match_the_target_queries_ranks_highest():
    torch.manual_seed(0)
    heads, dim, frames, per_frame = 2, 16, 5, 6
    direction = torch.randn(heads, dim)
    q = direction.expand(1, 40, heads, dim) * 3 + 0.1 * torch.randn(1, 40, heads, dim)
    k = 0.5 * torch.randn(1, frames * per_frame, heads, dim)
    token_frame = torch.arange(frames).repeat_interleave(per_frame)
    k[:, token_frame == 3] += direction * 3
    scores = frame_responsiveness(q, k, token_frame, frames)
    assert scores.shape == (1, frames)
    assert int(scores.argmax()) == 3
    torch.testing.assert_close(scores, _reference_responsiveness(q, k, token_frame, frames))
    assert merge_plan(scores, 0.8) == tuple(f for f in range(frames) if f != 3)


def test_chunked_equals_unchunked_and_handles_uneven_frames():
    torch.manual_seed(1)
    q, k = torch.randn(2, 37, 3, 8), torch.randn(2, 23, 3, 8)
    token_frame = torch.tensor([0] * 9 + [1] * 4 + [2] * 10)
    whole = frame_responsiveness(q, k, token_frame, 3, chunk=10_000)
    for chunk in (1, 5, 36):
        torch.testing.assert_close(frame_responsiveness(q, k, token_frame, 3, chunk=chunk), whole)
    torch.testing.assert_close(whole, _reference_responsiveness(q, k, token_frame, 3))


def test_frames_without_tokens_score_zero_and_do_not_take_softmax_mass():
    torch.manual_seed(2)
    q, k = torch.randn(1, 8, 2, 4), torch.randn(1, 6, 2, 4)
    token_frame = torch.tensor([0, 0, 0, 2, 2, 2])
    scores = frame_responsiveness(q, k, token_frame, 3)
    assert scores[0, 1] == 0
    k_two = k.clone()
    torch.testing.assert_close(scores[:, [0, 2]], frame_responsiveness(q, k_two, torch.tensor([0, 0, 0, 1, 1, 1]), 2))


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_footprint_grows_with_queries_times_frames_not_queries_times_memory_tokens():
    heads, dim, frames, chunk = 2, 4, 8, 256
    n_target, n_memory = 4096, 4096
    q, k = torch.randn(1, n_target, heads, dim), torch.randn(1, n_memory, heads, dim)
    token_frame = torch.arange(frames).repeat_interleave(n_memory // frames)
    with _LargestOutput() as probe:
        frame_responsiveness(q, k, token_frame, frames, chunk=chunk)
    # largest intermediate: a copy of the keys or of a query chunk, or chunk x heads x F logits
    assert probe.largest <= max(n_memory * heads * dim, chunk * heads * dim, chunk * heads * frames)
    assert probe.largest * 100 < n_target * n_memory  # never anything like the N_target x N_memory attention matrix


def test_merge_plan_picks_the_least_responsive_fraction_with_stable_ties():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.1, 0.3, 0.7])
    assert merge_plan(scores, 0.5) == (1, 3, 4)
    assert merge_plan(scores, 0.0) == ()
    assert merge_plan(torch.tensor([0.2, 0.2, 0.2, 0.2]), 0.5) == (0, 1)  # ties: earlier frames first
    assert merge_plan(scores, 0.5, candidates=torch.tensor([1, 0, 1, 0, 1, 1], dtype=torch.bool)) == (0, 4)
    assert merge_plan(torch.stack([scores, scores.flip(0)]), 0.34) == (1, 4)  # rows averaged: 0.6 0.2 0.5 0.5 0.2 0.6
    with pytest.raises(ValueError, match="ratio"):
        merge_plan(scores, 1.5)


def test_merge_pools_selected_frames_2x2_and_leaves_others_untouched():
    layout = TokenLayout(((2, 2), (2, 4), (1, 3)), (0, 1, 1), (False, True, True))
    tokens = torch.arange(2 * layout.num_tokens * 3, dtype=torch.float32).reshape(2, layout.num_tokens, 3)
    positions = torch.stack([torch.zeros(15), torch.arange(15.0), -torch.arange(15.0)], dim=1)
    new_tokens, new_positions, new_layout = merge_frames(tokens, positions, layout, [1])
    assert new_layout.frame_grids == ((2, 2), (1, 2), (1, 3))
    assert torch.equal(new_tokens[:, :4], tokens[:, :4]) and torch.equal(new_tokens[:, 6:], tokens[:, 12:])
    frame = tokens[:, 4:12].reshape(2, 2, 4, 3)
    torch.testing.assert_close(new_tokens[:, 4], frame[:, :, :2].reshape(2, 4, 3).mean(1))
    torch.testing.assert_close(new_tokens[:, 5], frame[:, :, 2:].reshape(2, 4, 3).mean(1))
    torch.testing.assert_close(new_positions[4], positions[[4, 5, 8, 9]].mean(0))


def test_odd_grids_pool_partial_edge_windows_over_the_cells_that_exist():
    grid = torch.arange(15.0).reshape(1, 1, 3, 5)
    pooled = pool_grid_mean(grid, 2)
    assert pooled.shape == (1, 1, 2, 3)
    assert pooled[0, 0, 0, 2] == (4 + 9) / 2  # 2x1 edge window
    assert pooled[0, 0, 1, 0] == (10 + 11) / 2  # 1x2 edge window
    assert pooled[0, 0, 1, 2] == 14  # 1x1 corner


def test_pooled_fine_tokens_land_on_the_coarse_tokenizer_positions():
    latent = torch.zeros(1, 1, 1, 16, 16)
    _, fine_pos, fine_layout = embed_latent(latent, torch.zeros(1, 1, 1, 4, 4), None, (1, 4, 4))
    _, coarse_pos, _ = embed_latent(latent, torch.zeros(1, 1, 1, 8, 8), None, (1, 8, 8))
    _, merged_pos, merged_layout = merge_frames(torch.zeros(1, 16, 1), fine_pos, fine_layout, [0])
    assert merged_layout.frame_grids == ((2, 2),)
    assert torch.equal(merged_pos, coarse_pos)


def test_a_learned_operator_replaces_pooling_and_floor_sized_outputs_crop_positions():
    layout = TokenLayout(((3, 3),), (0,), (True,))
    tokens = torch.randn(1, 9, 4)
    positions = torch.stack(
        torch.meshgrid(torch.zeros(1), torch.arange(3.0), torch.arange(3.0), indexing="ij"), -1
    ).reshape(-1, 3)
    conv = torch.nn.Conv2d(4, 4, 2, stride=2)  # 3x3 -> 1x1 (floor)
    new_tokens, new_positions, new_layout = merge_frames(tokens, positions, layout, [0], operator=conv)
    assert new_layout.frame_grids == ((1, 1),)
    torch.testing.assert_close(
        new_tokens, conv(tokens.transpose(1, 2).reshape(1, 4, 3, 3)).reshape(1, 4, 1).transpose(1, 2)
    )
    assert new_positions.tolist() == [[0.0, 0.5, 0.5]]
    with pytest.raises(ValueError, match="operator"):
        merge_frames(tokens, positions, layout, [0], operator=lambda g: g.repeat(1, 1, 2, 2))


def test_a_learned_operator_larger_than_a_frame_falls_back_to_pooling_that_frame():
    from memv2v_core.checkpoints import ConvMergeOperator

    layout = TokenLayout(((1, 1), (2, 2)), (0, 0), (True, True))  # a 1x1 frame cannot take a 2x2 strided conv
    tokens, positions = torch.randn(1, 5, 4), torch.randn(5, 3)
    operator = ConvMergeOperator(torch.randn(4, 4, 2, 2), None)
    new_tokens, _, new_layout = merge_frames(tokens, positions, layout, [0, 1], operator=operator)
    assert new_layout.frame_grids == ((1, 1), (1, 1))
    assert torch.equal(new_tokens[:, 0], tokens[:, 0])  # pooled alone: unchanged
    torch.testing.assert_close(new_tokens[:, 1], operator(tokens[:, 1:].transpose(1, 2).reshape(1, 4, 2, 2))[..., 0, 0])


def test_discard_mode_drops_frames_but_keeps_frame_ids():
    layout = TokenLayout(((1, 2), (1, 2), (1, 2)), (0, 0, 0), (True, True, True))
    tokens, positions = torch.randn(1, 6, 2), torch.randn(6, 3)
    new_tokens, new_positions, new_layout = merge_frames(tokens, positions, layout, [1], mode="discard")
    assert new_layout.frame_grids == ((1, 2), (0, 0), (1, 2))
    assert torch.equal(new_tokens, tokens[:, [0, 1, 4, 5]]) and torch.equal(new_positions, positions[[0, 1, 4, 5]])
    with pytest.raises(ValueError, match="mode"):
        merge_frames(tokens, positions, layout, [1], mode="squash")


def test_merge_frames_rejects_frames_out_of_range():
    layout = TokenLayout(((1, 1),), (0,), (True,))
    with pytest.raises(ValueError, match="out of range"):
        merge_frames(torch.zeros(1, 1, 2), torch.zeros(1, 3), layout, [3])


def test_default_pool_factor_grows_with_the_memory_count():
    assert [default_pool_factor(k) for k in (1, 6, 7, 10, 12, 13)] == [2, 2, 4, 4, 4, 6]
