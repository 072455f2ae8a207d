"""Inputs of the segment nodes and Long Video Edit that used to fail or slip through, on the real server: a VIDEO made
by Create Video (frames, no file), a segment_length error reported once and ComfyUI's own range checks kept, a file
outside the input folder, a filename_prefix outside the output folder, and Stitch's audio from an in-memory file.

Every Long Video Edit prompt here stops before sampling (the errors come first), so the tiny Wan 2.1 demo model and
a 20-frame flat IMAGE are enough.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli.host import comfy_host

NODE = "MemV2V_LongVideoEdit"
FRAMES, LENGTH, OVERLAP = 20, 9, 1  # windows 0..9, 8..17, 11..20
SCRIPTS = Path(__file__).resolve().parent / "segment_scripts"
FALLBACK = {"class_type": "MemV2V_EmbedderLoad", "inputs": {
    "file": "(fallback) colour histogram - no weights, not an image encoder", "architecture": "ViT-B-32"}}


def _frames_and_video() -> dict:
    return {
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": FRAMES,
                                                       "color": 0x336699}},
        "made": {"class_type": "CreateVideo", "inputs": {"images": ["img", 0], "fps": 16.0}},
    }


def _texts(run, node: str) -> list[str]:
    return [t for kind, data in run.messages if kind == "executed" and data.get("node") == node
            for t in (data.get("output") or {}).get("text", [])]


def _defaults(host, class_type: str) -> dict:
    """Every required widget of a node at its default, as the frontend would send it."""
    values = {}
    for name, spec in host.object_info[class_type]["input"]["required"].items():
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if isinstance(spec[0], list) or spec[0] == "COMBO":
            values[name] = options.get("default", spec[0][0] if isinstance(spec[0], list) else options["options"][0])
        elif "default" in options:
            values[name] = options["default"]
    return values


def _long_edit(host, **inputs) -> dict:
    """Long Video Edit on the tiny demo model: video from Create Video unless ``inputs`` say otherwise."""
    prompt = {
        **_frames_and_video(),
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": Path(host.assets["dit"]).name,
                                                        "weight_dtype": "default"}},
        "pos": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": "make it red", "tokens": 16}},
        "neg": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": "", "tokens": 16}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": Path(host.assets["vae"]).name}},
        "bank": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "segment_inputs"}},
        "embed": FALLBACK,
    }
    values = {**_defaults(host, NODE), "model": ["unet", 0], "positive": ["pos", 0], "negative": ["neg", 0],
              "vae": ["vae", 0], "bank": ["bank", 0], "embedder": ["embed", 0], "video": ["made", 0], "width": 0,
              "height": 0, "segment_length": LENGTH, "overlap": OVERLAP, "steps": 1,
              "filename_prefix": "memv2v/segment_inputs"}
    values.update(inputs)
    prompt["edit"] = {"class_type": NODE, "inputs": {k: v for k, v in values.items() if v is not None}}
    return prompt


def _run_error(host, prompt: dict) -> str:
    with pytest.raises(comfy_host.PromptFailed) as caught:
        host.run(prompt, timeout=600)
    return str(caught.value)


def _node_errors(host, prompt: dict, node_id: str) -> list[dict]:
    answer = host.client.post_json("/memv2v_demo/validate", {"prompt": prompt}, timeout=120)
    return ((answer.get("node_errors") or {}).get(node_id) or {}).get("errors", [])


def test_split_segments_takes_a_video_made_by_create_video(host):
    prompt = {
        **_frames_and_video(),
        "from_video": {"class_type": "MemV2V_SplitSegments", "inputs": {
            "video": ["made", 0], "segment_length": LENGTH, "overlap": OVERLAP, "index": 1}},
        "from_image": {"class_type": "MemV2V_SplitSegments", "inputs": {
            "image": ["img", 0], "segment_length": LENGTH, "overlap": OVERLAP, "index": 1}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["from_video", 0]}},
        "show2": {"class_type": "PreviewImage", "inputs": {"images": ["from_image", 0]}},
    }
    run = host.run(prompt)
    video_text, image_text = _texts(run, "from_video")[0], _texts(run, "from_image")[0]
    assert "segment 2 of 3 (index 1): frames 8..16 of 20" in video_text, video_text
    assert video_text.split("source_id ")[1] == image_text.split("source_id ")[1]  # the same frames, the same id


def test_long_video_edit_takes_a_video_made_by_create_video_and_refuses_a_prefix_outside_the_output(host):
    # The Create Video source opens (it used to fail in get_stream_source); the next check, the prefix, then stops it.
    message = _run_error(host, _long_edit(host, filename_prefix="../outside/edit"))
    assert "Could not determine output format" not in message, message
    assert "filename_prefix: '../outside/edit' points outside ComfyUI's output folder" in message, message
    assert "without '..'" in message, message


@pytest.mark.parametrize("name", ["../outside.mp4", "ABSOLUTE"])
def test_a_file_outside_the_input_folder_is_refused(host, name):
    outside = host.server.base_dir / "outside.mp4"  # a real video, so only the folder check can refuse it
    subprocess.run([sys.executable, "-c", "import av, numpy as np\n"
                    f"c = av.open({str(outside)!r}, 'w'); s = c.add_stream('libx264', rate=16)\n"
                    "s.width = s.height = 32\n"
                    "for i in range(20):\n    [c.mux(p) for p in s.encode(av.VideoFrame.from_ndarray("
                    "np.full((32, 32, 3), i * 9, np.uint8), format='rgb24'))]\n"
                    "[c.mux(p) for p in s.encode()]; c.close()"], check=True, timeout=120)
    name = str(outside) if name == "ABSOLUTE" else name
    message = _run_error(host, _long_edit(host, video=None, file=name, width=32, height=32))
    assert f"file: '{name}' lies outside ComfyUI's input folder" in message, message


def test_segment_length_error_comes_once_and_comfyuis_own_checks_still_run(host):
    prompt = _long_edit(host, segment_length=80)
    errors = _node_errors(host, prompt, "edit")
    assert len(errors) == 1, errors
    assert errors[0]["extra_info"]["input_name"] == "segment_length" and "4k+1" in errors[0]["details"], errors
    prompt = _long_edit(host, steps=0)
    errors = _node_errors(host, prompt, "edit")
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_smaller_than_min", "steps")]


def test_an_overlap_as_long_as_the_segment_is_refused_when_the_node_runs(host):
    message = _run_error(host, _long_edit(host, overlap=LENGTH))
    assert f"overlap={LENGTH} must be less than segment_length={LENGTH}" in message, message


def test_stitch_fill_missing_keeps_all_audio_of_an_in_memory_video(host, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPTS / "stitch_in_memory.py"), str(tmp_path)],
                          cwd=host.server.comfyui, env=comfy_host.subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] is None, result
    assert result["frames"] == 100 and result["frames_equal"], result
    assert result["has_audio"] and result["audio_packets"] == result["source_audio_packets"] > 0, result
