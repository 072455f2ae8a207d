"""Camera conditioning on the real WanModel (tiny ReCamMaster-layout checkpoints): prints one JSON line of results.

Run inside ComfyUI's Python with cwd = the ComfyUI folder:
``python camera_equivalence.py --zero ZERO.safetensors --cam CAM.safetensors --plain-dit DIT.safetensors``.
Checks: zero encoders + identity projectors give the native model's output bit for bit; random camera weights equal
the blocks computed by hand from ComfyUI's own block modules (camera added to the self-attention input, projector on
its output, one trajectory per video: the user video with the target's rows by default, or the identity pose); the
patch composes with merging; tokens newer ComfyUI appends after the video (context_latents, emulated on 0.3.64) get
no camera embedding; bad inputs are refused before sampling. camera_reference.py checks against ReCamMaster's own DiT.
"""

from __future__ import annotations

import argparse
import json

from _nvs import bootstrap, max_diff, pack



def in_context_tokens(model, modules, ctx, target, x, t, text, frames, size) -> dict:
    """Newer ComfyUI (0.25+) appends each ``context_latents`` stream's tokens after the video tokens and before the
    pack's memory (WanModel.forward_orig), with its own RoPE, and drops them before the head. Emulated on 0.3.64: the
    patch embedding's output gets the in-context latent's frames after the video's (tokens are flattened frame by
    frame, so they follow the video tokens), rope_encode the matching positions, and _forward's [:t] slice drops their
    output. The camera patch must give those tokens no camera embedding and the video and memory tokens theirs."""
    import torch

    from _nvs import pack

    node = pack("nodes.memory_nodes")
    camera_patch = pack("nodes.patches.camera_patch")
    dm = model.model.diffusion_model
    in_context = torch.randn(1, 16, 2, size, size)
    tokens = 2 * (size // 2) ** 2
    active = {"on": False}

    def append_tokens(module, inputs, output):
        if not active["on"]:
            return output
        extra = torch.nn.functional.conv3d(in_context.to(output), module.weight.to(output), module.bias.to(output),
                                           stride=module.stride)
        return torch.cat([output, extra.expand(output.shape[0], -1, -1, -1, -1)], dim=2)

    rope_encode = dm.rope_encode

    def rope_with_context(t_len, h, w, **kwargs):
        freqs = rope_encode(t_len, h, w, **kwargs)
        return torch.cat([freqs, rope_encode(2, h, w, t_start=100, **kwargs)], dim=1) if active["on"] else freqs

    recorded: list = []
    original = camera_patch.CameraSelfAttention.camera_embedding

    def recording(self, x_, call, options):
        result = original(self, x_, call, options)
        recorded.append(result[0].detach().clone())
        return result

    patched, _ = node.patch_model(model, ctx, "auto", 0.5, "off", modules, camera=target)

    def call(with_tokens: bool, **kwargs):
        options = dict(patched.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in patched.wrappers.items()}
        options["cond_or_uncond"] = [1, 0]
        recorded.clear()
        active["on"] = with_tokens
        patched.patch_model(load_weights=False)
        try:
            with torch.no_grad():
                out = patched.model.diffusion_model(x, t, text, transformer_options=options, **kwargs)
        finally:
            patched.unpatch_model(unpatch_weights=False)
            active["on"] = False
        return out, list(recorded)

    hook = dm.patch_embedding.register_forward_hook(append_tokens)
    dm.rope_encode = rope_with_context
    camera_patch.CameraSelfAttention.camera_embedding = recording
    result: dict = {}
    try:
        plain, plain_emb = call(False)
        out, emb = call(True, context_latents=[in_context])
        video = frames * (size // 2) ** 2
        result["in_context_tokens"] = int(emb[0].shape[0] - plain_emb[0].shape[0])
        result["in_context_expected"] = tokens
        result["in_context_zero"] = all(bool((e[video:video + tokens] == 0).all()) for e in emb)
        result["in_context_video_memory_equal"] = all(
            torch.equal(e[:video], p[:video]) and torch.equal(e[video + tokens:], p[video:])
            for e, p in zip(emb, plain_emb))
        result["in_context_output_finite"] = bool(torch.isfinite(out).all()) and out.shape == plain.shape
        try:  # the same tokens without the context_latents argument: the camera patch cannot place them
            call(True)
            result["in_context_undeclared_error"] = None
        except RuntimeError as error:
            result["in_context_undeclared_error"] = str(error)
        dm.ref_conv = torch.nn.Identity()  # a Wan Fun reference model puts reference tokens before the video
        try:
            call(False, reference_latent=torch.zeros(1, 16, size, size))
            result["reference_latent_error"] = None
        except ValueError as error:
            result["reference_latent_error"] = str(error)
    finally:
        dm.ref_conv = None
        hook.remove()
        del dm.rope_encode
        camera_patch.CameraSelfAttention.camera_embedding = original
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--zero", required=True, help="ReCamMaster-layout checkpoint, zero encoders / identity")
    parser.add_argument("--cam", required=True, help="the same with random camera weights")
    parser.add_argument("--plain-dit", required=True, help="a plain Wan DiT without camera modules")
    args = parser.parse_args()
    bootstrap(with_nodes=True)

    import torch
    import torch.nn.functional as F
    import comfy.sd
    from comfy.ldm.wan.model import sinusoidal_embedding_1d

    node = pack("nodes.memory_nodes")
    checkpoints = pack("memv2v_core.checkpoints")
    context_lib = pack("memv2v_core.memory.context")
    tokenize = pack("memv2v_core.memory.tokenize")
    camera_lib = pack("memv2v_core.camera.trajectory")
    presets = pack("memv2v_core.camera.presets")

    torch.manual_seed(0)
    batch, frames, size = 2, 3, 8  # 3 latent frames = 9 video frames at 64x64 px
    video_frames = (frames - 1) * 4 + 1
    x = torch.randn(batch, 16, frames, size, size)
    text = torch.randn(batch, 16, 4096)
    t = torch.full((batch,), 600.0)
    target = presets.preset_trajectory("pan_left", video_frames)
    user = torch.randn(1, 16, frames, size, size)
    memory_presets = ("pan_right", "tilt_up", "orbit_left")
    memories = [(f"m{i}", torch.randn(1, 16, frames, size, size), 0.9 - 0.1 * i,
                 presets.preset_trajectory(name, video_frames).c2w) for i, name in enumerate(memory_presets)]
    ctx = context_lib.build_context(user, memories, "nvs", latent_format="wan21")
    user_only = context_lib.build_context(user, [], "nvs", latent_format="wan21")

    zero_model = comfy.sd.load_diffusion_model(args.zero)
    cam_model = comfy.sd.load_diffusion_model(args.cam)
    zero_modules = checkpoints.load_modules(args.zero)
    cam_modules = checkpoints.load_modules(args.cam)

    def run(patcher, context_frames=None):
        """One model call as the sampler makes it (wrappers from the patcher, object patches applied)."""
        options = dict(patcher.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in patcher.wrappers.items()}
        options["cond_or_uncond"] = [1, 0]
        patcher.patch_model(load_weights=False)
        try:
            with torch.no_grad():
                return patcher.model.diffusion_model(x, t, text, transformer_options=options)
        finally:
            patcher.unpatch_model(unpatch_weights=False)

    out: dict = {}
    # 1. zero encoders + identity projectors == the native model with the same memory (bit for bit)
    for name, context, merge in (("user_only", user_only, "off"), ("memory", ctx, "off"), ("memory_merge", ctx, "merge")):
        blocks = "1" if merge == "merge" else "auto"
        native, _ = node.patch_model(zero_model, context, blocks, 0.5, merge)
        with_camera, _ = node.patch_model(zero_model, context, blocks, 0.5, merge, zero_modules, camera=target)
        a, b = run(native), run(with_camera)
        out[f"zero_{name}_equal"] = bool(torch.equal(a, b))
        out[f"zero_{name}_max_diff"] = max_diff(a, b)
    patched, _ = node.patch_model(zero_model, ctx, "auto", 0.5, "off", zero_modules, camera=target)
    out["object_patches"] = sorted(patched.object_patches)
    wrapper = patched.object_patches["diffusion_model.blocks.0.self_attn"]
    dm = zero_model.model.diffusion_model
    out["wrapper_shares_inner_weights"] = wrapper.q is dm.blocks[0].self_attn.q and wrapper.o is dm.blocks[0].self_attn.o
    out["unpatched_restored"] = type(dm.blocks[0].self_attn).__name__

    def count_tensors(value) -> int:
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, dict):
            return sum(count_tensors(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(count_tensors(v) for v in value)
        return 0

    out["model_options_tensors"] = count_tensors(patched.model_options)

    # 2. random camera weights == ReCamMaster's DiTBlock by hand, per-video trajectories, no merging
    dm = cam_model.model.diffusion_model
    native, _ = node.patch_model(cam_model, ctx, "auto", 0.5, "off")
    camera_on, _ = node.patch_model(cam_model, ctx, "auto", 0.5, "off", cam_modules, camera=target)
    got = run(camera_on)

    def rows_for(trajectory_c2w, reference):
        return camera_lib.recammaster_embedding(camera_lib.Trajectory(trajectory_c2w), frames, reference=reference)

    def reference(user_rows):
        processed = [context_lib.ContextStream(s.role, s.entry_id, cam_model.model.process_latent_in(s.latent),
                                               s.kernel, s.temporal_ids, s.rank, s.score, s.camera)
                     for s in ctx.streams]
        weights = tokenize.DerivedTokenizer(dm.patch_embedding.weight, dm.patch_embedding.bias)
        embedded = context_lib.embed_context(context_lib.MemoryContext("nvs", frames, tuple(processed)), weights,
                                             dtype=x.dtype, grid_unit=(1, 2, 2))
        mem_pe = dm.rope_embedder(embedded.positions.unsqueeze(0)).movedim(1, 2)
        # camera rows by hand: target relative to its own first pose (frames 0, 4, 8 of 9), the user video as given,
        # memories relative to the target's first pose
        relative = torch.linalg.inv(target.c2w[0]) @ target.c2w[::4]
        video_rows = relative[:, :3, :].reshape(frames, 12)
        stream_rows = [video_rows if user_rows is None else user_rows]
        stream_rows += [rows_for(c2w, target.c2w[0]) for _, _, _, c2w in memories]
        with torch.no_grad():
            video = dm.patch_embedding(x.float()).to(x.dtype)
            grid = video.shape[2:]
            video = video.flatten(2).transpose(1, 2)
            per_frame = video.shape[1] // frames
            e = dm.time_embedding(sinusoidal_embedding_1d(dm.freq_dim, t.flatten()).to(dtype=video.dtype))
            e = e.reshape(t.shape[0], -1, e.shape[-1])
            e0 = dm.time_projection(e).unflatten(2, (6, dm.dim))
            txt = dm.text_embedding(text)
            freqs = dm.rope_encode(frames, size, size, device=x.device, dtype=x.dtype)
            n_video = video.shape[1]
            h = torch.cat([video, embedded.tokens.expand(batch, -1, -1)], dim=1)
            pe = torch.cat([freqs, mem_pe], dim=1)
            for i, block in enumerate(dm.blocks):
                enc_w, enc_b, proj_w, proj_b = cam_modules.camera[i]
                cam_video = F.linear(video_rows, enc_w, enc_b).repeat_interleave(per_frame, dim=0)
                sizes = embedded.layout.frame_sizes
                all_rows = torch.cat(stream_rows, dim=0)
                cam_memory = torch.cat([F.linear(all_rows[f], enc_w, enc_b).expand(n, -1)
                                        for f, n in enumerate(sizes)], dim=0)
                cam = torch.cat([cam_video, cam_memory], dim=0).unsqueeze(0)
                mod = (block.modulation.unsqueeze(0) + e0).unbind(2)
                attn_in = block.norm1(h) * (1 + mod[1]) + mod[0] + cam
                y = F.linear(block.self_attn(attn_in, pe), proj_w, proj_b)
                h = h + y * mod[2]
                h = h + block.cross_attn(block.norm3(h), txt, context_img_len=None)
                h = h + block.ffn(block.norm2(h) * (1 + mod[4]) + mod[3]) * mod[5]
            return dm.unpatchify(dm.head(h[:, :n_video], e), grid)

    out["cam_vs_reference_max_diff"] = max_diff(got, reference(None))  # default: the user video has the target's rows
    identity_rows = torch.eye(4)[:3].reshape(1, 12).expand(frames, 12)
    as_identity, _ = node.patch_model(cam_model, ctx, "auto", 0.5, "off", cam_modules, camera=target,
                                      user_camera="identity")
    got_identity = run(as_identity)
    out["identity_vs_reference_max_diff"] = max_diff(got_identity, reference(identity_rows))
    out["identity_vs_default"] = max_diff(got_identity, got)
    out["cam_effect"] = max_diff(got, run(native))

    # 3. camera + merging at block 1: runs, finite, differs from the unmerged camera result
    merged, _ = node.patch_model(cam_model, ctx, "1", 0.5, "merge", cam_modules, camera=target)
    merged_out = run(merged)
    out["cam_merge_finite"] = bool(torch.isfinite(merged_out).all())
    out["cam_merge_vs_nomerge"] = max_diff(merged_out, got)
    # a memory's own trajectory matters: swapping two memories' cameras changes the output
    swapped_memories = [(m[0], m[1], m[2], memories[(i + 1) % len(memories)][3]) for i, m in enumerate(memories)]
    swapped_ctx = context_lib.build_context(user, swapped_memories, "nvs", latent_format="wan21")
    swapped, _ = node.patch_model(cam_model, swapped_ctx, "auto", 0.5, "off", cam_modules, camera=target)
    out["memory_camera_effect"] = max_diff(run(swapped), got)

    # 4. newer ComfyUI appends in-context tokens (context_latents) after the video; emulated here on 0.3.64
    out.update(in_context_tokens(cam_model, cam_modules, ctx, target, x, t, text, frames, size))

    # 5. refusals before sampling
    errors = {}

    def refuse(name, fn):
        try:
            fn()
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)

    refuse("camera_missing", lambda: node.patch_model(cam_model, ctx, "auto", 0.5, "off", cam_modules))
    refuse("camera_without_modules", lambda: node.patch_model(cam_model, ctx, "auto", 0.5, "off", camera=target))
    refuse("trajectory_short", lambda: node.patch_model(cam_model, ctx, "auto", 0.5, "off", cam_modules,
                                                        camera=presets.preset_trajectory("pan_left", 5)))
    odd = context_lib.build_context(torch.randn(1, 16, frames, 5, 7), [], "nvs", latent_format="wan21")
    refuse("grid", lambda: node.patch_model(cam_model, odd, "auto", 0.5, "off", cam_modules, camera=target))
    no_cam = context_lib.build_context(user, [("nocam", memories[0][1], 0.5, None)], "nvs", latent_format="wan21")
    refuse("own_without_trajectory", lambda: node.patch_model(cam_model, ctx, "auto", 0.5, "off", cam_modules,
                                                              camera=target, user_camera="own trajectory"))
    refuse("trajectory_unused", lambda: node.patch_model(cam_model, ctx, "auto", 0.5, "off", cam_modules,
                                                         camera=target, user_trajectory=target))
    short_user = context_lib.build_context(torch.randn(1, 16, frames + 1, size, size), [], "nvs",
                                           target_frames=frames, latent_format="wan21")
    refuse("user_frames", lambda: node.patch_model(cam_model, short_user, "auto", 0.5, "off", cam_modules,
                                                   camera=target))
    refuse("memory_without_camera", lambda: node.patch_model(cam_model, no_cam, "auto", 0.5, "off", cam_modules,
                                                             camera=target))
    other_model = context_lib.build_context(user, memories[:1], "nvs", latent_format="wan22")
    refuse("bank_other_model", lambda: node.patch_model(cam_model, other_model, "auto", 0.5, "off", cam_modules,
                                                        camera=target))
    try:
        checkpoints.load_modules(args.plain_dit)
        errors["wrong_checkpoint"] = None
    except ValueError as error:
        errors["wrong_checkpoint"] = str(error)
    out["errors"] = errors
    out["reports"] = {"zero": zero_modules.summary(), "cam": cam_modules.summary()}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
