"""``--fresh`` empties the banks of a demo folder only: a --base-dir pointing at a real ComfyUI keeps its banks."""

from __future__ import annotations

import pytest

from memv2v_cli import runner


def make_bank(base):
    bank = base / "output" / "memory_banks" / "my_scene"
    bank.mkdir(parents=True)
    (bank / "manifest.json").write_text("{}")
    return bank


def test_fresh_refuses_a_folder_that_is_not_a_demo_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMV2V_DEMO_HOME", str(tmp_path / "demo"))
    real = tmp_path / "ComfyUI"
    bank = make_bank(real)
    with pytest.raises(runner.UserError, match="not a demo folder"):
        runner.empty_demo_banks(real)
    assert (bank / "manifest.json").is_file()


def test_fresh_empties_demo_folders_under_the_demo_home_or_marked(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMV2V_DEMO_HOME", str(tmp_path / "demo"))
    under_home = tmp_path / "demo" / "memv2v_multiturn_nvs"
    make_bank(under_home)
    runner.empty_demo_banks(under_home)
    assert not (under_home / "output" / "memory_banks").exists()

    marked = tmp_path / "elsewhere"
    runner.mark_demo_folder(marked)
    make_bank(marked)
    runner.empty_demo_banks(marked)
    assert not (marked / "output" / "memory_banks").exists()
