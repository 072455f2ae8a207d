"""What produced a bank entry, read from the exact API prompt ComfyUI ran (a node's hidden PROMPT input).

From Bank Add's ``samples`` input the walk goes back along LATENT inputs to the sampler node(s) that made the latent
(KSampler, KSamplerAdvanced chains, SamplerCustom, SamplerCustomAdvanced, MemV2V_MergedDiTSampler) and reads their
seed and settings and the positive prompt text, resolving links to primitive nodes (PrimitiveInt,
PrimitiveStringMultiline, ...). Model files are listed from every loader upstream of Bank Add. Plain dicts in and
out: no ComfyUI import; the node passes the host's input types so the walk follows typed sockets.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

InputTypes = Callable[[str], dict[str, str] | None]  # class_type -> {input name: socket type}, None if unknown

# Sampler node -> (its settings inputs, the input its seed lives in); their "latent_image" leads to earlier stages.
KSAMPLER_SETTINGS = ("steps", "cfg", "sampler_name", "scheduler", "denoise")
SAMPLERS = {
    "KSampler": (KSAMPLER_SETTINGS, "seed"),
    "MemV2V_MergedDiTSampler": (KSAMPLER_SETTINGS, "seed"),
    "MemV2V_LongVideoEdit": (KSAMPLER_SETTINGS, "seed"),  # samples inside: see sampler_node_provenance
    "KSamplerAdvanced": (("add_noise", "steps", "cfg", "sampler_name", "scheduler", "start_at_step", "end_at_step",
                          "return_with_leftover_noise"), "noise_seed"),
    "SamplerCustom": (("add_noise", "cfg"), "noise_seed"),
    "SamplerCustomAdvanced": ((), None),
}
PRIMITIVES = {"PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean"}
# Inputs naming model files (as the runner's MODEL_INPUTS, plus the pack's own loaders' names).
MODEL_FILE_INPUTS = ("unet_name", "ckpt_name", "vae_name", "clip_name", "clip_name1", "clip_name2", "clip_name3",
                     "lora_name", "checkpoint", "clip_vision_name", "model_name", "control_net_name",
                     "style_model_name", "audio_encoder_name")
STRENGTH_INPUTS = ("strength", "strength_model", "strength_clip")
TEXT_INPUTS = ("text", "prompt", "text_g", "text_l", "t5xxl", "clip_l")
# Fallbacks when the host's input types are unknown.
LATENT_NAMES = ("samples", "latent", "latent_image", "samples1", "samples2", "samples_to", "samples_from")
CONDITIONING_NAMES = ("positive", "conditioning", "conditioning_to", "conditioning_from", "conditioning_1",
                      "conditioning_2", "cond", "cond1")
MAX_NODES = 10_000  # a walk visits each node once; a prompt larger than this is not a real workflow


class Unresolved:
    """A value behind a link the walk cannot evaluate (a node other than a primitive computes it)."""

    def __init__(self, node: str, class_type: str):
        self.node, self.class_type = node, class_type

    def __repr__(self) -> str:
        return f"<output of node {self.node} ({self.class_type})>"


@dataclass(frozen=True)
class RunProvenance:
    """What the graph used: ``seed`` and ``prompt`` as the first noise-adding sampler saw them, every sampler stage
    in run order (``sampler["stages"]``), the model files loaded upstream, and ``notes`` on what stayed unknown."""

    seed: int | None = None
    prompt: str | None = None
    sampler: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and type(value[1]) is int)


def _node(prompt: dict, node_id: str) -> dict | None:
    node = prompt.get(node_id)
    return node if isinstance(node, dict) and isinstance(node.get("inputs", {}), dict) else None


def _inputs(node: dict) -> dict:
    return node.get("inputs") or {}


def resolve(prompt: dict, value: Any, depth: int = 0) -> Any:
    """A widget value, following links to primitive nodes (their ``value``) or to nodes with a single widget;
    ``Unresolved`` when a link leads elsewhere."""
    if not is_link(value):
        return value
    node = _node(prompt, value[0])
    if node is None or depth > 32:
        return Unresolved(value[0], node.get("class_type", "?") if node else "missing")
    inputs = _inputs(node)
    if "value" in inputs and (node.get("class_type") in PRIMITIVES or len(inputs) == 1):
        return resolve(prompt, inputs["value"], depth + 1)
    widgets = [v for v in inputs.values() if not is_link(v)]
    if len(inputs) == 1 and len(widgets) == 1:
        return widgets[0]
    return Unresolved(value[0], str(node.get("class_type")))


class _Walk:
    def __init__(self, prompt: dict, input_types: InputTypes | None):
        self.prompt, self.input_types, self.notes = prompt, input_types, []
        self._types: dict[str, dict[str, str] | None] = {}

    def types(self, class_type: str) -> dict[str, str] | None:
        if class_type not in self._types:
            try:
                self._types[class_type] = self.input_types(class_type) if self.input_types else None
            except Exception:  # noqa: BLE001 - an unknown or broken node class: fall back to input names
                self._types[class_type] = None
        return self._types[class_type]

    def typed_links(self, node: dict, socket: str, fallback: tuple[str, ...], exclude: str = "") -> list[str]:
        """Node ids behind the node's inputs of ``socket`` type (by name when the type is unknown)."""
        types = self.types(str(node.get("class_type")))
        found = []
        for name, value in _inputs(node).items():
            if not is_link(value) or (exclude and exclude in name):
                continue
            if (types.get(name) == socket) if types else name in fallback:
                found.append(value[0])
        return found

    def value(self, node_id: str, node: dict, name: str, where: str) -> Any:
        value = resolve(self.prompt, _inputs(node).get(name))
        if isinstance(value, Unresolved):
            self.notes.append(f"{where}: {name} comes from {value!r}, which is computed at run time; not recorded")
            return None
        return value

    def bfs(self, starts: list[str], neighbours: Callable[[str, dict], list[str]]):
        """(node id, node) breadth-first from ``starts``, each once."""
        queue, seen = deque(starts), set()
        while queue and len(seen) < MAX_NODES:
            node_id = queue.popleft()
            node = _node(self.prompt, node_id)
            if node_id in seen or node is None:
                continue
            seen.add(node_id)
            yield node_id, node
            queue.extend(neighbours(node_id, node))


