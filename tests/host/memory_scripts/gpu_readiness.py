"""The memory patch's GPU costs, checked on the CPU: ComfyUI's memory estimate counts the memory tokens, and the
memory latents go to the device once per sampling run. Prints one JSON line.

Run inside ComfyUI's Python with cwd = the ComfyUI folder: ``python gpu_readiness.py --dit tiny.safetensors``.
"""

from __future__ import annotations

import argparse
import json

from _pack import bootstrap, max_diff, pack


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dit", required=True)
    args = parser.parse_args()
    bootstrap(with_nodes=True)

    import torch
    from torch.overrides import TorchFunctionMode

    import comfy.patcher_extension
    import comfy.sampler_helpers
    import comfy.sd
    import nodes as comfy_nodes

    patch = pack("nodes.patches.memory_patch")
    node = pack("nodes.memory_nodes")
    context_lib = pack("memv2v_core.memory.context")

    torch.manual_seed(0)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes: the weights are inference tensors
        model = comfy.sd.load_diffusion_model(args.dit)
    base = model.model
    frames, size, steps = 3, 8, 3
    user = torch.randn(1, 16, frames, size, size)
    memories = [(f"m{i}", torch.randn(1, 16, frames, size, size), 0.9 - 0.1 * i, None) for i in range(6)]
    contexts = {
        "empty": context_lib.build_context(None, [], "nvs", target_frames=frames, latent_format="wan21"),
        "user_only": context_lib.build_context(user, [], "nvs", latent_format="wan21"),
        "memories_6": context_lib.build_context(user, memories, "nvs", latent_format="wan21"),
    }
    latent = {"samples": torch.randn(1, 16, frames, size, size)}
    positive = [[torch.randn(1, 16, 4096), {}]]
    negative = [[torch.randn(1, 16, 4096), {}]]
    out: dict = {"noise_elements": frames * size * size, "patch_elements": 4}

    estimates: list = []
    original_estimate = comfy.sampler_helpers.estimate_memory

    def recording_estimate(*a, **k):
        result = original_estimate(*a, **k)
        estimates.append(list(result))
        return result

    comfy.sampler_helpers.estimate_memory = recording_estimate

    def batching_probe(seen):
        """A CALC_COND_BATCH wrapper inside the pack's: what ComfyUI's batching decision sees for a 2-row call."""
        def probe(executor, inner, conds, x_in, timestep, model_options):
            seen.append(inner.memory_required([2, 16, frames, size, size], {}))
            return executor(inner, conds, x_in, timestep, model_options)
        return probe

    class CountUploads(TorchFunctionMode):
        """Counts ``Tensor.to`` calls on the patched model's stored memory latents (its host-to-device copies)."""

        def __init__(self, latents):
            super().__init__()
            self.ids = {id(t) for t in latents}
            self.count = 0

        def __torch_function__(self, func, types, a=(), kw=None):
            if func is torch.Tensor.to and a and id(a[0]) in self.ids:
                self.count += 1
            return func(*a, **(kw or {}))

    def stored_latents(patched):
        wrapper = patched.wrappers[comfy.patcher_extension.WrappersMP.OUTER_SAMPLE][patch.WRAPPER_KEY][0]
        return [s.latent for s in wrapper._memv2v_installed.context.streams]

    def low_memory(executor, inner, conds, x_in, timestep, model_options):
        inner.memory_required = lambda *a, **k: float("inf")  # cond and uncond as separate calls (low VRAM)
        try:
            return executor(inner, conds, x_in, timestep, model_options)
        finally:
            del inner.memory_required

    def sample(patched):
        with torch.inference_mode():
            return _sample(patched)

    def _sample(patched):
        (result,) = comfy_nodes.common_ksampler(patched, 7, steps, 5.0, "euler", "simple", positive, negative, latent,
                                                denoise=1.0)
        return result["samples"]

    # --- 1. the estimate -------------------------------------------------------------------------------------------
    rows = {}
    for name, ctx in [("unpatched", None), *contexts.items()]:
        patched = model.clone() if ctx is None else node.patch_model(model, ctx, "auto", 0.5, "merge")[0]
        seen: list = []
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test.probe",
                                     batching_probe(seen))
        estimates.clear()
        sample(patched)
        tokens = 0 if ctx is None or not ctx.streams else context_lib.context_layout(ctx).num_tokens
        rows[name] = {"tokens": tokens, "estimate": estimates[0], "batching": seen[0]}
    out["estimate"] = rows
    out["shadow_left_behind"] = "memory_required" in vars(base)
    comfy.sampler_helpers.estimate_memory = original_estimate

    # --- 2. uploads: once per sampling run, not per call -----------------------------------------------------------
    ctx = contexts["memories_6"]
    calls: list = []
    patched, _ = node.patch_model(model, ctx, "auto", 0.5, "merge", observer=calls.append)
    latents = stored_latents(patched)
    uploads = {}
    with CountUploads(latents) as counter:
        cached = sample(patched)
    uploads["one_run"] = {"uploads": counter.count, "model_calls": len(calls), "streams": len(latents)}
    calls.clear()
    separate = patched.clone()
    separate.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test.low", low_memory)
    with CountUploads(latents) as counter:
        sample(separate)
        sample(separate)
    uploads["two_runs_separate_calls"] = {"uploads": counter.count, "model_calls": len(calls)}
    calls.clear()
    per_call = patched.clone()  # the behaviour before: no run, so every model call embeds again
    per_call.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, patch.WRAPPER_KEY)
    with CountUploads(latents) as counter:
        uncached = sample(per_call)
    uploads["without_run_cache"] = {"uploads": counter.count, "model_calls": len(calls)}
    uploads["cached_vs_uncached_max_diff"] = max_diff(cached, uncached)
    uploads["runs_left_open"] = len(patched.wrappers[comfy.patcher_extension.WrappersMP.OUTER_SAMPLE]
                                    [patch.WRAPPER_KEY][0]._memv2v_installed.runs)
    out["uploads"] = uploads

    # --- 3. camera modules: ComfyUI cast ops, counted in the model's size --------------------------------------------
    import types as pytypes

    presets = pack("memv2v_core.camera.presets")
    camera_patch = pack("nodes.patches.camera_patch")
    dm = base.diffusion_model
    dim, depth = int(dm.dim), len(dm.blocks)
    g = torch.Generator().manual_seed(5)
    camera = {i: (torch.randn(dim, 12, generator=g), torch.zeros(dim), torch.eye(dim), torch.zeros(dim))
              for i in range(depth)}
    modules = pytypes.SimpleNamespace(camera=camera, tokenizers={}, merger=None, source="test")
    target = presets.preset_trajectory("pan_left", (frames - 1) * 4 + 1)
    with_camera, _ = node.patch_model(model, contexts["user_only"], "auto", 0.5, "off", modules, camera=target)
    again, _ = node.patch_model(with_camera, contexts["user_only"], "auto", 0.5, "off", modules, camera=target)
    layers = [with_camera.object_patches[f"diffusion_model.blocks.{i}.self_attn"] for i in range(depth)]
    camera_bytes = sum(4 * (dim * 12 + dim + dim * dim + dim) for _ in range(depth))
    out["camera"] = {
        "plain_size": model.model_size(), "patched_size": with_camera.model_size(), "camera_bytes": camera_bytes,
        "second_apply_size": again.model_size(),
        "cast_ops": all(getattr(m, "comfy_cast_weights", False) for layer in layers
                        for m in (layer.cam_encoder, layer.projector)),
        "finite": bool(torch.isfinite(sample(with_camera)).all()),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
