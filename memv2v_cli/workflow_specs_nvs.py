"""Shipped workflow specs for multi-turn novel view synthesis (ReCamMaster / Memory-V2V)."""

from __future__ import annotations

from .workflow_builder import Note, WorkflowSpec  # noqa: F401


def specs() -> list[WorkflowSpec]:
    return []
