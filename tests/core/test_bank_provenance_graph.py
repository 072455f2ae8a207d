"""What produced a latent, read from an API prompt: every shipped workflow's Bank Add finds the sampler(s) that made
its latent, their seed (through primitives), settings, the positive prompt text and the model files; the chains
and custom samplers ComfyUI offers are walked the same way; and the bank stores it all (the run in the entry file)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from memv2v_cli.authoring import specs_edit, specs_nvs, specs_story, specs_turns
from memv2v_cli.authoring.catalog import SPECS
from memv2v_core.bank.memory_bank import DamagedEntryError, MemoryBank
from memv2v_core.bank.provenance import run_provenance

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def object_info_types():
    """{class: {input: type}} from the real 0.3.64 /object_info cut (the host passes the same per class)."""
    with open(os.path.join(FIXTURES, "object_info_wan.json")) as handle:
        info = json.load(handle)
    types = {}
    for name, cls in info.items():
        types[name] = {n: (s[0] if isinstance(s[0], str) else "COMBO")
                       for section in ("required", "optional") for n, s in cls["input"].get(section, {}).items()}
    return types.get


def spec(name):
    # A copy: the catalog's specs are shared with the workflow-conversion test, which compares files against them.
    return copy.deepcopy(next(s for s in SPECS if s.name == name).prompt)


def bank_add(prompt):
    return next(i for i, n in prompt.items() if n["class_type"] == "MemV2V_BankAdd")


@pytest.mark.parametrize("types", [None, "host"], ids=["by-name", "typed"])
def test_nvs_workflow_records_the_sampler_seed_settings_text_and_models(types):
    prompt = spec("memv2v_multiturn_nvs")
    prompt["18"]["inputs"]["seed"] = 50
    found = run_provenance(prompt, bank_add(prompt), input_types=object_info_types() if types else None)
    assert found.seed == 50 and found.prompt == specs_nvs.PROMPT and not found.notes
    assert found.sampler == {"stages": [{"node": "18", "class_type": "KSampler", "seed": 50, "steps": 50, "cfg": 5.0,
                                         "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}]}
    files = {(m["class_type"], m["input"], m["file"]) for m in found.models}
    assert files == {("UNETLoader", "unet_name", specs_nvs.RECAMMASTER_CKPT),
                     ("MemV2V_LoadModules", "checkpoint", specs_nvs.RECAMMASTER_CKPT),
                     ("CLIPLoader", "clip_name", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
                     ("VAELoader", "vae_name", "wan_2.1_vae.safetensors")}


def test_t2v_workflow_reads_the_encoder_text_not_a_widget_of_bank_add():
    prompt = spec("memv2v_t2v_bank_turns")
    found = run_provenance(prompt, bank_add(prompt))
    assert found.seed == 42 and found.prompt == prompt["3"]["inputs"]["text"]
    assert "seed" not in prompt[bank_add(prompt)]["inputs"] and "prompt" not in prompt[bank_add(prompt)]["inputs"]


def test_story_workflow_two_experts_in_run_order_with_primitive_seed_and_steps():
    prompt = spec("memv2v_story_storymem")
    prompt["14"]["inputs"]["value"] = 44  # the Seed primitive both experts read
    found = run_provenance(prompt, bank_add(prompt), input_types=object_info_types())
    stages = found.sampler["stages"]
    assert [s["node"] for s in stages] == ["22", "23"]  # high-noise expert first
    assert [s["seed"] for s in stages] == [44, 44] and found.seed == 44
    assert [(s["add_noise"], s["start_at_step"], s["end_at_step"]) for s in stages] == [
        ("enable", 0, specs_story.SWITCH_STEP), ("disable", specs_story.SWITCH_STEP, 10000)]
    assert all(s["steps"] == specs_story.STEPS for s in stages)
    assert found.prompt == specs_story.FIRST_PROMPT  # Shot Prompt primitive -> CLIPTextEncode -> Story Conditioning
    loras = [m for m in found.models if m["input"] == "lora_name"]
    assert [(m["file"], m["strength"]) for m in loras] == [(specs_story.LORA_HIGH, 1.0), (specs_story.LORA_LOW, 1.0)]
    assert {m["file"] for m in found.models if m["input"] == "unet_name"} == {specs_story.HIGH, specs_story.LOW}


def test_edit_workflow_reads_the_instruction_through_edit_conditioning():
    prompt = spec("memv2v_long_video_edit")
    found = run_provenance(prompt, bank_add(prompt))
    assert found.prompt == specs_edit.EDIT_INSTRUCTION and found.seed == 42
    assert found.sampler["stages"][0]["sampler_name"] == "uni_pc"


def test_every_shipped_bank_add_finds_its_sampler_and_has_no_seed_or_prompt_widget_of_its_own():
    for workflow in SPECS:
        prompt = workflow.prompt
        for node_id, node in prompt.items():
            if node["class_type"] == "MemV2V_BankAdd":
                assert not {"seed", "prompt"} & set(node["inputs"]), workflow.name
                found = run_provenance(prompt, node_id)
                assert found.seed is not None and found.prompt and found.sampler["stages"], workflow.name


def custom_sampler_prompt(noise="RandomNoise"):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "dit.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a cat"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["9", 0], "text": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["9", 0], "text": "blurry"}},
        "5": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["4", 0],
                                                    "cfg": 4.5}},
        "6": {"class_type": noise, "inputs": {"noise_seed": ["10", 0]} if noise == "RandomNoise" else {}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "8": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras", "steps": 12,
                                                         "denoise": 0.8}},
        "9": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5.safetensors", "type": "wan"}},
        "10": {"class_type": "PrimitiveInt", "inputs": {"value": 1234}},
        "11": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                   "batch_size": 1}},
        "12": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["6", 0], "guider": ["5", 0],
                                                                 "sampler": ["7", 0], "sigmas": ["8", 0],
                                                                 "latent_image": ["11", 0]}},
        "13": {"class_type": "LatentFromBatch", "inputs": {"samples": ["12", 0], "batch_index": 0, "length": 1}},
        "14": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["15", 0], "samples": ["13", 0]}},
        "15": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "b"}},
    }


def test_sampler_custom_advanced_reads_noise_guider_sampler_and_sigmas():
    prompt = custom_sampler_prompt()
    found = run_provenance(prompt, "14", input_types=object_info_types())
    assert found.seed == 1234 and found.prompt == "a cat"  # through LatentFromBatch, the guider, a primitive
    assert found.sampler["stages"] == [{"node": "12", "class_type": "SamplerCustomAdvanced", "noise": "RandomNoise",
                                        "add_noise": True, "seed": 1234, "guider": "CFGGuider", "cfg": 4.5,
                                        "sampler_name": "dpmpp_2m", "scheduler": "karras", "steps": 12,
                                        "denoise": 0.8}]
    assert [m["file"] for m in found.models] == ["dit.safetensors", "umt5.safetensors"]


def test_a_seed_computed_at_run_time_is_not_guessed():
    prompt = custom_sampler_prompt()
    prompt["10"] = {"class_type": "SomeMathNode", "inputs": {"a": ["11", 0], "b": 3}}
    found = run_provenance(prompt, "14")
    assert found.seed is None
    assert any("noise_seed comes from" in note and "SomeMathNode" in note for note in found.notes), found.notes


def test_a_prompt_without_a_sampler_or_without_the_node_says_so():
    prompt = {"1": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                        "batch_size": 1}},
              "2": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["3", 0], "samples": ["1", 0]}},
              "3": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "b"}}}
    found = run_provenance(prompt, "2")
    assert found.seed is None and found.prompt is None and found.sampler == {}
    assert any("no sampler node found" in note for note in found.notes)
    assert "not in the queued prompt" in run_provenance(prompt, "99").notes[0]


def test_a_link_cycle_ends_the_walk():
    prompt = custom_sampler_prompt()
    prompt["11"] = {"class_type": "LatentFromBatch", "inputs": {"samples": ["13", 0], "batch_index": 0, "length": 1}}
    found = run_provenance(prompt, "14")
    assert found.seed == 1234


# --------------------------------------------------------------------------------------------------------------
# What the bank keeps: provenance in the record, the run in the entry file (outside the identity)

def test_the_run_is_kept_in_the_entry_file_not_the_manifest_and_not_in_the_identity(tmp_path):
    bank = MemoryBank.open(tmp_path / "b", create=True)
    latent = torch.randn(1, 16, 2, 4, 4)
    prompt = spec("memv2v_t2v_bank_turns")
    run = {"prompt": prompt, "workflow": {"nodes": [], "links": []}, "node": "13", "retrieval_ids": []}
    provenance = {"source": "graph", "node": "13", "models": []}
    first = bank.add(latent, latent_format="wan21", seed=42, sampler={"stages": []}, provenance=provenance, run=run)
    assert bank.load_run(first) == run
    assert bank.entry(first).provenance == provenance
    manifest = (tmp_path / "b" / "manifest.json").read_text()
    assert '"provenance"' in manifest and "rocky coast" not in manifest  # the prompt text of node 3 is not there
    # The same result from a graph that differs elsewhere (another canvas position, another file prefix) is the
    # same entry: the run is not part of the identity.
    other = copy.deepcopy(run)
    other["workflow"]["extra"] = {"ds": {"offset": [10, 20]}}
    other["prompt"]["11"]["inputs"]["filename_prefix"] = "elsewhere"
    assert bank.add(latent, latent_format="wan21", seed=42, sampler={"stages": []}, provenance=provenance,
                    run=other) == first
    assert len(bank) == 1 and bank.load_run(first) == run
    plain = bank.add(latent + 1, latent_format="wan21")
    assert bank.load_run(plain) is None and bank.entry(plain).provenance == {}
    # recover and export keep both (the record is copied, the file is the same)
    assert MemoryBank.recover(tmp_path / "b").entry(first).provenance == provenance
    assert bank.export(tmp_path / "copy").load_run(first) == run


def test_bad_runs_are_refused_naming_the_argument(tmp_path):
    bank = MemoryBank.open(tmp_path / "b", create=True)
    latent = torch.randn(1, 16, 2, 4, 4)
    with pytest.raises(ValueError, match="run must be a dict"):
        bank.add(latent, latent_format="wan21", run=["not", "a", "dict"])
    with pytest.raises(ValueError, match="run must hold JSON"):
        bank.add(latent, latent_format="wan21", run={"prompt": float("nan")})
    with pytest.raises(ValueError, match="provenance must hold JSON"):
        bank.add(latent, latent_format="wan21", provenance={"x": object()})
    assert len(bank) == 0


def test_a_swapped_entry_file_is_reported_when_its_run_is_read(tmp_path):
    bank = MemoryBank.open(tmp_path / "b", create=True)
    first = bank.add(torch.randn(1, 16, 2, 4, 4), latent_format="wan21", run={"prompt": {}})
    second = bank.add(torch.randn(1, 16, 2, 4, 4), latent_format="wan21", run={"prompt": {}})
    a, b = bank.entry_file(first), bank.entry_file(second)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    if len(data_a) != len(data_b):
        pytest.skip("entry files differ in size")
    a.write_bytes(data_b)
    with pytest.raises(DamagedEntryError, match="written by another add"):
        bank.load_run(first)


def test_export_of_some_entries_makes_a_plain_bank_of_just_those(tmp_path):
    bank = MemoryBank.open(tmp_path / "b", create=True)
    ids = [bank.add(torch.full((1, 16, 1, 2, 2), float(i)), latent_format="wan21") for i in range(4)]
    bank.hide(ids[1])
    bank.branch("alt", ids[0])
    copy_ = bank.export(tmp_path / "view", ids=[ids[3], ids[1]])
    assert copy_.ids() == [ids[1], ids[3]]  # the bank's order; all visible; no branch
    assert copy_.active_branch is None and copy_.branches() == {}
    assert [copy_.entry(i).turn for i in copy_.ids()] == [2, 4]
    with pytest.raises(KeyError, match="no healthy entries"):
        bank.export(tmp_path / "bad", ids=["0123456789abcdef"])
    assert not (tmp_path / "bad").exists()
