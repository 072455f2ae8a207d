"""The pack's camera conditioning against ReCamMaster's own DiT (recammaster_dit.py, written from its published code);
prints one JSON line of measured differences.

Run inside ComfyUI's Python with cwd = the ComfyUI folder:
``python camera_reference.py --cam CAM.safetensors --extrinsics camera_extrinsics.json --out DIR``.

1. The no-memory workflow's setting (user video only, the target read by Camera Load from ReCamMaster's file, 81
   frames = 21 latent frames, default user_camera): the pack's patched ComfyUI WanModel gives ReCamMaster's prediction
   of the target frames; with user_camera identity it does not.
2. The Memory-V2V setting (two memories whose stored trajectories came from the same file): per block, the camera
   embedding the pack adds to the target and user tokens is ReCamMaster's tiled one, unchanged by the memories; only
   the memory tokens differ, each getting cam_encoder of its own trajectory relative to the target's first camera.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _nvs import bootstrap, max_diff, pack

FRAMES, SIZE = 21, 8  # 81 video frames; a 64x64 px latent -> 4x4 tokens per frame at 1x2x2
TARGET_CAM, MEMORY_CAMS = 1, (2, 9)
CAMERA_GAIN = 10.0



def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cam", required=True, help="ReCamMaster-layout checkpoint with random camera weights")
    parser.add_argument("--extrinsics", required=True, help="ReCamMaster's camera_extrinsics.json")
    parser.add_argument("--out", required=True, help="a folder for the checkpoint with stronger camera weights")
    args = parser.parse_args()
    bootstrap(with_nodes=True)

    import torch
    import torch.nn.functional as F
    import comfy.sd
    from safetensors.torch import load_file, save_file

    import recammaster_dit

    node = pack("nodes.memory_nodes")
    camera_patch = pack("nodes.patches.camera_patch")
    checkpoints = pack("memv2v_core.checkpoints")
    context_lib = pack("memv2v_core.memory.context")
    camera_files = pack("memv2v_core.camera.files")

    torch.manual_seed(0)
    x = torch.randn(1, 16, FRAMES, SIZE, SIZE)  # the noisy target latent (model space)
    text = torch.randn(1, 16, 4096)
    t = torch.full((1,), 600.0)
    user = torch.randn(1, 16, FRAMES, SIZE, SIZE)  # the user video's latent as VAE Encode gives it
    memory_latents = [torch.randn(1, 16, FRAMES, SIZE, SIZE) for _ in MEMORY_CAMS]

    # Stronger camera encoders than the fixture's (std 0.5 instead of 0.05), so the user video's camera matters.
    weights = {k: v * CAMERA_GAIN if ".cam_encoder." in k else v for k, v in load_file(args.cam).items()}
    path = str(Path(args.out) / "recammaster_strong_camera.safetensors")
    save_file(weights, path)
    model = comfy.sd.load_diffusion_model(path)
    modules = checkpoints.load_modules(path)
    dm = model.model.diffusion_model
    target = camera_files.load_trajectory(args.extrinsics, "auto", cam_index=TARGET_CAM)  # Camera Load: 21 poses
    stored = [camera_files.load_trajectory(args.extrinsics, "auto", cam_index=c).c2w for c in MEMORY_CAMS]  # Bank Add
    user_only = context_lib.build_context(user, [], "nvs", latent_format="wan21")
    with_memory = context_lib.build_context(
        user, [(f"m{c}", lat, 0.9 - 0.1 * i, c2w) for i, (c, lat, c2w) in enumerate(zip(MEMORY_CAMS, memory_latents,
                                                                                          stored))],
        "nvs", latent_format="wan21")

    embeddings: list = []
    original = camera_patch.CameraSelfAttention.camera_embedding

    def recording(self, x_, call, options):
        out = original(self, x_, call, options)
        embeddings.append(out[0].detach().clone())
        return out

    camera_patch.CameraSelfAttention.camera_embedding = recording

    def run(context, **camera_inputs):
        """One model call through the patched model (as the sampler makes it); returns the output and, per block,
        the camera embedding the pack added to the self-attention input."""
        patched, _ = node.patch_model(model, context, "auto", 0.5, "off", modules, camera=target, **camera_inputs)
        options = dict(patched.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in patched.wrappers.items()}
        options["cond_or_uncond"] = [0]
        embeddings.clear()
        patched.patch_model(load_weights=False)
        try:
            with torch.no_grad():
                out = patched.model.diffusion_model(x, t, text, transformer_options=options)
        finally:
            patched.unpatch_model(unpatch_weights=False)
        return out, list(embeddings)

    reference = recammaster_dit.ReCamMasterDiT(load_file(path), num_heads=dm.num_heads)
    target_rows = recammaster_dit.camera_rows(args.extrinsics, TARGET_CAM)
    # ReCamMaster's source latents come out of its VAE normalised; ComfyUI's process_latent_in is that normalisation.
    source = model.model.process_latent_in(user)
    with torch.no_grad():
        expected = reference.recammaster_step(x, source, t, target_rows[None], text)

    out: dict = {"reference_scale": float(expected.abs().max())}
    got, user_only_emb = run(user_only)
    out["pack_vs_recammaster_max_diff"] = max_diff(got, expected)
    identity, _ = run(user_only, user_camera="identity")
    out["identity_vs_recammaster_max_diff"] = max_diff(identity, expected)
    h = w = SIZE // 2
    video_tokens = FRAMES * h * w
    tiles = [reference.camera_term(i, target_rows[None], h, w)[0] for i in range(reference.depth)]
    out["user_only_camera_vs_tile_max_diff"] = max(max_diff(e, tile) for e, tile in zip(user_only_emb, tiles))

    # Memory-V2V: the same target and user rows, each memory its own trajectory (relative to the target's first pose)
    mem_out, mem_emb = run(with_memory)
    out["memory_blocks"] = len(mem_emb)
    out["memory_target_user_equal_user_only"] = all(
        torch.equal(e[:2 * video_tokens], u) for e, u in zip(mem_emb, user_only_emb))
    out["memory_target_user_vs_tile_max_diff"] = max(max_diff(e[:2 * video_tokens], tile)
                                                     for e, tile in zip(mem_emb, tiles))
    first = recammaster_dit.extrinsics_c2w(args.extrinsics, TARGET_CAM)[0]
    memory_rows = [recammaster_dit.relative_rows(first, recammaster_dit.extrinsics_c2w(args.extrinsics, c))
                   for c in MEMORY_CAMS]
    per_frame = (SIZE // 4) ** 2  # memories at 1x4x4 (fine ranks)
    worst, smallest_change = 0.0, float("inf")
    for i, e in enumerate(mem_emb):
        enc_w, enc_b = reference.sd[f"blocks.{i}.cam_encoder.weight"], reference.sd[f"blocks.{i}.cam_encoder.bias"]
        memory_part = e[2 * video_tokens:]
        wanted = torch.cat([F.linear(rows, enc_w, enc_b).repeat_interleave(per_frame, dim=0) for rows in memory_rows])
        tiled = torch.cat([F.linear(target_rows, enc_w, enc_b).repeat_interleave(per_frame, dim=0)] * len(memory_rows))
        out.setdefault("memory_tokens", memory_part.shape[0])
        worst = max(worst, max_diff(memory_part, wanted))
        smallest_change = min(smallest_change, max_diff(memory_part, tiled))
    out["memory_rows_vs_reference_max_diff"] = worst
    out["memory_rows_vs_target_rows_min_change"] = smallest_change
    out["memory_changes_output"] = max_diff(mem_out, got)
    out["expected_memory_tokens"] = len(MEMORY_CAMS) * FRAMES * per_frame
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
