"""The memory patch on the real WanModel: bit-identical without memory, equal to a hand-made concatenation without
merging, responsiveness from the block's real q/k, and Apply Memory's refusals before sampling.

The checks run in ComfyUI's own Python (scripts in memory_scripts/, cwd = the ComfyUI folder) and print JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli.host import comfy_host

SCRIPTS = Path(__file__).resolve().parent / "memory_scripts"


def run_script(host, name: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPTS / name), "--dit", host.assets["dit"], *args],
                          cwd=host.server.comfyui, env=comfy_host.subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def equivalence(host) -> dict:
    return run_script(host, "equivalence.py")


@pytest.fixture(scope="module")
def checks(host, tmp_path_factory) -> dict:
    return run_script(host, "checks.py", "--tmp", str(tmp_path_factory.mktemp("memory-checks")))


def test_empty_memory_is_bit_identical_for_scalar_and_per_frame_timesteps(equivalence):
    assert equivalence["empty_scalar_equal"] and equivalence["empty_scalar_max_diff"] == 0.0
    assert equivalence["empty_frames_equal"] and equivalence["empty_frames_max_diff"] == 0.0


def test_without_merging_the_patch_equals_concatenating_memory_by_hand(equivalence):
    assert equivalence["nomerge_scalar_max_diff"] <= 1e-6
    assert equivalence["nomerge_frames_max_diff"] <= 1e-6
    # ... and the memory really takes part (far above float noise), with the video's output shape
    assert equivalence["memory_effect_scalar"] > 1e-4 and equivalence["memory_effect_frames"] > 1e-4
    assert equivalence["output_shape"] == [2, 16, 3, 8, 8]


def test_loaded_tokenizers_are_used_and_ride_in_an_additional_model_patcher(equivalence):
    assert equivalence["loaded_additional_models"] == 1
    assert equivalence["loaded_vs_reference_max_diff"] == 0.0  # the hand-made reference with the loaded weights
    assert equivalence["loaded_vs_derived_max_diff"] > 0  # and they are not the derived ones


def test_clone_shares_patch_closures_and_model_options_hold_no_tensors(equivalence):
    assert equivalence["clone_shares_patches"]
    assert equivalence["model_options_tensors"] == 0


def test_merge_ranks_memory_frames_by_real_qk_of_the_conditional_rows(equivalence):
    assert equivalence["responsiveness_max_diff"] <= 1e-5
    assert equivalence["merge_frames"] == equivalence["merge_frames_expected"]
    # The claim has teeth only while a plan from the unconditional rows would differ.
    assert equivalence["merge_frames_if_planned_on_uncond"] != equivalence["merge_frames_expected"]
    assert not set(equivalence["merge_frames"]) & set(equivalence["user_frames"]), "the user video is never merged"
    before, after = equivalence["merge_tokens"]
    assert after < before
    assert equivalence["merged_finite"] and equivalence["merged_vs_nomerge"] > 0


def test_cond_uncond_order_does_not_change_the_result(equivalence):
    assert equivalence["swapped_order_max_diff"] <= 1e-6
    assert equivalence["swapped_merge_frames"] == equivalence["merge_frames"]


def test_dynamic_tokenize_reads_only_the_selected_entries(checks):
    assert sorted(checks["reads"]) == sorted(checks["chosen"] * 2)  # two executions, three selected entries each
    assert checks["roles"] == ["user", "memory", "memory", "memory"]
    assert checks["kernels"] == ["1x2x2", "1x4x4", "1x4x4", "1x8x8"]  # fine_ranks=2
    assert checks["temporal_ids"] == [[3.0, 4.0, 5.0]] + [[6.0, 7.0, 8.0]] * 3  # NVS: user T..2T-1, memory 2T..3T-1
    assert checks["cameras"] == [None, [9, 4, 4], [9, 4, 4], [9, 4, 4]]
    assert checks["latent_format"] == "wan21"
    assert "total 123 tokens vs 240" in checks["budget"] and checks["ui_text"] == [checks["budget"]]
    # NVS entries are no video's segment i-1: in mode edit every memory takes the memory range, and the node says so
    assert checks["edit_roles"] == ["memory", "memory", "memory"]
    assert checks["edit_temporal_ids"] == [[8.0, 7.0, 6.0]] * 3
    assert "previous segment missing" in checks["edit_budget"]
    assert "latent is not connected" in checks["error_nvs_without_latent"]


def test_dynamic_tokenize_gives_the_previous_range_only_to_segment_i_minus_1_of_this_video(checks):
    edit = checks["segment_edit"]
    # ranked second behind another video's segment 3: only this video's segment 3 is the previous segment (T..2T-1)
    assert edit["second"]["roles"] == ["memory", "previous", "memory"]
    assert edit["second"]["temporal_ids"] == [[8.0, 7.0, 6.0], [5.0, 4.0, 3.0], [8.0, 7.0, 6.0]]
    assert "previous segment missing" not in edit["second"]["budget"]
    # segment 2 is not in the bank: nobody gets T..2T-1, and the budget text says why
    for case in ("missing", "unmarked"):
        assert edit[case]["roles"] == ["memory"] * 3
        assert edit[case]["temporal_ids"] == [[8.0, 7.0, 6.0]] * 3
        assert "previous segment missing" in edit[case]["budget"]
    assert "segment 2 of this video" in edit["missing"]["budget"]


@pytest.mark.parametrize("case, words", [
    ("latent_format", ["'wan22'", "'wan21'"]),
    ("channels", ["8 channels", "16"]),
    ("not_wan", ["model:", "Linear", "Wan"]),
    ("merge_block_depth", ["merge_blocks", "[5]", "2 blocks"]),
    ("merge_block_text", ["merge_blocks", "'ten'", "'10,20'"]),
    ("kernel_too_big", ["1x8x8", "4x4 latent", "smaller kernel"]),
    ("kernel_not_multiple", ["1x3x3", "patch size"]),
    ("modules_dim", ["modules", "64", "128"]),
    ("context_type", ["context", "dict", "Dynamic Tokenize"]),
])
def test_apply_memory_refuses_bad_input_before_sampling(checks, case, words):
    message = checks["errors"][case]
    assert message is not None, f"{case}: no ValueError was raised"
    for word in words:
        assert word in message, f"{case}: {word!r} missing from {message!r}"


def test_apply_memory_reports_its_settings(checks):
    assert checks["ok_ui_text"] == ["memory: 2 streams, 51 tokens; merge 50% of memory frames (2x2) at the input of "
                                    "blocks 1"]
