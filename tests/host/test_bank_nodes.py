"""Bank nodes in the real ComfyUI: a BankLoad -> BankAdd graph run three times grows the bank; BankInspect shows it."""

from pathlib import Path

import pytest
from PIL import Image

from memv2v_cli.host.comfy_host import PromptFailed, PromptRejected

from memv2v_core.bank.memory_bank import MemoryBank
from host_prompts import tiny_sampler_nodes


def bank_turn_prompt(dit: str, seed: int, bank: str = "host_bank_turns") -> dict:
    prompt = tiny_sampler_nodes(dit, seed)
    prompt.update({
        "20": {"class_type": "MemV2V_BankLoad", "inputs": {"name": bank}},
        "21": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["20", 0], "samples": ["6", 0], "model": ["5", 0],
                                                          "prompt": f"turn with seed {seed}", "seed": seed}},
        "22": {"class_type": "MemV2V_BankInspect", "inputs": {"bank": ["21", 0], "max_entries": 12, "frames": 2,
                                                              "thumb_height": 32}},
        "23": {"class_type": "PreviewImage", "inputs": {"images": ["22", 0]}},
        "24": {"class_type": "PreviewAny", "inputs": {"source": ["22", 1]}},
    })
    return prompt


def test_three_turns_grow_the_bank_and_inspect_shows_every_entry(host):
    dit = Path(host.assets["dit"]).name
    for turn, seed in enumerate((11, 12, 13), start=1):
        result = host.run(bank_turn_prompt(dit, seed))
        assert f"as turn {turn}" in result.outputs["21"]["text"][0], result.outputs["21"]["text"]

    bank = MemoryBank.open(host.server.output_dir / "memory_banks" / "host_bank_turns")
    assert len(bank) == 3
    entries = [bank.entry(i) for i in bank.ids()]
    assert [e.turn for e in entries] == [1, 2, 3]
    assert [e.seed for e in entries] == [11, 12, 13]
    assert all(e.latent_format == "wan21" and e.latent_shape == (1, 16, 2, 4, 4) for e in entries)

    table = result.outputs["24"]["text"][0]
    rows = [line for line in table.splitlines() if any(entry_id in line for entry_id in bank.ids())]
    assert len(rows) == 3, table
    image = result.outputs["23"]["images"][0]
    with Image.open(host.server.base_dir / image["type"] / image.get("subfolder", "") / image["filename"]) as sheet:
        assert sheet.height >= 3 * 32  # one row of thumbnails per entry


def test_same_result_twice_is_stored_once(host):
    dit = Path(host.assets["dit"]).name
    first = host.run(bank_turn_prompt(dit, 5, bank="host_bank_dupes"))
    assert "added" in first.outputs["21"]["text"][0]
    # The same prompt again: Bank Load re-runs because the bank changed on disk, so Bank Add runs again
    # with identical content, which must be recognised instead of stored twice.
    second = host.run(bank_turn_prompt(dit, 5, bank="host_bank_dupes"))
    assert "not stored twice" in second.outputs["21"]["text"][0], second.outputs["21"]["text"]
    assert len(MemoryBank.open(host.server.output_dir / "memory_banks" / "host_bank_dupes")) == 1


def test_bad_bank_name_is_refused_before_anything_is_created(host):
    prompt = {"1": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "../escape"}},
              "2": {"class_type": "MemV2V_BankInspect", "inputs": {"bank": ["1", 0], "max_entries": 4, "frames": 1,
                                                                  "thumb_height": 16}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}}}
    with pytest.raises((PromptFailed, PromptRejected)) as failure:
        host.run(prompt)
    assert "escape" in str(failure.value) and "refused" in str(failure.value)
    assert not (host.server.output_dir / "escape").exists()
    banks = host.server.output_dir / "memory_banks"
    assert not banks.exists() or all(path.name != "escape" for path in banks.iterdir())


def test_a_batch_of_videos_is_refused_with_the_fix(host):
    prompt = {"1": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "host_bank_batch"}},
              "2": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                       "batch_size": 2}},
              "3": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["1", 0], "samples": ["2", 0]}}}
    with pytest.raises(PromptFailed) as failure:
        host.run(prompt)
    assert "samples: a batch of 2 videos" in str(failure.value) and "Latent From Batch" in str(failure.value)
    assert len(MemoryBank.open(host.server.output_dir / "memory_banks" / "host_bank_batch")) == 0
