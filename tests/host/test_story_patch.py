"""StoryMem on ComfyUI's own Wan models: the negative temporal RoPE shift patch and the StoryMem LoRA Loader.

The checks run in ComfyUI's own Python (scripts in story_scripts/, cwd = the ComfyUI folder, tiny random models built
with ComfyUI's WanModel and loaded through ComfyUI's detection) and print JSON; the last test runs the LoRA node in a
real prompt through the server. References are independent: the official StoryMem RoPE formula and PEFT's rsLoRA
update, written in the scripts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memv2v_cli.host import comfy_host

SCRIPTS = Path(__file__).resolve().parent / "story_scripts"
COMFYUI, _ = comfy_host.find_comfyui()


def run_script(name: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], cwd=COMFYUI, env=comfy_host.subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rope() -> dict:
    return run_script("story_rope.py")


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> dict:
    return run_script("storymem_lora.py", "--tmp", str(tmp_path_factory.mktemp("storymem-lora")))


# --- negative temporal RoPE shift ---------------------------------------------------------------------------------
def test_the_tiny_model_is_comfys_wan_i2v_layout(rope):
    assert rope["model_class"] == "WAN21" and rope["model_type_i2v"] and rope["in_dim"] == 36


def test_zero_memory_frames_is_bit_identical_to_the_unpatched_model(rope):
    assert rope["zero_has_wrapper"]  # the wrapper is installed and passes the call through
    assert rope["zero_equal"]
    assert rope["zero_ids_freqs_equal_comfy"]  # the override's ids at M = 0 are ComfyUI's own, bit for bit
    assert rope["sample_zero_equal"]  # and through ComfyUI's sampler


def test_memory_frames_get_the_official_negative_positions(rope):
    assert rope["temporal_ids"] == [-15.0, -10.0, -5.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    assert rope["layout_max_diff"] < 1e-6  # the reference matrices rotate like the official complex freqs
    assert rope["plain_pe_vs_official_unshifted"] == 0.0  # the reference reproduces ComfyUI's table at M = 0
    # the blocks receive exactly the official frequencies (float64 formula, cast to float32)
    assert rope["freqs_equal_official"] and rope["freqs_vs_official_max_diff"] == 0.0


def test_forward_equals_the_model_run_with_hand_built_frequencies(rope):
    assert rope["forward_vs_hand_max_diff"] <= 1e-6
    assert rope["shift_effect"] > 1e-3  # and the shift really changes the output
    assert rope["output_shape"] == [2, 16, 8, 8, 12]
    assert rope["override_removed_after_call"]
    assert rope["sample_shift_effect"] > 1e-3  # the wrapper reaches the model in real sampling


def test_newer_rope_options_apply_on_top_and_other_rope_calls_are_untouched(rope):
    assert rope["rope_options_max_diff"] <= 1e-6
    assert rope["other_call_untouched"]


def test_composes_with_the_memory_patch_and_replaces_itself(rope):
    assert rope["compose_wrapper_keys"] == ["memv2v.memory", "memv2v.story_rope"]
    assert rope["compose_order_max_diff"] == 0.0
    assert rope["compose_vs_memory_only"] > 1e-3 and rope["compose_vs_story_only"] > 1e-3
    assert rope["reapply_wrappers"] == 1 and rope["reapply_max_diff"] == 0.0


def test_bad_settings_are_refused_with_the_fix(rope):
    assert "memory_frames (-1) must be a whole number >= 0" in rope["error_negative"]
    assert "gap (0) must be a positive number" in rope["error_gap"]
    assert "sees only 8 latent frames" in rope["error_too_many"]
    assert "not a Wan DiT" in rope["error_not_wan"]


# --- StoryMem LoRA Loader -------------------------------------------------------------------------------------------
def test_node_weights_equal_w_plus_rslora_scale_times_b_a_on_every_layer(lora):
    assert lora["model_class"] == "WAN21" and lora["in_dim"] == 36
    assert lora["delta_rel_size"] > 1.0  # the update is large, so a wrong scale (even 11.3125) could not pass
    for strength in ("1.0", "0.5"):
        report = lora[f"node_{strength}"]
        assert report["layers"] == 20 and report["patch_keys"] == 20
        assert report["max_rel_err"] < 5e-6
        assert report["other_max_change"] == 0.0  # nothing else is touched
    assert lora["unpatched_restored"]


def test_node_shows_what_it_patched_and_the_scale(lora):
    assert lora["node_1.0"]["text"].endswith("20 of 20 layers patched at scale 11.3137 x strength 1 = 11.3137")
    assert "rank 128" in lora["node_1.0"]["text"] and "rsLoRA: 128/sqrt(128)" in lora["node_1.0"]["text"]
    assert lora["node_0.5"]["text"].endswith("x strength 0.5 = 5.6569")


def test_comfys_plain_lora_loader_patches_nothing_from_the_raw_file(lora):
    plain = lora["plain_loader"]
    assert plain["patch_keys"] == 0 and plain["weights_unchanged"]
    assert plain["not_loaded_messages"] == plain["raw_keys"] == 40  # every key: "lora key not loaded"


def test_stacks_with_comfys_lora_loader_in_either_order_and_converted_file_matches(lora):
    assert lora["stacked_after_rel_err"] < 5e-6 and lora["stacked_before_rel_err"] < 5e-6
    assert "20 of 20 layers patched" in lora["stacked_text"]
    assert lora["converted_file_rel_err"] < 5e-6  # convert_storymem_file -> LoraLoaderModelOnly at strength 1


def test_lora_refusals_name_the_problem_and_fix(lora):
    assert "width 256" in lora["error_wide"] and "width 128" in lora["error_wide"]
    assert "Wan 2.2 A14B" in lora["error_wide"]
    assert "set rank to 128" in lora["error_rank"]
    assert "already in a ComfyUI LoRA key format" in lora["error_comfy_format"]
    assert "is not in models/loras" in lora["error_missing"]


# --- the node in a real prompt through the server ----------------------------------------------------------------------
SERVER_LORA = "memv2v_storytest_peft_tiny.pth"


def peft_lora_for_demo_dit(path: Path, dim: int = 128, ffn: int = 256, blocks: int = 2, rank: int = 128) -> Path:
    """A random LoRA in StoryMem's PEFT layout for the demo DiT, saved with torch.save like the released files."""
    g = torch.Generator().manual_seed(21)
    shapes = {f"{kind}.{p}": (dim, dim) for kind in ("self_attn", "cross_attn") for p in "qkvo"}
    shapes["ffn.0"], shapes["ffn.2"] = (ffn, dim), (dim, ffn)
    state = {}
    for block in range(blocks):
        for module, (out_dim, in_dim) in shapes.items():
            key = f"base_model.model.blocks.{block}.{module}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, in_dim, generator=g) * 0.02
            state[f"{key}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.02
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def served(host):
    from safetensors.torch import load_file

    host.server.add_model("loras", peft_lora_for_demo_dit(host.server.base_dir / SERVER_LORA))
    nodes: dict[str, dict] = {}

    def add(node_id: str, class_type: str, **inputs) -> list:
        nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    unet = add("unet", "UNETLoader", unet_name=Path(host.assets["dit"]).name, weight_dtype="default")
    pos = add("pos", "MemV2VDemo_TextConditioning", text="shot two, the same hero", tokens=16)
    neg = add("neg", "MemV2VDemo_TextConditioning", text="", tokens=16)
    empty = add("empty", "EmptyHunyuanLatentVideo", width=64, height=64, length=9, batch_size=1)
    branches = {
        "base": unet,
        "story": add("story", "MemV2V_StoryMemLoraLoader", model=unet, lora_name=SERVER_LORA, strength=1.0, rank=128,
                     alpha=128.0, rs_lora=True),
        "plain": add("plain", "LoraLoaderModelOnly", model=unet, lora_name=SERVER_LORA, strength_model=1.0),
    }
    for name, model in branches.items():
        samples = add(f"{name}_ks", "KSampler", model=model, positive=pos, negative=neg, latent_image=empty, seed=5,
                      steps=2, cfg=3.5, sampler_name="euler", scheduler="simple", denoise=1.0)
        add(f"{name}_save", "SaveLatent", samples=samples, filename_prefix=f"storytest/{name}")
    result = host.run(nodes)
    latents = {}
    for node_id, ui in result.outputs.items():
        if node_id.endswith("_save"):
            item = ui["latents"][0]
            path = host.server.output_dir / item.get("subfolder", "") / item["filename"]
            latents[node_id[: -len("_save")]] = load_file(str(path))["latent_tensor"]
    return result, latents, host.client.object_info()


def test_node_runs_in_a_prompt_lists_the_file_and_shows_its_summary(served):
    result, latents, info = served
    assert SERVER_LORA in info["MemV2V_StoryMemLoraLoader"]["input"]["required"]["lora_name"][1]["options"]
    assert info["MemV2V_StoryMemLoraLoader"]["category"] == "MemoryV2V/story"
    text = result.outputs["story"]["text"][0]
    assert "20 of 20 layers patched at scale 11.3137" in text
    assert float((latents["story"] - latents["base"]).abs().max()) > 1e-4  # the LoRA takes effect in sampling
    assert torch.equal(latents["plain"], latents["base"])  # ComfyUI's own loader: the raw file changes nothing
