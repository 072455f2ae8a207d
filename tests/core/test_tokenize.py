"""Dynamic tokenization: kernel plan, training-free tokenizer weights, coarse tokens and their positions, budgets."""

import pytest
import torch
import torch.nn.functional as F

from memv2v_core.memory.context import build_context, context_layout, embed_context, token_budget
from memv2v_core.memory.tokenize import (
    DerivedTokenizer,
    KernelPlan,
    TokenLayout,
    derive_kernel,
    embed_latent,
    grid_size,
    tokens_per_stream,
)

WAN_LATENT = (21, 60, 104)  # 81 frames at 480x832 through the Wan 2.1 VAE


def test_kernel_plan_sends_top_ranks_to_fine_and_the_rest_to_coarse():
    plan = KernelPlan()
    assert plan.user == (1, 2, 2)
    assert [plan.kernel_for_rank(r) for r in range(5)] == [(1, 4, 4)] * 3 + [(1, 8, 8)] * 2
    assert KernelPlan(fine_ranks=1).kernel_for_rank(1) == (1, 8, 8)


@pytest.mark.parametrize("kwargs, words", [
    ({"fine": (1, 4)}, r"KernelPlan.fine \(\(1, 4\)\) must be three positive integers"),
    ({"coarse": (2, 8, 8)}, "has temporal size 2"),
    ({"user": (1, 0, 2)}, r"KernelPlan.user \(\(1, 0, 2\)\) must be three positive integers"),
    ({"fine_ranks": -1}, r"fine_ranks \(-1\) must be an integer >= 0"),
])
def test_kernel_plan_rejects_bad_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        KernelPlan(**kwargs)


def test_kernel_for_rank_rejects_negative_rank():
    with pytest.raises(ValueError, match="rank"):
        KernelPlan().kernel_for_rank(-1)


