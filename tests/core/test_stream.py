"""The memory stream through a sequence of blocks, checked against hand-made concatenate-and-slice references."""

import pytest
import torch
from torch import nn

from memv2v_core.memory.context import build_context, embed_context
from memv2v_core.memory.merge import frame_responsiveness, merge_frames, merge_plan
from memv2v_core.memory.stream import (
    MemoryStreamState,
    MergeSettings,
    default_merge_blocks,
    grouped_modulation,
    per_token_modulation,
    rows_for_conditional,
)
from memv2v_core.memory.tokenize import DerivedTokenizer, KernelPlan, TokenLayout

DIM, HEADS, AXES = 16, 2, (4, 2, 2)  # head dim 8 = 2 * (4 + 2 + 2) / 2 rotary pairs


def _rope(pos, dim, theta=10000.0):
    omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = pos.double()[:, None] * omega
    return (
        torch.stack([angles.cos(), -angles.sin(), angles.sin(), angles.cos()], -1).reshape(*angles.shape, 2, 2).float()
    )


def rope_fn(ids):
    """ids [N, 3] -> [1, N, 1, pairs, 2, 2], the layout of ComfyUI's EmbedND output after movedim."""
    return torch.cat([_rope(ids[:, i], AXES[i]) for i in range(3)], dim=-3)[None, :, None]


def _apply_rope(x, pe):
    pairs = x.reshape(*x.shape[:-1], -1, 1, 2)
    return (pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]).reshape(x.shape)


def _repeat_e(e, x):
    """The Wan block's own per-frame modulation expansion."""
    if e.size(1) <= 1:
        return e
    repeats = x.size(1) // e.size(1)
    if repeats == 1:
        return e
    if repeats * e.size(1) == x.size(1):
        return torch.repeat_interleave(e, repeats, dim=1)
    return torch.repeat_interleave(e, repeats + 1, dim=1)[:, : x.size(1)]


