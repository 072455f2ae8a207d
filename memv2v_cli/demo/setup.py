"""The caller's side of demo runs and host tests: build the tiny assets in ComfyUI's Python, and set up a private
ComfyUI with this pack, the demo pack and those assets. Used by the headless runner's demo mode and the host tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ..host import comfy_host

DEMO_PACK = comfy_host.PACK_ROOT / "memv2v_cli" / "demo" / "nodes"


def build_assets(builder: str, comfyui: Path, out: Path, *args: str) -> dict[str, str]:
    """Run ``python -m memv2v_cli.<builder>`` (demo.models, demo.checkpoints) and return the {kind: path} it prints.

    The builders reuse files already in ``out``, so this is cheap after the first call.
    """
    done = subprocess.run([sys.executable, "-m", f"memv2v_cli.{builder}", "--comfyui", str(comfyui), "--out", str(out),
                           *args], cwd=comfy_host.PACK_ROOT, env=comfy_host.subprocess_env(), capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny assets with memv2v_cli.{builder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def private_server(comfyui: Path, base_dir: Path, assets: dict[str, str], diffusion_models: tuple[str, ...] = ("dit",),
                   extra_args: tuple[str, ...] = ()) -> comfy_host.ComfyServer:
    """A (not yet started) ComfyUI in ``base_dir`` with this pack, the demo pack, the named DiTs, the VAE and the clip."""
    server = comfy_host.ComfyServer(comfyui, base_dir, extra_args=extra_args)
    server.install_custom_node(comfy_host.PACK_ROOT, comfy_host.PACK_NAME)
    server.install_custom_node(DEMO_PACK, "memv2v_demo")
    for key in diffusion_models:
        server.add_model("diffusion_models", Path(assets[key]))
    server.add_model("vae", Path(assets["vae"]))
    shutil.copy(assets["video"], server.base_dir / "input" / Path(assets["video"]).name)
    return server
