"""FLOP formulas of a Wan DiT block, checked against torch's own flop counter, and the merge-schedule replay."""

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from memv2v_core.bench import dit as dit_bench
from memv2v_core.memory.flops import (
    WAN21_1_3B,
    DiTShape,
    block_flops,
    counted_block_flops,
    dit_flops,
    simulate_merges,
)

SMALL = DiTShape(dim=32, depth=4, heads=4, ffn=48, text_tokens=7)


class WanLikeBlock(nn.Module):
    """A small Wan attention block with its elementwise parts (norms, modulation, RoPE-like rotation, GELU)."""

    def __init__(self, shape: DiTShape):
        super().__init__()
        d = shape.dim
        self.heads = shape.heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.cq, self.ck, self.cv, self.co = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(d), nn.RMSNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, shape.ffn), nn.GELU(approximate="tanh"), nn.Linear(shape.ffn, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d))

    def _attend(self, q, k, v):
        # explicit QK^T and AV: torch's CPU fused attention kernel is not seen by the flop counter
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        weights = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(dim=-1)
        return (weights @ v).transpose(1, 2).flatten(2)

    def forward(self, x, context, vec):
        e = (self.modulation + vec).chunk(6, dim=1)
        h = nn.functional.layer_norm(x, x.shape[-1:]) * (1 + e[1]) + e[0]
        q, k = self.norm_q(self.q(h)), self.norm_k(self.k(h))
        q, k = q * torch.cos(q), k * torch.sin(k)  # stands in for the elementwise RoPE rotation
        x = x + self.o(self._attend(q, k, self.v(h))) * e[2]
        x = x + self.co(self._attend(self.cq(x), self.ck(context), self.cv(context)))
        h = nn.functional.layer_norm(x, x.shape[-1:]) * (1 + e[4]) + e[3]
        return x + self.ffn(h) * e[5]


@pytest.mark.parametrize("tokens", [1, 5, 64])
def test_block_formula_equals_torch_flop_counter_on_a_real_small_block(tokens):
    torch.manual_seed(0)
    block = WanLikeBlock(SMALL)
    with FlopCounterMode(display=False) as counter:
        block(
            torch.randn(1, tokens, SMALL.dim),
            torch.randn(1, SMALL.text_tokens, SMALL.dim),
            torch.randn(1, 6, SMALL.dim),
        )
    assert counter.get_total_flops() == block_flops(tokens, SMALL).total


@pytest.mark.parametrize("tokens", [32_760, 96_642])
def test_block_formula_equals_the_counted_full_size_skeleton(tokens):
    assert counted_block_flops(tokens, WAN21_1_3B) == block_flops(tokens, WAN21_1_3B).total


def test_block_parts_and_the_quadratic_term():
    one, two = block_flops(1000), block_flops(2000)
    assert two.self_scores == 4 * one.self_scores  # quadratic in N
    assert two.self_projections == 2 * one.self_projections and two.ffn == 2 * one.ffn
    assert one.self_attention == one.self_projections + one.self_scores
    assert one.total == one.self_attention + one.cross_attention + one.ffn


def test_dit_flops_sums_per_block_lengths():
    total = dit_flops([10, 10, 6, 6], SMALL)
    assert total.total == 2 * block_flops(10, SMALL).total + 2 * block_flops(6, SMALL).total
    with pytest.raises(ValueError, match="block"):
        dit_flops([10, 10], SMALL)


def test_simulated_merges_follow_the_runtime_rule():
    grids = [(2, 2), (4, 4), (4, 4), (2, 4), (2, 4)]
    mergeable = [False, True, True, True, True]
    ranking = torch.tensor([0.0, 0.9, 0.1, 0.8, 0.2])  # frames 2 and 4 least responsive, every time
    schedule = simulate_merges(
        grids, mergeable, depth=6, merge_blocks=(2, 4), ratio=0.5, factor=2, responsiveness=lambda b, f: ranking
    )
    # blocks 0-1: 4 + 16 + 16 + 8 + 8; block 2 pools frames 2 (4x4 -> 2x2) and 4 (2x4 -> 1x2); block 4 again (-> 1x1, 1x1)
    assert schedule.memory_tokens == (52, 52, 34, 34, 30, 30)
    assert schedule.merge_frames == ((2, 4), (4, 4))


def test_six_and_ten_memories_meet_the_attention_cut_and_the_bench_prints_json(capsys):
    assert dit_bench.main(["--memories", "6", "10", "--seeds", "1", "--skip-timings"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["attn_flops_cut_6"] >= 0.85 and result["attn_flops_cut_10"] >= 0.90
    assert {"merge_extra_cut_10", "merge_extra_cut_10_f2"} <= result.keys()
    assert any("skipped" in line for line in lines)
