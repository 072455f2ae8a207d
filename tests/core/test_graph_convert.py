"""UI-format -> API-format conversion: ComfyUI's bundled Wan templates and small hand-made workflows.

object_info_wan.json is the real ComfyUI 0.3.64 /object_info cut down to the classes used here (regenerate it with
fixtures/make_object_info.py); file_inputs_wan.json names the combos that list model/input files.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import json
import os
import random

import pytest

from memv2v_cli.graph import (
    MODE_BYPASSED,
    MODE_MUTED,
    WorkflowConversionError,
    find_nodes,
    process_dynamic_prompt,
    set_input,
    ui_to_api,
    widget_values_by_name,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
VIRTUAL = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}


def _load_fixture(name: str) -> dict:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return json.load(handle)


OBJECT_INFO = _load_fixture("object_info_wan.json")
FILE_INPUTS = _load_fixture("file_inputs_wan.json")


def _templates_dir() -> str | None:
    spec = importlib.util.find_spec("comfyui_workflow_templates")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "templates")
    return path if os.path.isdir(path) else None


TEMPLATES_DIR = _templates_dir()
WAN_TEMPLATES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(TEMPLATES_DIR or "", "*wan*.json")))
needs_templates = pytest.mark.skipif(TEMPLATES_DIR is None, reason="comfyui_workflow_templates is not installed")


def _template(name: str) -> dict:
    with open(os.path.join(TEMPLATES_DIR, name), encoding="utf-8") as handle:
        return json.load(handle)


# --- a small builder for hand-made UI workflows, saved the way the frontend saves them -------------------------------


class UIWorkflow:
    """Nodes get sockets for their non-widget inputs (input_order) and outputs from object_info, like the frontend."""

    def __init__(self, object_info: dict = OBJECT_INFO) -> None:
        self.object_info = object_info
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, node_type: str, widgets=None, *, mode: int = 0, title: str | None = None,
            inputs: list | None = None, outputs: list | None = None) -> int:
        node_id = len(self.nodes) + 1
        info = self.object_info.get(node_type, {})
        if inputs is None:
            inputs = []
            for group in ("required", "optional"):
                for name in (info.get("input_order") or {}).get(group, []):
                    spec = info["input"][group][name]
                    if isinstance(spec[0], str) and spec[0] not in {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}:
                        inputs.append({"name": name, "type": spec[0], "link": None})
        if outputs is None:
            outputs = [{"name": name, "type": kind, "links": []}
                       for name, kind in zip(info.get("output_name", []), info.get("output", []))]
        node = {"id": node_id, "type": node_type, "pos": [0, 0], "size": [300, 100], "flags": {}, "order": node_id,
                "mode": mode, "inputs": inputs, "outputs": outputs, "properties": {}}
        if widgets is not None:
            node["widgets_values"] = widgets
        if title is not None:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def reroute(self) -> int:
        return self.add("Reroute", inputs=[{"name": "", "type": "*", "link": None}],
                        outputs=[{"name": "", "type": "*", "links": []}])

    def primitive(self, value, kind: str = "INT", mode: int = 0) -> int:
        return self.add("PrimitiveNode", [value, "fixed"], mode=mode, inputs=[],
                        outputs=[{"name": kind, "type": kind, "links": [], "widget": {"name": "x"}}])

    def connect(self, origin: int, origin_slot: int, target: int, input_name: str) -> int:
        """Link an output to an input; an input without a socket is a widget converted to an input."""
        node = self.nodes[target - 1]
        origin_outputs = self.nodes[origin - 1]["outputs"]
        kind = origin_outputs[origin_slot]["type"] if origin_slot < len(origin_outputs) else "*"
        index = next((i for i, slot in enumerate(node["inputs"]) if slot["name"] == input_name), None)
        if index is None:
            node["inputs"].append({"name": input_name, "type": kind, "widget": {"name": input_name}, "link": None})
            index = len(node["inputs"]) - 1
        link_id = len(self.links) + 1
        node["inputs"][index]["link"] = link_id
        if origin_slot < len(origin_outputs):
            origin_outputs[origin_slot]["links"].append(link_id)
        self.links.append([link_id, origin, origin_slot, target, index, kind])
        return link_id

    def to_json(self) -> dict:
        return {"id": "00000000-0000-4000-8000-000000000000", "revision": 0, "last_node_id": len(self.nodes),
                "last_link_id": len(self.links), "nodes": copy.deepcopy(self.nodes), "links": copy.deepcopy(self.links),
                "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


KSAMPLER_WIDGETS = [42, "randomize", 20, 7.5, "euler", "normal", 0.9]


def _t2v(builder: UIWorkflow, lora_mode: int | None = None) -> dict[str, int]:
    """The canonical Wan T2V graph; with ``lora_mode`` a LoraLoader sits between the loaders and their users."""
    ids = {
        "unet": builder.add("UNETLoader", ["tiny.safetensors", "default"]),
        "clip": builder.add("CLIPLoader", ["umt5.safetensors", "wan", "default"]),
        "vae": builder.add("VAELoader", ["vae.safetensors"]),
        "pos": builder.add("CLIPTextEncode", ["a red fox"]),
        "neg": builder.add("CLIPTextEncode", ["blurry"]),
        "shift": builder.add("ModelSamplingSD3", [8]),
        "latent": builder.add("EmptyHunyuanLatentVideo", [64, 64, 9, 1]),
        "ksampler": builder.add("KSampler", list(KSAMPLER_WIDGETS)),
        "decode": builder.add("VAEDecode"),
        "video": builder.add("CreateVideo", [16]),
        "save": builder.add("SaveVideo", ["video/test", "auto", "auto"]),
    }
    model_from, clip_from = (ids["unet"], 0), (ids["clip"], 0)
    if lora_mode is not None:
        ids["lora"] = builder.add("LoraLoader", ["style.safetensors", 1.0, 1.0], mode=lora_mode)
        builder.connect(ids["unet"], 0, ids["lora"], "model")
        builder.connect(ids["clip"], 0, ids["lora"], "clip")
        model_from, clip_from = (ids["lora"], 0), (ids["lora"], 1)
    builder.connect(*model_from, ids["shift"], "model")
    builder.connect(*clip_from, ids["pos"], "clip")
    builder.connect(*clip_from, ids["neg"], "clip")
    builder.connect(ids["shift"], 0, ids["ksampler"], "model")
    builder.connect(ids["pos"], 0, ids["ksampler"], "positive")
    builder.connect(ids["neg"], 0, ids["ksampler"], "negative")
    builder.connect(ids["latent"], 0, ids["ksampler"], "latent_image")
    builder.connect(ids["ksampler"], 0, ids["decode"], "samples")
    builder.connect(ids["vae"], 0, ids["decode"], "vae")
    builder.connect(ids["decode"], 0, ids["video"], "images")
    builder.connect(ids["video"], 0, ids["save"], "video")
    return {name: str(node_id) for name, node_id in ids.items()}


# --- structural checks of an API prompt against object_info ----------------------------------------------------------


def _input_specs(class_info: dict) -> dict[str, list]:
    declared = class_info.get("input") or {}
    return {**(declared.get("optional") or {}), **(declared.get("required") or {})}


def _spec_type_and_options(spec: list) -> tuple[str, dict, list | None]:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(spec[0], list):
        return "COMBO", options, spec[0]
    return spec[0], options, options.get("options") if spec[0] == "COMBO" else None


def _problems(prompt: dict, object_info: dict, file_inputs: dict) -> list[str]:
    """Everything structurally wrong with an API prompt: classes, links, required inputs, widget value types."""
    problems = []
    for node_id, entry in prompt.items():
        class_type = entry["class_type"]
        if class_type not in object_info:
            problems.append(f"{node_id}: unknown class {class_type}")
            continue
        info = object_info[class_type]
        specs = _input_specs(info)
        for name in (info["input"].get("required") or {}):
            if name not in entry["inputs"]:
                problems.append(f"{node_id} {class_type}: required input {name} missing")
        for name, value in entry["inputs"].items():
            spec = specs.get(name)
            if isinstance(value, list):
                source, slot = value
                if source not in prompt:
                    problems.append(f"{node_id}.{name}: link to missing node {source}")
                    continue
                outputs = object_info[prompt[source]["class_type"]]["output"]
                if not (isinstance(slot, int) and 0 <= slot < len(outputs)):
                    problems.append(f"{node_id}.{name}: output slot {slot} of {source} does not exist")
                    continue
                declared = spec[0] if spec else "*"
                if isinstance(declared, str) and declared not in ("*", "COMBO") and outputs[slot] != "*" \
                        and outputs[slot] not in declared.split(","):
                    problems.append(f"{node_id}.{name}: {declared} fed by {outputs[slot]}")
                continue
            if spec is None:
                continue
            kind, options, choices = _spec_type_and_options(spec)
            if kind == "INT":
                ok = isinstance(value, int) and not isinstance(value, bool)
                ok = ok and options.get("min", value) <= value <= options.get("max", value)
            elif kind == "FLOAT":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                ok = ok and options.get("min", value) <= value <= options.get("max", value)
            elif kind == "BOOLEAN":
                ok = isinstance(value, bool)
            elif kind == "STRING":
                ok = isinstance(value, str)
            elif kind == "COMBO":
                ok = isinstance(value, str) if name in file_inputs.get(class_type, []) else value in choices
            else:
                ok = True
            if not ok:
                problems.append(f"{node_id} {class_type}.{name}: bad {kind} value {value!r}")
    if not any(object_info[e["class_type"]].get("output_node") for e in prompt.values() if e["class_type"] in object_info):
        problems.append("no output node left")
    return problems


def _unknown_active_types(workflow: dict, object_info: dict) -> set[str]:
    """Types of nodes that would run (not muted/bypassed) but that the server does not know."""
    graphs = [workflow, *((workflow.get("definitions") or {}).get("subgraphs") or [])]
    subgraph_ids = {graph.get("id") for graph in graphs[1:]}
    return {node["type"] for graph in graphs for node in graph["nodes"]
            if node.get("mode", 0) not in (MODE_MUTED, MODE_BYPASSED) and node["type"] not in object_info
            and node["type"] not in VIRTUAL and node["type"] not in subgraph_ids}


# --- ComfyUI's own Wan templates --------------------------------------------------------------------------------------


@needs_templates
@pytest.mark.parametrize("name", WAN_TEMPLATES)
def test_wan_template_converts_to_a_structurally_valid_prompt(name):
    workflow = _template(name)
    unknown = _unknown_active_types(workflow, OBJECT_INFO)
    if unknown:  # e.g. the animate template needs third-party nodes: the error must name one of them
        with pytest.raises(WorkflowConversionError) as caught:
            ui_to_api(workflow, OBJECT_INFO)
        assert any(repr(kind) in str(caught.value) for kind in unknown), str(caught.value)
        return
    prompt = ui_to_api(workflow, OBJECT_INFO)
    assert _problems(prompt, OBJECT_INFO, FILE_INPUTS) == []
    assert not {entry["class_type"] for entry in prompt.values()} & VIRTUAL


@needs_templates
def test_most_wan_templates_convert():
    converted = [name for name in WAN_TEMPLATES if not _unknown_active_types(_template(name), OBJECT_INFO)]
    assert len(WAN_TEMPLATES) >= 25 and len(converted) >= len(WAN_TEMPLATES) - 2, (WAN_TEMPLATES, converted)


@needs_templates
def test_text_to_video_template_gives_the_canonical_wan_graph():
    prompt = ui_to_api(_template("text_to_video_wan.json"), OBJECT_INFO)
    by_class = {entry["class_type"]: node_id for node_id, entry in prompt.items() if entry["class_type"] != "CLIPTextEncode"}
    ksampler = prompt[by_class["KSampler"]]["inputs"]
    assert {k: v for k, v in ksampler.items() if not isinstance(v, list)} == {
        "seed": 82628696717253, "steps": 30, "cfg": 6, "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1}
    assert ksampler["model"] == [by_class["ModelSamplingSD3"], 0]
    assert prompt[by_class["ModelSamplingSD3"]]["inputs"] == {"shift": 8, "model": [by_class["UNETLoader"], 0]}
    assert prompt[by_class["CLIPLoader"]]["inputs"]["type"] == "wan"
    latent = prompt[by_class["EmptyHunyuanLatentVideo"]]["inputs"]
    assert (latent["width"], latent["height"], latent["length"]) == (832, 480, 33)
    assert prompt[by_class["CreateVideo"]]["inputs"] == {"fps": 16, "images": [by_class["VAEDecode"], 0]}
    encoders = sorted(entry["_meta"]["title"] for entry in prompt.values() if entry["class_type"] == "CLIPTextEncode")
    assert encoders == ["CLIP Text Encode (Negative Prompt)", "CLIP Text Encode (Positive Prompt)"]


@needs_templates
def test_s2v_template_subgraphs_are_flattened():
    prompt = ui_to_api(_template("video_wan2_2_14B_s2v.json"), OBJECT_INFO)
    # Instances 79 and 85 are active; 87, 165, 172 and 174 are bypassed, and so are their inner nodes.
    inner_ids = sorted(node_id for node_id in prompt if ":" in node_id)
    assert inner_ids == ["79:76", "79:77", "79:78", "85:76", "85:77", "85:78"]
    assert not {"79", "85", "87"} & set(prompt)
    sampler = prompt["79:77"]["inputs"]
    assert sampler["model"] == ["54", 0]  # from the root graph, through the subgraph's input slot
    assert sampler["steps"] == ["103", 0]  # a promoted widget fed by a PrimitiveInt outside
    assert sampler["seed"] == 1  # unconnected promoted widget: the inner widget's saved value
    assert prompt["85:76"]["inputs"]["video_latent"] == ["79:78", 0]  # one instance's output into another
    assert prompt["94"]["inputs"]["samples"] == ["85:78", 0]  # a root node fed by a subgraph output


# --- widget values -----------------------------------------------------------------------------------------------------


def _single(node_type: str, widgets, object_info: dict = OBJECT_INFO, **kwargs) -> dict:
    builder = UIWorkflow(object_info)
    builder.add(node_type, widgets, **kwargs)
    return ui_to_api(builder.to_json(), object_info)["1"]


def test_seed_control_value_is_skipped():
    inputs = _single("KSampler", KSAMPLER_WIDGETS)["inputs"]
    assert inputs == {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.9}


def test_int_with_control_after_generate_option_skips_its_mode():
    assert _single("PrimitiveInt", [7, "increment"])["inputs"] == {"value": 7}
    assert _single("KSamplerAdvanced", ["enable", 5, "fixed", 30, 6.0, "euler", "simple", 0, 10000, "disable"])[
        "inputs"] == {"add_noise": "enable", "noise_seed": 5, "steps": 30, "cfg": 6.0, "sampler_name": "euler",
                      "scheduler": "simple", "start_at_step": 0, "end_at_step": 10000,
                      "return_with_leftover_noise": "disable"}


SYNTHETIC = {
    "Picker": {
        "input": {"required": {"choice": [["a", "b", "c"], {"control_after_generate": True}],
                               "seed": ["INT", {"control_after_generate": False}],
                               "image": ["IMAGE"]},
                  "optional": {"count": ["INT", {"default": 3}], "label": ["STRING", {"forceInput": True}],
                               "note": ["STRING", {"default": "hi"}], "flag": ["BOOLEAN", {}]}},
        "input_order": {"required": ["choice", "seed", "image"], "optional": ["count", "label", "note", "flag"]},
        "output": ["IMAGE"], "output_name": ["IMAGE"], "display_name": "Picker", "output_node": True,
    },
    "ImageSource": {"input": {}, "input_order": {}, "output": ["IMAGE"], "output_name": ["IMAGE"]},
    "ImagePair": {"input": {"required": {"first": ["IMAGE"], "second": ["IMAGE"]}},
                  "input_order": {"required": ["first", "second"]},
                  "output": ["IMAGE", "IMAGE"], "output_name": ["first", "second"]},
}


def test_combo_control_stores_a_mode_and_a_filter_and_explicit_false_disables_seed_control():
    inputs = _single("Picker", ["b", "increment", "", 9, 4, "note text", True], SYNTHETIC)["inputs"]
    assert inputs == {"choice": "b", "seed": 9, "count": 4, "note": "note text", "flag": True}


def test_missing_trailing_values_take_the_widget_defaults():
    # Saved before 'note' and 'flag' existed: the frontend fills them with the widget defaults.
    inputs = _single("Picker", ["c", "fixed", "", 1, 2], SYNTHETIC)["inputs"]
    assert inputs == {"choice": "c", "seed": 1, "count": 2, "note": "hi", "flag": False}


def test_legacy_files_with_a_value_for_a_force_input_are_realigned():
    # Old frontends stored a widget value for forceInput inputs too ('label' here): 8 values instead of 7.
    inputs = _single("Picker", ["a", "fixed", "", 1, 2, "stale label", "n", False], SYNTHETIC)["inputs"]
    assert inputs == {"choice": "a", "seed": 1, "count": 2, "note": "n", "flag": False}


def test_widgets_values_as_a_dict_are_read_by_name():
    inputs = _single("Picker", {"choice": "c", "seed": 5, "count": 1, "note": "x", "flag": True,
                                "videopreview": {"hidden": False}}, SYNTHETIC)["inputs"]
    assert inputs == {"choice": "c", "seed": 5, "count": 1, "note": "x", "flag": True}


def test_list_values_are_wrapped_so_they_are_not_read_as_links():
    inputs = _single("PrimitiveStringMultiline", [["a", "b"]])["inputs"]
    assert inputs == {"value": {"__value__": ["a", "b"]}}


def test_widget_values_by_name_ignores_sockets():
    node = {"widgets_values": ["enable", 1, "fixed", 2, 3.0, "euler", "simple", 0, 5, "disable"]}
    values = widget_values_by_name(node, OBJECT_INFO["KSamplerAdvanced"])
    assert list(values) == ["add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler",
                            "start_at_step", "end_at_step", "return_with_leftover_noise"]


def test_dynamic_prompt_text_is_resolved_like_the_frontend():
    rng = random.Random(3)
    for _ in range(20):
        text = process_dynamic_prompt("a {red|green|{dark|light} blue} fox // comment\n/* block */at night", rng)
        assert text.startswith("a ") and text.endswith(" fox \nat night")
        assert text[2:-len(" fox \nat night")] in {"red", "green", "dark blue", "light blue"}
    assert process_dynamic_prompt(r"literal \{braces\} and \| bar", rng) == "literal {braces} and | bar"
    builder = UIWorkflow()
    builder.add("CLIPTextEncode", ["{only} choice"])
    assert ui_to_api(builder.to_json(), OBJECT_INFO)["1"]["inputs"]["text"] == "only choice"


def test_title_comes_from_the_node_or_the_display_name():
    assert _single("KSampler", KSAMPLER_WIDGETS, title="Main sampler")["_meta"] == {"title": "Main sampler"}
    assert _single("VAEDecode", [])["_meta"] == {"title": "VAE Decode"}


# --- links, reroutes, primitives, bypass and mute ----------------------------------------------------------------------


def test_full_graph_links_become_id_slot_pairs():
    builder = UIWorkflow()
    ids = _t2v(builder)
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert set(prompt) == set(ids.values())
    assert prompt[ids["ksampler"]]["inputs"]["latent_image"] == [ids["latent"], 0]
    assert prompt[ids["save"]]["inputs"] == {"filename_prefix": "video/test", "format": "auto", "codec": "auto",
                                              "video": [ids["video"], 0]}
    assert _problems(prompt, OBJECT_INFO, FILE_INPUTS) == []


def test_converted_widget_takes_the_link_and_keeps_its_slot():
    builder = UIWorkflow()
    ids = _t2v(builder)
    seed = builder.add("PrimitiveInt", [1234, "fixed"])
    builder.connect(seed, 0, int(ids["ksampler"]), "seed")
    inputs = ui_to_api(builder.to_json(), OBJECT_INFO)[ids["ksampler"]]["inputs"]
    assert inputs["seed"] == [str(seed), 0]
    assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"]) == (20, 7.5, "euler")


@pytest.mark.parametrize("mode", [0, MODE_MUTED, MODE_BYPASSED])
def test_primitive_node_value_becomes_the_literal(mode):
    builder = UIWorkflow()
    ids = _t2v(builder)
    primitive = builder.primitive(777, mode=mode)
    builder.connect(primitive, 0, int(ids["ksampler"]), "seed")
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert prompt[ids["ksampler"]]["inputs"]["seed"] == 777
    assert str(primitive) not in prompt


def test_reroute_chains_are_followed():
    builder = UIWorkflow()
    ids = _t2v(builder)
    first, second = builder.reroute(), builder.reroute()
    builder.connect(int(ids["ksampler"]), 0, first, "")
    builder.connect(first, 0, second, "")
    builder.connect(second, 0, int(ids["decode"]), "samples")
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert prompt[ids["decode"]]["inputs"]["samples"] == [ids["ksampler"], 0]
    assert str(first) not in prompt and str(second) not in prompt


def test_bypassed_nodes_pass_their_same_typed_input_through_chains():
    builder = UIWorkflow()
    ids = _t2v(builder, lora_mode=MODE_BYPASSED)
    second_lora = builder.add("LoraLoaderModelOnly", ["detail.safetensors", 0.5], mode=MODE_BYPASSED)
    builder.connect(int(ids["lora"]), 0, second_lora, "model")
    builder.connect(second_lora, 0, int(ids["shift"]), "model")  # relinks shift.model through both loras
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert prompt[ids["shift"]]["inputs"]["model"] == [ids["unet"], 0]
    assert prompt[ids["pos"]]["inputs"]["clip"] == [ids["clip"], 0]  # LoraLoader's CLIP output -> its clip input
    assert ids["lora"] not in prompt and str(second_lora) not in prompt


def test_active_lora_stays_in_the_chain():
    builder = UIWorkflow()
    ids = _t2v(builder, lora_mode=0)
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert prompt[ids["shift"]]["inputs"]["model"] == [ids["lora"], 0]
    assert prompt[ids["neg"]]["inputs"]["clip"] == [ids["lora"], 1]


def test_bypass_prefers_the_input_at_the_output_slot_index():
    builder = UIWorkflow(SYNTHETIC)
    sources = builder.add("ImageSource"), builder.add("ImageSource")
    pair = builder.add("ImagePair", mode=MODE_BYPASSED)
    picker = builder.add("Picker", ["a", "fixed", "", 1, 2, "n", False])
    builder.connect(sources[0], 0, pair, "first")
    builder.connect(sources[1], 0, pair, "second")
    builder.connect(pair, 1, picker, "image")  # the second output passes the second input, not the first match
    assert ui_to_api(builder.to_json(), SYNTHETIC)[str(picker)]["inputs"]["image"] == [str(sources[1]), 0]


def test_bypass_without_a_matching_input_drops_the_input():
    builder = UIWorkflow()
    ids = _t2v(builder)
    builder.nodes[int(ids["decode"]) - 1]["mode"] = MODE_BYPASSED  # VAEDecode has no IMAGE input to pass on
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert ids["decode"] not in prompt
    assert prompt[ids["video"]]["inputs"] == {"fps": 16}


def test_muted_nodes_are_dropped_with_the_inputs_they_feed():
    builder = UIWorkflow()
    ids = _t2v(builder, lora_mode=MODE_BYPASSED)
    builder.nodes[int(ids["unet"]) - 1]["mode"] = MODE_MUTED
    builder.nodes[int(ids["decode"]) - 1]["mode"] = MODE_MUTED
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert ids["unet"] not in prompt and ids["decode"] not in prompt
    assert "model" not in prompt[ids["shift"]]["inputs"]  # fed by the muted loader through the bypassed lora
    assert prompt[ids["video"]]["inputs"] == {"fps": 16}
    assert prompt[ids["ksampler"]]["inputs"]["model"] == [ids["shift"], 0]  # only direct inputs are dropped


def test_notes_are_dropped():
    builder = UIWorkflow()
    ids = _t2v(builder)
    builder.add("Note", ["remember the seed"], inputs=[], outputs=[])
    builder.add("MarkdownNote", ["# Title"], inputs=[], outputs=[])
    assert set(ui_to_api(builder.to_json(), OBJECT_INFO)) == set(ids.values())


def test_links_saved_as_objects_are_read():
    builder = UIWorkflow()
    _t2v(builder)
    workflow = builder.to_json()
    workflow["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                         for link in workflow["links"]]
    assert ui_to_api(workflow, OBJECT_INFO) == ui_to_api(builder.to_json(), OBJECT_INFO)


# --- subgraphs ---------------------------------------------------------------------------------------------------------


def test_nested_subgraphs_are_flattened_with_path_ids():
    prompt = ui_to_api(_load_fixture("ui_nested_subgraphs.json"), OBJECT_INFO)
    assert set(prompt) == {"1", "3", "4", "2:20:10", "5:10"}
    assert prompt["2:20:10"]["inputs"] == {"shift": ["3", 0], "model": ["1", 0]}  # two levels in from the root
    assert prompt["4"]["inputs"]["model"] == ["2:20:10", 0]  # two levels out to the root
    assert prompt["5:10"]["inputs"] == {"shift": 3.0, "model": ["1", 0]}


def test_a_subgraph_that_contains_itself_is_refused():
    workflow = _load_fixture("ui_nested_subgraphs.json")
    inner = workflow["definitions"]["subgraphs"][1]
    inner["nodes"][0]["type"] = workflow["definitions"]["subgraphs"][0]["id"]  # inner now holds the outer one
    with pytest.raises(WorkflowConversionError, match="contains itself"):
        ui_to_api(workflow, OBJECT_INFO)


# --- errors ------------------------------------------------------------------------------------------------------------


def test_unknown_node_type_error_names_the_node_and_the_fix():
    builder = UIWorkflow()
    _t2v(builder)
    node_id = builder.add("DWPreprocessor", ["enable"], inputs=[], outputs=[])
    with pytest.raises(WorkflowConversionError) as caught:
        ui_to_api(builder.to_json(), OBJECT_INFO)
    message = str(caught.value)
    assert f"node {node_id} (DWPreprocessor)" in message and "Install the custom node pack" in message


@pytest.mark.parametrize("mode", [MODE_MUTED, MODE_BYPASSED])
def test_unknown_node_types_are_fine_when_they_do_not_run(mode):
    builder = UIWorkflow()
    ids = _t2v(builder)
    builder.add("DWPreprocessor", ["enable"], mode=mode, inputs=[], outputs=[])
    assert set(ui_to_api(builder.to_json(), OBJECT_INFO)) == set(ids.values())


def test_legacy_group_nodes_are_refused_with_the_fix():
    builder = UIWorkflow()
    builder.add("workflow>my group", [], inputs=[], outputs=[])
    workflow = builder.to_json()
    workflow["extra"]["groupNodes"] = {"my group": {"nodes": []}}
    with pytest.raises(WorkflowConversionError, match="Convert to nodes"):
        ui_to_api(workflow, OBJECT_INFO)


def test_api_prompts_and_other_json_are_refused_with_a_hint():
    with pytest.raises(WorkflowConversionError, match="already an API-format prompt"):
        ui_to_api({"1": {"class_type": "VAEDecode", "inputs": {}}}, OBJECT_INFO)
    with pytest.raises(WorkflowConversionError, match="'nodes' list"):
        ui_to_api({"workflow": {}}, OBJECT_INFO)
    with pytest.raises(WorkflowConversionError, match="object_info is empty"):
        ui_to_api(UIWorkflow().to_json(), {})


def test_damaged_links_are_reported():
    builder = UIWorkflow()
    ids = _t2v(builder)
    workflow = builder.to_json()
    workflow["links"] = [link for link in workflow["links"] if link[3] != int(ids["decode"])]
    with pytest.raises(WorkflowConversionError, match=rf"node {ids['decode']} \(VAEDecode\): input 'samples' uses link"):
        ui_to_api(workflow, OBJECT_INFO)
    workflow = builder.to_json()
    next(link for link in workflow["links"] if link[3] == int(ids["decode"]))[2] = 3  # KSampler has one output
    with pytest.raises(WorkflowConversionError, match="output slot 3 .* which has 1 output"):
        ui_to_api(workflow, OBJECT_INFO)


def test_reroute_loops_are_reported():
    builder = UIWorkflow()
    ids = _t2v(builder)
    first, second = builder.reroute(), builder.reroute()
    builder.connect(first, 0, second, "")
    builder.connect(second, 0, first, "")
    builder.connect(second, 0, int(ids["decode"]), "samples")
    with pytest.raises(WorkflowConversionError, match="circular"):
        ui_to_api(builder.to_json(), OBJECT_INFO)


# --- editing an API prompt between turns -------------------------------------------------------------------------------


def test_find_nodes_and_set_input():
    builder = UIWorkflow()
    ids = _t2v(builder)
    builder.nodes[int(ids["pos"]) - 1]["title"] = "Positive"
    prompt = ui_to_api(builder.to_json(), OBJECT_INFO)
    assert find_nodes(prompt, class_type="CLIPTextEncode") == [ids["pos"], ids["neg"]]
    assert find_nodes(prompt, title="Positive") == [ids["pos"]]
    assert find_nodes(prompt, class_type="KSampler", title="Positive") == []
    set_input(prompt, ids["pos"], "text", "a blue fox")
    set_input(prompt, int(ids["ksampler"]), "seed", 7)
    set_input(prompt, ids["ksampler"], "sigmas_override", [1.0, 0.5])
    assert prompt[ids["pos"]]["inputs"]["text"] == "a blue fox"
    assert prompt[ids["ksampler"]]["inputs"]["seed"] == 7
    assert prompt[ids["ksampler"]]["inputs"]["sigmas_override"] == {"__value__": [1.0, 0.5]}
    with pytest.raises(ValueError, match="is linked to node"):
        set_input(prompt, ids["ksampler"], "model", 3)
    with pytest.raises(ValueError, match="not in the prompt"):
        set_input(prompt, "999", "seed", 1)
