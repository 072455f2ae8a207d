"""The bank routes (/memv2v/banks...) on the real ComfyUI server: listing, thumbnails, hide / restore / branch on a
bank the pack's nodes made, what retrieval sees afterwards, and hostile bank names and ids that must be refused
without anything outside the banks folder being read, created or changed."""

from __future__ import annotations

import http.client
import io
import json
import os
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import torch
from PIL import Image

from memv2v_core.bank.memory_bank import MemoryBank
from host_prompts import tiny_sampler_nodes

BANK = "host_routes_bank"
PRESETS = ("pan_left", "pan_right", "arc_right")


def request(host, method: str, path: str, body: dict | bytes | None = None,
            headers: dict | None = None) -> tuple[int, bytes, dict]:
    """Send ``path`` exactly as written (no client-side normalisation of '..' or percent escapes)."""
    url = urlsplit(host.server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def get_json(host, path: str):
    status, data, _ = request(host, "GET", path)
    assert status == 200, (path, status, data)
    return json.loads(data)


def post_json(host, path: str, body: dict | None = None) -> tuple[int, dict]:
    status, data, _ = request(host, "POST", path, body or {})
    return status, json.loads(data)


def turn_prompt(dit: str, seed: int, preset: str) -> dict:
    prompt = tiny_sampler_nodes(dit, seed)
    prompt.update({
        "20": {"class_type": "MemV2V_BankLoad", "inputs": {"name": BANK}},
        "21": {"class_type": "MemV2V_CameraPreset", "inputs": {"preset": preset, "frames": 5, "strength": 1.0,
                                                               "subject_distance": 4.0}},
        "22": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["20", 0], "samples": ["6", 0], "model": ["5", 0],
                                                          "camera": ["21", 0], "prompt": f"turn {preset}",
                                                          "seed": seed}},
    })
    return prompt


