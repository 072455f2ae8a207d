"""Test-wide setup: make a CPU-only machine's CUDA torchvision importable before any test imports it."""

import importlib.util
import os
import sys
import time
from pathlib import Path

_SHIM = Path(__file__).resolve().parent.parent / "memv2v_cli" / "host" / "cpu_torchvision" / "sitecustomize.py"
_spec = importlib.util.spec_from_file_location("memv2v_cpu_torchvision", _SHIM)
_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _module
_spec.loader.exec_module(_module)  # installs an import hook that acts only if torchvision's compiled ops cannot load

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_HOST = REPO_ROOT.parent / "shared" / "host" / "ComfyUI"

# The project's read-only ComfyUI beside the checkout is the host of last resort (tests only: the pack never looks
# there). Byte-code goes to a cache outside every host folder, for this process and every ComfyUI it starts.
os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path.home() / ".cache" / "memv2v" / "pycache"))
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
if not os.environ.get("COMFYUI_PATH") and (SHARED_HOST / "main.py").is_file():
    from memv2v_cli.host.comfy_host import find_comfyui

    if find_comfyui()[0] is None:
        os.environ["COMFYUI_PATH"] = str(SHARED_HOST.resolve())


import pytest  # noqa: E402

_SESSION_START = time.time()
_HOST_WRITES: list[str] = []
_HOST_RUNTIME_DIRS = {"models", "input", "output", "temp", "user", "custom_nodes", ".git", "venv", ".venv"}


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
    from memv2v_cli.host.comfy_host import comfyui_version, find_comfyui

    path, where = find_comfyui()
    if path is None:
        return f"host tests: skipped: {where}"
    return f"host tests: run against ComfyUI {comfyui_version(path)} at {path}"


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything was written into the host's folder (CI's copy is read-only; tests use base dirs)."""
    from memv2v_cli.host.comfy_host import find_comfyui

    path = find_comfyui()[0]
    if path is None:
        return
    for root, dirs, files in os.walk(path):
        if Path(root) == path:
            dirs[:] = [d for d in dirs if d not in _HOST_RUNTIME_DIRS]
        for name in dirs + files:
            stat = os.lstat(os.path.join(root, name))
            if max(stat.st_mtime, stat.st_ctime) >= _SESSION_START:
                _HOST_WRITES.append(os.path.join(root, name))
    if _HOST_WRITES:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    """One closing line: which host ran the host tests and how many of them passed, failed or were skipped."""
    from memv2v_cli.host.comfy_host import comfyui_version, find_comfyui

    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for outcome in counts:
        for report in terminalreporter.stats.get(outcome, []):
            if "host" in getattr(report, "keywords", {}) and (report.when == "call" or outcome != "passed"):
                counts[outcome] += 1
    path, where = find_comfyui()
    host = f"ComfyUI {comfyui_version(path)} at {path}" if path else where
    terminalreporter.write_line(f"host tests: {counts['passed']} passed, {counts['failed']} failed, "
                                f"{counts['skipped']} skipped; host: {host}")
    if _HOST_WRITES:
        terminalreporter.write_line(f"FAILED: the tests wrote {len(_HOST_WRITES)} path(s) into the host folder "
                                    f"(it must stay untouched), e.g. {_HOST_WRITES[:5]}", red=True)
