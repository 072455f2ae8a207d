"""A resumed Long Video Edit remembers its own earlier segments, never another run's newer edits of them.

Run A (seed 42) is interrupted through the real ``POST /interrupt`` after its first segment; run B (seed 7: other
edits of the same video) then completes in the same bank, so the bank's newest edit of every segment is B's; A queued
again must resume its own segments and condition the rest on them, so its entries equal an uninterrupted A's (another
bank) bit for bit. Tiny sizes: a 33-frame 32x32 video, 9-frame segments with overlap 1 (4 segments), 3 steps, on the
shipped one-run graph as tests/host/test_long_edit_all.py adapts it.
"""

from __future__ import annotations

import json

import pytest
import torch

from memv2v_cli import graph
from memv2v_cli.host import comfy_host
from memv2v_core.bank.memory_bank import MemoryBank
from test_long_edit_all import NODE, WORKFLOW, adapt, models  # noqa: F401 - models: a fixture
from tests.core.video_frames import encode

NAME, FRAMES, LENGTH, OVERLAP, STEPS, COUNT = "own_memory.mp4", 33, 9, 1, 3, 4


def _prompt(host, models, bank: str, prefix: str, seed: int) -> dict:
    prompt = adapt(graph.ui_to_api(json.loads(WORKFLOW.read_text()), host.object_info), models, bank, prefix)
    prompt[graph.find_nodes(prompt, "LoadVideo")[0]]["inputs"]["file"] = NAME
    node = graph.find_nodes(prompt, NODE)[0]
    prompt[node]["inputs"].update(segment_length=LENGTH, overlap=OVERLAP, steps=STEPS, seed=seed)
    return prompt


def _bank(host, name: str) -> MemoryBank:
    return MemoryBank.open(host.output_path(f"memory_banks/{name}"))


@pytest.fixture(scope="module")
def runs(host, models):  # noqa: F811 - the imported fixture
    encode(host.server.base_dir / "input" / NAME, FRAMES)
    whole = host.run(_prompt(host, models, "own_whole", "own/whole", 42), timeout=1800)
    a = _prompt(host, models, "own_mixed", "own/a", 42)
    node, total = graph.find_nodes(a, NODE)[0], COUNT * STEPS
    sent = []

    def interrupt_in_the_second_segment(kind: str, data: dict) -> None:
        if (not sent and kind == "progress" and data.get("node") == node and data.get("max") == total
                and data.get("value", 0) > STEPS):  # the first segment is stored; the second is sampling
            sent.append(data["value"])
            host.client.interrupt()

    with pytest.raises(comfy_host.PromptFailed):
        host.client.run(a, timeout=1800, on_message=interrupt_in_the_second_segment)
    stored = len(_bank(host, "own_mixed"))
    other = host.run(_prompt(host, models, "own_mixed", "own/b", 7), timeout=1800)
    resumed = host.run(a, timeout=1800)
    return {"whole": whole, "stored": stored, "other": other, "resumed": resumed, "node": node}


def test_a_resumed_run_remembers_its_own_segments_not_a_newer_run_of_other_settings(host, runs):
    stored = runs["stored"]
    assert 1 <= stored < COUNT, stored  # interrupted after at least one segment, before the last
    texts = [data["output"]["text"][0] for kind, data in runs["resumed"].messages
             if kind == "executed" and data.get("node") == runs["node"] and data.get("output", {}).get("text")]
    assert texts and texts[-1].startswith(f"segment {COUNT}/{COUNT} edited, {stored} resumed from bank"), texts
    whole, mixed = _bank(host, "own_whole"), _bank(host, "own_mixed")
    assert len(whole) == COUNT and len(mixed) == 2 * COUNT  # A's segments and B's, none twice
    assert set(whole.ids()) <= set(mixed.ids()), (whole.ids(), mixed.ids())  # same content and parents, same ids
    for entry_id in whole.ids():
        assert torch.equal(whole.load_latent(entry_id), mixed.load_latent(entry_id)), entry_id
