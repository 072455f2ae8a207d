"""True provenance and replay on the real server: the shipped workflows queued with four sampler seeds record exactly
those seeds and the prompt the sampler was conditioned on (not a widget of Bank Add); the exact API prompt (and the
UI workflow the frontend sends) is served by GET /memv2v/banks/{name}/entries/{id}/prompt; replaying stored turns,
with and without memory, gives their latents bit for bit on the CPU, from Python and from the command line, and a
replay with another seed is reported as different. The bank itself is never written by a replay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli import graph, replay, runner
from memv2v_cli.authoring import specs_nvs
from memv2v_cli.demo import setup as demo_setup
from memv2v_cli.host import comfy_host
from memv2v_core.bank.memory_bank import MemoryBank
from host_prompts import tiny_sampler_nodes
from test_bank_routes import get_json, request

REPO_ROOT = Path(__file__).resolve().parents[2]
SEEDS = (42, 43, 44, 50)
PRESETS = ("pan_left", "pan_right", "arc_right", "pan_left")


def shipped_demo_prompt(host, workflow: str, bank: str, camera_checkpoint: str | None = None) -> tuple[dict, dict]:
    """A shipped workflow as the runner's demo mode queues it (tiny models and sizes), on its own bank."""
    ui = json.loads((REPO_ROOT / "workflows" / f"{workflow}.json").read_text())
    assets = {**host.assets, **({runner.DEMO_CAMERA_CHECKPOINT: camera_checkpoint} if camera_checkpoint else {})}
    prompt = runner.to_demo(graph.ui_to_api(ui, host.object_info), assets)
    for node in prompt.values():
        if node["class_type"] == "MemV2V_BankLoad":
            node["inputs"]["name"] = bank
        if node["class_type"] == "SaveVideo":
            node["inputs"]["filename_prefix"] = f"{bank}/turn"
    return prompt, ui


def queued_prompts(prompt: dict, settings: list[str], turns: int) -> list[dict]:
    """The prompt of each turn exactly as ``runner.run_turns`` queues it (fixed seeds)."""
    parsed = runner.parse_settings(settings, prompt)
    result = []
    for turn in range(turns):
        turn_prompt = json.loads(json.dumps(prompt))
        for node_id, name, values in parsed:
            graph.set_input(turn_prompt, node_id, name, values[turn % len(values)])
        result.append(turn_prompt)
    return result


@pytest.fixture(scope="module")
def nvs(host):
    """The shipped multi-turn NVS workflow, four turns, sampler seeds 42, 43, 44, 50 (Bank Add left as shipped)."""
    cache = Path(host.assets["dit"]).parent
    checkpoint = demo_setup.build_assets("demo.checkpoints", host.server.comfyui, cache)["recammaster_ckpt"]
    host.server.add_model("diffusion_models", Path(checkpoint))
    prompt, _ = shipped_demo_prompt(host, "memv2v_multiturn_nvs", "prov_nvs", checkpoint)
    settings = [f"Sampler.seed={','.join(map(str, SEEDS))}", f"Camera Preset.preset={','.join(PRESETS)}"]
    lines: list[str] = []
    reports = runner.run_turns(host.client, prompt, len(SEEDS), runner.parse_settings(settings, prompt),
                               vary_seed=False, out=lines.append)
    bank_path = host.output_path("memory_banks/prov_nvs")
    return bank_path, MemoryBank.open(bank_path), queued_prompts(prompt, settings, len(SEEDS)), reports, lines


def test_nvs_bank_records_exactly_the_seeds_and_prompt_the_sampler_used(nvs):
    _, bank, prompts, reports, lines = nvs
    entries = bank.entries()
    assert [e.seed for e in entries] == list(SEEDS), "\n".join(lines)
    assert [e.prompt for e in entries] == [specs_nvs.PROMPT] * 4
    sampler = next(i for i, n in prompts[0].items() if n["_meta"]["title"] == "Sampler")
    for entry, seed in zip(entries, SEEDS):
        assert entry.sampler == {"stages": [{"node": sampler, "class_type": "KSampler", "seed": seed, "steps": 3,
                                             "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
                                             "denoise": 1.0}]}
        kinds = {(m["class_type"], m["input"]) for m in entry.provenance["models"]}
        assert {("UNETLoader", "unet_name"), ("MemV2V_LoadModules", "checkpoint"),
                ("VAELoader", "vae_name")} <= kinds, entry.provenance
        assert "overrides" not in entry.provenance and "notes" not in entry.provenance
    assert [len(e.parents) for e in entries][:2] == [0, 1] and all(e.parents for e in entries[1:])
    text = next(t for label, texts in reports[3].node_texts.items() if label.startswith("Remember This Turn")
                for t in texts)
    assert f"seed 50 from KSampler #{sampler}" in text, text


