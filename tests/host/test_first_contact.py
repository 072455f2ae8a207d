"""What a new user meets first, through the real host's routes: the template browser's files (every shipped workflow
listed, a thumbnail each, titles and descriptions in the index web/templates.js reads) and validation messages
that come once, on the input they concern."""

import json
import urllib.request
from pathlib import Path

from memv2v_cli import graph
from memv2v_cli.authoring import builder
from memv2v_cli.host.comfy_host import PACK_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))


def fetch(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_template_browser_lists_every_workflow_with_title_description_and_thumbnail(host):
    listed = host.client.get_json("/workflow_templates")
    assert sorted(listed.get(PACK_NAME, [])) == SHIPPED, listed
    for name in SHIPPED:  # the URLs the frontend builds: /api/workflow_templates/<folder>/<name>.json and .jpg
        status, kind, body = fetch(f"{host.server.url}/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert status == 200 and kind == "image/jpeg" and body[:3] == b"\xff\xd8\xff" and len(body) < 60_000, name
        status, _, body = fetch(f"{host.server.url}/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert json.loads(body)["nodes"], name
    assert f"/extensions/{PACK_NAME}/templates.js" in host.client.get_json("/extensions")
    _, _, body = fetch(f"{host.server.url}/extensions/{PACK_NAME}/{builder.INDEX_NAME}")
    templates = json.loads(body)[0]["templates"]
    assert [t["name"] for t in templates][0] == builder.MAIN_WORKFLOW
    assert sorted(t["name"] for t in templates) == SHIPPED
    for template in templates:
        assert template["title"] != template["name"] and len(template["description"].split()) >= 6, template


def node_errors(host, prompt: dict, node_id: str) -> list[dict]:
    # The demo pack's validate-only route runs /prompt's validation and returns node_errors even when another
    # output of the graph is valid (then /prompt would queue that part and still report these errors).
    answer = host.client.post_json("/memv2v_demo/validate", {"prompt": prompt}, timeout=120)
    return ((answer.get("node_errors") or {}).get(node_id) or {}).get("errors", [])


def shipped_prompt(host, name: str) -> dict:
    return graph.ui_to_api(json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text()), host.object_info)


def by_title(prompt: dict, title: str) -> str:
    return next(i for i, node in prompt.items() if node["_meta"]["title"] == title)


def test_a_bad_value_gives_one_error_line_naming_its_input(host):
    prompt = shipped_prompt(host, "memv2v_long_video_edit")
    split = next(i for i, node in prompt.items() if node["class_type"] == "MemV2V_SplitSegments")
    bank = next(i for i, node in prompt.items() if node["class_type"] == "MemV2V_BankLoad")
    assert node_errors(host, prompt, split) == []
    prompt[split]["inputs"]["segment_length"] = 80
    prompt[bank]["inputs"]["name"] = "../outside"
    errors = node_errors(host, prompt, split)
    assert len(errors) == 1, errors
    assert errors[0]["extra_info"]["input_name"] == "segment_length" and "4k+1" in errors[0]["details"], errors
    assert "77 or 81" in errors[0]["details"], errors
    errors = node_errors(host, prompt, bank)
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "name", errors



def test_load_camera_modules_checks_its_file_before_the_run(host):
    prompt = shipped_prompt(host, "memv2v_multiturn_nvs")
    modules = by_title(prompt, "Load Camera Modules")
    prompt[modules]["inputs"]["checkpoint"] = "missing_step20000.ckpt"
    errors = node_errors(host, prompt, modules)
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "checkpoint", errors
    assert "missing_step20000.ckpt" in errors[0]["details"] and "models/diffusion_models" in errors[0]["details"]


def test_top_k_zero_says_memory_off_and_no_merge_plan_is_reported(host):
    from host_prompts import decode_and_save_nodes, tiny_sampler_nodes
    from memv2v_core.bank.memory_bank import MemoryBank
    from memv2v_core.camera.presets import preset_trajectory

    import torch

    bank = MemoryBank.open(host.server.output_dir / "memory_banks" / "first_contact_top_k", create=True)
    trajectory = preset_trajectory("pan_left", frames=5)
    bank.add(torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1)), latent_format="wan21",
             camera=trajectory.c2w, intrinsics=trajectory.intrinsics, prompt="an earlier turn")
    prompt = tiny_sampler_nodes(Path(host.assets["dit"]).name, seed=5)
    prompt.update(decode_and_save_nodes(Path(host.assets["vae"]).name, ["6", 0], "first_contact/top_k"))
    prompt.update({
        "11": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "first_contact_top_k"}},
        "12": {"class_type": "MemV2V_CameraPreset", "inputs": {"preset": "pan_right", "frames": 5, "strength": 1.0,
                                                               "subject_distance": 4.0}},
        "13": {"class_type": "MemV2V_FOVRetrieve", "inputs": {"bank": ["11", 0], "camera": ["12", 0], "top_k": 0,
                                                              "lam": 0.5, "sphere_radius": 1.0}},
        "14": {"class_type": "MemV2V_DynamicTokenize",
               "inputs": {"selection": ["13", 0], "latent": ["4", 0], "mode": "nvs", "fine_ranks": 3,
                          "user_kernel": "1x2x2", "fine_kernel": "1x4x4", "coarse_kernel": "1x8x8",
                          "reverse_memory": True, "story_gap": 5.0, "target_frames": 0}},
        "15": {"class_type": "MemV2V_ApplyMemory", "inputs": {"model": ["5", 0], "context": ["14", 0],
                                                              "merge_blocks": "auto", "merge_ratio": 0.5,
                                                              "merge_mode": "merge"}},
    })
    prompt["6"]["inputs"]["model"] = ["15", 0]
    result = host.run(prompt)
    assert result.status == "execution_success", result.messages[-3:]
    retrieve = result.outputs["13"]["text"][0]
    assert retrieve.startswith("top_k = 0: memory off"), retrieve
    apply = result.outputs["15"]["text"][0]
    assert "no memory, so no merging" in apply and "blocks" not in apply, apply


def test_embedder_load_checks_its_file_before_the_run(host):
    architecture = host.object_info["MemV2V_EmbedderLoad"]["input"]["required"]["architecture"][1]["default"]
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 5, "color": 0}},
        "2": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "first_contact_embedder"}},
        "3": {"class_type": "MemV2V_EmbedderLoad", "inputs": {"file": "missing_open_clip.bin",
                                                              "architecture": architecture, "batch_size": 8}},
        "4": {"class_type": "MemV2V_SegmentRetrieve",
              "inputs": {"bank": ["2", 0], "segment": ["1", 0], "segment_index": 0, "source_id": "abc", "top_k": 4,
                         "recent_first": True, "embedder": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 2]}},
    }
    errors = node_errors(host, prompt, "3")
    assert len(errors) == 1 and errors[0]["extra_info"]["input_name"] == "file", errors
    assert "missing_open_clip.bin" in errors[0]["details"] and "models" in errors[0]["details"], errors
