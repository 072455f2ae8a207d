"""The bank browser (web/bank_browser.js) in the real ComfyUI frontend, in headless Chromium: the sidebar tab lists a
bank's entries with thumbnails, hiding and branching from the panel change what the next FOV Retrieve run (queued
through the HTTP API) retrieves, the panel marks the retrieved entries with their scores, and "open workflow" loads
a stored turn or says clearly why it cannot.

Screenshots go to the test's tmp dir and to /tmp/browser-shots/. Skipped with a reason without Chromium or Playwright.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from memv2v_cli.authoring.builder import WorkflowSpec, api_to_ui
from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.camera.presets import preset_trajectory
from memv2v_core.retrieval.descriptors import SegmentRetrieval, SegmentScore, format_segment_scores
from memv2v_core.retrieval.fov import fov_mask
from memv2v_core.retrieval.fov_retrieval import format_score_table
from memv2v_core.story.memory_select import select_memories

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
SHOTS = Path("/tmp/browser-shots")
BANK = "browser_bank"
TAB = "#memv2v-bank-browser"
# (camera preset, seed, prompt, keyframe colour or None for a latent-preview thumbnail)
TURNS = (("pan_left", 101, "a lighthouse at dusk, camera pans left", (0.9, 0.4, 0.1)),
         ("pan_right", 202, "the same lighthouse, camera pans right", None),
         ("arc_right", 303, "arc around the lighthouse to the right", (0.1, 0.5, 0.9)))


@pytest.fixture(scope="module")
def playwright_api():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def keyframes(colour: tuple[float, float, float], count: int = 3) -> torch.Tensor:
    """``count`` distinct 48x64 images: a gradient in ``colour`` with a bright bar that moves, so strips differ."""
    y = torch.linspace(0, 1, 48)[:, None, None]
    images = []
    for k in range(count):
        image = (y * torch.tensor(colour)).expand(48, 64, 3).clone()
        image[:, 8 + 16 * k:16 + 16 * k] = 1.0
        images.append(image)
    return torch.stack(images)


def make_bank(host) -> list[str]:
    """Three NVS turns (turn 2's parent is turn 1, turn 3's is turn 2), stored as Bank Add stores them."""
    bank = MemoryBank.open(host.server.output_dir / "memory_banks" / BANK, create=True)
    generator = torch.Generator().manual_seed(5)
    ids: list[str] = []
    for preset, seed, prompt, colour in TURNS:
        trajectory = preset_trajectory(preset, frames=5)
        ids.append(bank.add(torch.randn(1, 16, 2, 6, 8, generator=generator), latent_format="wan21",
                            camera=trajectory.c2w, intrinsics=trajectory.intrinsics, fov_mask=fov_mask(trajectory),
                            keyframes=keyframes(colour) if colour else None, prompt=prompt, seed=seed,
                            parents=ids[-1:], extra={"camera_preset": preset}))
    return ids


def retrieval_prompt() -> dict:
    return {
        "1": {"class_type": "MemV2V_BankLoad", "_meta": {"title": "Memory Bank"}, "inputs": {"name": BANK}},
        "2": {"class_type": "MemV2V_CameraPreset", "_meta": {"title": "Camera Preset"},
              "inputs": {"preset": "pan_right", "frames": 5, "strength": 0.5, "subject_distance": 4.0}},
        "3": {"class_type": "MemV2V_FOVRetrieve", "_meta": {"title": "FOV Retrieve"},
              "inputs": {"bank": ["1", 0], "camera": ["2", 0], "top_k": 6, "lam": 0.5, "sphere_radius": 1.0}},
        "4": {"class_type": "PreviewAny", "_meta": {"title": "Scores"}, "inputs": {"source": ["3", 1]}},
    }


def run_for_browser(host, client_id: str, timeout: float = 120) -> dict:
    """Queue the retrieval graph through the HTTP API as the browser's client (so its tab gets the run's events);
    return {entry id: score} of what FOV Retrieve retrieved, checked against its text table."""
    prompt_id = host.client.post_json("/prompt", {"prompt": retrieval_prompt(), "client_id": client_id})["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        item = host.client.get_json(f"/history/{prompt_id}").get(prompt_id)
        if item and item.get("status", {}).get("completed"):
            break
        assert not (item and item.get("status", {}).get("status_str") == "error"), item["status"]
        time.sleep(0.2)
    else:
        raise AssertionError(f"retrieval prompt {prompt_id} did not finish in {timeout} s")
    ui = item["outputs"]["3"]
    (report,) = ui["memv2v_retrieved"]
    assert report["bank"] == BANK and report["node"] == "FOV Retrieve"
    table = ui["text"][0]
    for found in report["entries"]:  # the structured report and the table the artist reads agree
        assert found["id"][:16] in table and f"{found['score']:6.3f}" in table
    return {found["id"]: found["score"] for found in report["entries"]}


def shoot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / name, SHOTS / name)


def card(entry_id: str) -> str:
    return f'{TAB} .memv2v-card[data-entry-id="{entry_id}"]'


def marks(page) -> dict[str, str]:
    """Entry id -> the retrieval mark the panel shows on its card."""
    return page.evaluate(f"""() => Object.fromEntries([...document.querySelectorAll('{TAB} .memv2v-card')]
        .filter(c => c.querySelector('.memv2v-mark'))
        .map(c => [c.dataset.entryId, c.querySelector('.memv2v-mark').textContent]))""")


def wait_marks(page, expected: set[str], timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = marks(page)
        if set(shown) == expected:
            return shown
        time.sleep(0.2)
    raise AssertionError(f"the panel marks {sorted(marks(page))} as retrieved, expected {sorted(expected)}")


def graph_types(page) -> list[str]:
    return sorted(page.evaluate("() => window.comfyAPI.app.app.graph.nodes.map(n => n.type)"))


def active_workflow(page) -> str | None:
    return page.evaluate("() => window.comfyAPI.app.app.extensionManager.workflow.activeWorkflow?.filename ?? null")


def wait_workflow(page, name: str, types: list[str], timeout: float = 20) -> None:
    """Wait until the workflow tab ``name`` is the active one and its canvas holds nodes of ``types``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (active_workflow(page), graph_types(page)) != (name, types):
        time.sleep(0.2)
    assert (active_workflow(page), graph_types(page)) == (name, types)