def test_each_entry_keeps_the_exact_prompt_that_ran_and_the_route_serves_it(nvs, host):
    _, bank, prompts, _, _ = nvs
    for entry_id, queued in zip(bank.ids(), prompts):
        run = bank.load_run(entry_id)
        assert run["prompt"] == queued and run["workflow"] is None
        answer = get_json(host, f"/memv2v/banks/prov_nvs/entries/{entry_id}/prompt")
        assert answer == {"prompt": queued, "workflow": None}
    # the entries listing carries the provenance; an entry without a stored run answers 404 with the reason
    listed = get_json(host, "/memv2v/banks/prov_nvs/entries")
    assert [e["seed"] for e in listed] == list(SEEDS) and all(e["provenance"]["source"] == "graph" for e in listed)
    plain = MemoryBank.open(host.output_path("memory_banks/prov_plain"), create=True)
    entry_id = plain.add(bank.load_latent(bank.ids()[0]), latent_format="wan21")
    status, data, _ = request(host, "GET", f"/memv2v/banks/prov_plain/entries/{entry_id}/prompt")
    assert status == 404 and b"no stored prompt" in data


def test_replaying_turns_gives_their_latents_bit_for_bit_and_leaves_the_bank_alone(nvs, host):
    bank_path, bank, _, _, _ = nvs
    ids = bank.ids()
    revision = bank.revision()
    banks_before = sorted(p.name for p in bank_path.parent.iterdir())
    lines: list[str] = []
    for entry_id in (ids[0], ids[2]):  # turn 1 (no memory) and turn 3 (retrieves turns 2 and 1)
        report = replay.replay_entry(host.client, bank_path, entry_id, out=lines.append)
        assert report.identical and report.max_abs_diff == 0.0, "\n".join(lines)
        assert report.record_differences == [], report.record_differences
    assert bank.revision() == revision and MemoryBank.open(bank_path).ids(include_hidden=True) == ids
    assert sorted(p.name for p in bank_path.parent.iterdir()) == banks_before  # scratch copies removed


def test_a_replay_with_another_seed_is_reported_as_different(nvs, host):
    bank_path, bank, _, _, _ = nvs
    lines: list[str] = []
    report = replay.replay_entry(host.client, bank_path, bank.ids()[2], settings=["Sampler.seed=999"],
                                 out=lines.append)
    assert not report.identical and report.max_abs_diff > 0
    assert "DIFFERS" in report.summary() and any(d.startswith("seed: stored 44, replay 999")
                                                 for d in report.record_differences), report.record_differences


def test_the_command_line_replay_against_the_running_host(nvs, host):
    bank_path, bank, _, _, _ = nvs
    done = subprocess.run([sys.executable, "-m", "memv2v_cli", "replay", str(bank_path), bank.ids()[3], "--url",
                           host.server.url], cwd=REPO_ROOT, env=comfy_host.subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"replayed {bank.ids()[3]}" in output and "bit for bit identical" in output, output[-2000:]
    # an unknown entry: one clear line, non-zero status
    done = subprocess.run([sys.executable, "-m", "memv2v_cli", "replay", str(bank_path), "0" * 16, "--url",
                           host.server.url], cwd=REPO_ROOT, env=comfy_host.subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode != 0 and "no entry '0000000000000000'" in done.stderr, done.stderr[-2000:]


def test_t2v_turns_record_the_sampler_seeds_and_encoder_text_and_keep_the_ui_workflow(host):
    prompt, ui = shipped_demo_prompt(host, "memv2v_t2v_bank_turns", "prov_t2v")
    prompts = queued_prompts(prompt, [f"Sampler.seed={','.join(map(str, SEEDS))}"], len(SEEDS))
    for index, queued in enumerate(prompts):  # the first turn as the frontend queues it: with its UI workflow
        extra = {"extra_pnginfo": {"workflow": ui}} if index == 0 else None
        host.client.run(queued, extra_data=extra)
    bank = MemoryBank.open(host.output_path("memory_banks/prov_t2v"))
    text = next(n for n in prompt.values() if n["_meta"]["title"] == "Prompt")["inputs"]["text"]
    assert [e.seed for e in bank.entries()] == list(SEEDS)
    assert [e.prompt for e in bank.entries()] == [text] * 4 and "lighthouse" in text
    first = bank.ids()[0]
    assert get_json(host, f"/memv2v/banks/prov_t2v/entries/{first}/prompt") == {"prompt": prompts[0], "workflow": ui}
    assert get_json(host, f"/memv2v/banks/prov_t2v/entries/{bank.ids()[1]}/prompt")["workflow"] is None


def test_a_seed_widget_set_on_bank_add_overrides_and_says_so(host):
    dit = Path(host.assets["dit"]).name
    prompt = tiny_sampler_nodes(dit, seed=11, text="a red door")
    prompt.update({"20": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "prov_override"}},
                   "21": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["20", 0], "samples": ["6", 0],
                                                                     "seed": 7}}})
    result = host.run(prompt)
    text = result.outputs["21"]["text"][0]
    assert "warning: the seed widget overrides the sampler's seed 11" in text, text
    entry = MemoryBank.open(host.output_path("memory_banks/prov_override")).entries()[0]
    assert entry.seed == 7 and entry.prompt == "a red door" and entry.provenance["overrides"] == {"seed": 11}
