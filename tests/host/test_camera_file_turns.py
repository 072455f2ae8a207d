"""Camera Load with ReCamMaster's real camera_extrinsics.json drives 81-frame NVS turns through the real server.

Camera Load reads 21 poses from the file (one per latent frame, as ReCamMaster does); they were refused before ("the
trajectory has 21 frames but the video has 81"). Turn 1 uses one as its target and stores it in the bank; turn 2
uses another and retrieves turn 1 as a memory with its stored 21 poses. The same two cameras read per video frame
(81 poses each, plain matrix files) give the same latents bit for bit, and another camera gives another latent, so
the poses really reach the model. Tiny ReCamMaster-layout model with random camera weights, the shipped multi-turn
workflow adapted with the runner's demo mode, a real ReCamMaster example video.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch

from memv2v_cli import graph, runner
from memv2v_cli.host import comfy_host
from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.camera.files import load_recammaster

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "nvs_scripts"
FRAMES, LATENT_FRAMES, SIZE = 81, 21, 32
VIDEO = "4.mp4"  # 102 frames of a ReCamMaster example video; Trim Frames keeps 81
EXTRINSICS = "camera_extrinsics.json"
CAMERAS = (1, 2)  # turn 1 pans right, turn 2 pans left (both start at the source's camera, so their views overlap)


@pytest.fixture(scope="module")
def camera_files(host, shared_data) -> dict[str, str]:
    """ReCamMaster's file, and each used camera per video frame as a plain matrices file, in the input folder."""
    source = shared_data / "recammaster" / EXTRINSICS
    inputs = host.server.base_dir / "input"
    shutil.copy(source, inputs / EXTRINSICS)
    shutil.copy(shared_data / "recammaster" / "videos" / VIDEO, inputs / VIDEO)
    names = {}
    for cam in (*CAMERAS, 3):
        every_frame = load_recammaster(source, cam, stride=1)  # frames 0..80, ReCamMaster's preprocessing
        names[cam] = f"cam{cam:02d}_every_frame.json"
        (inputs / names[cam]).write_text(json.dumps({"c2w": every_frame.c2w.tolist()}))
    return names