def message(page) -> str:
    locator = page.locator(f'{TAB} [data-role="message"]')
    locator.wait_for(timeout=10_000)
    return locator.inner_text()


def summary_fit(page, node_id: int) -> dict:
    """How the on-node summary box sits in its node: text lines, overflow, and whether the box is inside the node."""
    return page.evaluate("""(id) => {
        const node = window.comfyAPI.app.app.graph.getNodeById(id);
        const w = node?.widgets?.find(w => w.name === 'memv2v_summary');
        if (!w) return null;
        const el = w.element;
        return {lines: w.value.split('\\n').length, value: w.value, nodeHeight: node.size[1], nodeWidth: node.size[0],
                bottom: w.y + w.computedHeight, overflowY: el.scrollHeight - el.clientHeight,
                overflowX: el.scrollWidth - el.clientWidth, boxHeight: el.clientHeight}; }""", node_id)


def check_table_parsers(page, ids: list[str]) -> None:
    """The panel reads Segment Retrieve's and Story Memory Select's retrieved entries from their text tables (FOV
    Retrieve's too, for runs from before its structured report): the tables as the core writes them today."""
    t1, t2, t3 = ids
    fov = format_score_table([
        {"entry_id": t1, "iou": 0.5, "containment": 0.6, "score": 0.55, "rank": 1},
        {"entry_id": t2, "iou": 0.1, "containment": 0.2, "score": 0.15, "rank": None},
        {"entry_id": t3, "iou": None, "containment": None, "score": None, "rank": None, "skipped": "no camera"}],
        {t1: "a prompt", t2: "another"})
    segment = format_segment_scores(SegmentRetrieval(
        [t1, t2], [SegmentScore(t1, 0, None, 1, True), SegmentScore(t2, 1, 0.8123, 2), SegmentScore(t3, 2, 0.5)],
        ["a note"], 3, "clip"))
    story = select_memories([f"shot 1 kf 0 ({t1[:8]})", f"shot 1 kf 1 ({t1[:8]})", f"shot 2 kf 0 ({t2[:8]})",
                             f"shot 3 kf 0 ({t3[:8]})"], mode="relevance", max_memories=3,
                            scores=[0.9, 0.3, 0.7, 0.5]).table()
    texts = {"MemV2V_FOVRetrieve": fov, "MemV2V_SegmentRetrieve": segment, "MemV2V_StoryMemorySelect": story}
    parsed = page.evaluate("""async (texts) => {
        const api = window.comfyAPI.api.api;
        const path = (await api.getExtensions()).find(p => p.endsWith('/bank_browser.js'));
        const module = await import(api.fileURL(path));  // the instance the app loaded
        return Object.fromEntries(Object.entries(texts).map(([k, t]) => [k, module.parseRetrievalText(k, t)])); }""",
                           texts)
    found = {kind: [(row["id"], row["rank"], row["score"]) for row in rows] for kind, rows in parsed.items()}
    assert found == {"MemV2V_FOVRetrieve": [(t1, 1, 0.55)],
                     "MemV2V_SegmentRetrieve": [(t1, 1, None), (t2, 2, 0.8123)],
                     "MemV2V_StoryMemorySelect": [(t1[:8], 1, 0.9), (t2[:8], 2, 0.7), (t3[:8], 3, 0.5)]}, found


