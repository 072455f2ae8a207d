"""The memory patch where hosts differ: one merge plan per step whether ComfyUI batches cond and uncond or runs them
as separate calls; ScaleROPE's rope_options move memory exactly where the model moves the video; the patch embedding
read through the offload-aware cast API of newer ComfyUI; merging on Wan S2V only where blocks get transformer options.

ComfyUI 0.3.64 has neither rope_options nor the offload-aware cast: memory_scripts/host_compat.py stands in for the
newer host with doubles written from the newer files (see docs/compatibility.md); on 0.3.64 itself the checks are
that the pack ignores rope_options as the model does and falls back on the plain cast.
"""

from __future__ import annotations

import pytest

from test_memory_equivalence import run_script


@pytest.fixture(scope="module")
def compat(host) -> dict:
    return run_script(host, "host_compat.py")


def _per_step(calls):
    return [frames for _, frames in calls]


def test_separate_cond_and_uncond_calls_merge_the_frames_of_one_batched_call(compat):
    plan = compat["plan"]
    batched = plan["batched_calls"]
    assert [flags for flags, _ in batched] == [[1, 0]] * 4  # 4 steps, cond and uncond in one call each
    for name in ("separate_calls", "unequal_calls"):  # low VRAM / text conds of unequal length
        calls = plan[name]
        assert [flags for flags, _ in calls] == [[0], [1]] * 4, name  # conditional pass first in every step
        assert _per_step(calls)[0::2] == _per_step(batched), name  # cond: the batched call's frames ...
        assert _per_step(calls)[1::2] == _per_step(batched), name  # ... and uncond merges the very same frames
    assert all(frames and frames[0] for frames in _per_step(batched))  # every step merged at block 1
    assert plan["separate_vs_batched_max_diff"] <= 2e-5  # batch-size float noise only (measured 4.8e-6)
    # teeth: without one plan per step (the CALC_COND_BATCH wrapper removed) the uncond pass, run first, ranks on
    # its own rows and merges other frames in some step, and the result moves away from the batched one
    old = plan["old_calls"]
    assert [flags for flags, _ in old] == [[1], [0]] * 4
    assert _per_step(old)[0::2] != _per_step(old)[1::2]
    assert plan["old_vs_batched_max_diff"] > 5 * plan["separate_vs_batched_max_diff"]  # measured 9.8e-5


def test_rope_options_move_memory_exactly_where_the_model_moves_the_video(compat):
    rope = compat["rope"]
    # ComfyUI 0.3.64: rope_encode ignores rope_options, so memory positions must not move either
    assert rope["host_reads_rope_options"] is False
    assert rope["ignored_video_equal"] and rope["ignored_memory_equal"] and rope["ignored_output_equal"]
    # a host that reads them (newer rope_encode formula): video and memory follow the same p' = shift + scale * p
    assert rope["double_reads_rope_options"] is True
    assert rope["video_moved_max_diff"] <= 1e-5 and rope["memory_moved_max_diff"] <= 1e-5
    assert rope["memory_moved_by"] > 1.0 and rope["memory_tokens"] > 0
    assert rope["moved_output_differs"] > 0


def test_patch_embedding_weights_go_through_the_offload_aware_cast_where_it_exists(compat):
    cast = compat["cast"]
    assert not cast["has_context_here"] and not cast["has_uncast_here"]  # 0.3.64: the plain cast_bias_weight
    assert cast["fallback_equal"]
    context = cast["context"]
    assert context["log"] == [["init", "True", "torch.float32", "cpu"], ["enter"], ["exit"]]
    assert context["equal"] and context["cloned"] and context["output_equal"]
    uncast = cast["uncast"]
    assert uncast["log"] == [["uncast", "True", "offload-state"]]
    assert uncast["equal"] and uncast["cloned"] and uncast["output_equal"]


def test_merging_on_wan_s2v_only_where_blocks_receive_transformer_options(compat):
    s2v = compat["s2v"]
    assert s2v["wan"] is True and s2v["s2v_here"] is False and s2v["s2v_newer"] is True
    for word in ("merge_mode", "WanModel_S2V", "0.5.0", "'off'"):
        assert word in s2v["refusal"]
