"""Write UI-format (frontend) workflows from API-format specs, so the shipped graphs have one readable source.

``api_to_ui`` lays nodes out left to right by dependency depth, adds Markdown notes and groups, and fills
``widgets_values`` in the order the frontend expects (``graph.widget_slots``), so ``graph.ui_to_api`` gives the
spec back. ``python -m memv2v_cli.authoring.builder --url URL`` rewrites ``workflows/`` from the specs in ``catalog``.
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

COLUMN_WIDTH = 400
NODE_WIDTH = 340
ROW_GAP = 40
SLOT_HEIGHT = 26


def api_to_ui(spec: WorkflowSpec, object_info: dict) -> dict:
    """The UI-format workflow for ``spec`` (what the frontend saves and its template browser opens)."""
    prompt = spec.prompt
    ids = {node_id: index + 1 for index, node_id in enumerate(prompt)}
    depth = _depths(prompt)
    links: list[list[Any]] = []
    nodes: list[dict] = []
    outputs_links: dict[tuple[str, int], list[int]] = {}
    column_y: dict[int, float] = {}

    for node_id, entry in prompt.items():
        info = _class_info(object_info, entry["class_type"], node_id)
        slots = {slot.name: slot for slot in graph.widget_slots(info)}
        inputs, widgets = [], []
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
                raise ValueError(f"spec {spec.name}: node {node_id} ({entry['class_type']}) needs input {name!r} linked")
            if slot is not None and not slot.force_input:
                widgets.append(value if value is not None and not _is_link(value) else slot.default)
                widgets.extend(_extra_values(slot, spec.controls.get(node_id, {}).get(name, "fixed")))
        column = depth[node_id]
        height = 40 + SLOT_HEIGHT * (max(len(inputs), len(info.get("output", []))) + len(widgets))
        y = column_y.get(column, 80.0)
        column_y[column] = y + height + ROW_GAP
        node = {"id": ids[node_id], "type": entry["class_type"], "pos": [40 + column * COLUMN_WIDTH, y],
                "size": [NODE_WIDTH, height], "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": [],
                "properties": {"Node name for S&R": entry["class_type"]}, "widgets_values": widgets}
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
    for order, node_id in enumerate(sorted(prompt, key=lambda i: (depth[i], ids[i]))):
        by_id[ids[node_id]]["order"] = order

    next_id = len(nodes) + 1
    for note in spec.notes:
        y = column_y.get(note.column, 80.0)
        column_y[note.column] = y + note.height + ROW_GAP
        nodes.append({"id": next_id, "type": "MarkdownNote", "pos": [40 + note.column * COLUMN_WIDTH, y],
                      "size": [NODE_WIDTH, note.height], "flags": {}, "order": len(nodes), "mode": 0, "inputs": [],
                      "outputs": [], "properties": {}, "widgets_values": [note.text], "title": note.title,
                      "color": "#432", "bgcolor": "#653"})
        next_id += 1

    return {"id": _stable_uuid(spec.name), "revision": 0, "last_node_id": next_id - 1, "last_link_id": len(links),
            "nodes": nodes, "links": links, "groups": [_group(title, members, ids, by_id)
                                                       for title, members in spec.groups.items()],
            "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


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


def _group(title: str, members: list[str], ids: dict[str, int], by_id: dict[int, dict]) -> dict:
    boxes = [by_id[ids[m]] for m in members]
    x0 = min(b["pos"][0] for b in boxes) - 20
    y0 = min(b["pos"][1] for b in boxes) - 60
    x1 = max(b["pos"][0] + b["size"][0] for b in boxes) + 20
    y1 = max(b["pos"][1] + b["size"][1] for b in boxes) + 20
    return {"title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": "#3f789e", "font_size": 24, "flags": {}}


def _stable_uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"memory-v2v/workflows/{name}"))


def write_workflows(object_info: dict, out_dir: Path) -> list[Path]:
    """Write every spec of the catalog to ``out_dir/<name>.json``."""
    written = []
    for spec in SPECS:
        path = out_dir / f"{spec.name}.json"
        path.write_text(json.dumps(api_to_ui(spec, object_info), indent=2) + "\n")
        written.append(path)
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
