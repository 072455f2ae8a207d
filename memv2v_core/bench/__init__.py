"""Benchmarks: ``python -m memv2v_core.bench <name>``; each prints ratios measured side by side in one run."""
