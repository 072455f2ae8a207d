"""The real ComfyUI frontend's template browser, in headless Chromium: the pack's category lists every shipped
workflow with its title, its one-sentence description and its thumbnail, the main workflow first; opening the main
one puts it on the canvas at the saved first-screen view. Screenshots go to /tmp/browser-shots/canvas/.

Skipped with a reason when Chromium or Playwright is missing.
"""

import json
import shutil
import time
from pathlib import Path

import pytest

from memv2v_cli.authoring import builder

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path("/tmp/browser-shots/canvas")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
CARDS = """() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(card => ({
    name: card.dataset.testid.replace('template-workflow-', ''), title: card.querySelector('h3')?.textContent,
    description: card.querySelector('p')?.textContent, thumbnail: card.querySelector('img')?.naturalWidth ?? 0}))"""


@pytest.fixture(scope="module")
def playwright_api():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def test_template_browser_shows_titles_descriptions_thumbnails_main_first(host, playwright_api):
    index = json.loads((REPO_ROOT / "web" / builder.INDEX_NAME).read_text())[0]
    expected = {t["name"]: t for t in index["templates"]}
    main = json.loads((REPO_ROOT / "workflows" / f"{builder.MAIN_WORKFLOW}.json").read_text())
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(host.server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.comfyAPI?.app?.app?.graph", timeout=120_000)
            page.evaluate("() => window.comfyAPI.app.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
            category = page.get_by_role("option", name=index["title"])
            category.wait_for(timeout=60_000)
            category.click()
            page.wait_for_selector(f'[data-testid="template-workflow-{builder.MAIN_WORKFLOW}"]', timeout=60_000)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # thumbnails load lazily
                cards = page.evaluate(CARDS)
                if len(cards) == len(expected) and all(card["thumbnail"] for card in cards):
                    break
                time.sleep(0.25)
            page.screenshot(path=str(SHOTS / "template_browser.png"))
            page.locator(f'[data-testid="template-workflow-{builder.MAIN_WORKFLOW}"]').click()
            page.wait_for_function(f"() => window.comfyAPI.app.app.graph.nodes.length === {len(main['nodes'])}",
                                   timeout=60_000)
            time.sleep(1)
            view = page.evaluate("() => { const ds = window.comfyAPI.app.app.canvas.ds;"
                                 " return {scale: ds.scale, offset: [...ds.offset]}; }")
            page.screenshot(path=str(SHOTS / f"{builder.MAIN_WORKFLOW}_opened.png"))
        finally:
            browser.close()
    assert [card["name"] for card in cards] == list(expected), cards
    for card in cards:
        template = expected[card["name"]]
        assert card["title"].strip() == template["title"], card
        assert card["description"].strip() == template["description"], card
        assert card["thumbnail"] == 512, f"{card['name']}: thumbnail did not load"
    assert view["scale"] == pytest.approx(main["extra"]["ds"]["scale"])
    assert view["offset"] == pytest.approx(main["extra"]["ds"]["offset"])