def retrieval_prompt() -> dict:
    return {
        "1": {"class_type": "MemV2V_BankLoad", "inputs": {"name": BANK}},
        "2": {"class_type": "MemV2V_CameraPreset", "inputs": {"preset": "pan_right", "frames": 5, "strength": 0.5,
                                                              "subject_distance": 4.0}},
        "3": {"class_type": "MemV2V_FOVRetrieve", "inputs": {"bank": ["1", 0], "camera": ["2", 0], "top_k": 6,
                                                             "lam": 0.5, "sphere_radius": 1.0}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }


def retrieved(host, ids: list[str], tables: list | None = None) -> list[str]:
    """The entries a real FOV Retrieve run lists in its score table (appended to ``tables``)."""
    table = host.run(retrieval_prompt()).outputs["3"]["text"][0]
    if tables is not None:
        tables.append(table)
    return [entry_id for entry_id in ids if entry_id in table]


@pytest.fixture(scope="module")
def node_bank(host) -> list[str]:
    """Three NVS turns stored by Bank Add in the real host; returns their ids in turn order."""
    dit = Path(host.assets["dit"]).name
    for seed, preset in zip((31, 32, 33), PRESETS):
        host.run(turn_prompt(dit, seed, preset))
    bank = MemoryBank.open(host.server.output_dir / "memory_banks" / BANK)
    assert len(bank) == 3
    return bank.ids()


def test_listing_thumbnails_hide_restore_and_branch_on_a_bank_made_by_the_nodes(host, node_bank):
    t1, t2, t3 = node_bank
    assert BANK in get_json(host, "/memv2v/banks") and BANK in get_json(host, "/api/memv2v/banks")
    entries = get_json(host, f"/memv2v/banks/{BANK}/entries")
    assert [e["id"] for e in entries] == node_bank and [e["turn"] for e in entries] == [1, 2, 3]
    for entry, preset in zip(entries, PRESETS):
        assert {"id", "turn", "prompt", "seed", "parents", "hidden", "created", "segment_index", "camera"} <= set(entry)
        assert entry["hidden"] is False and entry["parents"] == [] and entry["camera_frames"] == 5
        assert entry["latent_format"] == "wan21" and entry["prompt"] == f"turn {preset}"

    # thumbnails: a latent preview (no keyframes stored), cached, with an ETag the browser can revalidate
    status, png, headers = request(host, "GET", f"/memv2v/banks/{BANK}/entries/{t1}/thumbnail?frames=2&height=32")
    assert status == 200 and headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(png)) as image:
        assert image.height == 32 and image.width > 32 and len(image.getcolors(1 << 16) or ()) > 4
    status, again, _ = request(host, "GET", f"/memv2v/banks/{BANK}/entries/{t1}/thumbnail?frames=2&height=32")
    assert status == 200 and again == png
    status, _, _ = request(host, "GET", f"/memv2v/banks/{BANK}/entries/{t1}/thumbnail?frames=2&height=32",
                           headers={"If-None-Match": headers["ETag"]})
    assert status == 304

    # hide turn 2: the listing marks it, the bank on disk agrees, a real retrieval run no longer sees it
    assert retrieved(host, node_bank) == [t1, t2, t3]
    status, body = post_json(host, f"/memv2v/banks/{BANK}/entries/{t2}/hide")
    assert status == 200 and body["id"] == t2 and body["hidden"] is True
    assert [e["hidden"] for e in get_json(host, f"/memv2v/banks/{BANK}/entries")] == [False, True, False]
    assert MemoryBank.open(host.server.output_dir / "memory_banks" / BANK).ids() == [t1, t3]
    tables = []
    assert retrieved(host, node_bank, tables) == [t1, t3] and "(1 hidden entry left out)" in tables[0]
    summary = get_json(host, f"/memv2v/banks/{BANK}")
    assert summary["entries"] == 2 and summary["hidden"] == 1 and summary["active_branch"] is None

    # refusals say why and change nothing
    manifest = host.server.output_dir / "memory_banks" / BANK / "manifest.json"
    before = manifest.read_bytes()
    status, body = post_json(host, f"/memv2v/banks/{BANK}/entries/{t2}/hide")
    assert status == 409 and "already hidden" in body["error"]
    status, body = post_json(host, f"/memv2v/banks/{BANK}/entries/{t3}/restore")
    assert status == 409 and "not hidden" in body["error"]
    status, body = post_json(host, f"/memv2v/banks/{BANK}/entries/{'0' * 16}/hide")
    assert status == 404 and "no entry" in body["error"]
    status, body = post_json(host, f"/memv2v/banks/{BANK}/branch", {"from": t2, "name": "from turn 2"})
    assert status == 409 and "hidden" in body["error"]
    assert manifest.read_bytes() == before

    # restore: retrieved again
    status, body = post_json(host, f"/memv2v/banks/{BANK}/entries/{t2}/restore")
    assert status == 200 and body["hidden"] is False
    assert retrieved(host, node_bank) == [t1, t2, t3]

    # branch from turn 1: retrieval sees only turn 1; back to the whole bank
    status, body = post_json(host, f"/memv2v/banks/{BANK}/branch", {"from": t1, "name": "from turn 1"})
    assert status == 200 and body["active_branch"] == "from turn 1" and body["branches"]["from turn 1"]["from"] == t1
    tables.clear()
    assert retrieved(host, node_bank, tables) == [t1]
    assert "branch 'from turn 1'" in tables[0] and "1 of 3 visible entries" in tables[0]  # the table says why
    status, body = post_json(host, f"/memv2v/banks/{BANK}/branch", {"name": None})
    assert status == 200 and body["active_branch"] is None
    assert retrieved(host, node_bank) == [t1, t2, t3]


# ---------------------------------------------------------------------------------------------------------------
# Hostile names and ids

def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every path under ``root`` with its size and modification time (files) or kind (folders, links)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            if path in skip:
                continue
            st = path.lstat()
            found[str(path)] = ("link", os.readlink(path)) if path.is_symlink() else \
                ("dir",) if path.is_dir() else ("file", st.st_size, st.st_mtime_ns)
    return found


BAIT = "S3CRET-BAIT-PROMPT"
HOSTILE_NAMES = [
    "..", "%2e%2e", ".%2e", "..%2F..%2Foutside", "..%5C..%5Coutside", "%2e%2e%2f%2e%2e%2foutside",
    "%252e%252e%252fbait_bank", "..%252F..%252Fbait_bank", "%2Fetc%2Fpasswd", "C:%5CWindows%5Cwin.ini",
    "%5C%5Cserver%5Cshare", "bait%00bank", "%00", "a%0Ab", "x" * 65, "CON", "nul.txt", "COM1", "LPT9.bank",
    "%EF%BC%8E%EF%BC%8E", "a%EF%BC%8Fb", "%EF%BC%8E%EF%BC%8E%EF%BC%8Fbait_bank", "x%E2%80%AEtxt", "zero%E2%80%8Bwidth",
    ".tmp", "%20lead", "trail%20", "dot.", "a%3Ab", "what%3F", "%FF%FE", "linked_out",
]
HOSTILE_IDS = [
    "..", "%2e%2e", "..%2F..%2Fmanifest.json", "..%5C..%5Cmanifest.json", "%252e%252e%252fmanifest.json",
    "%2Fetc%2Fpasswd", "entries%2F{id}.safetensors", "{id}%00", "{ID}", "{id}{id}{id}{id}0", "{short}",
    "%EF%BC%8E%EF%BC%8E", "{id}.safetensors", "C:%5Cx", "{bait}",
]


