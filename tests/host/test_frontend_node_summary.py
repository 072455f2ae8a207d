"""The real ComfyUI frontend, in headless Chromium, shows each Memory-V2V node's summary on the node (web/memv2v.js),
grows the node so every line shows, and shows the summaries again after a page reload. Screenshots go to the test's
tmp dir and to /tmp/browser-shots/.

Skipped with a reason when Chromium or Playwright is missing (``.ci/run`` installs both where it can).
"""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from memv2v_cli.authoring.builder import WorkflowSpec, api_to_ui
from host_prompts import tiny_sampler_nodes
from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.camera.presets import preset_trajectory

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path("/tmp/browser-shots")


@pytest.fixture(scope="module")
def playwright_api():
    # Checked here, not at collection: without a host the test must skip with the host tests' own reason.
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def fill_bank(host, name: str) -> None:
    """Three stored turns with cameras, so FOV Retrieve's summary is a table of several long lines."""
    bank = MemoryBank.open(host.server.output_dir / "memory_banks" / name, create=True)
    generator = torch.Generator().manual_seed(3)
    for preset in ("pan_left", "pan_right", "arc_right"):
        trajectory = preset_trajectory(preset, frames=5)
        bank.add(torch.randn(1, 16, 2, 4, 4, generator=generator), latent_format="wan21", camera=trajectory.c2w,
                 intrinsics=trajectory.intrinsics, prompt=f"a long prompt for the {preset} turn of this scene")


def summary_graph(object_info: dict, dit: str) -> dict:
    """Camera Preset and FOV Retrieve on a bank of three turns, plus a tiny sampler whose latent Bank Add stores in
    another bank (so what FOV Retrieve sees does not depend on the order the nodes run in)."""
    prompt = tiny_sampler_nodes(dit, seed=3)
    prompt.update({
        "7": {"class_type": "MemV2V_CameraPreset", "_meta": {"title": "Camera Preset"},
              "inputs": {"preset": "pan_right", "frames": 21, "strength": 1.0, "subject_distance": 4.0}},
        "8": {"class_type": "MemV2V_BankLoad", "_meta": {"title": "Memory Bank"}, "inputs": {"name": "frontend_test"}},
        "9": {"class_type": "MemV2V_FOVRetrieve", "_meta": {"title": "FOV Retrieve"},
              "inputs": {"bank": ["8", 0], "camera": ["7", 0], "top_k": 3, "lam": 0.5, "sphere_radius": 1.0}},
        "10": {"class_type": "PreviewAny", "_meta": {"title": "Scores"}, "inputs": {"source": ["9", 1]}},
        "11": {"class_type": "MemV2V_BankLoad", "_meta": {"title": "Added Bank"}, "inputs": {"name": "frontend_adds"}},
        "12": {"class_type": "MemV2V_BankAdd", "_meta": {"title": "Bank Add"},
               "inputs": {"bank": ["11", 0], "samples": ["6", 0], "model": ["5", 0], "camera": ["7", 0]}},
    })
    return api_to_ui(WorkflowSpec("frontend_test", prompt), object_info)


SUMMARY_NODES = ("Camera Preset", "FOV Retrieve", "Memory Bank", "Added Bank", "Bank Add")
READ = """(id) => {
    const node = window.comfyAPI.app.app.graph.getNodeById(id);
    const w = node?.widgets?.find(w => w.name === 'memv2v_summary');
    if (!w) return null;
    const el = w.element;
    return {value: w.value, lines: w.value.split('\\n').length, bottom: w.y + w.computedHeight,
            nodeHeight: node.size[1], overflowY: el.scrollHeight - el.clientHeight,
            overflowX: el.scrollWidth - el.clientWidth, boxHeight: el.clientHeight}; }"""


SHOW = """(id) => {
    const app = window.comfyAPI.app.app, node = app.graph.getNodeById(id), c = app.canvas;
    c.ds.scale = 0.75; c.ds.offset = [120 - node.pos[0], 60 - node.pos[1]]; c.setDirty(true, true); }"""


