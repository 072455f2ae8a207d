"""Headless runner: queue a shipped workflow on ComfyUI for one or more turns and report what happened.

Per turn it prints progress, what each Memory-V2V node reported (retrieval scores, bank summaries) and the files written.
Without the workflow's models it switches to a clearly labelled demo mode: tiny random models on a private ComfyUI,
so the whole pipeline can be seen working on a CPU in seconds. Demo outputs are noise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import graph
from .demo import models as demo_models
from .demo import rewrite
from .demo import setup as demo_setup
from .host import comfy_host
from .demo.rewrite import DEMO_EMBEDDER, DEMO_STORY_VALUES, STORYMEM_DEMO_RANK, graph_link, to_demo  # noqa: F401

logger = logging.getLogger(__name__)

WORKFLOWS_DIR = comfy_host.PACK_ROOT / "workflows"
DEFAULT_WORKFLOW = "memv2v_multiturn_nvs"

# Inputs that name model files; a value missing from the server's list means the user has not got that model.
MODEL_INPUTS = {"unet_name", "vae_name", "clip_name", "clip_name1", "clip_name2", "ckpt_name", "lora_name",
                "checkpoint", "model_name", "clip_vision_name"}
SEED_INPUTS = {"seed", "noise_seed"}

# The demo video lives in this folder of the demo asset cache, and the tiny ReCamMaster-layout checkpoint next to it.
DEMO_CAMERA_CHECKPOINT = "recammaster_ckpt"
BANNER = ("DEMO MODE: tiny randomly initialised models on a private ComfyUI; the pictures are noise by design. "
          "Install the workflow's models to get real results.")
SPLIT_CLASS = "MemV2V_SplitSegments"


class UserError(ValueError):
    """A mistake in what the user asked for (a bad option, workflow or node name): the CLI prints the message and
    exits with status 2, without a traceback."""


def demo_home() -> Path:
    """Where demo runs keep their private ComfyUIs (one base directory per workflow, so banks persist between runs):
    ``$MEMV2V_DEMO_HOME``, else the platform's cache folder + ``memv2v/demo`` (``~/.cache/memv2v/demo`` on Linux)."""
    if os.environ.get("MEMV2V_DEMO_HOME"):
        return Path(os.environ["MEMV2V_DEMO_HOME"]).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        cache = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        cache = Path.home() / "Library" / "Caches"
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "memv2v" / "demo"


@dataclass
class TurnReport:
    turn: int
    prompt_id: str
    seconds: float
    node_texts: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def resolve_workflow(name_or_path: str | None) -> Path:
    """A shipped workflow by name (with or without .json) or any path to a workflow file."""
    name = name_or_path or DEFAULT_WORKFLOW
    candidates = [Path(name), WORKFLOWS_DIR / name, WORKFLOWS_DIR / f"{name}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))
    raise UserError(f"workflow {name!r} not found; shipped workflows: {', '.join(shipped) or 'none'}; "
                            "or give a path to a workflow .json file")


def load_api_prompt(path: Path, object_info: dict) -> dict:
    """Read a UI-format (what the ComfyUI frontend saves) or API-format workflow and return the API prompt."""
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"{path} is not JSON ({error}); give a workflow saved by ComfyUI") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        try:
            return graph.ui_to_api(data, object_info)
        except (KeyError, ValueError) as error:
            raise UserError(f"{path}: {str(error).strip(chr(39))}") from None
    if isinstance(data, dict) and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return data
    raise UserError(f"{path} is neither a ComfyUI UI workflow nor an API prompt")


def missing_models(prompt: dict, object_info: dict) -> list[str]:
    """``class.input=value`` for every model file the prompt names that the server does not have."""
    missing = []
    for node in prompt.values():
        info = object_info.get(node["class_type"], {}).get("input", {})
        specs = {**info.get("required", {}), **info.get("optional", {})}
        for name, value in node["inputs"].items():
            if name in MODEL_INPUTS and isinstance(value, str) and isinstance(specs.get(name, [None])[0], list):
                if value not in specs[name][0]:
                    missing.append(f"{node['class_type']}.{name}={value}")
    return missing


