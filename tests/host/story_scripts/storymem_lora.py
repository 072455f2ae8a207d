"""StoryMem LoRA Loader on a tiny Wan 2.2 A14B-layout DiT in ComfyUI's own Python; prints one JSON line.

Run with cwd = the ComfyUI folder: ``python storymem_lora.py --tmp DIR``. A random rank-128 LoRA is saved in StoryMem's
PEFT layout with ``torch.save``; the weights ComfyUI samples with (after ``ModelPatcher.patch_model``) are compared
with W + strength * alpha / sqrt(r) * B @ A computed here in float64 from the saved tensors. ComfyUI's own
LoraLoaderModelOnly is run on the same raw file to show that it patches nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from _story import DIM, FFN, LAYERS, bootstrap, pack, tiny_wan

MODULES = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
           "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
RANK = ALPHA = 128


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tmp", required=True)
    args = parser.parse_args()
    bootstrap()

    import torch
    import folder_paths
    import nodes as comfy_nodes
    from safetensors.torch import save_file

    lora_nodes = pack("nodes.lora_nodes")
    lora_lib = pack("memv2v_core.checkpoints.lora")

    loras = Path(args.tmp) / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("loras", str(loras), is_default=True)

    model = tiny_wan("t2v", in_dim=36)
    out: dict = {"model_class": type(model.model).__name__,
                 "in_dim": int(model.model.diffusion_model.patch_embedding.weight.shape[1])}
    base = {k: v.detach().clone() for k, v in model.model.state_dict().items()}

    def shapes(width: int, ffn: int) -> dict:
        found = {m: (width, width) for m in MODULES}
        found["ffn.0"], found["ffn.2"] = (ffn, width), (width, ffn)
        return found

    def peft_lora(width=DIM, ffn=FFN, rank=RANK, seed=1) -> dict:
        g = torch.Generator().manual_seed(seed)
        state = {}
        for block in range(LAYERS):
            for module, (out_dim, in_dim) in shapes(width, ffn).items():
                key = f"base_model.model.blocks.{block}.{module}"
                state[f"{key}.lora_A.weight"] = torch.randn(rank, in_dim, generator=g) * 0.05
                state[f"{key}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.05
        return state

    raw = peft_lora()
    torch.save(raw, loras / "storymem_tiny.pth")
    torch.save(peft_lora(width=2 * DIM, ffn=2 * FFN, seed=2), loras / "storymem_wide.pth")

    def expected(strength: float, extra: dict | None = None) -> dict:
        """W + strength * alpha/sqrt(r) * B @ A for every targeted layer, in float64 from the saved tensors."""
        scale = ALPHA / math.sqrt(RANK)  # PEFT LoraConfig(use_rslora=True)
        weights = {}
        for block in range(LAYERS):
            for module in MODULES:
                key = f"blocks.{block}.{module}"
                a = raw[f"base_model.model.{key}.lora_A.weight"].double()
                b = raw[f"base_model.model.{key}.lora_B.weight"].double()
                weights[f"diffusion_model.{key}.weight"] = (base[f"diffusion_model.{key}.weight"].double()
                                                            + strength * scale * (b @ a))
        for key, delta in (extra or {}).items():
            weights[key] = weights.get(key, base[key].double()) + delta
        return weights

    def sampled_weights(patcher) -> dict:
        """Every weight as ComfyUI samples with it: patch_model(), read, unpatch_model()."""
        patcher.patch_model()
        try:
            return {k: v.detach().clone() for k, v in patcher.model.state_dict().items()}
        finally:
            patcher.unpatch_model()

    def compare(weights: dict, want: dict) -> tuple[float, float, int]:
        """(max relative error on targeted layers, max abs change elsewhere, targeted layers checked)."""
        rel = max(float((weights[k].double() - w).abs().max() / w.abs().max()) for k, w in want.items())
        other = max(float((weights[k].double() - base[k].double()).abs().max()) for k in base if k not in want)
        return rel, other, len(want)

    def ui_text(result) -> str:
        ui = result.ui.as_dict() if hasattr(result.ui, "as_dict") else (result.ui or {})
        return ui.get("text", [""])[0]

    run = lora_nodes.StoryMemLoraLoader.execute
    for strength in (1.0, 0.5):
        result = run(model=model, lora_name="storymem_tiny.pth", strength=strength, rank=RANK, alpha=ALPHA,
                     rs_lora=True)
        patched = result.args[0]
        rel, other, count = compare(sampled_weights(patched), expected(strength))
        out[f"node_{strength}"] = {"max_rel_err": rel, "other_max_change": other, "layers": count,
                                   "patch_keys": len(patched.patches), "text": ui_text(result)}
    out["unpatched_restored"] = all(torch.equal(v, base[k]) for k, v in model.model.state_dict().items())
    out["delta_rel_size"] = float(max((expected(1.0)[k] - base[k].double()).abs().max() / base[k].abs().max()
                                      for k in expected(1.0)))

    # ComfyUI's own loader on the raw PEFT file: every key unmatched, nothing patched
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    try:
        (plain,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "storymem_tiny.pth", 1.0)
    finally:
        logging.getLogger().removeHandler(handler)
    weights = sampled_weights(plain)
    out["plain_loader"] = {"patch_keys": len(plain.patches),
                           "not_loaded_messages": sum("lora key not loaded" in m for m in messages),
                           "raw_keys": len(raw),
                           "weights_unchanged": all(torch.equal(weights[k], base[k]) for k in base)}

    # stacking: a ComfyUI-format LoRA through LoraLoaderModelOnly after (and before) the StoryMem node
    g = torch.Generator().manual_seed(5)
    up, down = torch.randn(DIM, 4, generator=g) * 0.1, torch.randn(4, DIM, generator=g) * 0.1
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
               "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down}, str(loras / "other.safetensors"))
    other_delta = {"diffusion_model.blocks.0.self_attn.q.weight": 0.7 * (up.double() @ down.double())}
    story = run(model=model, lora_name="storymem_tiny.pth", strength=1.0).args[0]
    (after,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(story, "other.safetensors", 0.7)
    (first,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "other.safetensors", 0.7)
    before = run(model=first, lora_name="storymem_tiny.pth", strength=1.0).args[0]
    out["stacked_after_rel_err"] = compare(sampled_weights(after), expected(1.0, other_delta))[0]
    out["stacked_before_rel_err"] = compare(sampled_weights(before), expected(1.0, other_delta))[0]
    out["stacked_text"] = ui_text(run(model=first, lora_name="storymem_tiny.pth", strength=1.0))

    # the one-time converter's safetensors, through ComfyUI's plain loader, gives the same weights
    lora_lib.convert_storymem_file(loras / "storymem_tiny.pth", loras / "storymem_tiny_comfy.safetensors")
    (converted,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "storymem_tiny_comfy.safetensors",
                                                                          1.0)
    out["converted_file_rel_err"] = compare(sampled_weights(converted), expected(1.0))[0]

    def error(**kw) -> str | None:
        try:
            run(**{"model": model, "lora_name": "storymem_tiny.pth", "strength": 1.0, **kw})
        except ValueError as err:
            return str(err)
        return None

    out["error_wide"] = error(lora_name="storymem_wide.pth")
    out["error_rank"] = error(rank=64)
    out["error_comfy_format"] = error(lora_name="other.safetensors")
    out["error_missing"] = error(lora_name="nope.pth")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