def test_bank_tab_lists_thumbnails_and_hiding_in_it_changes_retrieval(host, playwright_api, tmp_path):
    t1, t2, t3 = ids = make_bank(host)
    workflow = api_to_ui(WorkflowSpec("bank_browser_test", retrieval_prompt()), host.object_info)
    bank_dir = host.server.output_dir / "memory_banks" / BANK
    thumbnails, errors = [], []
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("pageerror", lambda error: errors.append(f"{error}\n{error.stack}"))
            page.on("response", lambda r: thumbnails.append((r.status, r.headers.get("etag")))
                    if "/thumbnail" in r.url else None)
            page.goto(host.server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph", timeout=120_000)
            extensions = page.evaluate("() => window.comfyAPI.app.app.extensions.map(e => e.name)")
            assert "MemoryV2V.BankBrowser" in extensions, extensions
            # The retrieval graph on the canvas (same node ids as the API prompt): its summary shows on the node.
            types = sorted(node["type"] for node in workflow["nodes"])
            for _ in range(30):
                page.evaluate("async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }", workflow)
                time.sleep(0.5)
                if graph_types(page) == types:
                    break
            page.keyboard.press("Escape")  # the first-run template dialog
            # The graph beside the open tab (which covers the canvas' left part) in the screenshots.
            page.evaluate("() => { const c = window.comfyAPI.app.app.canvas; c.ds.scale = 0.8;"
                          " c.ds.offset = [430, 30]; c.setDirty(true, true); }")
            client_id = page.evaluate("() => window.comfyAPI.api.api.clientId")
            check_table_parsers(page, ids)
            assert client_id

            # The tab, opened through its sidebar button, lists the bank's entries with loaded thumbnails.
            page.locator('button[aria-label^="Memory-V2V banks"]').click()
            page.locator(f'{TAB} [data-role="bank"]').wait_for(timeout=20_000)
            page.select_option(f'{TAB} [data-role="bank"]', BANK)
            page.wait_for_function(f"""() => {{
                const images = [...document.querySelectorAll('{TAB} .memv2v-card img.memv2v-thumb')];
                return images.length === 3 && images.every(i => i.complete && i.naturalWidth > 0); }}""",
                                   timeout=30_000)
            shown = page.evaluate(f"""() => [...document.querySelectorAll('{TAB} .memv2v-card')].map(c => ({{
                id: c.dataset.entryId, text: c.innerText,
                thumb: [c.querySelector('img').naturalWidth, c.querySelector('img').naturalHeight]}}))""")
            assert [card_["id"] for card_ in shown] == [t3, t2, t1]  # newest first
            for card_, (preset, seed, prompt, _), turn in zip(shown[::-1], TURNS, (1, 2, 3)):
                assert f"Turn {turn}" in card_["text"] and prompt in card_["text"], card_
                assert f"seed {seed}" in card_["text"] and f"camera {preset}" in card_["text"], card_
                assert card_["thumb"][1] == 64 and card_["thumb"][0] > 64 + 64, card_  # a strip of frames
                assert (turn == 1) or f"parents: turn {turn - 1}" in card_["text"], card_
            assert thumbnails and all(status in (200, 304) and etag for status, etag in thumbnails), thumbnails

            # Run 1: everything is retrieved, and the panel marks each card with its score.
            first = run_for_browser(host, client_id)
            assert set(first) == set(ids), first
            shown_marks = wait_marks(page, set(ids))
            for entry_id, score in first.items():
                assert f"{score:.3f}" in shown_marks[entry_id], (shown_marks, first)
            fit = summary_fit(page, 3)  # the FOV table on its node: every line visible, none below the node
            assert fit and fit["lines"] >= 4 and fit["overflowY"] <= 1 and fit["overflowX"] <= 1, fit
            assert fit["bottom"] <= fit["nodeHeight"] + 1, fit
            shoot(page, tmp_path, "bank_tab_retrieved.png")

            # Hide turn 2 in the panel: the bank on disk hides it, and the next run retrieves turns 1 and 3 only.
            page.click(f'{card(t2)} [data-action="hide"]')
            page.wait_for_selector(f'{card(t2)}[data-hidden="true"]', timeout=20_000)
            assert MemoryBank.open(bank_dir).ids() == [t1, t3]
            assert "Hid turn 2" in message(page)
            second = run_for_browser(host, client_id)
            assert set(second) == {t1, t3}, second
            wait_marks(page, {t1, t3})
            assert "parent hidden" in page.locator(card(t3)).inner_text()  # its parent is hidden, it is not
            shoot(page, tmp_path, "bank_tab_after_hide.png")

            # Restore it, then branch from turn 1: retrieval sees turn 1 only; back to the whole bank afterwards.
            page.click(f'{card(t2)} [data-action="restore"]')
            page.wait_for_selector(f'{card(t2)}[data-hidden="false"]', timeout=20_000)
            page.click(f'{card(t1)} [data-action="branch"]')
            page.fill(f'{card(t1)} [data-role="branch-name"]', "retry from 1")
            page.click(f'{card(t1)} [data-action="create-branch"]')
            page.wait_for_function(f"""() => document.querySelector('{TAB} [data-role="branch"]')?.value
                                   === 'retry from 1'""", timeout=20_000)
            assert MemoryBank.open(bank_dir).active_branch == "retry from 1"
            third = run_for_browser(host, client_id)
            assert set(third) == {t1}, third
            wait_marks(page, {t1})
            assert "off branch" in page.locator(card(t3)).inner_text()
            shoot(page, tmp_path, "bank_tab_branch.png")
            page.select_option(f'{TAB} [data-role="branch"]', "")
            page.wait_for_function(f"""() => !document.querySelector('{TAB} .memv2v-badge:not(.memv2v-mark)')""",
                                   timeout=20_000)
            assert MemoryBank.open(bank_dir).active_branch is None

            # "Open workflow": a stored UI workflow opens as is; a stored API prompt alone opens through loadApiJson;
            # without the stored-prompt route (or a stored prompt) the panel says why and the canvas is unchanged.
            route = "**/memv2v/banks/*/entries/*/prompt"
            page.route(route, lambda r: r.fulfill(status=200, content_type="application/json",
                                                  body=json.dumps({"prompt": retrieval_prompt(), "workflow": workflow})))
            page.click(f'{card(t1)} [data-action="open"]')
            wait_workflow(page, f"{BANK} turn 1", types)
            assert "Opened the workflow of turn 1" in message(page)
            page.unroute(route)
            page.route(route, lambda r: r.fulfill(status=200, content_type="application/json",
                                                  body=json.dumps({"prompt": retrieval_prompt(), "workflow": None})))
            page.click(f'{card(t3)} [data-action="open"]')
            wait_workflow(page, f"{BANK} turn 3", types)
            assert "Opened the prompt of turn 3" in message(page)
            page.unroute(route)
            before = (active_workflow(page), graph_types(page))
            page.click(f'{card(t2)} [data-action="open"]')
            page.wait_for_function(f"""() => document.querySelector('{TAB} [data-role="message"]')
                                   ?.textContent.startsWith('Cannot open turn 2')
                                   || document.querySelector('{TAB} [data-role="message"]')
                                   ?.textContent.includes('no stored workflow')""", timeout=10_000)
            assert page.locator(f'{TAB} [data-role="message"].memv2v-error').count() == 1
            assert (active_workflow(page), graph_types(page)) == before
            shoot(page, tmp_path, "bank_tab_open_refused.png")
        finally:
            browser.close()
    ours = [error for error in errors if "memory-v2v" in error or "bank_browser" in error or "memv2v" in error]
    assert not ours, ours  # no uncaught error from the pack's scripts
