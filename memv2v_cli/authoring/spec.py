"""What a shipped workflow is made of: its API prompt, notes, groups and saved widget controls."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Note:
    """A Markdown note. The builder puts the notes at the top left in this order, so the first is the read-me;
    ``column`` is no longer used for placement."""

    text: str
    column: int = 0
    title: str = "Note"
    height: int = 160


@dataclass
class WorkflowSpec:
    """A shipped workflow: its API prompt (with ``_meta.title``), notes, node groups (title -> node ids; one per
    stage, in data-flow order; a node left out joins the group of a node it is wired to), the saved
    control_after_generate modes (node id -> {input: "fixed" | "increment" | "decrement" | "randomize"}; default
    fixed), and the template browser's title and one-sentence description."""

    name: str
    prompt: dict
    notes: list[Note] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    controls: dict[str, dict[str, str]] = field(default_factory=dict)
    title: str = ""
    description: str = ""
