"""The pack loads in the real ComfyUI: every node is registered, documented, and nothing failed to import."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def declared_node_ids() -> set[str]:
    ids = set()
    for path in (REPO_ROOT / "nodes").glob("*_nodes.py"):
        ids.update(re.findall(r'node_id="(MemV2V_\w+)"', path.read_text()))
    return ids


def test_every_node_is_registered_with_tooltips(host):
    declared = declared_node_ids()
    assert declared, "no node ids found in nodes/*_nodes.py"
    info = host.object_info
    ours = {name: entry for name, entry in info.items() if name.startswith("MemV2V_")}
    missing = declared - set(ours)
    assert not missing, f"declared but not registered (did a node module fail to import?): {sorted(missing)}"
    problems = []
    for name, entry in ours.items():
        assert entry["python_module"].endswith("memory-v2v"), entry["python_module"]
        if not entry.get("description"):
            problems.append(f"{name}: no description")
        for section in ("required", "optional"):
            for input_name, spec in entry["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 else {}
                if not options.get("tooltip"):
                    problems.append(f"{name}.{input_name}: no tooltip")
        tooltips = entry.get("output_tooltips") or []
        if len(tooltips) != len(entry["output"]) or not all(tooltips):
            problems.append(f"{name}: outputs {entry['output_name']} have tooltips {tooltips}")
    assert not problems, "\n".join(problems)


def test_server_log_shows_no_import_failure_for_the_pack(host):
    log = host.server.log_text()
    assert "Starting server" in log, "the server log has no start-up end marker"
    lines = log.split("Starting server", 1)[0].splitlines()  # start-up only: later tests provoke runtime errors on purpose
    failures = [line for line in lines
                if ("memory-v2v" in line and ("IMPORT FAILED" in line or "Cannot import" in line))
                or ("Memory-V2V: node module" in line)                      # our own per-module import guard
                or (line.lstrip().startswith("File ") and "custom_nodes/memory-v2v/" in line)]  # a traceback through us
    assert not failures, "\n".join(failures)
    assert any("custom_nodes/memory-v2v" in line and "seconds" in line for line in lines), \
        "the pack's line in ComfyUI's import-times table is missing"


def test_web_extension_is_served(host):
    extensions = host.client.get_json("/extensions")
    assert any(path.startswith("/extensions/memory-v2v/") for path in extensions), extensions


def test_shipped_workflows_are_in_the_template_browser(host):
    templates = host.client.get_json("/workflow_templates")
    shipped = sorted(path.stem for path in (REPO_ROOT / "workflows").glob("*.json"))
    assert sorted(templates.get("memory-v2v", [])) == shipped, templates
    first = host.client.get_json(f"/api/workflow_templates/memory-v2v/{shipped[0]}.json")
    assert first["nodes"] and first["links"]  # served as the UI-format graph the browser opens
