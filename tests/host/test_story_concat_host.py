"""StoryMem conditioning on ComfyUI's real code: what a 36-channel Wan DiT receives through KSampler's path from the
pack's concat_latent_image/concat_mask equals the official y, for a cut, MI2V and MM2V with M = 0, 1, 3; and the
model's own RoPE embedder at story_temporal_ids equals the official temporal frequency table.

The check runs in ComfyUI's own Python (story_scripts/concat_cond.py, cwd = the ComfyUI folder; no server needed)
and prints JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli.host import comfy_host

SCRIPT = Path(__file__).resolve().parent / "story_scripts" / "concat_cond.py"


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    comfyui = comfy_host.find_comfyui()[0]
    done = subprocess.run([sys.executable, str(SCRIPT), "--tmp", str(tmp_path_factory.mktemp("story-concat"))],
                          cwd=comfyui, env=comfy_host.subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"concat_cond.py failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_i2v_layout_is_loaded_as_comfyuis_wan21_with_36_input_channels(measured):
    # Wan 2.2 I2V A14B has no img_emb: ComfyUI detects it as WAN21 t2v with a 36-channel patch embedding
    assert measured["model_class"] == "WAN21" and measured["in_dim"] == 36 and not measured["image_to_video"]


def test_the_dit_receives_exactly_the_official_conditioning(measured):
    assert sorted(measured["cases"]) == sorted(f"{m}-{n}" for m in ("cut", "mi2v", "mm2v") for n in (0, 1, 3))
    for name, case in measured["cases"].items():
        assert case["rows"] == 2, name  # CFG 2: the conditional and unconditional rows both carry it
        assert case["mask_equal"] and case["max_diff"] == 0.0, (name, case)


def test_story_ids_give_the_official_temporal_rotations(measured):
    assert measured["rope_t_max_diff"] <= 1e-6  # float32 in ComfyUI vs float64 in the official table
