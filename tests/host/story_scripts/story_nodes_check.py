"""The story nodes' glue, run in ComfyUI's Python (no server): prints one JSON line of checks.

Run with cwd = the ComfyUI folder: ``python story_nodes_check.py --tmp DIR --vae FILE`` (FILE: the demo Wan 2.1 VAE).

* Story Conditioning builds the official StoryMem inputs from images. The reference is written here from StoryMem's
  code (``wan/memory2video.py``, corrected version): every memory image resized with ``F.interpolate(mode='bicubic')``
  and encoded alone; u = the encoding of [condition frames, zeros] (0.5 grey in ComfyUI's 0..1 pixels); the
  pixel-frame mask with its first M+1 entries repeated 4x, folded into 4 channels per latent frame. ComfyUI's side is
  what its ``WAN21.concat_cond`` makes of the node's fields: ``1 - concat_mask`` repeated to 4 channels, then the
  latent.
* Story Memory Select's relevance modes with stand-in CLIP models: no real CLIP is small enough for a test, so a
  stand-in CLIP_VISION (``encode_image`` -> ``image_embeds``: a fixed projection of the mean colour) and a stand-in
  CLIP text encoder (``tokenize`` / ``encode_from_tokens(return_pooled=True)``: a fixed vector per caption) take their
  place. The reference scores are written here from the rule (cosine of the caption to each stored keyframe plus the
  mean cosine to the last shot's keyframes), not with the pack's helpers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _story import bootstrap, pack, tiny_wan  # noqa: E402

DIM = 6
SHOT_KEYFRAMES = (2, 3, 2)  # keyframes stored for shots 0, 1, 2 of the story


class StandInVision:
    """CLIP_VISION stand-in: image_embeds = mean colour [N, 3] @ W [3, DIM]; records the crop flag it got."""

    def __init__(self, torch):
        self.weight = torch.randn(3, DIM, generator=torch.Generator().manual_seed(7))
        self.crops = []

    def encode_image(self, frames, crop=True):
        self.crops.append(crop)
        return {"image_embeds": frames.float().mean(dim=(1, 2)) @ self.weight}


class StandInText:
    def __init__(self, torch, dim=DIM, pooled=True):
        self.torch, self.dim, self.pooled = torch, dim, pooled

    def tokenize(self, text):
        return {"text": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        seed = int.from_bytes(hashlib.sha256(tokens["text"].encode()).digest()[:4], "little")
        vector = self.torch.randn(1, self.dim, generator=self.torch.Generator().manual_seed(seed))
        return self.torch.zeros(1, 4, 8), (vector if self.pooled else None)


def relevance_checks(tmp: str) -> dict:
    import torch
    import torch.nn.functional as F

    bank_mod = pack("memv2v_core.bank.memory_bank")
    story = pack("memv2v_core.story")
    nodes = pack("nodes.story_nodes")
    bank = bank_mod.MemoryBank.open(Path(tmp) / "bank", create=True)
    generator = torch.Generator().manual_seed(3)
    keyframes = []
    for shot, count in enumerate(SHOT_KEYFRAMES):
        colours = torch.rand(count, 1, 1, 3, generator=generator)  # distinct colours: image similarities differ
        images = (colours + 0.05 * torch.rand(count, 8, 8, 3, generator=generator)).clamp(0, 1)
        keyframes.append(images)
        bank.add(torch.randn(1, 16, 2, 1, 1, generator=generator), latent_format="wan21", keyframes=images,
                 extra=story.story_extra("tale", shot, shot == 0))

    vision, caption = StandInVision(torch), "the keeper lights the lamp"
    text = StandInText(torch)
    # reference: stored keyframes in story order, scored by the rule
    flat = torch.cat(keyframes)
    keys = F.normalize(flat.mean(dim=(1, 2)) @ vision.weight, dim=1)
    last = F.normalize(keyframes[-1].mean(dim=(1, 2)) @ vision.weight, dim=1)
    caption_vec = F.normalize(text.encode_from_tokens(text.tokenize(caption))[1], dim=1)[0]
    reference = (keys @ caption_vec + (keys @ last.T).mean(dim=1)).tolist()
    image_only = (keys @ last.T).mean(dim=1).tolist()
    before = sum(SHOT_KEYFRAMES[:2])  # shot 2 sees shots 0 and 1; shot 1 is then the last shot
    last_before = F.normalize(keyframes[1].mean(dim=(1, 2)) @ vision.weight, dim=1)
    reference_before = (keys[:before] @ caption_vec + (keys[:before] @ last_before.T).mean(dim=1)).tolist()

    out = {"reference": reference, "image_only": image_only, "reference_before_2": reference_before, "runs": {}}
    for name, kwargs in {
        "relevance": dict(mode="relevance", budget=3, sink=1, caption=caption, clip=text, clip_vision=vision),
        "hybrid": dict(mode="hybrid", budget=4, sink=2, caption=caption, clip=text, clip_vision=vision),
        "image_only": dict(mode="relevance", budget=3, sink=1, caption=caption, clip_vision=vision),
        "before_shot_2": dict(mode="relevance", budget=3, sink=1, caption=caption, clip=text, clip_vision=vision,
                              shot_index=2),
    }.items():
        shot_index = kwargs.pop("shot_index", -1)
        result = nodes.StoryMemorySelect.execute(bank, "tale", shot_index, **kwargs)
        images, selection, table = result.args
        rows = [line.split() for line in table.splitlines() if line.strip().startswith("#")]
        out["runs"][name] = {"indices": [int(r[0][1:]) for r in rows], "reasons": [r[-2] for r in rows],
                             "scores": [float(r[-1]) for r in rows], "table": table, "images": list(images.shape),
                             "parents": selection.entry_ids}
    out["images_equal"] = bool(torch.equal(
        nodes.StoryMemorySelect.execute(bank, "tale", -1, "sink_window", 8, 3).args[0], flat))
    out["crops"] = sorted(set(vision.crops))
    errors = {}
    for name, clip in {"wrong_dim": StandInText(torch, dim=DIM + 1), "no_pooled": StandInText(torch, pooled=False)}.items():
        try:
            nodes.StoryMemorySelect.execute(bank, "tale", -1, "relevance", 3, 1, caption=caption, clip=clip,
                                            clip_vision=vision)
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    try:
        nodes.StoryMemorySelect.execute(bank, "tale", -1, "hybrid", 3, 1)
        errors["no_embedder"] = None
    except ValueError as error:
        errors["no_embedder"] = str(error)
    out["errors"] = errors
    return out


WIDTH, HEIGHT, LENGTH = 32, 16, 9
MODES = {"cut": 0, "MI2V": 1, "MM2V": 5}


def official_mask(memory_size: int, condition: int, lat_h: int, lat_w: int):
    import torch

    msk = torch.ones(1, LENGTH + memory_size, lat_h, lat_w)
    msk[:, memory_size:] = 0
    msk[:, memory_size:memory_size + condition] = 1
    msk = torch.concat([torch.repeat_interleave(msk[:, :memory_size + 1], repeats=4, dim=1),
                        msk[:, memory_size + 1:]], dim=1)
    return msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w).transpose(1, 2)[0]


def conditioning_checks(vae_path: str) -> dict:
    import torch
    import torch.nn.functional as F
    import comfy.sd
    import comfy.utils

    nodes = pack("nodes.story_nodes")
    patch = pack("nodes.patches.story_patch")
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    model = tiny_wan("t2v", in_dim=36)
    generator = torch.Generator().manual_seed(0)
    keyframes = torch.rand(3, 24, 40, 3, generator=generator)  # another size: stretched to the shot
    previous = torch.rand(7, HEIGHT, WIDTH, 3, generator=generator)
    text = [[torch.randn(1, 4, 4096, generator=generator), {}]]

    def encode(pixels):  # [T, H, W, 3] in 0..1
        return vae.encode(pixels)

    out = {"cases": {}}
    for memory_size in (0, 3):
        memory = keyframes[:memory_size]
        resized = F.interpolate(memory.movedim(-1, 1), size=(HEIGHT, WIDTH), mode="bicubic").movedim(1, -1)
        ref_memory = [encode(resized[i:i + 1]) for i in range(memory_size)]
        for mode, condition in MODES.items():
            video = torch.full((LENGTH, HEIGHT, WIDTH, 3), 0.5)
            if condition:
                video[:condition] = previous[-condition:]
            reference = torch.cat(ref_memory + [encode(video)], dim=2)[0]
            lat_h, lat_w = reference.shape[-2:]
            result = nodes.StoryConditioning.execute(
                model, text, text, vae, WIDTH, HEIGHT, LENGTH, mode, memory_keyframes=memory if memory_size else None,
                previous_frames=previous, model_low=model, rope_gap=5.0, max_memories=8)
            patched, patched_low, positive, negative, latent, trim, drop, cut = result.args
            fields = [c[1] for c in positive + negative]
            received_mask = (1.0 - fields[0]["concat_mask"][0]).repeat(4, 1, 1, 1)  # what WAN21.concat_cond makes
            keys = [p.wrappers.get("diffusion_model", {}).get(patch.WRAPPER_KEY) for p in (patched, patched_low)]
            out["cases"][f"{mode}-{memory_size}"] = {
                "latent_max_diff": max(float((f["concat_latent_image"][0] - reference).detach().abs().max())
                                       for f in fields),
                "mask_equal": torch.equal(received_mask, official_mask(memory_size, condition, lat_h, lat_w)),
                "same_on_both": all(f["concat_mask"] is fields[0]["concat_mask"] for f in fields),
                "empty_shape": list(latent["samples"].shape), "reference_frames": int(reference.shape[1]),
                "trim": trim, "drop": drop, "cut": cut, "patched_both": all(bool(k) for k in keys),
            }
    errors = {}
    bad = {
        "rgba": dict(memory_keyframes=torch.rand(2, HEIGHT, WIDTH, 4)),
        "too_many": dict(memory_keyframes=keyframes, max_memories=2),
        "short_previous": dict(mode="MM2V", previous_frames=previous[:3]),
        "first_shot": dict(mode="MI2V", previous_frames=torch.zeros(0, HEIGHT, WIDTH, 3)),
        "wan22_vae": dict(vae=type("Wan22VAE", (), {"latent_channels": 48})()),
    }
    for name, change in bad.items():
        call = dict(model=model, positive=text, negative=text, vae=vae, width=WIDTH, height=HEIGHT, length=LENGTH,
                    mode="cut")
        call.update(change)
        try:
            nodes.StoryConditioning.execute(**call)
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    out["errors"] = errors
    out["lazy"] = {mode: nodes.StoryConditioning.check_lazy_status(mode=mode, previous_frames=None) for mode in MODES}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmp", required=True)
    parser.add_argument("--vae", required=True)
    args = parser.parse_args()
    bootstrap()
    print(json.dumps({"relevance": relevance_checks(args.tmp), "conditioning": conditioning_checks(args.vae)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
