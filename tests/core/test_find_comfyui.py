"""Which ComfyUI the runner starts: the one whose custom_nodes holds the pack first (linked or copied, as the shell
names it), then COMFYUI_PATH, then ~/comfy/ComfyUI; an explicit --comfyui that is no ComfyUI is an error."""

from __future__ import annotations

from pathlib import Path

from memv2v_cli.host import comfy_host


def fake_comfyui(root: Path, *, with_pack: bool) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text("")
    (root / "nodes.py").write_text("")
    (root / "comfy").mkdir()
    (root / "custom_nodes").mkdir()
    if with_pack:
        (root / "custom_nodes" / "memory-v2v").symlink_to(comfy_host.PACK_ROOT, target_is_directory=True)
    return root


def test_the_comfyui_holding_the_pack_comes_before_comfyui_path_and_home(tmp_path, monkeypatch):
    holder = fake_comfyui(tmp_path / "studio" / "ComfyUI", with_pack=True)
    other = fake_comfyui(tmp_path / "other" / "ComfyUI", with_pack=False)
    home = tmp_path / "home"
    fake_comfyui(home / "comfy" / "ComfyUI", with_pack=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("COMFYUI_PATH", str(other))
    # The shell's working directory inside the linked pack (what `cd ComfyUI/custom_nodes/memory-v2v` leaves in PWD).
    monkeypatch.setenv("PWD", str(holder / "custom_nodes" / "memory-v2v" / "memv2v_cli"))
    path, where = comfy_host.find_comfyui()
    assert path == holder.resolve() and "holding this pack" in where

    monkeypatch.setenv("PWD", str(tmp_path))  # run from elsewhere: the pack's own path is no custom_nodes here
    path, where = comfy_host.find_comfyui()
    assert path == other.resolve() and "COMFYUI_PATH" in where
    monkeypatch.delenv("COMFYUI_PATH")
    path, where = comfy_host.find_comfyui()
    assert path == (home / "comfy" / "ComfyUI").resolve() and "default" in where


def test_enclosing_comfyui_of_a_copied_pack(tmp_path):
    holder = fake_comfyui(tmp_path / "ComfyUI", with_pack=False)
    copy = holder / "custom_nodes" / "memory-v2v"
    copy.mkdir()
    assert comfy_host.enclosing_comfyui(copy) == holder
    assert comfy_host.enclosing_comfyui(tmp_path) is None


def test_an_explicit_folder_that_is_no_comfyui_is_not_replaced_by_another(tmp_path, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(fake_comfyui(tmp_path / "ComfyUI", with_pack=False)))
    path, where = comfy_host.find_comfyui(tmp_path / "nothing")
    assert path is None and "--comfyui: " in where and "COMFYUI_PATH: " not in where
