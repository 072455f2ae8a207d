"""``python -m memv2v_cli story SCRIPT.json``: a whole story through the shipped story workflow in demo mode, shot by
shot, resumed after an interruption; the story video holds every shot's frames."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import av

from memv2v_cli.host import comfy_host
from memv2v_core.bank import MemoryBank
from memv2v_core.story import story_shots

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = {"story_name": "The Lighthouse", "story_overview": "A keeper lights the lamp.",
          "scenes": [{"scene_num": 1, "video_prompts": ["a keeper climbs the stairs", "he reaches the lamp room"],
                      "cut": [True, False]},
                     {"scene_num": 2, "video_prompts": ["the beam sweeps over the sea", "a ship turns to the light"],
                      "cut": [True, False]}]}
DEMO_LENGTH = 17  # the runner's demo shot length; an MI2V shot drops its duplicated first frame


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def story_command(script: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "memv2v_cli", "story", str(script), "--demo", "--out", str(out)]


def test_story_command_runs_every_shot_and_resumes_after_an_interruption(tmp_path):
    script, out = tmp_path / "lighthouse.json", tmp_path / "story"
    script.write_text(json.dumps(SCRIPT))
    # First run: interrupted (Ctrl-C) once shot 2 is done.
    process = subprocess.Popen(story_command(script, out), cwd=REPO_ROOT, env=comfy_host.subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.monotonic() + 900
    for line in process.stdout:
        lines.append(line)
        if "shot 2 done" in line:
            process.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(lines[-40:])
    lines += process.stdout.readlines()
    process.wait(timeout=120)
    first = "".join(lines)
    assert process.returncode != 0 and "shot 2 done" in first, first[-4000:]
    assert not (out / "story.mp4").exists() and (out / "shot_001.mp4").is_file()

    # Second run: shots 1-2 come from the bank, 3-4 are made, then the story video is joined.
    done = subprocess.run(story_command(script, out), cwd=REPO_ROOT, env=comfy_host.subprocess_env(),
                          capture_output=True, text=True, timeout=900)
    second = done.stdout + done.stderr
    assert done.returncode == 0, second[-4000:]
    assert second.count("already in the bank, skipped") == 2 and "=== shot 3/4" in second, second[-4000:]
    assert "2 shot(s) made, 2 resumed from the bank" in second
    assert second.count("DEMO MODE") >= 2

    modes = ["cut", "MI2V", "cut", "MI2V"]
    counts = [frame_count(out / f"shot_{i:03d}.mp4") for i in range(4)]
    assert counts == [DEMO_LENGTH - (mode == "MI2V") for mode in modes]
    assert frame_count(out / "story.mp4") == sum(counts)

    bank = MemoryBank.open(out / "demo-comfyui" / "output" / "memory_banks" / "my_stories")
    shots = story_shots(bank.entries(), "the_lighthouse")
    assert [entry.extra["shot_index"] for entry in shots] == [0, 1, 2, 3]
    assert [entry.extra["cut"] for entry in shots] == [True, False, True, False]
    assert all(1 <= entry.shapes["keyframes"][0] <= 3 for entry in shots)
    assert [entry.prompt for entry in shots] == [p for scene in SCRIPT["scenes"] for p in scene["video_prompts"]]