def test_hostile_bank_names_and_ids_are_refused_and_nothing_outside_the_banks_folder_is_touched(host, node_bank):
    output, base = host.server.output_dir, host.server.base_dir
    banks = output / "memory_banks"
    # Bait: real banks just outside the banks folder. Reading one would put its entry id in an answer.
    bait_ids = []
    for bait in (output / "bait_bank", base.parent / "bait_outside"):
        bait_ids.append(MemoryBank.open(bait, create=True).add(torch.full((1, 16, 2, 4, 4), 7.0),
                                                               latent_format="wan21", prompt=BAIT))
    (banks / "linked_out").symlink_to(output / "bait_bank", target_is_directory=True)
    try:
        fills = {"id": node_bank[0], "ID": node_bank[0].upper(), "short": node_bank[0][:15], "bait": bait_ids[0]}
        names = HOSTILE_NAMES + [quote(str(output / "bait_bank"), safe=""), quote("/" + str(base.parent), safe="")]
        ids = [item.format(**fills) for item in HOSTILE_IDS] + [quote(str(output / "bait_bank"), safe="")]
        assert len(names) >= 20 and len(ids) >= 15
        skip = {host.server.log_path}
        before = snapshot(base.parent, skip)
        answers = []
        for name in names:
            answers += [("GET", f"/memv2v/banks/{name}"), ("GET", f"/memv2v/banks/{name}/entries"),
                        ("GET", f"/api/memv2v/banks/{name}/entries"),
                        ("GET", f"/memv2v/banks/{name}/entries/{node_bank[0]}/thumbnail"),
                        ("GET", f"/memv2v/banks/{name}/entries/{node_bank[0]}/prompt"),
                        ("POST", f"/memv2v/banks/{name}/entries/{node_bank[0]}/hide"),
                        ("POST", f"/memv2v/banks/{name}/entries/{bait_ids[0]}/hide"),
                        ("POST", f"/memv2v/banks/{name}/branch")]
        for entry_id in ids:
            answers += [("GET", f"/memv2v/banks/{BANK}/entries/{entry_id}/thumbnail"),
                        ("GET", f"/memv2v/banks/{BANK}/entries/{entry_id}/prompt"),
                        ("POST", f"/memv2v/banks/{BANK}/entries/{entry_id}/hide"),
                        ("POST", f"/memv2v/banks/{BANK}/entries/{entry_id}/restore")]
        refused = 0
        for method, path in answers:
            body = {"from": node_bank[0], "name": "b"} if path.endswith("/branch") else None
            status, data, _ = request(host, method, path, body)
            assert status in (400, 404, 405), (method, path, status, data[:300])
            assert BAIT.encode() not in data, (path, data[:300])  # the bait banks were never read
            assert str(banks).encode() not in data, (path, data[:300])  # nor the server's folders named
            refused += 1
        # hostile JSON for branch on the real bank: ids and branch names by body
        for body in ({"from": "../../manifest.json", "name": "b"}, {"from": node_bank[0], "name": "../../x"},
                     {"from": node_bank[0], "name": "a/b"}, {"from": node_bank[0], "name": "x" * 65},
                     {"from": node_bank[0], "name": "\u202ebad"}, {"from": bait_ids[1], "name": "b"},
                     {"from": 5, "name": "b"}, {"name": ["list"]}):
            status, data, _ = request(host, "POST", f"/memv2v/banks/{BANK}/branch", body)
            assert status in (400, 404), (body, status, data[:300])
            refused += 1
        status, data, _ = request(host, "POST", f"/memv2v/banks/{BANK}/branch", b"\x00not json")
        assert status == 400 and b"not JSON" in data
        status, data, _ = request(host, "POST", f"/memv2v/banks/{BANK}/branch", b"{" + b" " * 20000 + b"}")
        assert status == 413
        assert refused >= 20 * 8
        assert snapshot(base.parent, skip) == before  # nothing created, changed or deleted anywhere around the host
        assert "linked_out" not in get_json(host, "/memv2v/banks")
        bank = MemoryBank.open(banks / BANK)
        assert bank.ids(include_hidden=True) == node_bank and bank.hidden_ids() == [] and bank.problems == []
    finally:
        (banks / "linked_out").unlink()
