"""Every name on the library's public-API page (docs/public-api.md) imports from where the page says."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "public-api.md"


def test_every_public_name_on_the_page_exists():
    rows = [r for r in PAGE.read_text().split("## Where")[0].splitlines() if r.startswith("| `memv2v_core.")]
    assert len(rows) >= 6
    checked = 0
    for row in rows:
        cells = row.split("|")
        package = importlib.import_module(cells[1].strip().strip("`"))
        names = re.findall(r"`([A-Za-z_][\w.]*)`", cells[2])
        homes = [package] + [importlib.import_module(f"memv2v_core.{n}") for n in names if "." in n]
        for name in (n for n in names if "." not in n):
            owners = homes + [getattr(h, "MemoryBank") for h in homes if hasattr(h, "MemoryBank")]
            assert any(hasattr(owner, name) for owner in owners), f"{name} (row {cells[1].strip()}) does not exist"
            checked += 1
    assert checked > 50


def test_moved_modules_import_from_their_new_homes():
    rows = [r for r in PAGE.read_text().split("## Where")[1].splitlines() if r.startswith("| `memv2v_core.")]
    for row in rows:
        now = row.split("|")[2]
        for target in re.findall(r"`(memv2v_core\.[\w.]+)`", now):
            module, _, name = target.rpartition(".")
            try:
                importlib.import_module(target)
            except ModuleNotFoundError:
                assert hasattr(importlib.import_module(module), name), target
