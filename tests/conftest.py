"""Test-wide setup: make a CPU-only machine's CUDA torchvision importable before any test imports it."""

import importlib.util
import os
import sys
from pathlib import Path

_SHIM = Path(__file__).resolve().parent.parent / "memv2v_cli" / "cpu_torchvision" / "sitecustomize.py"
_spec = importlib.util.spec_from_file_location("memv2v_cpu_torchvision", _SHIM)
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)  # installs an import hook that acts only if torchvision's compiled ops cannot load

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared test data (real ReCamMaster trajectories and videos), beside the checkout."""
    if not SHARED_DATA.is_dir():
        message = f"shared test data not found at {SHARED_DATA} (it lives beside the checkout as ../shared/data)"
        if os.environ.get("MEMV2V_REQUIRE_SHARED_DATA"):  # CI has it: a missing copy must fail, not hide tests
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


def pytest_report_header(config):
    """One line, before anything runs, saying whether the host tests will run against a real ComfyUI."""
    from memv2v_cli.comfy_host import find_comfyui

    path, where = find_comfyui()
    return f"host tests: {'run against ' + str(path) if path else 'skipped: ' + where}"
