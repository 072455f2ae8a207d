"""The story nodes' CLIP glue with stand-in CLIP models: prints one JSON line of what they chose and computed.

Run inside ComfyUI's Python with cwd = the ComfyUI folder: ``python memory_relevance.py --tmp DIR``. No real CLIP is
small enough for a test, so a stand-in CLIP_VISION (``encode_image`` -> ``image_embeds``: a fixed projection of the mean
colour) and a stand-in CLIP text encoder (``tokenize`` / ``encode_from_tokens(return_pooled=True)``: a fixed vector per
caption) take their place. The reference scores are written here from the rule (cosine of the caption to each stored
keyframe plus the mean cosine to the last shot's keyframes), not with the pack's helpers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _story import bootstrap, pack  # noqa: E402

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmp", required=True)
    args = parser.parse_args()
    bootstrap()

    import torch
    import torch.nn.functional as F

    bank_mod = pack("memv2v_core.bank.memory_bank")
    story = pack("memv2v_core.story")
    nodes = pack("nodes.story_nodes")
    bank = bank_mod.MemoryBank.open(Path(args.tmp) / "bank", create=True)
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
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
