"""What a shipped workflow is made of: its API prompt, notes, groups and saved widget controls."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Note:
    """A Markdown note placed at a column (dependency depth) above or below the nodes there."""

    text: str
    column: int = 0
    title: str = "Note"
    height: int = 160


@dataclass
class WorkflowSpec:
    """A shipped workflow: its API prompt (with ``_meta.title``), notes, node groups (title -> node ids) and the saved
    control_after_generate modes (node id -> {input: "fixed" | "increment" | "decrement" | "randomize"}; default fixed)."""

    name: str
    prompt: dict
    notes: list[Note] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    controls: dict[str, dict[str, str]] = field(default_factory=dict)
