"""Bootstrap for scripts run inside ComfyUI's Python: CPU mode first, then the pack imported as package ``memv2v_pack``.

Run with cwd = the ComfyUI folder and the environment of ``memv2v_cli.host.comfy_host.subprocess_env()``. The pack is
loaded under one package name without running its ``__init__`` (registration only), so every class comes from one
module copy and ComfyUI's own ``nodes`` module is not shadowed by the pack's ``nodes`` folder.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGE = "memv2v_pack"


def bootstrap(with_nodes: bool = False):
    """Make ``comfy`` importable on CPU; with ``with_nodes`` also ComfyUI's ``nodes`` (custom nodes not loaded)."""
    comfyui = os.getcwd()
    if comfyui not in sys.path:
        sys.path.insert(0, comfyui)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    if with_nodes:
        import utils.extra_config  # noqa: F401  (before nodes: nodes.py puts comfy/ first on sys.path)
        import nodes  # noqa: F401
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(REPO)]
        sys.modules[PACKAGE] = package


def pack(module: str):
    """Import ``<pack>.<module>``, e.g. ``pack("nodes.patches.memory_patch")``."""
    return importlib.import_module(f"{PACKAGE}.{module}")


def max_diff(a, b) -> float:
    """Largest absolute difference of two tensors, in float32 (what the scripts print and the tests compare)."""
    return float((a.float() - b.float()).abs().max())