@pytest.mark.parametrize("kernel, pool", [((1, 4, 4), 2), ((1, 8, 8), 4), ((1, 4, 8), (2, 4))])
def test_derived_kernel_equals_average_pool_then_base_kernel(kernel, pool):
    torch.manual_seed(0)
    base = torch.randn(6, 4, 1, 2, 2, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    latent = torch.randn(2, 4, 3, 16, 24, dtype=torch.float64)
    pool = pool if isinstance(pool, tuple) else (pool, pool)
    expected = F.conv3d(F.avg_pool3d(latent, (1, *pool)), base, bias, stride=(1, 2, 2))
    derived = derive_kernel(base, kernel)
    assert derived.shape == (6, 4, *kernel)
    actual = F.conv3d(latent, derived, bias, stride=kernel)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_derive_kernel_rejects_a_kernel_that_is_not_a_multiple_of_the_base():
    with pytest.raises(ValueError, match="multiple"):
        derive_kernel(torch.zeros(4, 2, 1, 2, 2), (1, 3, 3))


def test_derived_tokenizer_returns_base_weights_for_the_base_kernel_and_caches_others():
    base, bias = torch.randn(4, 2, 1, 2, 2), torch.randn(4)
    tokenizer = DerivedTokenizer(base, bias)
    assert tokenizer((1, 2, 2))[0] is base
    first, first_bias = tokenizer((1, 4, 4))
    assert tokenizer((1, 4, 4))[0] is first and first_bias is bias
    torch.testing.assert_close(first, derive_kernel(base, (1, 4, 4)))


def test_embed_latent_replicate_pads_and_places_tokens_at_fine_grid_centres():
    torch.manual_seed(1)
    latent = torch.randn(1, 3, 2, 6, 10)  # 6 rows do not tile with 4 or 8
    weight = torch.randn(5, 3, 1, 4, 4)
    tokens, positions, layout = embed_latent(latent, weight, None, (1, 4, 4))
    padded = F.pad(latent, (0, 2, 0, 2, 0, 0), mode="replicate")  # 6x10 -> 8x12
    expected = F.conv3d(padded, weight, stride=(1, 4, 4)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, expected)
    assert layout.frame_grids == ((2, 3), (2, 3)) and layout.num_tokens == tokens.shape[1] == 12
    assert positions[:6, 0].tolist() == [0.0] * 6 and positions[6:, 0].tolist() == [1.0] * 6
    assert sorted(set(positions[:, 1].tolist())) == [0.5, 2.5]
    assert sorted(set(positions[:, 2].tolist())) == [0.5, 2.5, 4.5]


@pytest.mark.parametrize(
    "kernel, centres", [((1, 2, 2), [0.0, 1.0, 2.0]), ((1, 4, 4), [0.5, 2.5, 4.5]), ((1, 8, 8), [1.5, 5.5, 9.5])]
)
def test_positions_are_centres_in_units_of_the_fine_grid(kernel, centres):
    latent = torch.zeros(1, 1, 1, kernel[1] * 3, kernel[2])
    _, positions, _ = embed_latent(latent, torch.zeros(1, 1, *kernel), None, kernel)
    assert positions[:, 1].tolist() == centres
    assert positions[:, 2].tolist() == [centres[0]] * 3


def test_a_coarse_token_sits_at_the_mean_position_of_the_fine_tokens_it_covers():
    latent = torch.zeros(1, 1, 1, 16, 16)
    _, fine_pos, _ = embed_latent(latent, torch.zeros(1, 1, 1, 2, 2), None, (1, 2, 2))
    _, coarse_pos, _ = embed_latent(latent, torch.zeros(1, 1, 1, 8, 8), None, (1, 8, 8))
    fine_grid = fine_pos.reshape(8, 8, 3)
    assert torch.equal(coarse_pos[0], fine_grid[:4, :4].reshape(-1, 3).mean(0))
    assert torch.equal(coarse_pos[3], fine_grid[4:, 4:].reshape(-1, 3).mean(0))


def test_embed_latent_rejects_mismatched_weight():
    with pytest.raises(ValueError, match="weight"):
        embed_latent(torch.zeros(1, 4, 1, 8, 8), torch.zeros(2, 3, 1, 4, 4), None, (1, 4, 4))


def test_layout_token_frame_and_offsets():
    layout = TokenLayout.concat(
        [TokenLayout(((1, 2),), (0,), (False,)), TokenLayout(((2, 2), (1, 1)), (1, 1), (True, True))]
    )
    assert layout.frame_offsets() == (0, 2, 6)
    assert layout.token_frame().tolist() == [0, 0, 1, 1, 1, 1, 2]
    assert layout.mergeable == (False, True, True)


def test_token_counts_at_480x832x81():
    assert grid_size(60, 104, (1, 8, 8)) == (8, 13)  # 60 rows pad to 64
    assert tokens_per_stream(WAN_LATENT, (1, 2, 2)) == 32_760
    assert tokens_per_stream(WAN_LATENT, (1, 4, 4)) == 8_190
    assert tokens_per_stream(WAN_LATENT, (1, 8, 8)) == 2_184


def _wan_latent():
    return torch.zeros(1, 16, *WAN_LATENT)


def test_budget_with_six_memories_matches_the_paper_arithmetic():
    latent = _wan_latent()
    context = build_context(latent, [(f"m{i}", latent, 1.0, None) for i in range(6)], mode="nvs")
    budget = token_budget(context)
    assert budget.target == 32_760
    assert budget.per_stream == (32_760, 8_190, 8_190, 8_190, 2_184, 2_184, 2_184)
    assert budget.total == 96_642 and budget.naive_total == 262_080
    assert context_layout(context).num_tokens == budget.total - budget.target


def test_build_context_assigns_roles_kernels_ranks_and_keeps_no_weights():
    user = torch.randn(1, 4, 3, 8, 8)
    memories = [(f"e{i}", torch.randn(1, 4, 3, 8, 8), 0.9 - i / 10, {"cam": i}) for i in range(4)]
    context = build_context(user, memories, mode="nvs")
    assert context.target_frames == 3 and context.memory_count == 4
    assert [s.role for s in context.streams] == ["user"] + ["memory"] * 4
    assert [s.kernel for s in context.streams] == [(1, 2, 2), (1, 4, 4), (1, 4, 4), (1, 4, 4), (1, 8, 8)]
    assert [s.rank for s in context.streams] == [None, 0, 1, 2, 3]
    assert context.streams[2].entry_id == "e1" and context.streams[2].camera == {"cam": 1}
    assert context.streams[1].score == pytest.approx(0.9)


def test_build_context_rejects_bad_latents_with_the_input_named():
    with pytest.raises(ValueError, match=r"memories\[0\]"):
        build_context(torch.zeros(1, 4, 2, 8, 8), [("a", torch.zeros(1, 5, 2, 8, 8), None, None)])
    with pytest.raises(ValueError, match="user_latent"):
        build_context(torch.zeros(4, 2, 8, 8), [])


def test_embed_context_joins_streams_with_temporal_ids_and_mergeable_flags():
    torch.manual_seed(2)
    user, memory = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 4, 2, 8, 8)
    context = build_context(user, [("a", memory, 1.0, None)], mode="nvs", plan=KernelPlan(fine=(1, 4, 4)))
    base, bias = torch.randn(6, 4, 1, 2, 2), torch.randn(6)
    embedded = embed_context(context, DerivedTokenizer(base, bias))
    assert embedded.tokens.shape == (1, 2 * 16 + 2 * 4, 6)
    assert embedded.layout.mergeable == (False, False, True, True)
    assert embedded.layout.frame_stream == (0, 0, 1, 1)
    assert embedded.positions[:32, 0].unique().tolist() == [2.0, 3.0]  # user range T..2T-1 with T = 2
    assert embedded.positions[32:, 0].unique().tolist() == [4.0, 5.0]  # memory range 2T..3T-1
    user_tokens = F.conv3d(user, base, bias, stride=(1, 2, 2)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embedded.tokens[:, :32], user_tokens)
