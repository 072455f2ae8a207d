"""The real ComfyUI frontend, in headless Chromium, shows each Memory-V2V node's summary on the node (web/memv2v.js).

Skipped with a reason when Chromium or Playwright is missing (``.ci/run`` installs both where it can).
"""

import json
import shutil
import time
from pathlib import Path

import pytest

from memv2v_cli.authoring.builder import WorkflowSpec, api_to_ui

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def playwright_api():
    # Checked here, not at collection: without a host the test must skip with the host tests' own reason.
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def summary_graph(object_info: dict) -> dict:
    prompt = {
        "1": {"class_type": "MemV2V_CameraPreset", "_meta": {"title": "Camera Preset"},
              "inputs": {"preset": "pan_right", "frames": 21, "strength": 1.0, "subject_distance": 4.0}},
        "2": {"class_type": "MemV2V_BankLoad", "_meta": {"title": "Memory Bank"}, "inputs": {"name": "frontend_test"}},
        "3": {"class_type": "MemV2V_FOVRetrieve", "_meta": {"title": "FOV Retrieve"},
              "inputs": {"bank": ["2", 0], "camera": ["1", 0], "top_k": 3, "lam": 0.5, "sphere_radius": 1.0}},
        "4": {"class_type": "PreviewAny", "_meta": {"title": "Scores"}, "inputs": {"source": ["3", 1]}},
    }
    return api_to_ui(WorkflowSpec("frontend_test", prompt), object_info)


def test_node_summaries_appear_on_the_nodes(host, playwright_api, tmp_path):
    workflow = summary_graph(host.object_info)
    ids = {node["title"] if "title" in node else node["type"]: node["id"] for node in workflow["nodes"]}
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(host.server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph", timeout=120_000)
            extensions = page.evaluate("() => window.comfyAPI.app.app.extensions.map(e => e.name)")
            assert "MemoryV2V.NodeSummary" in extensions, extensions
            # The app loads its start-up workflow asynchronously; load ours until it is the one on the canvas.
            types = sorted(node["type"] for node in workflow["nodes"])
            for _ in range(30):
                page.evaluate("async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }", workflow)
                time.sleep(1)
                if sorted(page.evaluate("() => window.comfyAPI.app.app.graph.nodes.map(n => n.type)")) == types:
                    break
            page.keyboard.press("Escape")  # the first-run template dialog, so the screenshot shows the graph
            page.evaluate("async () => { await window.comfyAPI.app.app.queuePrompt(0, 1); }")
            read = """(id) => {
                const node = window.comfyAPI.app.app.graph.getNodeById(id);
                return node?.widgets?.find(w => w.name === 'memv2v_summary')?.value ?? null; }"""
            deadline = time.monotonic() + 120
            camera = retrieve = None
            while time.monotonic() < deadline and not (camera and retrieve):
                camera = page.evaluate(read, ids["Camera Preset"])
                retrieve = page.evaluate(read, ids["FOV Retrieve"])
                time.sleep(0.25)
            page.screenshot(path=str(tmp_path / "frontend.png"))
            saved = page.evaluate("() => window.comfyAPI.app.app.graph.serialize()")
        finally:
            browser.close()
    assert camera and "pan_right" in camera, camera
    assert retrieve and "nothing to retrieve" in retrieve, retrieve  # the bank is empty: the table says so
    # A display, not an input: the saved workflow keeps the same widget values as before execution.
    by_id = {node["id"]: node for node in saved["nodes"]}
    original = {node["id"]: node for node in workflow["nodes"]}
    assert by_id[ids["Camera Preset"]]["widgets_values"] == original[ids["Camera Preset"]]["widgets_values"]
    Path(tmp_path / "workflow.json").write_text(json.dumps(saved))