def read_summaries(page, ids: dict) -> dict:
    # DOM widgets are laid out only on nodes the canvas draws: bring each node into view before reading it.
    found = {}
    for title in SUMMARY_NODES:
        page.evaluate(SHOW, ids[title])
        page.wait_for_timeout(300)
        found[title] = page.evaluate(READ, ids[title])
    return found


def wait_summaries(page, ids: dict, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read_summaries(page, ids)
        if all(found.values()):
            return found
        time.sleep(0.25)
    raise AssertionError(f"summaries missing after {timeout} s: {read_summaries(page, ids)}")


def assert_fits(summaries: dict) -> None:
    """Every line of every summary is visible in its box, and the box lies inside its node."""
    for title, fit in summaries.items():
        assert fit["overflowY"] <= 1 and fit["overflowX"] <= 1, (title, fit)
        assert fit["boxHeight"] >= fit["lines"] * 14, (title, fit)
        assert fit["bottom"] <= fit["nodeHeight"] + 1, (title, fit)


def load_workflow(page, workflow: dict) -> None:
    # The app loads its start-up workflow asynchronously; load ours until it is the one on the canvas.
    types = sorted(node["type"] for node in workflow["nodes"])
    for _ in range(30):
        page.evaluate("async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }", workflow)
        time.sleep(1)
        if sorted(page.evaluate("() => window.comfyAPI.app.app.graph.nodes.map(n => n.type)")) == types:
            break
    page.keyboard.press("Escape")  # the first-run template dialog, so the screenshot shows the graph
    # Show the whole graph beside the sidebar in the screenshots.
    page.evaluate("() => { const c = window.comfyAPI.app.app.canvas; c.ds.scale = 0.75; c.ds.offset = [120, 40];"
                  " c.setDirty(true, true); }")


def shoot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / name, SHOTS / name)


def test_node_summaries_appear_on_the_nodes_fit_them_and_survive_a_reload(host, playwright_api, tmp_path):
    fill_bank(host, "frontend_test")
    workflow = summary_graph(host.object_info, Path(host.assets["dit"]).name)
    ids = {node["title"] if "title" in node else node["type"]: node["id"] for node in workflow["nodes"]}
    errors = []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}"))
            page.goto(host.server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph", timeout=120_000)
            extensions = page.evaluate("() => window.comfyAPI.app.app.extensions.map(e => e.name)")
            assert "MemoryV2V.NodeSummary" in extensions, extensions
            load_workflow(page, workflow)
            page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
            summaries = wait_summaries(page, ids)
            shoot(page, tmp_path, "node_summaries.png")
            saved = page.evaluate("() => window.comfyAPI.app.app.graph.serialize()")

            # A page reload restores the workflow; the summaries come back with it, before any run, and still fit.
            page.reload(wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph?.nodes?.length", timeout=120_000)
            restored = wait_summaries(page, ids, timeout=30)
            page.keyboard.press("Escape")
            page.evaluate("() => { const c = window.comfyAPI.app.app.canvas; c.ds.scale = 0.75;"
                          " c.ds.offset = [120, 40]; c.setDirty(true, true); }")
            shoot(page, tmp_path, "node_summaries_after_reload.png")
        finally:
            browser.close()
    assert not [error for error in errors if "memv2v" in error or "memory-v2v" in error], errors
    camera, retrieve, add = (summaries[t]["value"] for t in ("Camera Preset", "FOV Retrieve", "Bank Add"))
    assert "pan_right" in camera, camera
    assert len(retrieve.splitlines()) == 4 and "a long prompt for the pan_right turn" in retrieve, retrieve
    assert "added" in add and "'frontend_adds'" in add, add
    assert_fits(summaries)
    assert {t: s["value"] for t, s in restored.items()} == {t: s["value"] for t, s in summaries.items()}
    assert_fits(restored)
    # A display, not an input: the saved workflow keeps the same widget values as before execution.
    by_id = {node["id"]: node for node in saved["nodes"]}
    original = {node["id"]: node for node in workflow["nodes"]}
    for node_id in (ids["Camera Preset"], ids["Bank Add"]):
        assert by_id[node_id]["widgets_values"] == original[node_id]["widgets_values"]
    Path(tmp_path / "workflow.json").write_text(json.dumps(saved))
