"""Shipped workflow specs for long text-guided video editing (LucyEdit or any Wan V2V model)."""

from __future__ import annotations

from .workflow_builder import Note, WorkflowSpec  # noqa: F401


def specs() -> list[WorkflowSpec]:
    return []
