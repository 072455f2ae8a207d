"""ReCamMaster camera conditioning on the real WanModel, one trajectory per video (tiny ReCamMaster-layout checkpoints).

Zero encoders and identity projectors (ReCamMaster's init) reproduce the native model bit for bit; random camera
weights match the blocks computed by hand and ReCamMaster's own DiT written out from its published code
(nvs_scripts/recammaster_dit.py, independent of the pack): the user video takes the target's camera, as ReCamMaster
tiles it, and memories change only their own camera rows; tokens newer ComfyUI appends after the video get no camera
embedding; bad inputs are refused before sampling. The checks run in ComfyUI's own Python (nvs_scripts/, cwd = the
ComfyUI folder) and print JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli.host import comfy_host

SCRIPTS = Path(__file__).resolve().parent / "nvs_scripts"


def run_script(host, name: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=host.server.comfyui,
                          env=comfy_host.subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def nvs_checkpoints(host, tmp_path_factory) -> dict:
    return run_script(host, "build_checkpoints.py", "--out", str(tmp_path_factory.mktemp("nvs-checkpoints")))


@pytest.fixture(scope="module")
def camera(host, nvs_checkpoints) -> dict:
    return run_script(host, "camera_equivalence.py", "--zero", nvs_checkpoints["recammaster_safetensors"],
                      "--cam", nvs_checkpoints["recammaster_cam_ckpt"], "--plain-dit", host.assets["dit"])


@pytest.mark.parametrize("case", ["user_only", "memory", "memory_merge"])
def test_zero_encoder_identity_projector_is_bit_identical_to_the_native_model(camera, case):
    assert camera[f"zero_{case}_equal"], camera[f"zero_{case}_max_diff"]


def test_camera_patch_equals_recammaster_block_by_hand(camera):
    assert camera["cam_vs_reference_max_diff"] <= 1e-5  # user video with the target's rows (the default)
    assert camera["identity_vs_reference_max_diff"] <= 1e-5  # user_camera identity
    assert camera["identity_vs_default"] > 1e-5  # the user video's camera reaches its tokens
    assert camera["cam_effect"] > 1e-4  # the camera path really changes the output
    assert camera["memory_camera_effect"] > 1e-6  # each memory's own trajectory reaches its tokens


def test_in_context_tokens_of_newer_comfyui_get_no_camera_embedding(camera):
    assert camera["in_context_tokens"] == camera["in_context_expected"] > 0
    assert camera["in_context_zero"]
    assert camera["in_context_video_memory_equal"]  # video and memory tokens keep their rows, in place
    assert camera["in_context_output_finite"]
    message = camera["in_context_undeclared_error"]  # tokens the call does not declare: refused, not misread
    assert message is not None and "0 in-context" in message and "changed the token sequence" in message
    assert "does not support a reference_latent" in (camera["reference_latent_error"] or "")


@pytest.fixture(scope="module")
def recammaster(host, nvs_checkpoints, shared_data, tmp_path_factory) -> dict:
    return run_script(host, "camera_reference.py", "--cam", nvs_checkpoints["recammaster_cam_safetensors"],
                      "--extrinsics", str(shared_data / "recammaster" / "camera_extrinsics.json"),
                      "--out", str(tmp_path_factory.mktemp("camera-reference")))


def test_reference_is_independent_of_the_pack_and_of_comfyui():
    source = (SCRIPTS / "recammaster_dit.py").read_text()
    imports = [line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert set(imports) <= {"__future__", "json", "numpy", "torch", "torch.nn.functional"}, imports


def test_no_memory_setting_equals_recammasters_own_dit(recammaster):
    """81 frames, the target from ReCamMaster's camera_extrinsics.json (21 poses, as Camera Load reads it), the user
    video with the target's camera: the pack's prediction is ReCamMaster's."""
    assert recammaster["reference_scale"] > 0.1
    assert recammaster["pack_vs_recammaster_max_diff"] <= 2e-6
    assert recammaster["user_only_camera_vs_tile_max_diff"] <= 1e-6
    # The identity pose on the user video (the pack's former behaviour) is measurably not ReCamMaster.
    assert recammaster["identity_vs_recammaster_max_diff"] > 100 * max(recammaster["pack_vs_recammaster_max_diff"],
                                                                      1e-8)


def test_memory_v2v_setting_differs_only_in_the_memories_rows(recammaster):
    assert recammaster["memory_blocks"] == 2
    assert recammaster["memory_target_user_equal_user_only"]  # target and user tokens: the same camera as without
    assert recammaster["memory_target_user_vs_tile_max_diff"] <= 1e-6  # ... which is ReCamMaster's tile
    assert recammaster["memory_tokens"] == recammaster["expected_memory_tokens"]
    assert recammaster["memory_rows_vs_reference_max_diff"] <= 1e-6  # each memory: its own trajectory's rows
    assert recammaster["memory_rows_vs_target_rows_min_change"] > 0.1  # which are not the target's
    assert recammaster["memory_changes_output"] > 0


def test_camera_composes_with_merging(camera):
    assert camera["cam_merge_finite"] and camera["cam_merge_vs_nomerge"] > 0


def test_weights_ride_in_the_object_patched_wrapper_not_in_model_options(camera):
    assert camera["object_patches"] == ["diffusion_model.blocks.0.self_attn", "diffusion_model.blocks.1.self_attn"]
    assert camera["wrapper_shares_inner_weights"]  # LoRA keys blocks.N.self_attn.q.* still resolve
    assert camera["unpatched_restored"] == "WanSelfAttention"
    assert camera["model_options_tensors"] == 0


@pytest.mark.parametrize("case, words", [
    ("camera_missing", ["camera is not connected", "2 block(s)", "Camera Preset"]),
    ("camera_without_modules", ["camera is connected", "Load Modules"]),
    ("trajectory_short", ["5 frames", "9", "set frames to 9"]),
    ("own_without_trajectory", ["user_trajectory is not connected", "own trajectory"]),
    ("trajectory_unused", ["user_trajectory is connected", "'target'", "own trajectory"]),
    ("user_frames", ["user video has 4 latent frames and the target 3", "identity or own trajectory"]),
    ("grid", ["7x5", "multiple of 16 px", "64x32"]),
    ("memory_without_camera", ["nocam", "no camera trajectory"]),
    ("bank_other_model", ["'wan22'", "'wan21'"]),
    ("wrong_checkpoint", ["not a ReCamMaster/Memory-V2V checkpoint", "Found: a Wan DiT"]),
])
def test_bad_inputs_are_refused_before_sampling(camera, case, words):
    message = camera["errors"][case]
    assert message is not None, f"{case}: no error"
    for word in words:
        assert word in message, f"{case}: {word!r} missing from {message!r}"


def test_checkpoint_reports_name_the_camera_modules(camera):
    for report in camera["reports"].values():
        assert "Kind: ReCamMaster" in report and "0-1 (2 of 2 blocks)" in report