def parse_settings(settings: list[str], prompt: dict) -> list[tuple[str, str, list[Any]]]:
    """``--set 'NODE.input=v1,v2'`` (NODE: a node id or title) -> [(node_id, input, [values per turn])]."""
    parsed = []
    for setting in settings:
        target, _, values = setting.partition("=")
        node_ref, _, input_name = target.rpartition(".")
        if not node_ref or not input_name or not values:
            raise UserError(f"--set {setting!r}: expected NODE.input=value[,value...] (NODE: node id or title)")
        ids = [node_ref] if node_ref in prompt else graph.find_nodes(prompt, title=node_ref)
        if len(ids) != 1:
            titles = sorted({node_title(prompt, i) for i in prompt})
            raise UserError(f"--set {setting!r}: {'no' if not ids else len(ids)} nodes match {node_ref!r}; use a "
                            f"node id or a unique title (titles: {', '.join(titles)})")
        inputs = prompt[ids[0]].get("inputs", {})
        widgets = sorted(k for k, v in inputs.items() if not graph_link(v))
        if input_name not in inputs:
            raise UserError(f"--set {setting!r}: {node_ref!r} has no input {input_name!r}; its widgets: "
                            f"{', '.join(widgets) or 'none'}")
        if graph_link(inputs[input_name]):
            raise UserError(f"--set {setting!r}: {input_name!r} of {node_ref!r} is connected to node "
                            f"{inputs[input_name][0]}; set the widget on that node instead")
        parsed.append((ids[0], input_name, [_literal(v) for v in values.split(",")]))
    return parsed


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def pipeline_order(prompt: dict) -> list[str]:
    """Node ids in data-flow order (a node after every node it reads from); ties by numeric id, so it is stable."""
    def key(node_id: str) -> tuple:
        return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)

    depends = {i: {v[0] for v in n.get("inputs", {}).values() if graph_link(v) and v[0] in prompt}
               for i, n in prompt.items()}
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(prompt):
        ready = sorted((i for i in prompt if i not in placed and depends[i] <= placed), key=key)
        if not ready:  # a cycle (ComfyUI refuses those anyway): keep the rest in id order
            ready = sorted((i for i in prompt if i not in placed), key=key)
        order.append(ready[0])
        placed.add(ready[0])
    return order


def bank_names(prompt: dict) -> list[str]:
    """The names of the memory banks the prompt loads (literal Bank Load names)."""
    return [n["inputs"]["name"] for n in prompt.values()
            if n["class_type"] == "MemV2V_BankLoad" and isinstance(n["inputs"].get("name"), str)]


def bank_size(client: comfy_host.ComfyClient, name: str) -> int | None:
    """How many entries the bank holds (hidden ones too), through the pack's bank route; 0 for a new bank."""
    import urllib.error
    import urllib.parse

    try:
        return len(client.get_json(f"/memv2v/banks/{urllib.parse.quote(name, safe='')}/entries"))
    except urllib.error.HTTPError as error:
        return 0 if error.code == 404 else None
    except (OSError, ValueError):
        return None


@dataclass
class SegmentPlan:
    """A per-segment workflow: its Split Segments node, how many segments the source has, the first index."""

    node_id: str
    count: int
    start: int = 0


def segment_plan(client: comfy_host.ComfyClient, prompt: dict, settings, timeout: float = 3600
                 ) -> SegmentPlan | None:
    """For a workflow that edits one segment per queue run (one Split Segments with its index widget not set by
    ``--set``): queue only what feeds Split Segments, with Preview Any on its ``count`` output, and read the count."""
    splits = graph.find_nodes(prompt, SPLIT_CLASS)
    if len(splits) != 1 or graph_link(prompt[splits[0]]["inputs"].get("index")):
        return None
    split = splits[0]
    if any(node_id == split and name == "index" for node_id, name, _ in settings):
        return None
    needed, todo = set(), [split]
    while todo:
        node_id = todo.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        todo += [v[0] for v in prompt[node_id]["inputs"].values() if graph_link(v) and v[0] in prompt]
    probe = {i: json.loads(json.dumps(prompt[i])) for i in needed}
    start = probe[split]["inputs"].get("index", 0)
    probe[split]["inputs"]["index"] = 0
    probe["memv2v_segment_count"] = {"class_type": "PreviewAny", "inputs": {"source": [split, 2]},
                                     "_meta": {"title": "segment count"}}
    result = client.run(probe, timeout=timeout)
    text = (result.outputs.get("memv2v_segment_count", {}).get("text") or ["?"])[0]
    try:
        count = int(text)
    except ValueError:
        return None
    return SegmentPlan(split, count, start if isinstance(start, int) and 0 <= start < count else 0)