def run_provenance(prompt: dict, node_id: str, input_name: str = "samples",
                   input_types: InputTypes | None = None) -> RunProvenance:
    """What produced the latent at ``prompt[node_id]``'s ``input_name`` (see the module docstring)."""
    walk = _Walk(prompt, input_types)
    own = _node(prompt, node_id) if isinstance(prompt, dict) else None
    if own is None:
        return RunProvenance(notes=[f"node {node_id} is not in the queued prompt (made by a node expansion or a "
                                    "subgraph?); seed, prompt and sampler settings were not read from the graph"])
    start = _inputs(own).get(input_name)
    stages: list[dict] = []
    positives: list[str] = []
    if is_link(start):
        def latent_inputs(current: str, node: dict) -> list[str]:
            if node.get("class_type") in SAMPLERS:
                link = _inputs(node).get("latent_image")
                return [link[0]] if is_link(link) else []
            return walk.typed_links(node, "LATENT", LATENT_NAMES)
        found = [(i, n) for i, n in walk.bfs([start[0]], latent_inputs) if n.get("class_type") in SAMPLERS]
        for sampler_id, node in reversed(found):  # run order: the first stage first
            stage, positive = _stage(walk, sampler_id, node)
            stages.append(stage)
            if positive is not None:
                positives.append(positive)
    else:
        walk.notes.append(f"input {input_name} of node {node_id} is not linked")
    if not stages:
        walk.notes.append("no sampler node found upstream of the latent (KSampler, KSamplerAdvanced, SamplerCustom, "
                          "SamplerCustomAdvanced, MemV2V_MergedDiTSampler); seed and sampler were not read")
    noisy = [s for s in stages if s.get("add_noise", True) not in (False, "disable")]
    seed = next((s.get("seed") for s in noisy or stages), None)
    texts = [t for t in dict.fromkeys(positives) if t]
    return RunProvenance(seed=seed if type(seed) is int else None, prompt="\n".join(texts) if texts else None,
                         sampler={"stages": stages} if stages else {}, models=_models(walk, node_id),
                         notes=list(dict.fromkeys(walk.notes)))


def sampler_node_provenance(prompt: dict, node_id: str, input_types: InputTypes | None = None) -> RunProvenance:
    """Like :func:`run_provenance` for a node that samples inside itself (the long-edit loop): its own settings
    are the one sampler stage, with the positive prompt text and the model files upstream of it."""
    walk = _Walk(prompt, input_types)
    node = _node(prompt, node_id) if isinstance(prompt, dict) else None
    if node is None or node.get("class_type") not in SAMPLERS:
        return RunProvenance(notes=[f"node {node_id} is not a sampler node of the queued prompt; seed, prompt and "
                                    "sampler settings were not read from the graph"])
    stage, positive = _stage(walk, node_id, node)
    seed = stage.get("seed")
    return RunProvenance(seed=seed if type(seed) is int else None, prompt=positive, sampler={"stages": [stage]},
                         models=_models(walk, node_id), notes=list(dict.fromkeys(walk.notes)))


