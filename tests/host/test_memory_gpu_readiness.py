"""GPU costs of the memory patch, checked on the CPU with a tiny model: ComfyUI's memory estimate (which decides how
much of the model stays on the GPU and whether cond and uncond share a batch) counts the memory tokens exactly as its
own formula counts video tokens, the memory latents are uploaded and embedded once per sampling run, and the camera
modules are ComfyUI cast ops counted in the model's size."""

from __future__ import annotations

import pytest

from test_memory_equivalence import run_script


@pytest.fixture(scope="module")
def readiness(host) -> dict:
    return run_script(host, "gpu_readiness.py")


def test_memory_estimate_grows_with_the_memory_tokens_as_comfyui_counts_video_tokens(readiness):
    rows, noise, patch = readiness["estimate"], readiness["noise_elements"], readiness["patch_elements"]
    plain = rows["unpatched"]
    assert rows["empty"]["estimate"] == plain["estimate"] and rows["empty"]["batching"] == plain["batching"]
    assert rows["memories_6"]["tokens"] > rows["user_only"]["tokens"] > 0
    for name in ("user_only", "memories_6"):
        # ComfyUI's estimate is linear in latent elements: M memory tokens weigh M x prod(patch) elements per row
        expected = 1 + rows[name]["tokens"] * patch / noise
        for got, base in zip(rows[name]["estimate"], plain["estimate"]):  # (batched cond+uncond, minimum)
            assert got / base == pytest.approx(expected, rel=1e-12)
        assert rows[name]["batching"] / plain["batching"] == pytest.approx(expected, rel=1e-12)
    assert not readiness["shadow_left_behind"]


def test_memory_latents_are_uploaded_once_per_sampling_run(readiness):
    up = readiness["uploads"]
    one = up["one_run"]
    assert one["model_calls"] == 3  # 3 steps, cond+uncond batched
    assert one["uploads"] == one["streams"] == 7  # user video + 6 memories, each once
    two = up["two_runs_separate_calls"]
    assert two["model_calls"] == 12 and two["uploads"] == 2 * one["streams"]  # once per run, not per call
    # teeth: without the run cache every model call uploads every stream again, with the same result
    assert up["without_run_cache"]["uploads"] == 3 * one["streams"]
    assert up["cached_vs_uncached_max_diff"] == 0.0
    assert up["runs_left_open"] == 0


def test_camera_modules_are_comfyui_cast_ops_counted_in_the_model_size(readiness):
    cam = readiness["camera"]
    assert cam["cast_ops"] and cam["finite"]  # cast and offloaded by ComfyUI like the model's own layers
    assert cam["patched_size"] == cam["plain_size"] + cam["camera_bytes"]
    assert cam["second_apply_size"] == cam["patched_size"]  # a second Apply Memory replaces, it does not add
