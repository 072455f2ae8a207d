"""The memory patch on the real WanModel (tiny test model): prints one JSON line of measured differences.

Run inside ComfyUI's Python with cwd = the ComfyUI folder: ``python equivalence.py --dit tiny.safetensors``.
References are computed by hand from the model's own modules: blocks on cat[video, memory] with cat[freqs, memory
RoPE], then head + unpatchify on the video part; responsiveness from q/k captured with forward hooks.
"""

from __future__ import annotations

import argparse
import json
import math

from _pack import bootstrap, max_diff, pack



def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dit", required=True)
    args = parser.parse_args()
    bootstrap(with_nodes=True)

    import torch
    import comfy.sd
    from comfy.ldm.flux.math import apply_rope1
    from comfy.ldm.wan.model import sinusoidal_embedding_1d

    patch = pack("nodes.patches.memory_patch")
    node = pack("nodes.memory_nodes")
    context_lib = pack("memv2v_core.memory.context")
    tokenize = pack("memv2v_core.memory.tokenize")

    torch.manual_seed(0)
    model = comfy.sd.load_diffusion_model(args.dit)
    dm = model.model.diffusion_model
    batch, frames, size = 2, 3, 8
    x = torch.randn(batch, 16, frames, size, size)
    text = torch.randn(batch, 16, 4096)
    t_scalar = torch.full((batch,), 600.0)
    t_frames = torch.tensor([[0.0, 600.0, 600.0]] * batch)  # per-frame, first frame clean (WAN22 with a noise_mask)
    user = torch.randn(1, 16, frames, size, size)
    memories = [(f"m{i}", torch.randn(1, 16, frames, size, size), 0.9 - 0.1 * i, None) for i in range(4)]
    ctx = context_lib.build_context(user, memories, "nvs", latent_format="wan21")
    empty = context_lib.build_context(None, [], "nvs", target_frames=frames)

    def run(patcher, t, cond_or_uncond=(1, 0), xs=x, txt=text):
        options = dict(patcher.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in patcher.wrappers.items()}
        options["cond_or_uncond"] = list(cond_or_uncond)
        with torch.no_grad():
            return patcher.model.diffusion_model(xs, t, txt, transformer_options=options)

    def memory_tokens(context, loaded=None):
        processed = context_lib.MemoryContext(
            context.mode, context.target_frames,
            tuple(context_lib.ContextStream(s.role, s.entry_id, model.model.process_latent_in(s.latent), s.kernel,
                                            s.temporal_ids, s.rank, s.score) for s in context.streams))
        derived = tokenize.DerivedTokenizer(dm.patch_embedding.weight, dm.patch_embedding.bias)

        def weights(kernel):  # loaded kernels win, the rest are derived (what Apply Memory does)
            return (loaded or {}).get(tuple(kernel)) or derived(kernel)

        embedded = context_lib.embed_context(processed, weights, dtype=x.dtype, grid_unit=(1, 2, 2))
        pe = dm.rope_embedder(embedded.positions.unsqueeze(0)).movedim(1, 2)
        return embedded, pe

    def reference(t, stop_before=None, loaded=None):
        """The model computed by hand with the memory concatenated to the sequence (no merging)."""
        embedded, mem_pe = memory_tokens(ctx, loaded)
        with torch.no_grad():
            video = dm.patch_embedding(x.float()).to(x.dtype)
            grid = video.shape[2:]
            video = video.flatten(2).transpose(1, 2)
            e = dm.time_embedding(sinusoidal_embedding_1d(dm.freq_dim, t.flatten()).to(dtype=video.dtype))
            e = e.reshape(t.shape[0], -1, e.shape[-1])
            e0 = dm.time_projection(e).unflatten(2, (6, dm.dim))
            txt = dm.text_embedding(text)
            freqs = dm.rope_encode(frames, size, size, device=x.device, dtype=x.dtype)
            n_video, n_mem = video.shape[1], embedded.tokens.shape[1]
            vec = e0 if e0.shape[1] == 1 else torch.cat(
                [e0.repeat_interleave(n_video // e0.shape[1], dim=1), e0[:, :1].expand(-1, n_mem, -1, -1)], dim=1)
            h = torch.cat([video, embedded.tokens.expand(batch, -1, -1)], dim=1)
            pe = torch.cat([freqs, mem_pe], dim=1)
            for i, block in enumerate(dm.blocks):
                if i == stop_before:
                    return h, pe, vec, txt, embedded.layout, n_video
                h = block(h, e=vec, freqs=pe, context=txt, context_img_len=None)
            return dm.unpatchify(dm.head(h[:, :n_video], e), grid)

    out: dict = {"blocks": len(dm.blocks)}
    plain_s, plain_f = run(model, t_scalar), run(model, t_frames)

    # 1. empty memory: bit-identical to the unpatched model (merging on, so every patch is installed)
    empty_patched, _ = node.patch_model(model, empty, "auto", 0.5, "merge")
    out["empty_scalar_max_diff"] = max_diff(run(empty_patched, t_scalar), plain_s)
    out["empty_frames_max_diff"] = max_diff(run(empty_patched, t_frames), plain_f)
    out["empty_scalar_equal"] = bool(torch.equal(run(empty_patched, t_scalar), plain_s))
    out["empty_frames_equal"] = bool(torch.equal(run(empty_patched, t_frames), plain_f))

    # 2. merging off: equals the hand-made concatenation, scalar and per-frame timesteps
    off_patched, _ = node.patch_model(model, ctx, "auto", 0.5, "off")
    off_s, off_f = run(off_patched, t_scalar), run(off_patched, t_frames)
    out["nomerge_scalar_max_diff"] = max_diff(off_s, reference(t_scalar))
    out["nomerge_frames_max_diff"] = max_diff(off_f, reference(t_frames))
    out["memory_effect_scalar"] = max_diff(off_s, plain_s)
    out["memory_effect_frames"] = max_diff(off_f, plain_f)
    out["output_shape"] = list(off_s.shape)

    # 3. loaded tokenizer weights (different from the derived ones) are used, and ride in an additional ModelPatcher
    derived = tokenize.DerivedTokenizer(dm.patch_embedding.weight, dm.patch_embedding.bias)
    loaded = {kernel: (derived(kernel)[0] * 1.5, derived(kernel)[1] + 0.05) for kernel in ((1, 4, 4), (1, 8, 8))}
    modules = {"tokenizers": {"1x4x4": loaded[(1, 4, 4)], (1, 8, 8): loaded[(1, 8, 8)]}}
    loaded_patched, _ = node.patch_model(model, ctx, "auto", 0.5, "off", modules)
    loaded_out = run(loaded_patched, t_scalar)
    out["loaded_additional_models"] = len(loaded_patched.get_additional_models_with_key(patch.WRAPPER_KEY))
    out["loaded_vs_reference_max_diff"] = max_diff(loaded_out, reference(t_scalar, loaded=loaded))
    out["loaded_vs_derived_max_diff"] = max_diff(loaded_out, off_s)

    # 4. clone() shares the patch closures and model_options hold no tensors
    clone = off_patched.clone()
    replaces = lambda p: p.model_options["transformer_options"]["patches_replace"]["dit"]  # noqa: E731
    out["clone_shares_patches"] = all(replaces(clone)[k] is replaces(off_patched)[k] for k in replaces(off_patched))

    def count_tensors(value) -> int:
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, dict):
            return sum(count_tensors(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(count_tensors(v) for v in value)
        return 0

    out["model_options_tensors"] = count_tensors(off_patched.model_options)

    # 5. merging at block 1: responsiveness from the real q/k, plan from the conditional rows, either batch order
    calls = []
    merged_patched, merge = node.patch_model(model, ctx, "1", 0.5, "merge", observer=calls.append)
    merged = run(merged_patched, t_scalar, (1, 0))
    call = calls[-1]
    event = call.state.events[0]
    h, pe, vec, txt, layout, n_video = reference(t_scalar, stop_before=1)
    captured = {}
    attn = dm.blocks[1].self_attn
    hooks = [attn.norm_q.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
             attn.norm_k.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))]
    with torch.no_grad():
        dm.blocks[1](h, e=vec, freqs=pe, context=txt, context_img_len=None)
    for hook in hooks:
        hook.remove()
    heads, n_tokens = attn.num_heads, h.shape[1]
    q = apply_rope1(captured["q"].view(batch, n_tokens, heads, -1), pe).float()
    k = apply_rope1(captured["k"].view(batch, n_tokens, heads, -1), pe).float()
    token_frame = layout.token_frame()
    candidates = [f for f, ok in enumerate(layout.mergeable) if ok]
    mean_keys = torch.stack([k[:, n_video:][:, token_frame == f].mean(dim=1) for f in candidates], dim=1)
    logits = torch.einsum("bqhd,bfhd->bqhf", q[:, :n_video], mean_keys) / math.sqrt(q.shape[-1])
    expected = logits.softmax(dim=-1).mean(dim=2).amax(dim=1)  # [B, candidate frames]
    recorded = call.responsiveness[1][:, candidates]
    order = torch.sort(expected[1], stable=True).indices[: int(len(candidates) * 0.5)]  # row 1 = cond for [1, 0]
    out["responsiveness_max_diff"] = max_diff(recorded, expected)
    out["responsiveness_rows_differ"] = max_diff(expected[0], expected[1])
    out["merge_frames"] = list(event.frames)
    out["merge_frames_expected"] = sorted(candidates[i] for i in order.tolist())
    uncond_order = torch.sort(expected[0], stable=True).indices[: int(len(candidates) * 0.5)]
    out["merge_frames_if_planned_on_uncond"] = sorted(candidates[i] for i in uncond_order.tolist())
    out["user_frames"] = [f for f, ok in enumerate(layout.mergeable) if not ok]
    out["merge_tokens"] = [event.tokens_before, event.tokens_after]
    out["merge_factor"] = merge.factor
    out["merged_finite"] = bool(torch.isfinite(merged).all())
    out["merged_vs_nomerge"] = max_diff(merged, off_s)
    swapped_calls = []
    swapped_patched, _ = node.patch_model(model, ctx, "1", 0.5, "merge", observer=swapped_calls.append)
    swapped = run(swapped_patched, t_scalar, (0, 1), x.flip(0), text.flip(0))
    out["swapped_order_max_diff"] = max_diff(swapped.flip(0), merged)
    out["swapped_merge_frames"] = list(swapped_calls[-1].state.events[0].frames)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
