"""StoryMem's negative temporal RoPE shift on ComfyUI's own WanModel (tiny I2V layout); prints one JSON line.

Run with cwd = the ComfyUI folder: ``python story_rope.py``. The reference rotary frequencies are written here from
the official corrected StoryMem code (``model_memory.py``: ``rope_params`` over positions -512..511 for time with
44 dims, 0..1023 for height and width with 42 dims each, theta 10000; temporal ids ``cat(arange(-M*5, 0, 5),
arange(0, f - M))`` + 512), in float64, then put in ComfyUI's rotation-matrix layout; the model is then run with
them through its own ``forward_orig`` and compared with the patched model's ordinary forward.
"""

from __future__ import annotations

import json

from _story import bootstrap, pack, tiny_wan

M, SHOT, H, W, GAP = 3, 5, 8, 12, 5  # 3 memory latent frames + 5 shot frames, 8x12 latent = 4x6 tokens


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def main() -> int:
    bootstrap()
    import torch
    import comfy.patcher_extension
    import comfy.sample
    from comfy.ldm.flux.math import apply_rope1

    story = pack("nodes.patches.story_patch")
    memory_patch = pack("nodes.patches.memory_patch")
    context_lib = pack("memv2v_core.memory.context")

    # --- the official frequencies, written from StoryMem's formula --------------------------------------------------
    def rope_params(max_seq_len_positions, dim, theta=10000):
        freqs = torch.outer(max_seq_len_positions.double(),
                            1.0 / torch.pow(theta, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
        return torch.polar(torch.ones_like(freqs), freqs)

    def official_complex(memory, frames, h, w, d=128, shift=GAP, t_axis=None, h_axis=None, w_axis=None):
        """The official complex freqs per token [frames*h*w, d/2] (t, h, w axes concatenated, as rope_apply does)."""
        dt, dh = d - 4 * (d // 6), 2 * (d // 6)
        if t_axis is None:
            table_t = rope_params(torch.arange(-512, 512), dt)
            pos_t = torch.cat([torch.arange(-memory * shift, 0, shift), torch.arange(0, frames - memory)])
            ft = table_t[pos_t + 512]
        else:  # positions off the integer table (rope_options): the same formula at those positions
            ft = rope_params(t_axis, dt)
        fh = rope_params(torch.arange(1024), dh)[:h] if h_axis is None else rope_params(h_axis, dh)
        fw = rope_params(torch.arange(1024), dh)[:w] if w_axis is None else rope_params(w_axis, dh)
        return torch.cat([ft.view(frames, 1, 1, -1).expand(frames, h, w, -1),
                          fh.view(1, h, 1, -1).expand(frames, h, w, -1),
                          fw.view(1, 1, w, -1).expand(frames, h, w, -1)], dim=-1).reshape(frames * h * w, -1)

    def official_freqs(*args, **kwargs):
        """The same as ComfyUI's [1, L, 1, d/2, 2, 2] rotation matrices [[cos, -sin], [sin, cos]], in float32."""
        full = official_complex(*args, **kwargs)
        re, im = full.real, full.imag
        return torch.stack([re, -im, im, re], dim=-1).view(1, full.shape[0], 1, full.shape[1], 2, 2).float()

    out: dict = {}
    model = tiny_wan("i2v", in_dim=36, seed=0, std=0.1)
    dm = model.model.diffusion_model
    out["model_class"] = type(model.model).__name__
    out["model_type_i2v"] = dm.img_emb is not None
    out["in_dim"] = int(dm.patch_embedding.weight.shape[1])
    frames, ht, wt = M + SHOT, H // 2, W // 2

    # layout check: ComfyUI's apply_rope1 with these matrices is the official rope_apply (complex multiplication)
    probe = torch.randn(1, frames * ht * wt, 1, 128, dtype=torch.float64)
    ref_freqs = official_freqs(M, frames, ht, wt)
    official_rotated = torch.view_as_real(torch.view_as_complex(probe.view(-1, 64, 2).contiguous())
                                          * official_complex(M, frames, ht, wt)).reshape(probe.shape)
    out["layout_max_diff"] = max_diff(apply_rope1(probe.float(), ref_freqs), official_rotated)

    g = torch.Generator().manual_seed(1)
    batch = 2
    x = torch.randn(batch, 36, frames, H, W, generator=g)
    t = torch.full((batch,), 700.0)
    text = torch.randn(batch, 12, 4096, generator=g)
    clip_fea = torch.randn(batch, 257, 1280, generator=g)

    captured: list = []

    def capture_pe(args, extra):
        captured.append(args["pe"])
        return extra["original_block"](args)

    def run(patcher, xs=x, capture=False, inner_wrapper=None):
        if capture:
            patcher = patcher.clone()
            patcher.set_model_patch_replace(capture_pe, "dit", "double_block", 0)
        if inner_wrapper is not None:
            patcher = patcher.clone()
            patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test.inner",
                                         inner_wrapper)
        options = dict(patcher.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in patcher.wrappers.items()}
        captured.clear()
        with torch.no_grad():
            result = patcher.model.diffusion_model(xs, t, text, clip_fea=clip_fea, transformer_options=options)
        return result, (captured[0] if captured else None)

    plain, plain_pe = run(model, capture=True)

    # 1. M = 0: bit-identical to the unpatched model; the override's ids at M = 0 are ComfyUI's own, bit for bit
    zero = story.apply_story_rope(model, 0)
    zero_out, _ = run(zero)
    out["zero_equal"] = bool(torch.equal(zero_out, plain))
    out["zero_has_wrapper"] = story.WRAPPER_KEY in zero.wrappers.get("diffusion_model", {})
    ids0 = story.story_rope_ids(0, frames, ht, wt, GAP, dtype=torch.float32)
    freqs0 = dm.rope_embedder(ids0).movedim(1, 2)
    out["zero_ids_freqs_equal_comfy"] = bool(torch.equal(freqs0, dm.rope_encode(frames, H, W, dtype=torch.float32)))

    # 2. M > 0: the frequencies the blocks get are the official ones, and the forward equals the model run by hand
    shifted = story.apply_story_rope(model, M, gap=GAP)
    shifted_out, shifted_pe = run(shifted, capture=True)
    out["freqs_vs_official_max_diff"] = max_diff(shifted_pe, ref_freqs)
    out["freqs_equal_official"] = bool(torch.equal(shifted_pe, ref_freqs))
    with torch.no_grad():
        by_hand_out = dm.forward_orig(x, t, text, clip_fea=clip_fea, freqs=ref_freqs, transformer_options={})
    out["forward_vs_hand_max_diff"] = max_diff(shifted_out, by_hand_out)
    out["shift_effect"] = max_diff(shifted_out, plain)
    out["output_scale"] = float(plain.abs().max())
    out["output_shape"] = list(shifted_out.shape)
    out["temporal_ids"] = story.story_temporal_ids(M, SHOT, GAP).tolist()
    out["override_removed_after_call"] = "rope_encode" not in dm.__dict__
    # unshifted memory frames but the same model: only the memory frames' positions moved
    out["plain_pe_vs_official_unshifted"] = max_diff(plain_pe, official_freqs(0, frames, ht, wt))

    # 3. rope_options (ScaleROPE, ComfyUI >= 0.3.68 passes transformer_options to rope_encode): applied on top
    rope_options = {"scale_t": 0.5, "shift_t": 2.0, "scale_y": 2.0, "shift_y": 1.0, "scale_x": 1.0, "shift_x": -3.0}
    seen = {}

    def newer_core(executor, *args, **kwargs):  # what newer _forward does: rope_encode(..., transformer_options=)
        seen["freqs"] = dm.rope_encode(frames, H, W, device=x.device, dtype=x.dtype,
                                       transformer_options={"rope_options": rope_options})
        seen["context_latent"] = dm.rope_encode(2, H, W, device=x.device, dtype=x.dtype)
        return executor(*args, **kwargs)

    run(shifted, inner_wrapper=newer_core)
    pos_t = torch.cat([torch.arange(-M * GAP, 0, GAP), torch.arange(0, SHOT)]).double()
    want = official_freqs(M, frames, ht, wt, t_axis=2.0 + 0.5 * pos_t, h_axis=1.0 + 2.0 * torch.arange(ht).double(),
                          w_axis=-3.0 + torch.arange(wt).double())
    out["rope_options_max_diff"] = max_diff(seen["freqs"], want)
    # another call (e.g. a context-latent stream of another length) keeps ComfyUI's own positions
    out["other_call_untouched"] = bool(torch.equal(seen["context_latent"], dm.rope_encode(2, H, W, dtype=x.dtype)))

    # 4. composes with the memory patch (its own wrapper key): either order gives the same result
    user = torch.randn(1, 16, frames, H, W, generator=g)
    memories = [(f"m{i}", torch.randn(1, 16, 2, H, W, generator=g), 0.9 - 0.1 * i, None) for i in range(2)]
    ctx = context_lib.build_context(user, memories, "nvs", latent_format="wan21")
    mem_only = memory_patch.apply_memory(model, ctx, None)
    story_then_mem = memory_patch.apply_memory(story.apply_story_rope(model, M), ctx, None)
    mem_then_story = story.apply_story_rope(memory_patch.apply_memory(model, ctx, None), M)
    mem_out = run(mem_only)[0]
    a, b = run(story_then_mem)[0], run(mem_then_story)[0]
    out["compose_order_max_diff"] = max_diff(a, b)
    out["compose_vs_memory_only"] = max_diff(a, mem_out)
    out["compose_vs_story_only"] = max_diff(a, shifted_out)
    out["compose_wrapper_keys"] = sorted(mem_then_story.wrappers.get("diffusion_model", {}))
    # applying the shift again replaces it (one wrapper under the key, the latest M)
    twice = story.apply_story_rope(story.apply_story_rope(model, 1), M)
    out["reapply_wrappers"] = len(twice.wrappers["diffusion_model"][story.WRAPPER_KEY])
    out["reapply_max_diff"] = max_diff(run(twice)[0], shifted_out)

    # 5. through ComfyUI's sampler (the wrapper reaches the model in real sampling): M = 0 identical, M > 0 not
    lat = torch.randn(1, 16, frames, H, W, generator=g)
    mask = torch.ones(1, 1, frames, H, W)
    mask[:, :, :M + 1] = 0  # memory frames and the shot's first frame are given (MI2V)
    cond = [[text[:1], {"concat_latent_image": lat, "concat_mask": mask}]]
    neg = [[text[1:], {"concat_latent_image": lat, "concat_mask": mask}]]
    noise = torch.randn(1, 16, frames, H, W, generator=torch.Generator().manual_seed(3))

    def sample(patcher):
        return comfy.sample.sample(patcher, noise, 2, 3.5, "euler", "simple", cond, neg, torch.zeros_like(noise),
                                   denoise=1.0, seed=3, disable_pbar=True)

    base_sample = sample(model)
    out["sample_zero_equal"] = bool(torch.equal(sample(story.apply_story_rope(model, 0)), base_sample))
    out["sample_shift_effect"] = max_diff(sample(shifted), base_sample)

    # 6. refusals
    def error(fn) -> str | None:
        try:
            fn()
        except ValueError as err:
            return str(err)
        return None

    out["error_negative"] = error(lambda: story.apply_story_rope(model, -1))
    out["error_gap"] = error(lambda: story.apply_story_rope(model, 2, gap=0))
    out["error_too_many"] = error(lambda: run(story.apply_story_rope(model, frames)))
    out["error_not_wan"] = error(lambda: story.apply_story_rope(object(), 2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
