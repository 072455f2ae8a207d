"""The memory patch against host behaviour that varies: separate cond/uncond calls, ScaleROPE's rope_options, the
offload-aware weight cast, and Wan S2V blocks. Prints one JSON line.

Run inside ComfyUI's Python with cwd = the ComfyUI folder: ``python host_compat.py --dit tiny.safetensors``.
Newer ComfyUI's APIs that 0.3.64 lacks are stood in for by small doubles written here from the newer files' code
(rope_encode's rope_options formula; CastBiasWeightContext / uncast_bias_weight's call protocol): what is checked is
that the pack drives them as the newer host does, not the newer host itself.
"""

from __future__ import annotations

import argparse
import json
import types

from _pack import bootstrap, max_diff, pack



def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dit", required=True)
    args = parser.parse_args()
    bootstrap(with_nodes=True)

    import torch
    import comfy.ldm.wan.model as wan_model
    import comfy.ops
    import comfy.patcher_extension
    import comfy.sd
    import nodes as comfy_nodes

    patch = pack("nodes.patches.memory_patch")
    node = pack("nodes.memory_nodes")
    context_lib = pack("memv2v_core.memory.context")
    stream_lib = pack("memv2v_core.memory.stream")

    torch.manual_seed(0)
    model = comfy.sd.load_diffusion_model(args.dit)
    dm = model.model.diffusion_model
    frames, size = 3, 8
    user = torch.randn(1, 16, frames, size, size)
    memories = [(f"m{i}", torch.randn(1, 16, frames, size, size), 0.9 - 0.1 * i, None) for i in range(4)]
    ctx = context_lib.build_context(user, memories, "nvs", latent_format="wan21")
    out: dict = {"blocks": len(dm.blocks)}

    # --- 1. one merge plan per step, batched or as separate cond / uncond calls ---------------------------------
    latent = {"samples": torch.randn(1, 16, frames, size, size)}
    # strong, unrelated texts: the two passes rank memory frames differently, so sharing one plan is visible
    positive = [[30 * torch.randn(1, 16, 4096), {}]]
    negative = [[30 * torch.randn(1, 16, 4096), {}]]
    short_negative = [[negative[0][0][:, :11], {}]]  # WAN21's text cond only batches with an equal shape

    def sample(cond_batch=None, keep_pack_cond_batch=True, neg=negative):
        calls = []
        patched, _ = node.patch_model(model, ctx, "1", 0.5, "merge", observer=calls.append)
        if not keep_pack_cond_batch:  # the behaviour before one plan per step: each pass ranks on its own rows
            patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, patch.WRAPPER_KEY)
        if cond_batch is not None:
            patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "test.separate",
                                         cond_batch)
        (result,) = comfy_nodes.common_ksampler(patched, 7, 4, 5.0, "euler", "simple", positive, neg, latent,
                                                denoise=1.0)
        return result["samples"], [(list(c.cond_or_uncond), [list(e.frames) for e in c.state.events]) for c in calls]

    def low_memory(executor, base, conds, x_in, timestep, model_options):
        """ComfyUI batches cond and uncond only while memory_required fits; here it never does (low VRAM)."""
        base.memory_required = lambda *a, **k: float("inf")
        try:
            return executor(base, conds, x_in, timestep, model_options)
        finally:
            del base.memory_required

    batched, batched_calls = sample()
    separate, separate_calls = sample(low_memory)
    unequal, unequal_calls = sample(neg=short_negative)
    old, old_calls = sample(low_memory, keep_pack_cond_batch=False)
    out["plan"] = {"batched_calls": batched_calls, "separate_calls": separate_calls, "unequal_calls": unequal_calls,
                   "old_calls": old_calls, "separate_vs_batched_max_diff": max_diff(separate, batched),
                   "old_vs_batched_max_diff": max_diff(old, batched)}

    # --- 2. rope_options (ScaleROPE): memory positions move exactly where the model moves the video's ------------
    rope_options = {"scale_t": 0.5, "shift_t": 2.0, "scale_y": 2.0, "shift_y": -1.0, "scale_x": 1.5, "shift_x": 3.0}
    seen: list = []
    hook = dm.rope_embedder.register_forward_hook(lambda m, a, o: seen.append(a[0][0].clone()))
    off_patched, _ = node.patch_model(model, ctx, "auto", 0.5, "off")
    x = torch.randn(2, 16, frames, size, size)
    text = torch.randn(2, 16, 4096)
    t = torch.full((2,), 500.0)

    def run(with_rope_options):
        options = dict(off_patched.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in off_patched.wrappers.items()}
        options["cond_or_uncond"] = [1, 0]
        if with_rope_options:
            options["rope_options"] = dict(rope_options)
        seen.clear()
        with torch.no_grad():
            result = off_patched.model.diffusion_model(x, t, text, transformer_options=options)
        video_ids, memory_ids = seen  # rope_encode's call for the video, then the pack's for the memory
        return result, video_ids, memory_ids

    def newer_rope_encode(self, t, h, w, t_start=0, steps_t=None, steps_h=None, steps_w=None, device=None,
                          dtype=None, transformer_options={}):
        """Newer ComfyUI's rope_encode formula (0.3.68+). 0.3.64's _forward passes no transformer_options, so the
        double takes this test's rope_options from the closure."""
        p = self.patch_size
        t_len, h_len, w_len = (t + p[0] // 2) // p[0], (h + p[1] // 2) // p[1], (w + p[2] // 2) // p[2]
        steps_t, steps_h, steps_w = steps_t or t_len, steps_h or h_len, steps_w or w_len
        o = rope_options
        t_len, h_len, w_len = ((t_len - 1.0) * o["scale_t"] + 1.0, (h_len - 1.0) * o["scale_y"] + 1.0,
                               (w_len - 1.0) * o["scale_x"] + 1.0)
        t_start, h_start, w_start = t_start + o["shift_t"], o["shift_y"], o["shift_x"]
        ids = torch.zeros((steps_t, steps_h, steps_w, 3), device=device, dtype=dtype)
        ids[..., 0] += torch.linspace(t_start, t_start + t_len - 1, steps_t, device=device, dtype=dtype)[:, None, None]
        ids[..., 1] += torch.linspace(h_start, h_start + h_len - 1, steps_h, device=device, dtype=dtype)[None, :, None]
        ids[..., 2] += torch.linspace(w_start, w_start + w_len - 1, steps_w, device=device, dtype=dtype)[None, None, :]
        return self.rope_embedder(ids.reshape(1, -1, 3)).movedim(1, 2)

    plain, plain_video, plain_memory = run(False)
    ignored, ignored_video, ignored_memory = run(True)  # 0.3.64: the model ignores rope_options, and so must memory
    dm.rope_encode = types.MethodType(newer_rope_encode, dm)
    try:
        newer_reads = patch.model_reads_rope_options(dm)
        moved, moved_video, moved_memory = run(True)
    finally:
        del dm.rope_encode
    hook.remove()
    scale = torch.tensor([rope_options["scale_t"], rope_options["scale_y"], rope_options["scale_x"]])
    shift = torch.tensor([rope_options["shift_t"], rope_options["shift_y"], rope_options["shift_x"]])
    out["rope"] = {
        "host_reads_rope_options": patch.model_reads_rope_options(dm), "double_reads_rope_options": newer_reads,
        "ignored_output_equal": bool(torch.equal(ignored, plain)),
        "ignored_video_equal": bool(torch.equal(ignored_video, plain_video)),
        "ignored_memory_equal": bool(torch.equal(ignored_memory, plain_memory)),
        # with a host that reads them: video and memory both follow p' = shift + scale * p
        "video_moved_max_diff": max_diff(moved_video, plain_video * scale + shift),
        "memory_moved_max_diff": max_diff(moved_memory, plain_memory * scale + shift),
        "memory_moved_by": max_diff(moved_memory, plain_memory),
        "memory_tokens": int(plain_memory.shape[0]),
        "moved_output_differs": max_diff(moved, plain),
    }

    # --- 3. the patch embedding's weights through the offload-aware cast API (newer ComfyUI) ---------------------
    layer = dm.patch_embedding
    real_cast = comfy.ops.cast_bias_weight
    log: list = []

    class CastBiasWeightContext:  # the newer protocol: cast on init, (weight, bias) on enter, release on exit
        def __init__(self, *a, offloadable=False, **k):
            log.append(("init", offloadable, k.get("dtype"), str(k.get("device"))))
            self.pair = real_cast(*a, **k)

        def __enter__(self):
            log.append(("enter",))
            return self.pair

        def __exit__(self, *exc):
            log.append(("exit",))

    def cast_offloadable(s, input=None, dtype=None, device=None, bias_dtype=None, offloadable=False):
        weight, bias = real_cast(s, input, dtype, device, bias_dtype)
        return (weight, bias, "offload-state") if offloadable else (weight, bias)

    def uncast(s, weight, bias, state):
        log.append(("uncast", s is layer, state))

    cast = {"has_context_here": hasattr(comfy.ops, "CastBiasWeightContext"),
            "has_uncast_here": hasattr(comfy.ops, "uncast_bias_weight")}
    weight0, bias0 = patch._base_patch_weights(dm, torch.device("cpu"))
    cast["fallback_equal"] = bool(torch.equal(weight0, layer.weight.float()))
    baseline = off_patched.model.diffusion_model
    for variant in ("context", "uncast"):
        log.clear()
        if variant == "context":
            comfy.ops.CastBiasWeightContext = CastBiasWeightContext
        else:
            comfy.ops.cast_bias_weight, comfy.ops.uncast_bias_weight = cast_offloadable, uncast
        try:
            weight, bias = patch._base_patch_weights(dm, torch.device("cpu"))
            one_call = list(log)
            options = dict(off_patched.model_options.get("transformer_options", {}))
            options["wrappers"] = {kind: dict(by_key) for kind, by_key in off_patched.wrappers.items()}
            with torch.no_grad():
                result = baseline(x, t, text, transformer_options=options)
        finally:
            if variant == "context":
                del comfy.ops.CastBiasWeightContext
            else:
                comfy.ops.cast_bias_weight = real_cast
                del comfy.ops.uncast_bias_weight
        cast[variant] = {"log": [[str(v) for v in entry] for entry in one_call],
                         "equal": bool(torch.equal(weight, weight0)) and bool(torch.equal(bias, bias0)),
                         "cloned": weight.data_ptr() != layer.weight.data_ptr(),
                         "output_equal": bool(torch.equal(result, plain))}
    out["cast"] = cast

    # --- 4. merging on Wan S2V only where the host passes transformer_options to its blocks ----------------------
    class NewerS2V(wan_model.WanModel_S2V):
        """Stands in for ComfyUI >= 0.5.0, whose S2V block_wrap passes the options on (only its code is inspected)."""

        def forward_orig(self, x, *a, transformer_options={}, **k):
            def block_wrap(args):
                return {"img": self.blocks[0](args["img"], transformer_options=args["transformer_options"])}
            return block_wrap

    shell_old = wan_model.WanModel_S2V.__new__(wan_model.WanModel_S2V)
    shell_new = NewerS2V.__new__(NewerS2V)
    merge = stream_lib.MergeSettings(blocks=(1,))
    error = None
    try:
        patch.apply_memory(types.SimpleNamespace(get_model_object=lambda name: shell_old), ctx, merge)
    except ValueError as exc:
        error = str(exc)
    out["s2v"] = {"wan": patch.blocks_receive_options(dm), "s2v_here": patch.blocks_receive_options(shell_old),
                  "s2v_newer": patch.blocks_receive_options(shell_new), "refusal": error}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
