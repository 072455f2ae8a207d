"""Authoring the shipped workflows: each is written once in API form (``specs_*``), listed in ``catalog`` and turned
into the UI files in ``workflows/`` by ``builder``."""