def _stage(walk: _Walk, node_id: str, node: dict) -> tuple[dict, str | None]:
    """One sampler's settings, and the positive prompt text it was conditioned on."""
    kind = node["class_type"]
    where = f"sampler node {node_id} ({kind})"
    settings, seed_input = SAMPLERS[kind]
    stage: dict[str, Any] = {"node": node_id, "class_type": kind}
    if seed_input:
        stage["seed"] = walk.value(node_id, node, seed_input, where)
    for name in settings:
        if name in _inputs(node):
            stage[name] = walk.value(node_id, node, name, where)
    positive_start = _inputs(node).get("positive")
    if kind in ("SamplerCustom", "SamplerCustomAdvanced"):
        positive_start = _custom_parts(walk, node, stage, where) or positive_start
    text = _positive_text(walk, positive_start, where) if is_link(positive_start) else None
    return stage, text


def _custom_parts(walk: _Walk, node: dict, stage: dict, where: str) -> list | None:
    """SamplerCustom(Advanced)'s noise, guider, sampler and sigmas nodes; returns the guider's positive link."""
    positive = None
    for part in ("noise", "guider", "sampler", "sigmas"):
        link = _inputs(node).get(part)
        source = _node(walk.prompt, link[0]) if is_link(link) else None
        if source is None:
            continue
        kind, inputs = source.get("class_type"), _inputs(source)
        here = f"{where}, {part} node {link[0]} ({kind})"
        if part == "noise":
            stage["noise"] = kind
            stage["add_noise"] = kind != "DisableNoise"
            if "noise_seed" in inputs:
                stage["seed"] = walk.value(link[0], source, "noise_seed", here)
        elif part == "guider":
            stage["guider"] = kind
            for name in ("cfg", "cfg_conds", "cfg_cond2_negative"):
                if name in inputs:
                    stage[name] = walk.value(link[0], source, name, here)
            positive = next((inputs[n] for n in ("positive", "conditioning", "cond1") if is_link(inputs.get(n))), None)
        elif part == "sampler":
            stage["sampler_name"] = walk.value(link[0], source, "sampler_name", here) if "sampler_name" in inputs \
                else kind
        else:
            stage["scheduler"] = walk.value(link[0], source, "scheduler", here) if "scheduler" in inputs else kind
            for name in ("steps", "denoise"):
                if name in inputs:
                    stage[name] = walk.value(link[0], source, name, here)
    return positive


def _positive_text(walk: _Walk, start: list, where: str) -> str | None:
    """The text of the encoders on the positive conditioning path (never through a 'negative' input)."""
    texts = []

    def conditioning_inputs(current: str, node: dict) -> list[str]:
        if any(name in _inputs(node) for name in TEXT_INPUTS):
            return []  # a text encoder: the path ends here
        return walk.typed_links(node, "CONDITIONING", CONDITIONING_NAMES, exclude="negative")

    for node_id, node in walk.bfs([start[0]], conditioning_inputs):
        for name in TEXT_INPUTS:
            if name in _inputs(node):
                value = walk.value(node_id, node, name, f"text node {node_id} ({node.get('class_type')}) of {where}")
                if isinstance(value, str):
                    texts.append(value)
                break
    return "\n".join(texts) if texts else None


def _models(walk: _Walk, node_id: str) -> list[dict]:
    """Model files named by every loader upstream of ``node_id``, in node-id order."""
    def all_inputs(current: str, node: dict) -> list[str]:
        return [v[0] for v in _inputs(node).values() if is_link(v)]

    models = []
    for current, node in walk.bfs([node_id], all_inputs):
        inputs = _inputs(node)
        for name in MODEL_FILE_INPUTS:
            file = resolve(walk.prompt, inputs.get(name))
            if isinstance(file, str) and file:
                item = {"node": current, "class_type": node.get("class_type"), "input": name, "file": file}
                for key in STRENGTH_INPUTS:
                    strength = resolve(walk.prompt, inputs.get(key))
                    if isinstance(strength, (int, float)) and not isinstance(strength, bool):
                        item[key] = strength
                models.append(item)
    return sorted(models, key=lambda m: (_id_key(m["node"]), m["input"]))


def _id_key(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)