def run_turns(client: comfy_host.ComfyClient, prompt: dict, turns: int, settings, *, vary_seed: bool = True,
              out: Callable[[str], None] = print, timeout: float = 3600,
              segments: SegmentPlan | None = None) -> list[TurnReport]:
    """Queue ``prompt`` ``turns`` times, applying per-turn settings (and stepping the segment index when
    ``segments`` is given); returns what each turn reported. A cached node's report is printed only when it
    changed since the previous turn; reports come in pipeline order."""
    reports = []
    order = pipeline_order(prompt)
    banks = bank_names(prompt)
    shown: dict[str, list[str]] = {}
    for turn in range(turns):
        turn_prompt = json.loads(json.dumps(prompt))
        changes = []
        for node_id, name, values in settings:
            value = values[turn % len(values)]
            graph.set_input(turn_prompt, node_id, name, value)
            changes.append(f"{node_title(turn_prompt, node_id)}.{name}={value}")
        if segments is not None:
            index = (segments.start + turn) % segments.count
            graph.set_input(turn_prompt, segments.node_id, "index", index)
            changes.append(f"segment {index + 1} of {segments.count}")
        if vary_seed:
            vary_seeds(turn_prompt, turn)
        for bank in banks:
            size = bank_size(client, bank)
            if size is not None:
                changes.append(f"bank {bank!r}: its turn {size + 1}")
        out(f"=== turn {turn + 1}/{turns}" + (f" ({', '.join(changes)})" if changes else ""))
        result = client.run(turn_prompt, timeout=timeout, on_message=progress_printer(turn_prompt, out))
        report = TurnReport(turn + 1, result.prompt_id, result.seconds)
        cached = {n for kind, data in result.messages if kind == "execution_cached" for n in data.get("nodes", [])}
        for node_id in [i for i in order if i in result.outputs] + [i for i in result.outputs if i not in order]:
            texts = [t for t in result.outputs[node_id].get("text", []) if isinstance(t, str)]
            if not texts:
                continue
            label = f"{node_title(turn_prompt, node_id)} (#{node_id})"
            report.node_texts[label] = texts
            if node_id in cached and shown.get(node_id) == texts:
                continue  # a cached node says what it said last turn
            shown[node_id] = texts
            out(f"  {label}:")
            for text in texts:
                out("    " + text.replace("\n", "\n    "))
        report.files = result.output_files()
        for path in result.output_files(only="output"):  # saved files; previews in temp/ are not listed
            out(f"  output: {path}")
        out(f"  turn {turn + 1} done in {result.seconds:.1f} s")
        reports.append(report)
    return reports


def vary_seeds(prompt: dict, turn: int) -> None:
    """Seed + turn on every sampler seed: a literal seed widget, or the primitive a linked seed comes from. A negative
    seed means "not set" (Bank Add's -1: record what the sampler used) and stays."""
    sources = set()
    for node in prompt.values():
        for name in SEED_INPUTS & node["inputs"].keys():
            value = node["inputs"][name]
            if graph_link(value):
                sources.add(value[0])
            elif isinstance(value, int) and value >= 0:
                node["inputs"][name] = value + turn
    for node_id in sources:
        node = prompt.get(node_id, {})
        value = node.get("inputs", {}).get("value")
        if node.get("class_type") in ("PrimitiveInt", "PrimitiveNode") and isinstance(value, int) and value >= 0:
            node["inputs"]["value"] = value + turn


def node_title(prompt: dict, node_id: str) -> str:
    node = prompt[node_id]
    return node.get("_meta", {}).get("title") or node["class_type"]


