"""Demo from the UI: in the demo server (``python -m memv2v_cli demo-server``) every shipped template, converted from
its UI file as the frontend does and queued unchanged on ``/prompt``, runs on the demo models (the demo pack rewrites
each queued prompt). Plus a bad ``--set`` against a running server: exit status 2 and one message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memv2v_cli import graph, runner
from memv2v_cli.demo import rewrite
from memv2v_cli.host import comfy_host

COMFYUI = comfy_host.find_comfyui()[0]

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((REPO_ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    server, assets = runner.prepare_demo_server(COMFYUI, tmp_path_factory.mktemp("demo-ui"), print,
                                                rewrite.EDIT_KINDS + rewrite.STORY_KINDS, rewrite_prompts=True)
    with server:
        yield server, server.client().object_info(), assets


@pytest.mark.parametrize("template", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_every_template_runs_from_its_ui_file_in_the_demo_server(demo_server, template):
    server, object_info, assets = demo_server
    ui = json.loads(template.read_text())
    prompt = graph.ui_to_api(ui, object_info)  # what the frontend posts: the real model names, umt5, full sizes
    assert any(n["class_type"] in ("UNETLoader", "CLIPLoader") for n in prompt.values())
    result = server.client().run(prompt, timeout=900, extra_data={"extra_pnginfo": {"workflow": ui}})
    assert result.status == "execution_success"
    files = result.output_files(server.output_dir.parent)
    assert files and all(Path(f).is_file() for f in files), files
    # The server ran the demo form: demo conditioning instead of the text encoder, the tiny models.
    ran = server.client().get_json(f"/history/{result.prompt_id}")[result.prompt_id]["prompt"][2]
    kinds = {n["class_type"] for n in ran.values()}
    assert "CLIPLoader" not in kinds and "CLIPTextEncode" not in kinds and "MemV2VDemo_TextConditioning" in kinds
    names = {Path(p).name for p in assets.values()}
    assert all(n["inputs"]["unet_name"] in names for n in ran.values() if n["class_type"] == "UNETLoader")


def test_a_bad_set_against_a_running_server_exits_2_with_one_line(demo_server, tmp_path):
    server, object_info, assets = demo_server
    workflow = tmp_path / "demo_api.json"  # an API prompt the server has every model of
    workflow.write_text(json.dumps(rewrite.to_demo(runner.load_api_prompt(
        runner.resolve_workflow(None), object_info), assets)))
    for setting, message in (("Nope.seed=1", "no nodes match 'Nope'"), ("Camera Preset.nope=1", "has no input 'nope'"),
                             ("Camera Preset", "expected NODE.input=value")):
        done = subprocess.run([sys.executable, "-m", "memv2v_cli", "run", str(workflow), "--url", server.url,
                               "--set", setting], cwd=REPO_ROOT, env=comfy_host.subprocess_env(), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stdout + done.stderr


def test_the_demo_server_command_serves_the_templates_and_stops_on_sigterm(tmp_path):
    import re
    import signal
    import time
    import urllib.request

    process = subprocess.Popen([sys.executable, "-m", "memv2v_cli", "demo-server", "--base-dir", str(tmp_path)],
                               cwd=REPO_ROOT, env=comfy_host.subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines, deadline, url = [], time.monotonic() + 600, None
        for line in process.stdout:
            lines.append(line)
            found = re.search(r"demo ComfyUI at (http://127\.0\.0\.1:\d+)", line)
            if found:
                url = found.group(1)
                break
            assert time.monotonic() < deadline, "".join(lines)
        assert url, "".join(lines)
        with urllib.request.urlopen(url + "/api/workflow_templates", timeout=30) as response:
            listed = json.loads(response.read())
        assert sorted(listed["memory-v2v"]) == sorted(p.stem for p in TEMPLATES)
        assert (tmp_path / "memv2v_demo_assets.json").is_file()
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=60)[0]
        assert process.returncode == 0 and "stopping the demo ComfyUI" in rest, rest
        with pytest.raises(OSError):  # the private ComfyUI is gone too
            urllib.request.urlopen(url + "/system_stats", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