class TinyBlock(nn.Module):
    """A Wan-shaped block: adaLN modulation, RoPE self-attention, FFN."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        self.ffn = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))
        self.modulation = nn.Parameter(0.1 * torch.randn(1, 6, DIM))

    def _mod(self, vec):
        if vec.ndim < 4:
            return (self.modulation + vec).chunk(6, dim=1)
        return (self.modulation.unsqueeze(0) + vec).unbind(2)

    def qk(self, x, pe, vec):
        e = self._mod(vec)
        h = nn.functional.layer_norm(x, (DIM,)) * (1 + _repeat_e(e[1], x)) + _repeat_e(e[0], x)
        b, n = x.shape[:2]
        q = _apply_rope(self.q(h).view(b, n, HEADS, -1), pe)
        k = _apply_rope(self.k(h).view(b, n, HEADS, -1), pe)
        return q, k

    def forward(self, x, pe, vec):
        e = self._mod(vec)
        q, k = self.qk(x, pe, vec)
        h = nn.functional.layer_norm(x, (DIM,)) * (1 + _repeat_e(e[1], x)) + _repeat_e(e[0], x)
        b, n = x.shape[:2]
        v = self.v(h).view(b, n, HEADS, -1)
        attn = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.o(attn.transpose(1, 2).reshape(b, n, DIM)) * _repeat_e(e[2], x)
        h = nn.functional.layer_norm(x, (DIM,)) * (1 + _repeat_e(e[4], x)) + _repeat_e(e[3], x)
        return x + self.ffn(h) * _repeat_e(e[5], x)


def _video(frames=3, rows=2, cols=2, batch=2):
    ids = torch.stack(torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij"), -1)
    ids = ids.reshape(-1, 3).float()
    return torch.randn(batch, ids.shape[0], DIM), rope_fn(ids)


def _memory(grids=((2, 2), (2, 2), (2, 4), (2, 4), (1, 2), (1, 2)), mergeable=(False, False, True, True, True, True)):
    layout = TokenLayout(tuple(grids), tuple(range(len(grids))), tuple(mergeable))
    positions = torch.cat(
        [
            torch.stack(
                torch.meshgrid(
                    torch.tensor([10.0 + f]), torch.arange(r) * 1.0 + 0.5, torch.arange(c) * 1.0 + 0.5, indexing="ij"
                ),
                -1,
            ).reshape(-1, 3)
            for f, (r, c) in enumerate(grids)
        ]
    )
    return torch.randn(1, layout.num_tokens, DIM), positions, layout


@pytest.fixture
def blocks():
    torch.manual_seed(0)
    return [TinyBlock() for _ in range(4)]


def test_empty_memory_runs_exactly_the_plain_block(blocks):
    x, pe = _video()
    vec = torch.randn(2, 6, DIM)
    state = MemoryStreamState.empty(DIM)
    state.merge = MergeSettings(blocks=(1, 2))
    plain, streamed = x, x
    for i, block in enumerate(blocks):
        plain = block(plain, pe, vec)
        streamed = state.run_block(block, streamed, pe, vec, rope_fn, i, qk_fn=block.qk)
    assert torch.equal(streamed, plain)


def test_without_merging_the_stream_equals_concatenating_and_slicing_once(blocks):
    torch.manual_seed(1)
    x, pe = _video()
    vec = torch.randn(2, 6, DIM)
    memory, positions, layout = _memory()
    state = MemoryStreamState(memory, positions, layout)
    seq = torch.cat([x, memory.expand(2, -1, -1)], dim=1)
    pe_cat = torch.cat([pe, rope_fn(positions)], dim=1)
    streamed = x
    for i, block in enumerate(blocks):
        seq = block(seq, pe_cat, vec)
        streamed = state.run_block(block, streamed, pe, vec, rope_fn, i)
    assert torch.equal(streamed, seq[:, : x.shape[1]])
    assert torch.equal(state.tokens, seq[:, x.shape[1] :])


def test_per_frame_modulation_is_expanded_per_token_with_memory_on_the_first_frame(blocks):
    torch.manual_seed(2)
    x, pe = _video(frames=3)
    vec = torch.randn(2, 3, 6, DIM)  # per-frame timesteps, e.g. Wan 2.2 TI2V
    memory, positions, layout = _memory()
    state = MemoryStreamState(memory, positions, layout)
    per_token = torch.cat([vec.repeat_interleave(4, dim=1), vec[:, :1].expand(-1, layout.num_tokens, -1, -1)], dim=1)
    seq = torch.cat([x, memory.expand(2, -1, -1)], dim=1)
    pe_cat = torch.cat([pe, rope_fn(positions)], dim=1)
    streamed = x
    for i, block in enumerate(blocks):
        seq = block(seq, pe_cat, per_token)
        streamed = state.run_block(block, streamed, pe, vec, rope_fn, i)
    assert torch.equal(streamed, seq[:, : x.shape[1]])


def test_per_token_modulation_matches_the_blocks_repeat_for_uneven_lengths():
    vec = torch.randn(1, 3, 6, DIM)
    out = per_token_modulation(vec, 10, 2)  # 10 video tokens over 3 frames
    assert torch.equal(out[:, :10], _repeat_e(vec, torch.zeros(1, 10)))
    assert torch.equal(out[:, 10:], vec[:, :1].expand(-1, 2, -1, -1))
    shared = torch.randn(1, 6, DIM)
    assert per_token_modulation(shared, 10, 2) is shared


def test_merging_at_a_block_pools_the_least_responsive_memory_frames_first(blocks):
    torch.manual_seed(3)
    x, pe = _video()
    vec = torch.randn(2, 6, DIM)
    memory, positions, layout = _memory()
    settings = MergeSettings(blocks=(2,), ratio=0.5, factor=2, plan_rows=(1,))
    state = MemoryStreamState(memory, positions, layout, merge=settings)
    streamed = x
    for i, block in enumerate(blocks):
        streamed = state.run_block(block, streamed, pe, vec, rope_fn, i, qk_fn=block.qk)

    # hand-made reference: two blocks on the full sequence, merge by hand, two blocks with the shorter memory
    length = x.shape[1]
    seq = torch.cat([x, memory.expand(2, -1, -1)], dim=1)
    for block in blocks[:2]:
        seq = block(seq, torch.cat([pe, rope_fn(positions)], dim=1), vec)
    q, k = blocks[2].qk(seq, torch.cat([pe, rope_fn(positions)], dim=1), vec)
    token_frame = layout.token_frame()
    candidate = torch.tensor(layout.mergeable)[token_frame]
    scores = frame_responsiveness(q[:, :length], k[:, length:][:, candidate], token_frame[candidate] - 2, 4)
    chosen = tuple(f + 2 for f in merge_plan(scores[1:], 0.5))
    merged, merged_pos, merged_layout = merge_frames(seq[:, length:], positions, layout, chosen, factor=2)
    seq = torch.cat([seq[:, :length], merged], dim=1)
    for block in blocks[2:]:
        seq = block(seq, torch.cat([pe, rope_fn(merged_pos)], dim=1), vec)

    assert len(state.events) == 1 and state.events[0].block_index == 2
    assert state.events[0].frames == chosen and len(chosen) == 2
    assert not {0, 1} & set(chosen)  # the user video is never merged
    assert (
        state.layout == merged_layout and state.events[0].tokens_after == merged_layout.num_tokens < layout.num_tokens
    )
    assert torch.equal(state.positions, merged_pos)
    torch.testing.assert_close(streamed, seq[:, :length], rtol=0, atol=1e-6)
    assert state.responsiveness.shape == (2, 6) and bool((state.responsiveness[:, :2] == 0).all())


def test_a_merge_block_without_qk_fn_is_refused(blocks):
    x, pe = _video()
    memory, positions, layout = _memory()
    state = MemoryStreamState(memory, positions, layout, merge=MergeSettings(blocks=(0,)))
    with pytest.raises(ValueError, match="qk_fn"):
        state.run_block(blocks[0], x, pe, torch.randn(2, 6, DIM), rope_fn, 0)


def test_default_merge_blocks_scale_with_depth():
    assert default_merge_blocks(30) == (10, 20)
    assert default_merge_blocks(40) == (13, 27)
    assert default_merge_blocks(3) == (1, 2)
    assert default_merge_blocks(1) == ()
    with pytest.raises(ValueError, match="depth"):
        default_merge_blocks(0)


def test_merge_settings_for_model_grow_the_factor_with_memories():
    settings = MergeSettings.for_model(30, memory_count=10)
    assert settings.blocks == (10, 20) and settings.factor == 4 and settings.ratio == 0.5
    assert MergeSettings.for_model(30, memory_count=6).factor == 2
    with pytest.raises(ValueError, match="ratio"):
        MergeSettings(ratio=-0.1)


def test_rows_for_conditional_follow_the_hosts_chunk_order():
    assert rows_for_conditional([1, 0], 4) == (2, 3)  # uncond first, two rows per chunk
    assert rows_for_conditional([0], 1) == (0,)
    assert rows_for_conditional([1], 2) is None
    assert rows_for_conditional([0, 1, 0], 3) == (0, 2)


def test_an_embedded_context_flows_through_the_blocks_and_merges_only_memories(blocks):
    torch.manual_seed(4)
    user = torch.randn(1, 3, 2, 8, 8)
    memories = [(f"m{i}", torch.randn(1, 3, 2, 8, 8), 1.0, None) for i in range(2)]
    context = build_context(user, memories, mode="nvs", plan=KernelPlan(fine_ranks=1))
    embedded = embed_context(context, DerivedTokenizer(torch.randn(DIM, 3, 1, 2, 2), torch.randn(DIM)))
    state = MemoryStreamState.from_embedded(embedded, MergeSettings(blocks=(1,), ratio=0.5, factor=2))
    x, pe = _video(frames=2)
    out = x
    for i, block in enumerate(blocks):
        out = state.run_block(block, out, pe, torch.randn(2, 6, DIM), rope_fn, i, qk_fn=block.qk)
    assert out.shape == x.shape and state.tokens.shape[:2] == (2, state.layout.num_tokens)
    merged = state.events[0].frames
    assert len(merged) == 2 and all(embedded.layout.mergeable[f] for f in merged)
    assert embedded.layout.num_tokens == 2 * 16 + 2 * 4 + 2 * 1


def test_a_fixed_plan_merges_exactly_the_planned_frames_without_ranking(blocks):
    """The unconditional pass of a step reuses the conditional pass's plan: same frames, same tokens, no q/k."""
    torch.manual_seed(5)
    x, pe = _video(batch=1)
    vec = torch.randn(1, 6, DIM)
    memory, positions, layout = _memory()
    ranked = MemoryStreamState(memory, positions, layout, merge=MergeSettings(blocks=(1, 3), ratio=0.5))
    for i, block in enumerate(blocks):
        ranked.run_block(block, x, pe, vec, rope_fn, i, qk_fn=block.qk)
    plan = tuple((e.block_index, e.frames) for e in ranked.events)
    assert [block for block, _ in plan] == [1, 3]

    def no_qk(*args):
        raise AssertionError("a fixed plan must not rank")

    other_x = torch.randn_like(x)  # e.g. other text: its own ranking could differ; the plan must not
    fixed = MemoryStreamState(memory, positions, layout,
                              merge=MergeSettings(blocks=(1, 3), ratio=0.5, fixed_frames=plan))
    for i, block in enumerate(blocks):
        fixed.run_block(block, other_x, pe, vec, rope_fn, i, qk_fn=no_qk)
    assert [(e.block_index, e.frames) for e in fixed.events] == list(plan)
    assert fixed.layout == ranked.layout and torch.equal(fixed.positions, ranked.positions)

    # a merge block the plan leaves out merges nothing; frames the layout cannot merge are refused
    skip = MemoryStreamState(memory, positions, layout, merge=MergeSettings(blocks=(1,), fixed_frames=()))
    skip.run_block(blocks[1], x, pe, vec, rope_fn, 1, qk_fn=no_qk)
    assert skip.events == [] and skip.num_tokens == layout.num_tokens
    bad = MemoryStreamState(memory, positions, layout, merge=MergeSettings(blocks=(1,), fixed_frames=((1, (0,)),)))
    with pytest.raises(ValueError, match="fixed_frames names frames"):
        bad.run_block(blocks[1], x, pe, vec, rope_fn, 1)


@pytest.mark.parametrize("frames,video,memory", [(3, 12, 8), (3, 10, 2), (21, 21 * 1560, 63_882), (5, 5 * 16, 7),
                                                 (2, 8, 1), (4, 4 * 6, 6 * 13), (3, 3 * 64, 0)])
def test_grouped_modulation_expands_in_the_block_to_exactly_the_per_token_one(frames, video, memory):
    vec = torch.randn(1, frames, 6, 2)
    grouped = grouped_modulation(vec, video, memory)
    expanded = _repeat_e(grouped, torch.zeros(1, video + memory))
    assert torch.equal(expanded, per_token_modulation(vec, video, memory))


def test_grouped_modulation_is_short_at_real_size():
    # Wan2.1 at 480x832x81 (21 frames of 30x52 tokens) with 6 memories (63,882 memory tokens)
    vec = torch.randn(1, 21, 6, 4)
    grouped = grouped_modulation(vec, 21 * 1560, 63_882)
    assert grouped.shape[1] == 124  # one entry per 780 tokens instead of one per token (96,642)
    shared = torch.randn(1, 6, 4)
    assert grouped_modulation(shared, 10, 2) is shared