def progress_printer(prompt: dict, out: Callable[[str], None]) -> Callable[[str, dict], None]:
    def on_message(kind: str, data: dict) -> None:
        if kind == "executing" and data.get("node") in prompt:
            out(f"  running {node_title(prompt, data['node'])} (#{data['node']})")
        elif kind == "progress" and data.get("value") in (1, data.get("max")) or (
                kind == "progress" and data.get("max", 0) >= 10 and data.get("value", 0) % max(1, data["max"] // 5) == 0):
            out(f"    step {data['value']}/{data['max']}")
        elif kind == "execution_cached" and data.get("nodes"):
            out(f"  cached: {len(data['nodes'])} nodes reused from the previous turn")
    return on_message


def demo_asset_cache(comfyui: Path) -> Path:
    return Path.home() / ".cache" / "memv2v" / "demo-assets" / comfy_host.comfyui_version(comfyui)


def _expected_assets(cache: Path, kinds: tuple[str, ...]) -> dict[str, Path]:
    """The files the demo builders write for ``kinds`` (names from the builders; checkpoints by their stem)."""
    from .demo import clip_vision as demo_clip_vision

    files = {"dit": demo_models.WAN21_DIT, "vae": demo_models.WAN21_VAE, "video": demo_models.DEMO_VIDEO}
    files.update({kind: demo_models.EDIT_BUILDERS[kind][0] for kind in kinds if kind in demo_models.EDIT_BUILDERS})
    if "dinov2" in kinds:
        files.update(dinov2=demo_clip_vision.DINOV2, dinov2_other=demo_clip_vision.DINOV2_OTHER)
    for name in ("recammaster", "memoryv2v"):  # memv2v_cli.demo.checkpoints (imports torch, so not imported here)
        for ext in ("safetensors", "ckpt"):
            files[f"{name}_{ext}"] = f"memv2v_demo_{name}_tiny_v{demo_models.BUILDER_VERSION}.{ext}"
    return {kind: cache / name for kind, name in files.items()}


def demo_assets(comfyui: Path, kinds: tuple[str, ...], out: Callable[[str], None]) -> dict[str, str]:
    """The demo models, clip and checkpoints for ``kinds`` (optional assets, see ``rewrite.needed_kinds``), built
    with ComfyUI's classes the first time and reused from the cache afterwards."""
    cache = demo_asset_cache(comfyui)
    expected = _expected_assets(cache, kinds)
    missing = [kind for kind, path in expected.items() if not path.is_file()]
    if not missing:
        return {kind: str(path) for kind, path in expected.items()}
    out(f"building demo models in {cache} (first run only): {', '.join(missing)}")
    model_kinds = [k for k in kinds if k in demo_models.EDIT_BUILDERS]
    assets = demo_setup.build_assets("demo.models", comfyui, cache, *[a for k in model_kinds for a in ("--with", k)])
    assets.update(demo_setup.build_assets("demo.checkpoints", comfyui, cache))
    if "dinov2" in kinds:
        assets.update(demo_setup.build_assets("demo.clip_vision", comfyui, cache))
    return assets


def prepare_demo_server(comfyui: Path, base_dir: Path, out: Callable[[str], None], kinds: tuple[str, ...] | None = None,
                        rewrite_prompts: bool = False) -> tuple[comfy_host.ComfyServer, dict]:
    """A private ComfyUI with this pack, the demo pack and the demo models (built once, cached). ``kinds``: the
    optional assets (default: the story models, plus whatever optional asset is already cached). With
    ``rewrite_prompts`` the demo pack rewrites every prompt queued on ``/prompt`` into its demo form (the browser's
    templates then run on the demo models)."""
    if not Path(base_dir).exists() or not any(Path(base_dir).iterdir()):  # a folder the demo made, not the user's
        mark_demo_folder(Path(base_dir))
    if kinds is None:
        cache = demo_asset_cache(comfyui)
        optional = rewrite.EDIT_KINDS + tuple(demo_models.EDIT_BUILDERS)
        kinds = tuple(dict.fromkeys(rewrite.STORY_KINDS + tuple(
            k for k, p in _expected_assets(cache, optional).items() if k in optional and p.is_file())))
    assets = demo_assets(comfyui, tuple(dict.fromkeys(rewrite.STORY_KINDS + tuple(kinds))), out)
    dits = [k for k in ("dit", "i2v_high", "i2v_low", "lucy_dit", "recammaster_ckpt", "recammaster_safetensors",
                        "memoryv2v_ckpt", "memoryv2v_safetensors") if k in assets]
    env = {}
    if rewrite_prompts:
        Path(base_dir).mkdir(parents=True, exist_ok=True)
        manifest = Path(base_dir) / "memv2v_demo_assets.json"
        manifest.write_text(json.dumps(assets, indent=1))
        env["MEMV2V_DEMO_REWRITE"] = str(manifest)
    # PyTorch's attention on the CPU is deterministic; ComfyUI's default there chunks by free memory at call time,
    # so a turn replayed later (python -m memv2v_cli replay) could differ in the last bits.
    server = demo_setup.private_server(comfyui, base_dir, assets, tuple(dits),
                                       extra_args=("--use-pytorch-cross-attention",))
    server.env.update(env)
    server.add_model("loras", Path(assets["storymem_lora"]))
    if "wan22_vae" in assets:
        server.add_model("vae", Path(assets["wan22_vae"]))
    for kind in ("dinov2", "dinov2_other"):
        if kind in assets:
            server.add_model("clip_vision", Path(assets[kind]))
    return server, assets


@dataclass
class Session:
    """A ComfyUI ready for a workflow: the client, the workflow's API prompt (demo-adapted in demo mode) and the
    server's output folder when it is on this machine (None for ``--url``)."""

    client: comfy_host.ComfyClient
    prompt: dict
    output_dir: Path | None
    demo: bool = False


def demo_base_dir(args, workflow: Path) -> Path:
    """``--base-dir``, else a persistent folder per workflow under ``demo_home()``, so a second run continues the
    same bank; ``--fresh`` empties its banks first."""
    base = Path(args.base_dir).expanduser() if getattr(args, "base_dir", None) else demo_home() / workflow.stem
    if getattr(args, "fresh", False):
        empty_demo_banks(base)
    return base


DEMO_MARKER = "memv2v_demo_folder"


def empty_demo_banks(base: Path) -> None:
    """``--fresh``: delete the banks of a demo folder, never of anything else (a ``--base-dir`` pointing at a real
    ComfyUI must not lose its banks): only under ``demo_home()`` or in a folder a demo run marked as its own."""
    banks = base / "output" / "memory_banks"
    if not banks.is_dir():
        return
    resolved = base.resolve()
    if not (resolved.is_relative_to(demo_home().resolve()) or (base / DEMO_MARKER).is_file()):
        raise UserError(f"--fresh: {base} is not a demo folder (no {DEMO_MARKER} file in it, not under "
                        f"{demo_home()}), so its banks are left alone. Drop --fresh, or point --base-dir at a demo "
                        "folder.")
    shutil.rmtree(banks)


def mark_demo_folder(base: Path) -> None:
    """Mark ``base`` as a demo run's own folder (what ``--fresh`` may empty)."""
    base.mkdir(parents=True, exist_ok=True)
    (base / DEMO_MARKER).write_text("made by python -m memv2v_cli in demo mode; --fresh may empty its banks\n")


@contextmanager
def open_session(workflow: Path, args, out: Callable[[str], None] = print) -> Iterator[Session]:
    """The ComfyUI a command runs on: ``--url``, else the user's installation with its models, else demo mode."""
    if args.url:
        if args.demo:
            raise UserError("--demo starts its own private ComfyUI with tiny models; it cannot be combined with --url")
        if getattr(args, "fresh", False):
            raise UserError("--fresh empties a demo bank; with --url, start over with another bank name instead "
                            "(--set \"Memory Bank.name=...\")")
        client = comfy_host.ComfyClient(args.url)
        object_info = client.object_info()
        prompt = load_api_prompt(workflow, object_info)
        missing = missing_models(prompt, object_info)
        if missing:
            raise UserError(f"the server at {args.url} lacks these models: {', '.join(missing)}. "
                            "Put them in ComfyUI's models folders (see the README), or run with --demo.")
        yield Session(client, prompt, None)
        return

    comfyui, where = comfy_host.find_comfyui(args.comfyui)
    if comfyui is None:
        raise UserError(where)
    out(where)
    if not args.demo and pack_installed(comfyui):
        server = comfy_host.ComfyServer(comfyui, comfyui,
                                        log_path=Path(tempfile.mkdtemp(prefix="memv2v-run-")) / "comfyui.log")
        out(f"starting ComfyUI on {server.url} (log: {server.log_path})")
        with server:
            client = server.client()
            object_info = client.object_info()
            prompt = load_api_prompt(workflow, object_info)
            missing = missing_models(prompt, object_info)
            if not missing:
                if getattr(args, "fresh", False):
                    raise UserError("--fresh empties demo banks only; your own banks are never deleted: start over "
                                    "with another bank name (--set \"Memory Bank.name=...\")")
                yield Session(client, prompt, server.output_dir)
                out(f"outputs are under {server.output_dir}")
                return
            out(f"no models for this workflow ({', '.join(missing)}): switching to demo mode. "
                "Put the models in ComfyUI's models folders (see the README) to get real results.")
    elif not args.demo:
        out(f"this pack is not installed in {comfyui / 'custom_nodes'}, so that ComfyUI cannot run the workflow: "
            "switching to demo mode")
    base_dir = demo_base_dir(args, workflow)
    server, assets = prepare_demo_server(comfyui, base_dir, out, rewrite.needed_kinds(workflow.read_text()))
    out(BANNER)
    out(f"starting a private ComfyUI on {server.url} (demo folder {server.base_dir}; a later run continues its "
        "banks, --fresh starts them over)")
    with server:
        client = server.client()
        yield Session(client, to_demo(load_api_prompt(workflow, client.object_info()), assets), server.output_dir,
                      demo=True)
    out(f"outputs are under {server.output_dir}")
    out(BANNER)


def run(args, out: Callable[[str], None] = print) -> int:
    """The ``run`` command (see ``python -m memv2v_cli run --help``)."""
    workflow = resolve_workflow(args.workflow)
    if args.turns is not None and args.turns < 1:
        raise UserError("--turns must be at least 1")
    with open_session(workflow, args, out) as session:
        settings = parse_settings(args.set, session.prompt)
        segments = segment_plan(session.client, session.prompt, settings)
        turns = args.turns or (segments.count if segments else 1)
        if segments:
            out(f"the source has {segments.count} segments: {turns} turn(s), one segment each, from segment "
                f"{segments.start + 1}")
        reports = run_turns(session.client, session.prompt, turns, settings, vary_seed=not args.fixed_seed, out=out,
                            segments=segments)
    return _report(reports, out)


def pack_installed(comfyui: Path) -> bool:
    """Whether a folder in ``custom_nodes`` is this pack (the same files, linked or copied)."""
    for folder in (comfyui / "custom_nodes").iterdir() if (comfyui / "custom_nodes").is_dir() else ():
        if folder.resolve() == comfy_host.PACK_ROOT:
            return True
        marker = folder / "memv2v_core" / "__init__.py"
        if marker.is_file() and (folder / "nodes").is_dir():
            return True
    return False


def serve_demo(args, out: Callable[[str], None] = print) -> int:
    """The ``demo-server`` command: a private ComfyUI with every demo model, whose ``/prompt`` rewrites each queued
    graph into its demo form, so the shipped templates run from the browser. Runs until Ctrl-C."""
    import signal
    import time

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a service manager's stop ends the private ComfyUI too
    comfyui, where = comfy_host.find_comfyui(args.comfyui)
    if comfyui is None:
        raise UserError(where)
    out(where)
    base_dir = Path(args.base_dir).expanduser() if args.base_dir else demo_home() / "ui"
    if args.fresh:
        empty_demo_banks(base_dir)
    kinds = rewrite.EDIT_KINDS + rewrite.STORY_KINDS
    server, _ = prepare_demo_server(comfyui, base_dir, out, kinds, rewrite_prompts=True)
    if args.port:
        server.port = args.port
    out(BANNER)
    with server:
        out(f"demo ComfyUI at {server.url} (demo folder {server.base_dir}). Open it in a browser, then Workflow > "
            "Browse Templates > memory-v2v: every template runs here on the demo models (each queued graph is "
            "rewritten: tiny models, demo text conditioning, the demo clip, 32 px, 3 steps). Ctrl-C stops it.")
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            out("stopping the demo ComfyUI")
            return 0
    out(f"the demo ComfyUI stopped by itself; its log: {server.log_path}")
    return 1


def _report(reports: list[TurnReport], out: Callable[[str], None]) -> int:
    out(f"{len(reports)} turn(s) finished: " + ", ".join(f"turn {r.turn} {r.seconds:.1f} s" for r in reports))
    return 0
