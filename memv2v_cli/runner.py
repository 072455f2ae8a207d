"""Headless runner: queue a shipped workflow on ComfyUI for one or more turns and report what happened.

Per turn it prints progress, what each Memory-V2V node reported (retrieval scores, bank summaries) and the files written.
Without the workflow's models it switches to a clearly labelled demo mode: tiny random models on a private ComfyUI,
so the whole pipeline can be seen working on a CPU in seconds. Demo outputs are noise.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from . import graph
from .demo import setup as demo_setup
from .host import comfy_host

logger = logging.getLogger(__name__)

WORKFLOWS_DIR = comfy_host.PACK_ROOT / "workflows"
DEFAULT_WORKFLOW = "memv2v_multiturn_nvs"

# Inputs that name model files; a value missing from the server's list means the user has not got that model.
MODEL_INPUTS = {"unet_name", "vae_name", "clip_name", "clip_name1", "clip_name2", "ckpt_name", "lora_name",
                "checkpoint", "model_name", "clip_vision_name"}
SEED_INPUTS = {"seed", "noise_seed"}

# Demo mode: small sizes and few steps, so a CPU finishes a turn in seconds.
DEMO_SIZES = {
    "EmptyHunyuanLatentVideo": {"width": 32, "height": 32, "length": 5},
    "ImageScale": {"width": 32, "height": 32},
    "KSampler": {"steps": 3},
    "KSamplerAdvanced": {"steps": 3},
    "BasicScheduler": {"steps": 3},
    "ImageFromBatch": {"length": 5},
    "MemV2V_CameraPreset": {"frames": 5},
}
# Demo stories: 16x16 px, 17 frames, 3 steps (1 on the high-noise expert), the tiny LoRA's rank.
DEMO_STORY_VALUES = {"Steps": 3, "Expert Switch Step": 1}
STORY_ASSETS = ("--with", "i2v_high", "--with", "i2v_low", "--with", "storymem_lora")
STORYMEM_DEMO_RANK = 4
DEMO_EMBEDDER = "(fallback) colour histogram - no weights, not an image encoder"
# The demo video lives in this folder of the demo asset cache, and the tiny ReCamMaster-layout checkpoint next to it.
DEMO_CAMERA_CHECKPOINT = "recammaster_ckpt"
BANNER = ("DEMO MODE: tiny randomly initialised models on a private ComfyUI; the pictures are noise by design. "
          "Install the workflow's models to get real results.")


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
    raise FileNotFoundError(f"workflow {name!r} not found; shipped workflows: {', '.join(shipped) or 'none'}; "
                            "or give a path to a workflow .json file")


def load_api_prompt(path: Path, object_info: dict) -> dict:
    """Read a UI-format (what the ComfyUI frontend saves) or API-format workflow and return the API prompt."""
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        return graph.ui_to_api(data, object_info)
    if isinstance(data, dict) and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return data
    raise ValueError(f"{path} is neither a ComfyUI UI workflow nor an API prompt")


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


def to_demo(prompt: dict, assets: dict[str, str]) -> dict:
    """Swap real models for the demo ones, text encoders for demo conditioning, and shrink sizes and steps."""
    prompt = json.loads(json.dumps(prompt))
    # A graph that loads camera modules needs a DiT with them: the tiny ReCamMaster-layout checkpoint feeds both.
    camera_ckpt = assets.get(DEMO_CAMERA_CHECKPOINT)
    with_modules = camera_ckpt is not None and any(n["class_type"] == "MemV2V_LoadModules" for n in prompt.values())
    for node_id, node in list(prompt.items()):
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "UNETLoader":
            dit = camera_ckpt if with_modules else assets["dit"]
            inputs.update(unet_name=Path(dit).name, weight_dtype="default")
        elif kind == "MemV2V_LoadModules" and camera_ckpt is not None:
            inputs["checkpoint"] = Path(camera_ckpt).name
        elif kind == "VAELoader":
            inputs["vae_name"] = Path(assets["vae"]).name
        elif kind == "CLIPTextEncode":
            prompt[node_id] = {"class_type": "MemV2VDemo_TextConditioning", "_meta": node.get("_meta", {}),
                               "inputs": {"text": inputs.get("text", ""), "tokens": 16}}
        elif kind == "LoadVideo":
            inputs["file"] = Path(assets["video"]).name
        for name, value in DEMO_SIZES.get(kind, {}).items():
            if name in inputs and not graph_link(inputs[name]):
                inputs[name] = min(inputs[name], value) if name == "steps" else value
    used = {ref[0] for node in prompt.values() for ref in node["inputs"].values() if graph_link(ref)}
    for node_id in [i for i, n in prompt.items() if n["class_type"] == "CLIPLoader" and i not in used]:
        del prompt[node_id]
    if any(n["class_type"] == "MemV2V_StoryConditioning" for n in prompt.values()):
        _story_to_demo(prompt, assets)
    return prompt


def _story_to_demo(prompt: dict, assets: dict[str, str]) -> None:
    """The story workflow's parts demo mode must swap besides the generic ones: the two Wan 2.2 I2V experts and the
    StoryMem LoRA for their tiny layouts, CLIP Vision for the colour-histogram fallback (no test-sized CLIP exists),
    and the titled step counts."""
    for node_id, node in list(prompt.items()):
        kind, inputs, title = node["class_type"], node["inputs"], node.get("_meta", {}).get("title", "")
        if kind == "UNETLoader":
            expert = assets["i2v_low"] if "low" in title.lower() else assets["i2v_high"]
            inputs.update(unet_name=Path(expert).name, weight_dtype="default")
        elif kind == "MemV2V_StoryMemLoraLoader":
            inputs.update(lora_name=Path(assets["storymem_lora"]).name, rank=STORYMEM_DEMO_RANK,
                          alpha=float(STORYMEM_DEMO_RANK))
        elif kind == "CLIPVisionLoader":
            prompt[node_id] = {"class_type": "MemV2V_EmbedderLoad", "_meta": {"title": "Demo: colour histogram"},
                               "inputs": {"file": DEMO_EMBEDDER, "architecture": "ViT-B-32"}}
        elif kind == "PrimitiveInt" and title in DEMO_STORY_VALUES:
            inputs["value"] = DEMO_STORY_VALUES[title]
        elif kind == "MemV2V_StoryConditioning":
            inputs.update(width=16, height=16, length=17)
        elif kind == "ImageFromBatch" and graph_link(inputs.get("batch_index")):
            inputs["length"] = 4096  # drops the condition frames only: the rest of the shot stays
    vision = {i for i, n in prompt.items() if n["class_type"] == "MemV2V_EmbedderLoad"}
    for node in prompt.values():
        link = node["inputs"].get("clip_vision")
        if graph_link(link) and link[0] in vision:
            node["inputs"]["embedder"] = node["inputs"].pop("clip_vision")


def graph_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def parse_settings(settings: list[str], prompt: dict) -> list[tuple[str, str, list[Any]]]:
    """``--set 'NODE.input=v1,v2'`` (NODE: a node id or title) -> [(node_id, input, [values per turn])]."""
    parsed = []
    for setting in settings:
        target, _, values = setting.partition("=")
        node_ref, _, input_name = target.rpartition(".")
        if not node_ref or not input_name or not values:
            raise ValueError(f"--set {setting!r}: expected NODE.input=value[,value...] (NODE: node id or title)")
        ids = [node_ref] if node_ref in prompt else graph.find_nodes(prompt, title=node_ref)
        if len(ids) != 1:
            raise ValueError(f"--set {setting!r}: {'no' if not ids else len(ids)} nodes match {node_ref!r}; "
                             "use a node id or a unique title")
        parsed.append((ids[0], input_name, [_literal(v) for v in values.split(",")]))
    return parsed


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_turns(client: comfy_host.ComfyClient, prompt: dict, turns: int, settings, *, vary_seed: bool = True,
              out: Callable[[str], None] = print, timeout: float = 3600) -> list[TurnReport]:
    """Queue ``prompt`` ``turns`` times, applying per-turn settings; returns what each turn reported."""
    reports = []
    for turn in range(turns):
        turn_prompt = json.loads(json.dumps(prompt))
        changes = []
        for node_id, name, values in settings:
            value = values[turn % len(values)]
            graph.set_input(turn_prompt, node_id, name, value)
            changes.append(f"{node_title(turn_prompt, node_id)}.{name}={value}")
        if vary_seed:
            for node_id, node in turn_prompt.items():
                for name in SEED_INPUTS & node["inputs"].keys():
                    if not graph_link(node["inputs"][name]):
                        node["inputs"][name] += turn
        out(f"=== turn {turn + 1}/{turns}" + (f" ({', '.join(changes)})" if changes else ""))
        result = client.run(turn_prompt, timeout=timeout, on_message=progress_printer(turn_prompt, out))
        report = TurnReport(turn + 1, result.prompt_id, result.seconds)
        for node_id, ui in result.outputs.items():
            texts = [t for t in ui.get("text", []) if isinstance(t, str)]
            if texts:
                report.node_texts[f"{node_title(turn_prompt, node_id)} (#{node_id})"] = texts
        report.files = result.output_files()
        for label, texts in report.node_texts.items():
            out(f"  {label}:")
            for text in texts:
                out("    " + text.replace("\n", "\n    "))
        for path in report.files:
            out(f"  output: {path}")
        out(f"  turn {turn + 1} done in {result.seconds:.1f} s")
        reports.append(report)
    return reports


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


def prepare_demo_server(comfyui: Path, base_dir: Path, out: Callable[[str], None]) -> tuple[comfy_host.ComfyServer, dict]:
    """A private ComfyUI with this pack, the demo pack, the demo models and checkpoints (built once, cached)."""
    cache = Path.home() / ".cache" / "memv2v" / "demo-assets" / comfy_host.comfyui_version(comfyui)
    out(f"building demo models in {cache} (first run only)")
    assets = demo_setup.build_assets("demo.models", comfyui, cache, *STORY_ASSETS)
    assets.update(demo_setup.build_assets("demo.checkpoints", comfyui, cache))
    checkpoints = ("recammaster_ckpt", "recammaster_safetensors", "memoryv2v_ckpt", "memoryv2v_safetensors")
    # PyTorch's attention on the CPU is deterministic; ComfyUI's default there chunks by free memory at call time,
    # so a turn replayed later (python -m memv2v_cli replay) could differ in the last bits.
    server = demo_setup.private_server(comfyui, base_dir, assets, ("dit", "i2v_high", "i2v_low", *checkpoints),
                                       extra_args=("--use-pytorch-cross-attention",))
    server.add_model("loras", Path(assets["storymem_lora"]))
    return server, assets


@dataclass
class Session:
    """A ComfyUI ready for a workflow: the client, the workflow's API prompt (demo-adapted in demo mode) and the
    server's output folder when it is on this machine (None for ``--url``)."""

    client: comfy_host.ComfyClient
    prompt: dict
    output_dir: Path | None
    demo: bool = False


