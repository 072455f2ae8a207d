"""The README's commands work as written: every shipped workflow runs in the headless runner's demo mode on a CPU;
the demo folder persists, so a second call continues the bank of the first (``--fresh`` starts it over); node
reports come in pipeline order without repeating cached nodes; the long edit steps through every segment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli.host import comfy_host
from memv2v_core.bank import MemoryBank

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
PER_SEGMENT = "memv2v_long_video_edit"  # one segment per queue run: the runner steps the index


def run_cli(args: list[str], demo_home: Path, cwd: Path = REPO_ROOT) -> tuple[int, str, str]:
    env = {**comfy_host.subprocess_env(), "MEMV2V_DEMO_HOME": str(demo_home)}
    done = subprocess.run([sys.executable, "-m", "memv2v_cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    return done.returncode, done.stdout, done.stderr


def written(output: str, base: Path) -> list[Path]:
    return [base / "output" / line.split("output: ", 1)[1].strip() for line in output.splitlines()
            if line.startswith("  output: ")]


@pytest.mark.parametrize("workflow", SHIPPED)
def test_every_shipped_workflow_runs_in_demo_mode(tmp_path, workflow):
    # The per-segment edit runs without --turns: the runner reads the segment count and edits every segment.
    turns = [] if workflow == PER_SEGMENT else ["--turns", "2"]
    code, output, errors = run_cli(["run", workflow, "--demo", *turns], tmp_path)
    assert code == 0, (output + errors)[-4000:]
    base = tmp_path / workflow  # the persistent demo folder of this workflow
    assert f"demo folder {base}" in output
    assert output.count("DEMO MODE") >= 2, "demo mode must be labelled before and after the run"
    assert "=== turn 1/2" in output and "=== turn 2/2" in output and "2 turn(s) finished" in output
    assert "Traceback" not in output + errors
    files = written(output, base)
    assert len(files) >= 2 and all(f.is_file() and f.stat().st_size > 0 for f in files), files
    if workflow == PER_SEGMENT:
        assert "the source has 2 segments: 2 turn(s)" in output
        assert "segment 1 of 2" in output and "segment 2 of 2" in output
        assert "stitched 2 of 2 segments" in output  # the last turn's video holds every edited segment
        bank = MemoryBank.open(base / "output" / "memory_banks" / "my_long_edit")
        assert sorted(bank.entry(i).segment_index for i in bank.ids()) == [0, 1]


def test_a_second_run_continues_the_bank_and_fresh_starts_over(tmp_path):
    code, first, errors = run_cli(["run", "--demo", "--turns", "2"], tmp_path)
    assert code == 0, (first + errors)[-4000:]
    assert "bank 'my_scene': its turn 1)" in first and "bank 'my_scene': its turn 2)" in first
    # Reports in pipeline order; the cached Load Camera Modules reports in the turn it ran only.
    assert first.count("  Load Camera Modules (#") == 1
    turn_one = first.split("=== turn 2/2")[0]
    labels = re.findall(r"^  ([A-Z][^\n]*) \(#\d+\):$", turn_one, flags=re.M)
    order = ["Load Camera Modules", "Memory Bank", "FOV Retrieve", "Dynamic Tokenize", "Apply Memory",
             "Remember This Turn"]
    assert [label for label in labels if label in order] == order, labels

    code, second, errors = run_cli(["run", "--demo"], tmp_path)
    assert code == 0, (second + errors)[-4000:]
    assert "bank 'my_scene': its turn 3)" in second and "building demo models" not in second
    bank = MemoryBank.open(tmp_path / "memv2v_multiturn_nvs" / "output" / "memory_banks" / "my_scene")
    assert len(bank.ids()) == 3

    code, third, errors = run_cli(["run", "--demo", "--fresh"], tmp_path)
    assert code == 0, (third + errors)[-4000:]
    assert "bank 'my_scene': its turn 1)" in third
    assert len(MemoryBank.open(tmp_path / "memv2v_multiturn_nvs" / "output" / "memory_banks" / "my_scene").ids()) == 1


@pytest.mark.parametrize("args, message", [
    (["run", "no_such_workflow", "--demo"], "workflow 'no_such_workflow' not found; shipped workflows: "),
    (["run", "--demo", "--turns", "0"], "--turns must be at least 1"),
    (["run", "--demo", "--url", "http://127.0.0.1:9"], "--demo starts its own private ComfyUI"),
], ids=["unknown_workflow", "zero_turns", "demo_with_url"])
def test_user_errors_exit_2_with_one_message(tmp_path, args, message):
    code, output, errors = run_cli(args, tmp_path)
    assert code == 2 and message in errors and "Traceback" not in output + errors, output + errors
    assert len(errors.strip().splitlines()) == 1, errors
    assert not (tmp_path / "memv2v_multiturn_nvs").exists()
