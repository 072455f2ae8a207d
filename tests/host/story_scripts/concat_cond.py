"""StoryMem conditioning through ComfyUI's real sampler path: prints one JSON line of measured differences.

Run inside ComfyUI's Python with cwd = the ComfyUI folder: ``python concat_cond.py --tmp DIR``. A tiny Wan DiT with
36 input channels (the Wan 2.2 I2V A14B layout: detected as WAN21 t2v with in_dim 36) samples one step with the
pack's ``concat_latent_image``/``concat_mask`` set on both conditionings, as a node would; a hook on the patch
embedding records what the DiT receives. The reference is the official ``y`` written from StoryMem's formulas
(``wan/memory2video.py`` L403-454) with ComfyUI's own latent normalisation (the official VAE encode applies the same
mean/std). RoPE: the model's own embedder evaluated at ``story_temporal_ids`` against the official frequency table
(``rope_params`` over positions -512..511, 44 temporal dims, theta 10000).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "memory_scripts"))
from _pack import bootstrap, pack  # noqa: E402

PIXEL_FRAMES, LATENT_FRAMES, H, W = 81, 21, 4, 6
MODES = {"cut": 0, "mi2v": 1, "mm2v": 5}


def official_y(memory, u, mode):
    import torch

    m, (lat_h, lat_w) = memory.shape[1], memory.shape[-2:]
    msk = torch.ones(1, PIXEL_FRAMES + m, lat_h, lat_w)
    msk[:, m:] = 0
    if mode == "mi2v":
        msk[:, m] = 1
    elif mode == "mm2v":
        msk[:, m:m + 5] = 1
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:m + 1], repeats=4, dim=1), msk[:, m + 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w).transpose(1, 2)[0]
    return torch.concat([msk, torch.concat([memory, u], dim=1)])


def official_rope_t(positions):
    """cos/sin of the official temporal table at ``positions`` (float64, as ``rope_params`` builds it)."""
    import torch

    dim = 44
    table_positions = torch.arange(-512, 512, dtype=torch.float64)
    freqs = torch.outer(table_positions, 1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float64).div(dim)))
    freqs = torch.polar(torch.ones_like(freqs), freqs)[positions.long() + 512]
    return freqs.real, freqs.imag


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmp", required=True)
    args = parser.parse_args()
    bootstrap(with_nodes=True)

    import torch
    import comfy.model_base
    import comfy.sample
    import comfy.sd
    import node_helpers

    story = pack("memv2v_core.story")
    models = pack("memv2v_cli.demo.models")
    path = models.build_wan_dit(Path(args.tmp) / "tiny_i2v36.safetensors", in_dim=36)
    model = comfy.sd.load_diffusion_model(str(path))
    result = {"model_class": type(model.model).__name__, "image_to_video": bool(model.model.image_to_video),
              "in_dim": int(model.model.diffusion_model.patch_embedding.weight.shape[1]), "cases": {}}

    seen = []
    model.model.diffusion_model.patch_embedding.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    fmt = model.model.latent_format
    text = torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(1))
    for memory_size in (0, 1, 3):
        for mode, frames in MODES.items():
            generator = torch.Generator().manual_seed(10 * memory_size + frames)
            memory = torch.randn(1, 16, memory_size, H, W, generator=generator)
            shot = torch.randn(1, 16, LATENT_FRAMES, H, W, generator=generator)
            latent, mask = story.storymem_inputs(memory, shot, frames)
            values = {"concat_latent_image": latent, "concat_mask": mask}
            positive = node_helpers.conditioning_set_values([[text, {}]], values)
            negative = node_helpers.conditioning_set_values([[torch.zeros_like(text), {}]], values)
            empty = torch.zeros(1, 16, memory_size + LATENT_FRAMES, H, W)
            noise = torch.randn(empty.shape, generator=generator)
            seen.clear()
            comfy.sample.sample(model, noise, 1, 2.0, "euler", "simple", positive, negative, empty, disable_pbar=True,
                                seed=0)
            received = seen[0].float()  # [cond and uncond, 36, M+21, H, W]
            reference = official_y(fmt.process_in(memory.clone())[0], fmt.process_in(shot.clone())[0], mode)
            result["cases"][f"{mode}-{memory_size}"] = {
                "rows": int(received.shape[0]),
                "max_diff": max(float((row[16:] - reference).abs().max()) for row in received),
                "mask_equal": all(torch.equal(row[16:20], reference[:4]) for row in received),
            }

    dm = model.model.diffusion_model
    worst = 0.0
    for memory_size in (0, 1, 3, 8):
        t = story.story_temporal_ids(memory_size, LATENT_FRAMES)
        ids = torch.zeros(t.numel(), 2, 3, 3)  # a 2x3 token grid per frame
        ids[..., 0] = t.view(-1, 1, 1)
        ids[..., 1] = torch.arange(2).view(1, -1, 1).float()
        ids[..., 2] = torch.arange(3).view(1, 1, -1).float()
        freqs = dm.rope_embedder(ids.reshape(1, -1, 3)).movedim(1, 2)[0, :, 0, :22]  # [L, 22 temporal pairs, 2, 2]
        cos, sin = official_rope_t(ids.reshape(-1, 3)[:, 0])
        worst = max(worst, float((freqs[..., 0, 0].double() - cos).abs().max()),
                    float((freqs[..., 1, 0].double() - sin).abs().max()))
    result["rope_t_max_diff"] = worst
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