@pytest.fixture(scope="module")
def camera_checkpoint(host, tmp_path_factory) -> str:
    done = subprocess.run([sys.executable, str(SCRIPTS / "build_checkpoints.py"), "--out",
                           str(tmp_path_factory.mktemp("camera-file-ckpt"))], cwd=host.server.comfyui,
                          env=comfy_host.subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    path = Path(json.loads(done.stdout.strip().splitlines()[-1])["recammaster_cam_ckpt"])  # random camera weights
    host.server.add_model("diffusion_models", path)
    return str(path)


def camera_load_prompt(host, checkpoint: str, bank: str, prefix: str) -> tuple[dict, str]:
    """The shipped multi-turn NVS workflow at 81 frames, its Camera Preset swapped for Camera Load."""
    ui = json.loads((REPO_ROOT / "workflows" / "memv2v_multiturn_nvs.json").read_text())
    prompt = runner.to_demo(graph.ui_to_api(ui, host.object_info),
                            {**host.assets, runner.DEMO_CAMERA_CHECKPOINT: checkpoint})
    camera = None
    for node_id, node in prompt.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "MemV2V_CameraPreset":
            camera = node_id
        elif kind == "MemV2V_BankLoad":
            inputs["name"] = bank
        elif kind == "SaveVideo":
            inputs["filename_prefix"] = prefix
        elif kind == "LoadVideo":
            inputs["file"] = VIDEO
        elif kind == "ImageFromBatch":
            inputs["length"] = FRAMES
        elif kind == "ImageScale":
            inputs.update(width=SIZE, height=SIZE)
    assert camera is not None
    prompt[camera] = {"class_type": "MemV2V_CameraLoad", "_meta": {"title": "Camera"},
                      "inputs": {"file": EXTRINSICS, "format": "auto", "cam_index": 1}}
    return prompt, camera


@pytest.fixture(scope="module")
def turns(host, camera_files, camera_checkpoint) -> dict:
    lines: list[str] = []
    runs = {}
    # A: ReCamMaster's file (21 poses per camera) as target, then as a stored memory.
    prompt, camera = camera_load_prompt(host, camera_checkpoint, "camfile_latent_rate", "camfile/latent_rate")
    settings = runner.parse_settings([f"Camera.cam_index={','.join(map(str, CAMERAS))}"], prompt)
    runs["latent_rate"] = runner.run_turns(host.client, prompt, 2, settings, out=lines.append, timeout=1800)
    # B: the same cameras per video frame (81 poses), read as plain matrix files.
    prompt, camera = camera_load_prompt(host, camera_checkpoint, "camfile_video_rate", "camfile/video_rate")
    prompt[camera]["inputs"]["format"] = "matrices"
    settings = runner.parse_settings([f"Camera.file={','.join(camera_files[c] for c in CAMERAS)}"], prompt)
    runs["video_rate"] = runner.run_turns(host.client, prompt, 2, settings, out=lines.append, timeout=1800)
    # C: turn 1 with another camera (tilt up).
    prompt, camera = camera_load_prompt(host, camera_checkpoint, "camfile_other", "camfile/other")
    prompt[camera]["inputs"]["cam_index"] = 3
    runs["other"] = runner.run_turns(host.client, prompt, 1, [], out=lines.append, timeout=1800)
    banks = {name: MemoryBank.open(host.output_path(f"memory_banks/camfile_{name}")) for name in runs}
    return {"runs": runs, "banks": banks, "log": "\n".join(lines)}


def _texts(report) -> dict[str, str]:
    return {label.split(" (#")[0]: "\n".join(t) for label, t in report.node_texts.items()}


def test_camera_file_is_the_target_of_81_frame_turns(turns, host):
    reports = turns["runs"]["latent_rate"]
    for report, cam in zip(reports, CAMERAS):
        apply = _texts(report)["Apply Memory"]
        assert f"camera: camera_extrinsics:cam{cam:02d} on 2 block(s)" in apply, apply
        assert "user video: the target's camera per frame (ReCamMaster)" in apply
        video = next(f for f in report.files if f.endswith(".mp4"))
        with av.open(str(host.server.output_dir / video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == FRAMES
    bank = turns["banks"]["latent_rate"]
    entries = bank.entries()
    assert len(entries) == 2
    for entry in entries:
        assert list(bank.load_tensor(entry.entry_id, "camera").shape) == [LATENT_FRAMES, 4, 4]  # as Camera Load gave
        assert bank.load_latent(entry.entry_id).shape[-3] == LATENT_FRAMES


def test_stored_camera_file_poses_serve_as_a_memory(turns):
    bank = turns["banks"]["latent_rate"]
    first, second = bank.entries()
    assert list(second.parents) == [first.entry_id]  # turn 2 retrieved turn 1 and attended to it
    apply = _texts(turns["runs"]["latent_rate"][1])["Apply Memory"]
    assert apply.startswith("memory: 2 streams"), apply  # the user video and the memory


def test_poses_per_latent_frame_equal_poses_per_video_frame(turns):
    """21 poses used per latent frame and 81 poses sampled at frames 0, 4, ..., 80 are the same camera rows, so the
    turns sample the same latents, as target (turn 1) and as stored memory (turn 2)."""
    latent_rate, video_rate = turns["banks"]["latent_rate"], turns["banks"]["video_rate"]
    assert [list(video_rate.load_tensor(i, "camera").shape) for i in video_rate.ids()] == [[FRAMES, 4, 4]] * 2
    for a, b in zip(latent_rate.ids(), video_rate.ids()):
        assert torch.equal(latent_rate.load_latent(a), video_rate.load_latent(b)), turns["log"]


def test_another_camera_gives_another_result(turns):
    latent_rate, other = turns["banks"]["latent_rate"], turns["banks"]["other"]
    first = latent_rate.load_latent(latent_rate.ids()[0])
    assert not torch.equal(first, other.load_latent(other.ids()[0]))