@contextmanager
def open_session(workflow: Path, args, out: Callable[[str], None] = print) -> Iterator[Session]:
    """The ComfyUI a command runs on: ``--url``, else the user's installation with its models, else demo mode."""
    if args.url:
        if args.demo:
            raise SystemExit("--demo starts its own private ComfyUI with tiny models; it cannot be combined with --url")
        client = comfy_host.ComfyClient(args.url)
        object_info = client.object_info()
        prompt = load_api_prompt(workflow, object_info)
        missing = missing_models(prompt, object_info)
        if missing:
            raise SystemExit(f"the server at {args.url} lacks these models: {', '.join(missing)}. "
                             "Put them in ComfyUI's models folders (see the README), or run with --demo.")
        yield Session(client, prompt, None)
        return

    comfyui, where = comfy_host.find_comfyui(args.comfyui)
    if comfyui is None:
        raise SystemExit(where)
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
                yield Session(client, prompt, server.output_dir)
                out(f"outputs are under {server.output_dir}")
                return
            out(f"no models for this workflow ({', '.join(missing)}): switching to demo mode. "
                "Put the models in ComfyUI's models folders (see the README) to get real results.")
    elif not args.demo:
        out(f"this pack is not installed in {comfyui / 'custom_nodes'}, so that ComfyUI cannot run the workflow: "
            "switching to demo mode (install the pack there to use your own models)")
    base_dir = Path(args.base_dir) if args.base_dir else Path(tempfile.mkdtemp(prefix="memv2v-demo-"))
    server, assets = prepare_demo_server(comfyui, base_dir, out)
    out(BANNER)
    out(f"starting a private ComfyUI on {server.url} (base directory {server.base_dir})")
    with server:
        client = server.client()
        yield Session(client, to_demo(load_api_prompt(workflow, client.object_info()), assets), server.output_dir,
                      demo=True)
    out(f"outputs are under {server.output_dir}")
    out(BANNER)


def run(args, out: Callable[[str], None] = print) -> int:
    """The ``run`` command (see ``python -m memv2v_cli run --help``)."""
    workflow = resolve_workflow(args.workflow)
    with open_session(workflow, args, out) as session:
        reports = run_turns(session.client, session.prompt, args.turns, parse_settings(args.set, session.prompt),
                            vary_seed=not args.fixed_seed, out=out)
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


def _report(reports: list[TurnReport], out: Callable[[str], None]) -> int:
    out(f"{len(reports)} turn(s) finished: " + ", ".join(f"turn {r.turn} {r.seconds:.1f} s" for r in reports))
    return 0
