"""The README's two commands, as written, from inside the custom_nodes of a ComfyUI that is not ~/comfy/ComfyUI
(and with COMFYUI_PATH naming another one): the runner starts the ComfyUI that holds the pack, finds no models there
and switches to demo mode, without advising to install the pack where it already is.

The ComfyUI is the test host, seen through a folder of links (its code linked, its runtime folders real and private,
the pack linked into custom_nodes), so nothing is written into the host."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from memv2v_cli.host import comfy_host

COMFYUI = comfy_host.find_comfyui()[0]

RUNTIME = ("custom_nodes", "models", "input", "output", "user", "temp")


def linked_comfyui(root: Path) -> Path:
    root.mkdir(parents=True)
    for entry in COMFYUI.iterdir():
        if entry.name not in RUNTIME and not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name in RUNTIME:
        (root / name).mkdir()
    (root / "custom_nodes" / "memory-v2v").symlink_to(comfy_host.PACK_ROOT, target_is_directory=True)
    return root


def test_readme_commands_from_inside_another_comfyuis_custom_nodes(tmp_path):
    studio = linked_comfyui(tmp_path / "studio" / "ComfyUI")
    env = {**comfy_host.subprocess_env(), "COMFYUI_PATH": str(COMFYUI), "MEMV2V_DEMO_HOME": str(tmp_path / "demo"),
           "HOME": str(tmp_path / "home"), "PYTHONPYCACHEPREFIX": os.environ["PYTHONPYCACHEPREFIX"]}
    # The demo assets are cached under HOME; reuse the real cache so this test builds nothing.
    (tmp_path / "home" / ".cache").mkdir(parents=True)
    (tmp_path / "home" / ".cache" / "memv2v").symlink_to(Path.home() / ".cache" / "memv2v")
    python = shlex.quote(sys.executable)
    script = (f"cd {shlex.quote(str(studio))}/custom_nodes/memory-v2v\n"
              f"{python} -m memv2v_cli run --turns 2 --set \"Camera Preset.preset=pan_left,pan_right\"\n")
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"ComfyUI found at {studio} (the ComfyUI holding this pack)" in output, output[:2000]
    assert "starting ComfyUI on" in output and "switching to demo mode" in output
    assert "not installed" not in output and "install the pack" not in output.lower()
    assert "=== turn 2/2 (Camera Preset.preset=pan_right" in output and "2 turn(s) finished" in output
