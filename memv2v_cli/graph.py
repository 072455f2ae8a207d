"""Convert ComfyUI UI-format (litegraph) workflows into API-format prompts, as the frontend's ``graphToPrompt`` does.

ComfyUI's ``POST /prompt`` accepts only API format and its backend has no converter; the frontend converts in
JavaScript. This module ports that conversion (comfyui_frontend_package 1.27: ``utils/executionUtil.ts``,
``subgraph/ExecutableNodeDTO.ts``, the widget constructors and the core extensions), driven by ``/object_info``.
Subgraphs are flattened the way the frontend does it: inner nodes get the id ``"<instance id>:<inner id>"``.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

MODE_MUTED = 2  # LGraphEventMode.NEVER: not executed, and inputs fed by it are dropped
MODE_BYPASSED = 4  # LGraphEventMode.BYPASS: consumers take the node's input of the same type instead

SUBGRAPH_INPUT_NODE_ID = -10  # origin id of links that come from a subgraph's input slots
SUBGRAPH_OUTPUT_NODE_ID = -20  # target id of links that go to a subgraph's output slots

# Frontend-only nodes: never sent to the backend.
VIRTUAL_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})

# Input types the frontend draws as widgets: its core widgets plus those its bundled extensions register.
# A widget-typed input (unless ``forceInput``) takes one slot in ``widgets_values``.
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", "MARKDOWN", "IMAGEUPLOAD", "FILEUPLOAD", "COLOR",
    "IMAGECOMPARE", "TREESELECT", "MULTISELECT", "CHART", "GALLERIA", "SELECTBUTTON", "TEXTAREA",
    "AUDIO_UI", "AUDIOUPLOAD", "AUDIO_RECORD", "WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION", "PREVIEW_3D",
    "PREVIEW_3D_ANIMATION",
})

# INT inputs with these names get a control_after_generate widget even without the option (legacy convention).
LEGACY_SEED_NAMES = frozenset({"seed", "noise_seed"})

# Defaults the frontend's widget constructors fall back to when an input declares none.
_FALLBACK_DEFAULTS = {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}

_FIX_IN_FRONTEND = "fix it in the ComfyUI frontend and save the workflow again"


class WorkflowConversionError(ValueError):
    """A UI workflow that cannot be converted; the message names the node, its type, the problem and the fix."""


@dataclass(frozen=True)
class WidgetSlot:
    """One widget-typed input of a node class, in the order its value is stored in ``widgets_values``."""

    name: str
    kind: str  # INT, FLOAT, STRING, BOOLEAN, COMBO, ...
    extra_values: int  # values stored right after this one (control_after_generate mode, combo filter, refresh)
    default: Any
    has_default: bool
    force_input: bool  # a socket, not a widget; only legacy files stored a value for it
    dynamic_prompts: bool  # the frontend resolves {a|b} choices and strips comments when queueing


@dataclass(frozen=True)
class _Link:
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int


@dataclass
class _Scope:
    """One graph level: the root workflow, or the inside of one subgraph instance."""

    path: tuple[str, ...]  # ids of the enclosing subgraph instances, outermost first
    nodes: dict[str, dict]
    links: dict[Any, _Link]
    definition: dict | None = None  # the subgraph definition (None at the root)
    instance: "_NodeRef | None" = None  # the subgraph node this scope expands


@dataclass
class _NodeRef:
    scope: _Scope
    node: dict

    @property
    def execution_id(self) -> str:
        return ":".join((*self.scope.path, str(self.node["id"])))

    @property
    def type(self) -> str:
        return str(self.node.get("type"))

    @property
    def inputs(self) -> list[dict]:
        return self.node.get("inputs") or []

    def describe(self) -> str:
        return f"node {self.execution_id} ({self.type})"


@dataclass(frozen=True)
class _Output:
    """A resolved link: output ``slot`` of the executable node ``execution_id``."""

    execution_id: str
    slot: int


@dataclass(frozen=True)
class _Literal:
    """A resolved link that is really a value (a PrimitiveNode's widget)."""

    value: Any


def ui_to_api(workflow: dict, object_info: dict, *, rng: random.Random | None = None) -> dict:
    """Convert a UI-format workflow into the API-format prompt ``POST /prompt`` accepts.

    ``object_info`` is what the target server's ``GET /object_info`` returns. ``rng`` picks ``{a|b}`` choices in
    dynamic-prompt text inputs (the frontend picks at random on every queue); the default is seeded, so the same
    workflow always converts to the same prompt.
    """
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowConversionError(_not_a_ui_workflow(workflow))
    if not isinstance(object_info, dict) or not object_info:
        raise WorkflowConversionError(
            "object_info is empty; pass the JSON object the server's GET /object_info returns.")
    return _Converter(workflow, object_info, rng or random.Random(0)).convert()


def widget_slots(class_info: dict) -> list[WidgetSlot]:
    """The widget-typed inputs of a class, in ``widgets_values`` order (``input_order``: required, then optional)."""
    slots = []
    for name, spec in _ordered_input_specs(class_info):
        kind, options = _spec_kind(spec)
        if kind not in WIDGET_TYPES:
            continue
        slots.append(WidgetSlot(
            name=name,
            kind=kind,
            extra_values=_extra_widget_count(name, kind, options),
            default=_widget_default(kind, options),
            has_default=_has_widget_default(kind, options),
            force_input=bool(options.get("forceInput")),
            dynamic_prompts=kind == "STRING" and options.get("dynamicPrompts") is True,
        ))
    return slots


def widget_values_by_name(node: dict, class_info: dict) -> dict[str, Any]:
    """Map a UI node's ``widgets_values`` (a list, or a name->value dict in some packs) onto its input names."""
    slots = widget_slots(class_info)
    raw = node.get("widgets_values")
    if isinstance(raw, dict):
        return {slot.name: raw[slot.name] if slot.name in raw else slot.default
                for slot in slots if not slot.force_input and (slot.name in raw or slot.has_default)}
    values = list(raw or [])
    # Legacy files stored a value for forceInput inputs too; the frontend drops them when the count says so.
    legacy_count = sum(1 + slot.extra_values for slot in slots)
    stores_force_inputs = any(slot.force_input for slot in slots) and len(values) == legacy_count
    result: dict[str, Any] = {}
    position = 0
    for slot in slots:
        if slot.force_input and not stores_force_inputs:
            continue
        if not slot.force_input:
            if position < len(values):
                result[slot.name] = values[position]
            elif slot.has_default:
                result[slot.name] = slot.default  # an input newer than the saved node: the widget's default
        position += 1 + slot.extra_values
    return result


def find_nodes(prompt: dict, class_type: str | None = None, title: str | None = None) -> list[str]:
    """Ids of the API-prompt nodes matching every filter given (``class_type``, ``_meta.title``), in prompt order."""
    return [node_id for node_id, entry in prompt.items()
            if (class_type is None or entry.get("class_type") == class_type)
            and (title is None or (entry.get("_meta") or {}).get("title") == title)]


def set_input(prompt: dict, node_id: str, name: str, value: Any) -> None:
    """Set a widget input of one node of an API prompt in place (between turns of a headless run).

    Refuses to replace a link, because the workflow author connected that input on purpose.
    """
    node_id = str(node_id)
    if node_id not in prompt:
        raise ValueError(f"node_id {node_id!r} is not in the prompt (its first nodes: {list(prompt)[:12]}); "
                         "Use find_nodes(prompt, class_type=..., title=...) to look the id up.")
    inputs = prompt[node_id].setdefault("inputs", {})
    current = inputs.get(name)
    if _is_link(current):
        raise ValueError(f"input {name!r} of node {node_id} ({prompt[node_id].get('class_type')}) is linked to "
                         f"node {current[0]}; set the widget on that node instead, or disconnect it in the workflow.")
    inputs[name] = _api_value(value)


class _Converter:
    """One conversion: flattens subgraphs into node references, then emits every executable node."""

    def __init__(self, workflow: dict, object_info: dict, rng: random.Random) -> None:
        self.object_info = object_info
        self.rng = rng
        self.group_nodes = set(((workflow.get("extra") or {}).get("groupNodes") or {}).keys())
        self.subgraphs = _collect_subgraph_definitions(workflow)
        self.refs: dict[str, _NodeRef] = {}
        self.instance_scopes: dict[str, _Scope] = {}
        self._expand(_Scope((), _nodes_by_id(workflow["nodes"]), _links_by_id(workflow.get("links"))), ())

    def _expand(self, scope: _Scope, definitions_open: tuple[str, ...]) -> None:
        for node in scope.nodes.values():
            ref = _NodeRef(scope, node)
            self.refs[ref.execution_id] = ref
            if ref.type not in self.subgraphs:
                continue
            if ref.type in definitions_open:
                raise WorkflowConversionError(
                    f"{ref.describe()}: subgraph {ref.type!r} contains itself; {_FIX_IN_FRONTEND}.")
            definition = self.subgraphs[ref.type]
            inner = _Scope((*scope.path, str(node["id"])), _nodes_by_id(definition.get("nodes") or []),
                           _links_by_id(definition.get("links")), definition, ref)
            self.instance_scopes[ref.execution_id] = inner
            self._expand(inner, (*definitions_open, ref.type))

    def convert(self) -> dict:
        prompt = {}
        for execution_id, ref in self.refs.items():
            if self._is_executable(ref):
                prompt[execution_id] = self._convert_node(ref)
        # Inputs fed by nodes that are not sent (muted ones) are dropped, as the frontend does.
        for entry in prompt.values():
            for name, value in list(entry["inputs"].items()):
                if _is_link(value) and value[0] not in prompt:
                    del entry["inputs"][name]
        return prompt

    def _is_executable(self, ref: _NodeRef) -> bool:
        if ref.type in VIRTUAL_NODE_TYPES or ref.type in self.subgraphs:
            return False
        if ref.node.get("mode") in (MODE_MUTED, MODE_BYPASSED):
            return False
        self._class_info(ref)  # an unknown active node is an error, not a silent drop
        return True

    def _class_info(self, ref: _NodeRef) -> dict:
        info = self.object_info.get(ref.type)
        if info is not None:
            return info
        if ref.type in self.group_nodes or ref.type.startswith(("workflow>", "workflow/")):
            raise WorkflowConversionError(
                f"{ref.describe()} is a legacy group node, which the backend cannot run; in the frontend, "
                "right-click it and choose 'Convert to nodes', then save the workflow again.")
        raise WorkflowConversionError(
            f"{ref.describe()}: the server does not know node type {ref.type!r} (it is not in /object_info). "
            "Install the custom node pack that provides it, or delete, mute or bypass the node in the frontend.")

    def _convert_node(self, ref: _NodeRef) -> dict:
        info = self._class_info(ref)
        slots = {slot.name: slot for slot in widget_slots(info)}
        widget_values = widget_values_by_name(ref.node, info)
        links: dict[str, Any] = {}
        for index, slot in enumerate(ref.inputs):
            resolved = self._resolve_input(ref, index, set())
            name = str(slot.get("name"))
            if isinstance(resolved, _Literal):
                widget_values[name] = resolved.value  # a PrimitiveNode writes its value into the widget
            elif isinstance(resolved, _Output):
                self._check_output_slot(ref, name, resolved)
                links[name] = [resolved.execution_id, resolved.slot]
        inputs = {}
        for name, value in widget_values.items():
            slot = slots.get(name)
            if slot is not None and slot.dynamic_prompts and isinstance(value, str):
                value = process_dynamic_prompt(value, self.rng)
            inputs[name] = _api_value(value)
        inputs.update(links)
        title = ref.node.get("title") or info.get("display_name") or ref.type
        return {"inputs": inputs, "class_type": ref.type, "_meta": {"title": title}}

    def _check_output_slot(self, ref: _NodeRef, input_name: str, resolved: _Output) -> None:
        origin = self.refs[resolved.execution_id]
        if origin.node.get("mode") == MODE_MUTED or origin.type not in self.object_info:
            return  # dropped later, or reported as unknown when the origin itself is converted
        outputs = self.object_info[origin.type].get("output") or []
        if not 0 <= resolved.slot < len(outputs):
            raise WorkflowConversionError(
                f"{ref.describe()}: input {input_name!r} is linked to output slot {resolved.slot} of "
                f"{origin.describe()}, which has {len(outputs)} output(s); reconnect the input and save again.")

    # --- link resolution (ExecutableNodeDTO.resolveInput / resolveOutput) -----------------------------------------

    def _resolve_input(self, ref: _NodeRef, index: int, visited: set, wanted_type: Any = None):
        _visit(visited, (ref.execution_id, "input", index), ref)
        slot = ref.inputs[index]
        link_id = slot.get("link")
        if link_id is None:
            return None
        link = ref.scope.links.get(link_id)
        if link is None:
            raise WorkflowConversionError(
                f"{ref.describe()}: input {slot.get('name')!r} uses link {link_id}, which is not in the workflow's "
                f"links; the file is damaged: reconnect the input, or {_FIX_IN_FRONTEND}.")
        if ref.scope.instance is not None and link.origin_id == SUBGRAPH_INPUT_NODE_ID:
            return self._resolve_subgraph_input(ref.scope, link.origin_slot, visited)
        origin = ref.scope.nodes.get(str(link.origin_id))
        if origin is None:
            raise WorkflowConversionError(
                f"{ref.describe()}: input {slot.get('name')!r} is linked from node {link.origin_id}, which is not in "
                f"the workflow; reconnect the input, or {_FIX_IN_FRONTEND}.")
        origin_ref = self.refs[":".join((*ref.scope.path, str(origin["id"])))]
        wanted = wanted_type if wanted_type is not None else slot.get("type")
        return self._resolve_output(origin_ref, link.origin_slot, wanted, visited)

    def _resolve_output(self, ref: _NodeRef, slot: int, wanted_type: Any, visited: set):
        _visit(visited, (ref.execution_id, "output", slot), ref)
        if ref.type == "PrimitiveNode":
            # In every mode the frontend copies the primitive's value into the widgets it feeds before queueing.
            values = ref.node.get("widgets_values")
            return _Literal(values[0]) if isinstance(values, list) and values else None
        if ref.node.get("mode") == MODE_BYPASSED:
            index = _bypass_input_index(ref.inputs, slot, wanted_type, self._output_type(ref, slot))
            if index < 0:
                logger.debug("bypassed %s has no input of type %s for output %d", ref.describe(), wanted_type, slot)
                return None
            return self._resolve_input(ref, index, visited)
        if ref.type in self.subgraphs:
            return self._resolve_subgraph_output(ref, slot, wanted_type, visited)
        if ref.type in VIRTUAL_NODE_TYPES:  # Reroute: pass through the input with the same index
            return self._resolve_input(ref, slot, visited, wanted_type) if slot < len(ref.inputs) else None
        return _Output(ref.execution_id, int(slot))

    def _resolve_subgraph_input(self, scope: _Scope, slot: int, visited: set):
        """A link from a subgraph's input slot: follow the matching input of the instance outwards."""
        definition_inputs = scope.definition.get("inputs") or []
        if not 0 <= slot < len(definition_inputs):
            raise WorkflowConversionError(
                f"{scope.instance.describe()}: a link inside the subgraph uses input slot {slot}, which the "
                f"subgraph does not have; {_FIX_IN_FRONTEND}.")
        name = definition_inputs[slot].get("name")
        # Matched by name: saved instances omit unconnected widget inputs, so indices can differ.
        for index, instance_input in enumerate(scope.instance.inputs):
            if instance_input.get("name") == name:
                return self._resolve_input(scope.instance, index, visited)
        return None  # unconnected: the inner widget keeps its own value (the frontend saves the promoted value there)

    def _resolve_subgraph_output(self, ref: _NodeRef, slot: int, wanted_type: Any, visited: set):
        """An output of a subgraph instance: follow the inner link that feeds that output slot."""
        inner = self.instance_scopes[ref.execution_id]
        link = next((link for link in inner.links.values()
                     if link.target_id == SUBGRAPH_OUTPUT_NODE_ID and link.target_slot == slot), None)
        if link is None:
            return None
        if link.origin_id == SUBGRAPH_INPUT_NODE_ID:  # an input wired straight to an output
            return self._resolve_subgraph_input(inner, link.origin_slot, visited)
        inner_ref = self.refs.get(":".join((*inner.path, str(link.origin_id))))
        if inner_ref is None:
            raise WorkflowConversionError(
                f"{ref.describe()}: output {slot} of the subgraph comes from inner node {link.origin_id}, which is "
                f"not in the subgraph; {_FIX_IN_FRONTEND}.")
        return self._resolve_output(inner_ref, link.origin_slot, wanted_type, visited)

    def _output_type(self, ref: _NodeRef, slot: int) -> Any:
        outputs = ref.node.get("outputs") or []
        if 0 <= slot < len(outputs) and outputs[slot].get("type") is not None:
            return outputs[slot]["type"]
        declared = (self.object_info.get(ref.type) or {}).get("output") or []
        return declared[slot] if 0 <= slot < len(declared) else "*"


# --- dynamic prompts (frontend utils/formatUtil.ts processDynamicPrompt) ---------------------------------------------

_COMMENTS = re.compile(r"/\*[\s\S]*?\*/|//.*")
_ESCAPED_SYNTAX = re.compile(r"\\([{}|])")


def process_dynamic_prompt(text: str, rng: random.Random) -> str:
    """Strip C-style comments and replace each ``{a|b|c}`` with one choice, as the frontend does when queueing."""
    text = _COMMENTS.sub("", text)
    result, position = [], 0
    while position < len(text):
        char = text[position]
        position += 1
        if char == "\\":
            result.append("\\" + text[position:position + 1])
            position += 1
        elif char == "{":
            options, position = _choice_block(text, position)
            result.append(process_dynamic_prompt(options[int(rng.random() * len(options))], rng))
        else:
            result.append(char)
    return _ESCAPED_SYNTAX.sub(r"\1", "".join(result))


def _choice_block(text: str, position: int) -> tuple[list[str], int]:
    """Split the body of one ``{...}`` at top-level ``|``; nested braces stay in the option for later expansion."""
    options, current, depth = [], [], 0
    while position < len(text):
        char = text[position]
        position += 1
        if char == "\\":
            current.append("\\" + text[position:position + 1])
            position += 1
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if not depth:
                break
            depth -= 1
        elif char == "|" and not depth:
            options.append("".join(current))
            current = []
            continue
        current.append(char)
    options.append("".join(current))
    return options, position


# --- helpers -------------------------------------------------------------------------------------------------------


def _ordered_input_specs(class_info: dict) -> list[tuple[str, Any]]:
    """(name, spec) of required then optional inputs in ``input_order``; others follow in dict order."""
    declared = class_info.get("input") or {}
    order = class_info.get("input_order") or {}
    specs: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for group in ("required", "optional"):
        group_specs = declared.get(group) or {}
        for name in [*(order.get(group) or []), *group_specs]:
            if name in group_specs and name not in seen:
                seen.add(name)
                specs.append((name, group_specs[name]))
    return specs


def _spec_kind(spec: Any) -> tuple[str, dict]:
    """(widget kind, options) of an /object_info input spec: ``[type, options]`` where a list type is a combo."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return "", {}
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        return "COMBO", {**options, "options": list(kind)}
    return str(kind), options


def _extra_widget_count(name: str, kind: str, options: dict) -> int:
    """Values the frontend stores after this widget's own: a control mode, a combo filter, a refresh button."""
    control = options.get("control_after_generate")
    if kind == "INT":
        has_control = bool(control) if control is not None else name in LEGACY_SEED_NAMES
        return 1 if has_control else 0
    if kind == "COMBO":
        extra = 2 if control else 0  # combos get the control mode and a filter-list text widget
        remote = options.get("remote")
        if isinstance(remote, dict) and remote.get("refresh_button"):
            extra += 1
        return extra
    return 0


def _has_widget_default(kind: str, options: dict) -> bool:
    return "default" in options or kind in _FALLBACK_DEFAULTS or (kind == "COMBO" and bool(options.get("options")))


def _widget_default(kind: str, options: dict) -> Any:
    if kind == "COMBO":
        return options.get("default") or next(iter(options.get("options") or []), None)
    if options.get("default") is not None:
        return options["default"]
    return _FALLBACK_DEFAULTS.get(kind)


def _bypass_input_index(inputs: list[dict], slot: int, wanted_type: Any, output_type: Any) -> int:
    """The input a bypassed node passes through for output ``slot`` (ExecutableNodeDTO.#getBypassSlotIndex)."""
    if wanted_type in ("*", "", None):
        return (slot if len(inputs) > slot else 0) if inputs else -1
    if slot < len(inputs):
        opposite = inputs[slot].get("type")
        if _types_compatible(opposite, output_type) and _types_compatible(opposite, wanted_type):
            return slot
    for index, candidate in enumerate(inputs):
        if candidate.get("type") == wanted_type:
            return index
    for index, candidate in enumerate(inputs):
        if _types_compatible(candidate.get("type"), output_type) and _types_compatible(candidate.get("type"), wanted_type):
            return index
    return -1


def _types_compatible(type_a: Any, type_b: Any) -> bool:
    """LiteGraph.isValidConnection: ``*``/empty match anything; comma lists match if any member does."""
    if type_a in ("", "*", None) or type_b in ("", "*", None) or type_a == type_b:
        return True
    a, b = str(type_a).lower(), str(type_b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(_types_compatible(x, y) for x in a.split(",") for y in b.split(","))


def _visit(visited: set, key: tuple, ref: _NodeRef) -> None:
    if key in visited:
        raise WorkflowConversionError(
            f"{ref.describe()}: its {key[1]} {key[2]} is part of a circular chain of links (through reroutes, "
            f"bypassed nodes or subgraphs); break the loop in the frontend and save again.")
    visited.add(key)


def _nodes_by_id(nodes: list) -> dict[str, dict]:
    return {str(node["id"]): node for node in nodes if isinstance(node, dict) and "id" in node}


def _links_by_id(links: Any) -> dict[Any, _Link]:
    """Links as saved: ``[id, origin, origin_slot, target, target_slot, type]`` lists or (subgraphs) objects."""
    result: dict[Any, _Link] = {}
    for link in links or []:
        if isinstance(link, dict):
            result[link["id"]] = _Link(link["origin_id"], int(link["origin_slot"]), link["target_id"],
                                       int(link["target_slot"]))
        elif isinstance(link, (list, tuple)) and len(link) >= 5:
            result[link[0]] = _Link(link[1], int(link[2]), link[3], int(link[4]))
    return result


def _collect_subgraph_definitions(workflow: dict) -> dict[str, dict]:
    found: dict[str, dict] = {}
    pending = list((workflow.get("definitions") or {}).get("subgraphs") or [])
    while pending:
        definition = pending.pop()
        if isinstance(definition, dict) and definition.get("id") not in found:
            found[definition["id"]] = definition
            pending.extend((definition.get("definitions") or {}).get("subgraphs") or [])
    return found


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _api_value(value: Any) -> Any:
    """A literal as the API carries it: lists are wrapped so that the backend does not read them as links."""
    return {"__value__": value} if isinstance(value, list) else value


def _not_a_ui_workflow(workflow: Any) -> str:
    if isinstance(workflow, dict) and workflow and all(
            isinstance(entry, dict) and "class_type" in entry for entry in workflow.values()):
        return "workflow is already an API-format prompt (its entries have 'class_type'); post it as it is."
    kind = type(workflow).__name__
    keys = sorted(workflow)[:8] if isinstance(workflow, dict) else []
    return (f"workflow is not a UI-format workflow: expected a JSON object with a 'nodes' list, got a {kind} with "
            f"keys {keys}; export it from the ComfyUI frontend with Workflow > Save (not Export (API)).")
