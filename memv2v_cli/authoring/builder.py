"""Write UI-format (frontend) workflows from API-format specs, so the shipped graphs have one readable source.

``api_to_ui`` lays the graph out from the spec (notes at the top left, one group per stage side by side in
data-flow order, wires from left to right) and fills ``widgets_values`` in the order the frontend expects
(``graph.widget_slots``), so ``graph.ui_to_api`` gives the spec back. ``python -m memv2v_cli.authoring.builder
--url URL`` rewrites ``workflows/`` (with the thumbnails) and the template index from the specs in ``catalog``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import graph
from .catalog import SPECS
from .spec import WorkflowSpec

NODE_WIDTH = 340
COLUMN_GAP = 50  # between the columns of a group: room for the wires
ROW_GAP = 40
SLOT_HEIGHT = 26
TITLE_BAR = 30  # litegraph draws a node's title above its pos
TITLE_CHAR_WIDTH = 0.62  # of the font size: a generous average glyph width of the group title font
TITLE_MIN_FONT, TITLE_MAX_FONT = 24, 72
TITLE_FIT_PX = 14  # group titles stay this tall on screen when the whole graph is fitted to a 1600 px window
GROUP_PAD = 20
GROUP_GAP = 80  # between groups, and between the notes and the first group
NOTE_WIDTH = 420
NOTE_TEXT_SHRINK = 0.8  # the wider note needs less height than Note.height (measured in the frontend)
NOTES_HEIGHT = 1000  # a column of notes is at most this tall; more notes start another column
MULTILINE_HEIGHT = 110  # a multiline text box
PREVIEW_HEIGHT = 260  # room for the image or video a node shows after a run
PREVIEW_CLASSES = {"PreviewImage", "SaveImage", "SaveVideo", "SaveAnimatedWEBP", "LoadVideo", "LoadImage",
                   "MemV2V_CameraPreview"}
# The first screen: what a 1600x900 browser window shows of the canvas when the workflow opens (the frontend restores
# extra.ds); the side bar and the menu cover its left and top edges.
SCREEN = (1600, 900)
SCREEN_MARGIN = (70, 60)
GROUP_COLORS = ["#3f789e", "#8a6e3a", "#5a7a3a", "#7a4a8a", "#3a7a72", "#8a4a4a", "#4a5a8a"]


def api_to_ui(spec: WorkflowSpec, object_info: dict) -> dict:
    """The UI-format workflow for ``spec`` (what the frontend saves and its template browser opens).

    Layout: the notes in a column at the top left (the first note is the read-me), then one group per stage side by
    side in data-flow order; inside a group, nodes stand in columns by their depth within the group, so every wire
    runs from left to right.
    """
    prompt = spec.prompt
    ids = {node_id: index + 1 for index, node_id in enumerate(prompt)}
    links: list[list[Any]] = []
    nodes: list[dict] = []
    outputs_links: dict[tuple[str, int], list[int]] = {}

    for node_id, entry in prompt.items():
        info = _class_info(object_info, entry["class_type"], node_id)
        slots = {slot.name: slot for slot in graph.widget_slots(info)}
        inputs, widgets = [], []
        extra_height = 0
        for name, spec_ in _ordered_inputs(info):
            value = entry["inputs"].get(name)
            slot = slots.get(name)
            if _is_link(value):
                links.append([len(links) + 1, ids[value[0]], value[1], ids[node_id], len(inputs), _input_type(spec_)])
                outputs_links.setdefault((value[0], value[1]), []).append(len(links))
                socket = {"name": name, "type": _input_type(spec_), "link": len(links)}
                if slot is not None:
                    socket["widget"] = {"name": name}
                inputs.append(socket)
            elif slot is None and name in info["input"].get("required", {}):
                raise ValueError(f"spec {spec.name}: node {node_id} ({entry['class_type']}) needs input {name!r} "
                                 "linked")
            if slot is not None and not slot.force_input:
                widgets.append(value if value is not None and not _is_link(value) else slot.default)
                widgets.extend(_extra_values(slot, spec.controls.get(node_id, {}).get(name, "fixed")))
                options = spec_[1] if len(spec_) > 1 and isinstance(spec_[1], dict) else {}
                if options.get("multiline") and not _is_link(value):
                    extra_height += MULTILINE_HEIGHT
        sockets = sum(1 for name, _ in _ordered_inputs(info) if name not in slots or slots[name].force_input)
        rows = max(sockets, len(info.get("output", []))) + len(widgets)
        if entry["class_type"] in PREVIEW_CLASSES:
            extra_height += PREVIEW_HEIGHT
        node = {"id": ids[node_id], "type": entry["class_type"], "pos": [0, 0],
                "size": [NODE_WIDTH, 40 + SLOT_HEIGHT * rows + extra_height], "flags": {}, "order": 0, "mode": 0,
                "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": entry["class_type"]},
                "widgets_values": widgets}
        title = (entry.get("_meta") or {}).get("title")
        if title and title != info.get("display_name"):
            node["title"] = title
        nodes.append(node)

    by_id = {node["id"]: node for node in nodes}
    for node_id, entry in prompt.items():
        info = object_info[entry["class_type"]]
        for slot, (kind, name) in enumerate(zip(info.get("output", []), info.get("output_name", []))):
            by_id[ids[node_id]]["outputs"].append(
                {"name": name, "type": kind if isinstance(kind, str) else "COMBO",
                 "links": outputs_links.get((node_id, slot), []), "slot_index": slot})
    depth = _depths(prompt)
    for order, node_id in enumerate(sorted(prompt, key=lambda i: (depth[i], ids[i]))):
        by_id[ids[node_id]]["order"] = order

    note_nodes, notes_right, notes_bottom = _place_notes(spec.notes, len(nodes) + 1, len(nodes))
    ui_nodes = {node_id: by_id[ids[node_id]] for node_id in prompt}
    groups = _place_groups(spec, ui_nodes, notes_right, TITLE_MIN_FONT)
    if groups:  # titles big enough to read when the whole graph is fitted to the screen
        right = groups[-1]["bounding"][0] + groups[-1]["bounding"][2]
        font = int(min(TITLE_MAX_FONT, max(TITLE_MIN_FONT, TITLE_FIT_PX * right / (SCREEN[0] - 100))))
        groups = _place_groups(spec, ui_nodes, notes_right, font)
    nodes.extend(note_nodes)
    first_right = groups[0]["bounding"][0] + groups[0]["bounding"][2] if groups else notes_right
    return {"id": _stable_uuid(spec.name), "revision": 0, "last_node_id": len(nodes), "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": groups, "config": {},
            "extra": {"ds": _first_screen_view(max(first_right, notes_right), notes_bottom)}, "version": 0.4}


def _place_notes(notes: list, first_id: int, order: int) -> tuple[list[dict], float, float]:
    """Notes in columns at the top left, in spec order (the read-me first); returns them, their right and bottom."""
    placed, x, y, bottom = [], 0.0, 0.0, 0.0
    for index, note in enumerate(notes):
        height = round(note.height * NOTE_TEXT_SHRINK)  # spec heights were set for a 340 px wide note
        if y > 0 and y + TITLE_BAR + height > NOTES_HEIGHT:
            x, y = x + NOTE_WIDTH + ROW_GAP, 0.0
        placed.append({"id": first_id + index, "type": "MarkdownNote", "pos": [x, y + TITLE_BAR],
                       "size": [NOTE_WIDTH, height], "flags": {}, "order": order + index, "mode": 0,
                       "inputs": [], "outputs": [], "properties": {}, "widgets_values": [note.text],
                       "title": note.title, "color": "#432", "bgcolor": "#653"})
        y += TITLE_BAR + height + ROW_GAP
        bottom = max(bottom, y - ROW_GAP)
    right = x + NOTE_WIDTH if notes else 0.0
    return placed, right, bottom


def _first_screen_view(right: float, bottom: float) -> dict:
    """extra.ds: the zoom and offset that show the notes and the first group in the first screen (at most 100%)."""
    width, height = SCREEN[0] - SCREEN_MARGIN[0] - 20, SCREEN[1] - SCREEN_MARGIN[1] - 20
    scale = min(1.0, width / max(right, 1.0), height / max(bottom, 1.0))
    scale = max(0.5, round(scale - 0.005, 2))
    # screen = (canvas + offset) * scale; the extra unit keeps rounding from pushing the notes past the margin
    return {"scale": scale, "offset": [round(m / scale + 1, 1) for m in SCREEN_MARGIN]}


def _stage_of(spec: WorkflowSpec) -> dict[str, str]:
    """Each node's group: as the spec says; a node it leaves out joins the group of its first consumer, else of its
    first source, else the last group."""
    prompt, titles = spec.prompt, list(spec.groups)
    stage = {m: title for title, members in spec.groups.items() for m in members if m in prompt}
    consumers: dict[str, list[str]] = {}
    for node_id, entry in prompt.items():
        for value in entry["inputs"].values():
            if _is_link(value):
                consumers.setdefault(value[0], []).append(node_id)
    for _ in range(len(prompt)):
        for node_id, entry in prompt.items():
            if node_id in stage:
                continue
            near = consumers.get(node_id, []) + [v[0] for v in entry["inputs"].values() if _is_link(v)]
            found = [stage[n] for n in near if n in stage]
            if found:
                stage[node_id] = found[0]
    for node_id in prompt:
        stage.setdefault(node_id, titles[-1] if titles else "")
    return stage


def _stage_order(spec: WorkflowSpec, stage: dict[str, str]) -> list[str]:
    """Groups in data-flow order (a group after every group it takes inputs from), ties in spec order."""
    titles = list(dict.fromkeys([*spec.groups, *stage.values()]))
    after: dict[str, set[str]] = {t: set() for t in titles}
    for node_id, entry in spec.prompt.items():
        for value in entry["inputs"].values():
            if _is_link(value) and stage[value[0]] != stage[node_id]:
                after[stage[node_id]].add(stage[value[0]])
    order: list[str] = []
    while len(order) < len(titles):
        ready = [t for t in titles if t not in order and after[t] <= set(order)]
        order.append(ready[0] if ready else next(t for t in titles if t not in order))  # a cycle: spec order
    return order


def _place_groups(spec: WorkflowSpec, ui_nodes: dict[str, dict], left: float, font: int) -> list[dict]:
    """Place the nodes group by group, left to right; returns the groups (none for a spec without groups)."""
    prompt = spec.prompt
    stage = _stage_of(spec)
    groups = []
    x = left + GROUP_GAP if left else 0.0
    for index, title in enumerate(_stage_order(spec, stage)):
        members = [n for n in prompt if stage[n] == title]
        local = _depths({n: {"inputs": {k: v for k, v in prompt[n]["inputs"].items()
                                        if not _is_link(v) or stage.get(v[0]) == title}} for n in members})
        columns: dict[int, list[str]] = {}
        for n in members:
            columns.setdefault(local[n], []).append(n)
        top = font * 1.4 + GROUP_PAD + TITLE_BAR if title else TITLE_BAR  # litegraph's title bar: 1.4 x font
        bottom = top
        for column in sorted(columns):
            rank = {n: i for i, n in enumerate(prompt)}
            if column:  # beside their sources: sorted by the mean height of their sources in this group
                def source_y(n: str) -> float:
                    ys = [ui_nodes[v[0]]["pos"][1] for v in prompt[n]["inputs"].values()
                          if _is_link(v) and v[0] in ui_nodes and stage.get(v[0]) == title]
                    return sum(ys) / len(ys) if ys else float("inf")
                columns[column].sort(key=lambda n: (source_y(n), rank[n]))
            y = top
            for n in columns[column]:
                node = ui_nodes[n]
                node["pos"] = [x + GROUP_PAD + column * (NODE_WIDTH + COLUMN_GAP), y]
                y += node["size"][1] + TITLE_BAR + ROW_GAP
            bottom = max(bottom, y - TITLE_BAR - ROW_GAP)
        width = 2 * GROUP_PAD + len(columns) * NODE_WIDTH + (len(columns) - 1) * COLUMN_GAP
        width = max(width, TITLE_CHAR_WIDTH * font * len(title) + 2 * GROUP_PAD)
        if title:
            groups.append({"id": len(groups) + 1, "title": title,
                           "bounding": [x, 0.0, round(width), bottom + GROUP_PAD],
                           "color": GROUP_COLORS[index % len(GROUP_COLORS)], "font_size": font, "flags": {}})
        x += width + GROUP_GAP
    return groups


def _class_info(object_info: dict, class_type: str, node_id: str) -> dict:
    if class_type not in object_info:
        raise ValueError(f"node {node_id}: class {class_type!r} is not known to the server (is its pack installed?)")
    return object_info[class_type]


def _ordered_inputs(info: dict) -> list[tuple[str, Any]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    return [(name, info["input"][section][name]) for section in ("required", "optional")
            for name in order.get(section, []) if name in info["input"].get(section, {})]


def _input_type(spec: Any) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else kind


def _extra_values(slot: graph.WidgetSlot, control: str) -> list[Any]:
    """What the frontend saves after the widget's value: the control mode, then (combos) an empty filter text."""
    if slot.extra_values == 0:
        return []
    if slot.kind == "INT":
        return [control]
    return [control, ""][:slot.extra_values] + [None] * max(0, slot.extra_values - 2)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _depths(prompt: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str, trail: tuple[str, ...] = ()) -> int:
        if node_id in trail:
            raise ValueError(f"the spec has a cycle through node {node_id}")
        if node_id not in depth:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if _is_link(v)]
            depth[node_id] = 1 + max((visit(s, trail + (node_id,)) for s in sources), default=-1)
        return depth[node_id]

    for node_id in prompt:
        visit(node_id)
    return depth


