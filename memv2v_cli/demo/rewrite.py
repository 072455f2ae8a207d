"""Turn any shipped workflow's API prompt into its demo form: the tiny models, demo text conditioning, small sizes.

Generic by design: nodes are mapped by class type and by the model file they name, never by workflow, so a new
workflow built from the same loaders runs in demo mode without code here. Used by the runner (on its side) and by the
demo node pack inside a demo ComfyUI (on ``/prompt``, so templates queued from the browser run too). Standard library
only: the demo pack imports it inside ComfyUI. The rewrite is idempotent (a demo prompt comes back unchanged), so a
prompt rewritten by the runner may pass the server's rewrite again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Small sizes and few steps, so a CPU finishes a turn in seconds.
DEMO_SIZES = {
    "EmptyHunyuanLatentVideo": {"width": 32, "height": 32, "length": 5},
    "ImageScale": {"width": 32, "height": 32},
    "ImageFromBatch": {"length": 5},
    "MemV2V_CameraPreset": {"frames": 5},
    "MemV2V_StoryConditioning": {"width": 16, "height": 16, "length": 17},
    "MemV2V_LongVideoEdit": {"width": 32, "height": 32},
    # Split / Stitch read VIDEO files resized on the fly where they have width/height (0: the source's size).
    "MemV2V_SplitSegments": {"width": 32, "height": 32},
    "MemV2V_StitchSegments": {"width": 32, "height": 32},
}
DEMO_STEPS = 3
# Segments of the demo clip (17 frames): two segments of 9 frames sharing one frame.
DEMO_SEGMENT = {"segment_length": 9, "overlap": 1}
# A 32 px frame is a 2x2 latent under the Wan 2.2 VAE: every memory kernel must fit it.
WAN22_KERNELS = {"fine_kernel": "1x2x2", "coarse_kernel": "1x2x2", "user_kernel": "1x2x2"}
# Demo stories: the titled step counts of the story workflow, and the tiny LoRA's rank.
DEMO_STORY_VALUES = {"Steps": 3, "Expert Switch Step": 1}
STORYMEM_DEMO_RANK = 4
DEMO_EMBEDDER = "(fallback) colour histogram - no weights, not an image encoder"
EDIT_CLASSES = {"MemV2V_EditConditioning", "MemV2V_LongVideoEdit"}
# Optional demo assets (beyond the Wan 2.1 DiT, VAE and clip) and what in a workflow file asks for them.
EDIT_KINDS = ("lucy_dit", "wan22_vae", "dinov2")
STORY_KINDS = ("i2v_high", "i2v_low", "storymem_lora")


def graph_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def needed_kinds(workflow_text: str) -> tuple[str, ...]:
    """The optional demo assets a workflow file (UI or API JSON) needs, read from its class types and file names."""
    text = workflow_text.lower()
    kinds: tuple[str, ...] = ()
    if "lucy" in text or "wan2.2_vae" in text or any(c.lower() in text for c in EDIT_CLASSES):
        kinds += EDIT_KINDS
    if "i2v" in text or "storymem" in text:
        kinds += STORY_KINDS
    return kinds


def _name(assets: dict[str, str], kind: str) -> str:
    if kind not in assets:
        raise KeyError(f"demo asset {kind!r} was not built; its workflow needs it (see memv2v_cli.demo.models)")
    return Path(assets[kind]).name


def _dit_kind(name: str, title: str, prompt: dict, assets: dict[str, str]) -> str:
    low, classes = name.lower(), {n["class_type"] for n in prompt.values()}
    if "lucy" in low or classes & EDIT_CLASSES:
        return "lucy_dit"
    if "i2v" in low or "MemV2V_StoryConditioning" in classes:
        return "i2v_low" if "low" in low or "low" in title.lower() else "i2v_high"
    if "MemV2V_LoadModules" in classes and "recammaster_ckpt" in assets:
        return "recammaster_ckpt"  # a graph that loads camera modules needs a DiT that has them
    return "dit"


def to_demo(prompt: dict, assets: dict[str, str]) -> dict:
    """Swap real models for the demo ones (``assets``: {kind: path}), text encoders for demo conditioning, the
    source video for the demo clip, and shrink sizes, segments and steps. Returns a new prompt."""
    prompt = json.loads(json.dumps(prompt))
    wan22 = False
    for node_id, node in list(prompt.items()):
        kind, inputs = node.get("class_type"), node.setdefault("inputs", {})
        title = (node.get("_meta") or {}).get("title", "")
        if kind == "UNETLoader":
            dit = _dit_kind(str(inputs.get("unet_name", "")), title, prompt, assets)
            inputs.update(unet_name=_name(assets, dit), weight_dtype="default")
            wan22 = wan22 or dit == "lucy_dit"
        elif kind == "MemV2V_LoadModules" and "recammaster_ckpt" in assets:
            inputs["checkpoint"] = _name(assets, "recammaster_ckpt")
        elif kind == "CLIPTextEncode":
            prompt[node_id] = {"class_type": "MemV2VDemo_TextConditioning", "_meta": node.get("_meta", {}),
                               "inputs": {"text": inputs.get("text", ""), "tokens": 16}}
        elif kind == "LoadVideo":
            inputs["file"] = _name(assets, "video")
        elif kind == "CLIPVisionLoader" and "dino" in str(inputs.get("clip_name", "")).lower():
            prompt[node_id] = {"class_type": "MemV2VDemo_CLIPVisionLoader", "_meta": node.get("_meta", {}),
                               "inputs": {"clip_name": _name(assets, "dinov2")}}
        elif kind == "CLIPVisionLoader":  # no test-sized CLIP ViT-H exists: the colour-histogram fallback
            prompt[node_id] = {"class_type": "MemV2V_EmbedderLoad", "_meta": {"title": "Demo: colour histogram"},
                               "inputs": {"file": DEMO_EMBEDDER, "architecture": "ViT-B-32"}}
        elif kind == "MemV2V_StoryMemLoraLoader":
            inputs.update(lora_name=_name(assets, "storymem_lora"), rank=STORYMEM_DEMO_RANK,
                          alpha=float(STORYMEM_DEMO_RANK))
        elif kind == "PrimitiveInt" and title in DEMO_STORY_VALUES:
            inputs["value"] = DEMO_STORY_VALUES[title]
        elif kind == "ImageFromBatch" and graph_link(inputs.get("batch_index")):
            inputs["length"] = 4096  # a story's shot: drops the condition frames only, the rest of the shot stays
            continue
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "VAELoader":
            low = str(inputs.get("vae_name", "")).lower()
            inputs["vae_name"] = _name(assets, "wan22_vae" if wan22 or "2.2" in low or "wan22" in low else "vae")
        literal = {name for name, value in inputs.items() if not graph_link(value)}
        for name, value in DEMO_SIZES.get(kind, {}).items():
            if name in literal and not (kind == "ImageFromBatch" and graph_link(inputs.get("batch_index"))):
                inputs[name] = value
        if "steps" in literal and isinstance(inputs["steps"], int):
            inputs["steps"] = min(inputs["steps"], DEMO_STEPS)
        if "segment_length" in literal:
            inputs.update({k: v for k, v in DEMO_SEGMENT.items() if k in literal})
        if wan22:
            inputs.update({k: v for k, v in WAN22_KERNELS.items() if k in literal})
    used = {ref[0] for node in prompt.values() for ref in node["inputs"].values() if graph_link(ref)}
    for node_id in [i for i, n in prompt.items() if n["class_type"] == "CLIPLoader" and i not in used]:
        del prompt[node_id]
    embedders = {i for i, n in prompt.items() if n["class_type"] == "MemV2V_EmbedderLoad"}
    for node in prompt.values():
        link = node["inputs"].get("clip_vision")
        if graph_link(link) and link[0] in embedders:
            node["inputs"]["embedder"] = node["inputs"].pop("clip_vision")
    return prompt
