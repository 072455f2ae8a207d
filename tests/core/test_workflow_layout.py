"""The shipped workflows read in the canvas: groups side by side without overlap, every node inside exactly its
group, every note inside the first screen the frontend shows (extra.ds at a 1600x900 window), group titles that fit
their group, wires from left to right; and the template index lists every workflow, the main one first, with a
thumbnail. Checked on the generated files in workflows/ and on the builder's layout of every spec (a stand-in
object_info made from the spec, so no host is needed)."""

import json
from pathlib import Path

import pytest

from memv2v_cli.authoring import builder
from memv2v_cli.authoring.catalog import SPECS

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))


def box(node: dict) -> tuple[float, float, float, float]:
    """A node's rectangle with its title bar (drawn above pos)."""
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - builder.TITLE_BAR, x + w, y + h


def inside(inner, outer) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def group_box(group: dict):
    x, y, w, h = group["bounding"]
    return x, y, x + w, y + h


def check_layout(workflow: dict, name: str) -> None:
    nodes = workflow["nodes"]
    groups = workflow["groups"]
    boxes = [group_box(g) for g in groups]
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[i + 1:], start=i + 1):
            assert not overlap(a, b), f"{name}: groups {groups[i]['title']!r} and {groups[j]['title']!r} overlap"
    for group, (x0, _, x1, _) in zip(groups, boxes):
        title_width = builder.TITLE_CHAR_WIDTH * group["font_size"] * len(group["title"]) + 20
        assert title_width <= x1 - x0, f"{name}: the title {group['title']!r} is wider than its group"
    notes = [n for n in nodes if n["type"] == "MarkdownNote"]
    for node in nodes:
        if node["type"] == "MarkdownNote":
            continue
        holders = [g["title"] for g, b in zip(groups, boxes) if inside(box(node), b)]
        if groups:
            assert len(holders) == 1, f"{name}: node {node.get('title', node['type'])} is inside {holders}"
        for note in notes:
            assert not overlap(box(node), box(note)), f"{name}: {node.get('title')} overlaps note {note['title']}"
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            assert not overlap(box(a), box(b)), f"{name}: nodes {a.get('title')} and {b.get('title')} overlap"
    ds = workflow["extra"]["ds"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert 0.5 <= scale <= 1.0, f"{name}: zoom {scale} makes the text too small or too big"
    screen = (builder.SCREEN_MARGIN[0], builder.SCREEN_MARGIN[1], builder.SCREEN[0], builder.SCREEN[1])
    for note in notes:
        x0, y0, x1, y1 = box(note)
        on_screen = ((x0 + ox) * scale, (y0 + oy) * scale, (x1 + ox) * scale, (y1 + oy) * scale)
        assert inside(on_screen, screen), f"{name}: note {note['title']!r} is outside the first screen ({on_screen})"
    if groups:  # the first group's title is in the first screen too
        x0, y0, _, _ = boxes[min(range(len(groups)), key=lambda i: boxes[i][0])]
        left, right, top = (x0 + ox) * scale, (x0 + ox + 300) * scale, (y0 + oy) * scale
        assert screen[0] <= left and right <= screen[2] and top >= screen[1], f"{name}: first group off screen"
    by_id = {n["id"]: n for n in nodes}
    for link_id, source, _, target, _, _ in workflow["links"]:
        s, t = by_id[source], by_id[target]
        assert s["pos"][0] + s["size"][0] < t["pos"][0], (
            f"{name}: link {link_id} runs right to left: {s.get('title', s['type'])} -> {t.get('title', t['type'])}")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_layout(path):
    check_layout(json.loads(path.read_text()), path.name)


def stand_in_object_info(spec) -> dict:
    """Enough of /object_info for the builder: literal inputs as widgets of their Python type, links as sockets."""
    info: dict = {}
    outputs: dict[str, int] = {}
    for entry in spec.prompt.values():
        for value in entry["inputs"].values():
            if builder._is_link(value):
                kind = spec.prompt[value[0]]["class_type"]
                outputs[kind] = max(outputs.get(kind, 0), value[1] + 1)
    for entry in spec.prompt.values():
        slot = info.setdefault(entry["class_type"], {"input": {"required": {}, "optional": {}}, "output": [],
                                                     "output_name": [], "display_name": entry["class_type"]})
        for name, value in entry["inputs"].items():
            kind = ("LINK" if builder._is_link(value) else "BOOLEAN" if isinstance(value, bool) else
                    "INT" if isinstance(value, int) else "FLOAT" if isinstance(value, float) else "STRING")
            slot["input"]["optional"].setdefault(name, [kind, {}])
    for kind, count in outputs.items():
        info[kind]["output"] = ["LINK"] * count
        info[kind]["output_name"] = [f"out{i}" for i in range(count)]
    return info


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_builder_layout_of_every_spec(spec):
    check_layout(builder.api_to_ui(spec, stand_in_object_info(spec)), spec.name)


def test_template_index_lists_every_workflow_main_first():
    index = json.loads((REPO_ROOT / "web" / builder.INDEX_NAME).read_text())
    assert index == builder.template_index(SPECS), "web/workflow_templates.json is stale: rerun the builder"
    templates = index[0]["templates"]
    assert [t["name"] for t in templates][0] == builder.MAIN_WORKFLOW
    assert sorted(t["name"] for t in templates) == sorted(p.stem for p in WORKFLOWS)
    for template in templates:
        # The frontend shows a custom node's description with '-' and '_' turned into spaces.
        assert template["title"] and "_" not in template["title"], template
        assert template["description"].endswith(".") and not set("-_") & set(template["description"]), template
        thumbnail = REPO_ROOT / "workflows" / f"{template['name']}.jpg"
        assert thumbnail.is_file() and thumbnail.stat().st_size < 60_000, thumbnail