def _stable_uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"memory-v2v/workflows/{name}"))


MAIN_WORKFLOW = "memv2v_multiturn_nvs"  # listed first in the template browser
INDEX_NAME = "workflow_templates.json"  # in web/; web/templates.js gives it to the template browser


def template_index(specs: list[WorkflowSpec]) -> list[dict]:
    """The template browser's entries in the format of ComfyUI's own templates/index.json: one category (the pack),
    the main workflow first. ComfyUI itself lists custom-node templates by file name only; web/templates.js swaps
    this category in (its moduleName becomes the pack's folder name there)."""
    ordered = sorted(specs, key=lambda spec: spec.name != MAIN_WORKFLOW)
    return [{"moduleName": "memory-v2v", "title": "Memory-V2V", "type": "video", "templates": [
        {"name": spec.name, "title": spec.title or spec.name.replace("_", " "),
         "description": spec.description or (spec.notes[0].title if spec.notes else spec.name.replace("_", " ")),
         "mediaType": "image", "mediaSubtype": "jpg"} for spec in ordered]}]


def write_workflows(object_info: dict, out_dir: Path, index_path: Path | None = None,
                    thumbnails: bool = True) -> list[Path]:
    """Write every spec of the catalog to ``out_dir/<name>.json``, its thumbnail ``<name>.jpg`` and the template
    index (``web/workflow_templates.json`` beside ``out_dir``)."""
    written = []
    for spec in SPECS:
        path = out_dir / f"{spec.name}.json"
        path.write_text(json.dumps(api_to_ui(spec, object_info), indent=2) + "\n")
        written.append(path)
    if thumbnails:
        from .thumbnails import write_thumbnails

        written += write_thumbnails([spec.name for spec in SPECS], out_dir)
    index_path = index_path or out_dir.parent / "web" / INDEX_NAME
    index_path.write_text(json.dumps(template_index(SPECS), indent=2) + "\n")
    written.append(index_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite workflows/ from the specs in memv2v_cli/authoring/.")
    parser.add_argument("--url", required=True, help="a running ComfyUI with this pack installed (for /object_info)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "workflows"))
    args = parser.parse_args(argv)
    from ..host.comfy_host import ComfyClient

    for path in write_workflows(ComfyClient(args.url).object_info(), Path(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
