"""A replay never writes a real bank: its prompt's Bank Loads for the replayed bank point at the scratch copy, and a
prompt that would write any other bank is refused."""

from __future__ import annotations

import pytest

from memv2v_cli.replay import ReplayError, redirect_banks


def prompt_with(*extra_nodes: tuple[str, dict]) -> dict:
    prompt = {
        "1": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "my_scene"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["1", 0], "samples": ["2", 0]}},
    }
    prompt.update(dict(extra_nodes))
    return prompt


def test_the_replayed_bank_is_read_and_written_as_the_scratch_copy():
    redirected, original = redirect_banks(prompt_with(), "3", "replay-scratch")
    assert original == "my_scene" and redirected["1"]["inputs"]["name"] == "replay-scratch"


def test_a_bank_add_to_another_bank_is_refused():
    other = [("4", {"class_type": "MemV2V_BankLoad", "inputs": {"name": "other_scene"}}),
             ("5", {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["4", 0], "samples": ["2", 0]}})]
    with pytest.raises(ReplayError, match=r"MemV2V_BankAdd \(node 5\) would write a bank other than the scratch"):
        redirect_banks(prompt_with(*other), "3", "replay-scratch")


def test_a_bank_save_is_refused_even_on_the_replayed_bank():
    save = [("4", {"class_type": "MemV2V_BankSave", "inputs": {"bank": ["3", 0], "copy_name": ""}})]
    with pytest.raises(ReplayError, match=r"MemV2V_BankSave \(node 4\)"):
        redirect_banks(prompt_with(*save), "3", "replay-scratch")
