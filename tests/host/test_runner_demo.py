"""The README's main command works as written: the headless runner's demo mode runs turns end to end on a CPU."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli.host import comfy_host

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("workflow", [[], ["memv2v_t2v_bank_turns"]], ids=["default_nvs", "t2v_bank_turns"])
def test_runner_demo_mode_runs_two_turns(tmp_path, workflow):
    base = tmp_path / "demo-base"
    done = subprocess.run([sys.executable, "-m", "memv2v_cli", "run", *workflow, "--demo", "--turns", "2",
                           "--base-dir", str(base)],
                          cwd=REPO_ROOT, env=comfy_host.subprocess_env(), capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert output.count("DEMO MODE") >= 2, "demo mode must be labelled before and after the run"
    assert "=== turn 1/2" in output and "=== turn 2/2" in output
    assert re.search(r"2 turn\(s\) finished", output)
    written = [line.split("output: ", 1)[1].strip() for line in output.splitlines() if "output: " in line]
    videos = [base / "output" / path for path in written if path.endswith(".mp4")]
    assert len(videos) == 2 and all(v.is_file() and v.stat().st_size > 0 for v in videos), written
