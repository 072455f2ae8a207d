"""Every shipped workflow's spec, in the order the template browser lists them; ``builder`` writes them to ``workflows/``."""

from __future__ import annotations

from . import specs_edit, specs_nvs, specs_story, specs_turns

SPECS = [*specs_turns.specs(), *specs_nvs.specs(), *specs_edit.specs(), *specs_story.specs()]
