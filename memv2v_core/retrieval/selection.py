"""The result of retrieval: ranked memory entries, handed from retrieval to tokenization."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SelectedMemory:
    """One retrieved entry: its bank id, its score and how the score was made (e.g. iou, containment)."""

    entry_id: str
    score: float
    details: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """Ranked memories, best first, with the bank they come from (latents are loaded lazily from it).

    ``mode`` says how the memories relate to the target: "nvs" (novel view synthesis: all memories
    share one temporal range) or "edit" (long-video editing: ``items[0]`` is the previous segment).
    """

    bank: Any
    items: tuple[SelectedMemory, ...]
    mode: str = "nvs"

    def __len__(self) -> int:
        return len(self.items)

    @property
    def entry_ids(self) -> list[str]:
        return [item.entry_id for item in self.items]
