"""Shared bootstrap for the NVS scripts: the memory scripts' pack loader, plus the repository on sys.path (last, so
ComfyUI's own ``nodes`` module is not shadowed) for ``memv2v_cli.demo.checkpoints``."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "memory_scripts"))

from _pack import REPO, bootstrap, max_diff, pack  # noqa: E402

__all__ = ["REPO", "bootstrap", "max_diff", "pack", "use_repo"]


def use_repo() -> None:
    """Make ``memv2v_cli`` / ``memv2v_core`` importable by their own names (after ComfyUI's modules)."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))
