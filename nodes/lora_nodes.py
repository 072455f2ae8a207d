"""StoryMem LoRA Loader: StoryMem's PEFT LoRAs on ComfyUI's own Wan 2.2 models, at the scale they were trained with.

ComfyUI's LoraLoaderModelOnly maps none of StoryMem's keys (``base_model.model.blocks...``) and would use scale 1
without alpha tensors; this node converts the file in memory (``memv2v_core.checkpoints.lora``) and applies it with
ComfyUI's own ``comfy.sd.load_lora_for_models``, so it stacks with any other LoRA.
"""

from __future__ import annotations

import logging
import os

import comfy.lora
import comfy.sd
import folder_paths
from comfy_api.latest import io, ui

from ..memv2v_core.checkpoints.lora import (LORA_SUFFIXES, STORYMEM_ALPHA, STORYMEM_RANK, StoryMemLora,
                                            load_storymem_lora)

log = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/story"


def lora_files() -> list[str]:
    return sorted(n for n in folder_paths.get_filename_list("loras") if n.lower().endswith(LORA_SUFFIXES))


def check_fits(model, lora: StoryMemLora) -> list[str]:
    """The model weights the LoRA patches (ComfyUI's own key map), or a ValueError naming what does not fit."""
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    state = model.model.state_dict()
    missing, wrong = [], []
    targets = []
    for name, shape in lora.targets().items():
        target = key_map.get(name[:-len(".weight")])
        if target is None or target not in state:
            missing.append(name)
        elif tuple(state[target].shape) != shape:
            wrong.append(f"{name} {tuple(state[target].shape)} vs LoRA {shape}")
        else:
            targets.append(target)
    if missing or wrong:
        dm = model.get_model_object("diffusion_model")
        depth = len(getattr(dm, "blocks", ()))
        width = getattr(dm, "dim", "?")
        problem = (f"{len(missing)} layers do not exist in this model (e.g. {missing[0]})" if missing
                   else f"{len(wrong)} layers differ in shape (e.g. {wrong[0]})")
        raise ValueError(
            f"lora_name ({os.path.basename(lora.source)}): made for a DiT of width {lora.width} with blocks "
            f"{lora.blocks[0]}..{lora.blocks[-1]}, but the model is {type(dm).__name__} of width {width} with "
            f"{depth} blocks; {problem}. StoryMem's LoRAs are for Wan 2.2 A14B: load "
            "wan2.2_i2v_high_noise_14B (for backbone_high_noise) or wan2.2_i2v_low_noise_14B (for backbone_low_noise).")
    return targets


class StoryMemLoraLoader(io.ComfyNode):
    """Applies a StoryMem LoRA (PEFT .pth as released) to a Wan 2.2 A14B model with rsLoRA's scale."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_StoryMemLoraLoader",
            display_name="Memory-V2V StoryMem LoRA Loader",
            category=CATEGORY,
            description=("Loads one of StoryMem's LoRAs (backbone_high_noise.pth / backbone_low_noise.pth from "
                         "Kevin-thu/StoryMem, Wan2.2-MI2V-A14B or Wan2.2-MM2V-A14B) onto ComfyUI's own Wan 2.2 "
                         "A14B expert. ComfyUI's LoRA loaders recognise none of these PEFT keys and would apply "
                         "scale 1; this node renames them and applies rsLoRA's alpha/sqrt(r) (11.31 for r = alpha = "
                         "128) through ComfyUI's own LoRA patching, so it stacks with other LoRAs. .pth files are "
                         "read only with torch.load(weights_only=True)."),
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.2 A14B expert (high-noise for backbone_high_noise, "
                                                "low-noise for backbone_low_noise), e.g. from Load Diffusion Model."),
                io.Combo.Input("lora_name", options=lora_files(),
                               tooltip="StoryMem's backbone_high_noise.pth or backbone_low_noise.pth (or a "
                                       "safetensors copy of it) in models/loras."),
                io.Float.Input("strength", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="Multiplies the trained update; 1.0 = the official StoryMem model "
                                       "(W + alpha/sqrt(r) * B@A)."),
                io.Int.Input("rank", default=STORYMEM_RANK, min=1, max=4096,
                             tooltip="LoRA rank r the file was trained with (StoryMem: 128); must match the file."),
                io.Float.Input("alpha", default=STORYMEM_ALPHA, min=0.01, max=100000.0, step=1.0,
                               tooltip="lora_alpha the file was trained with (StoryMem: 128)."),
                io.Boolean.Input("rs_lora", default=True,
                                 tooltip="On: rank-stabilised LoRA, scale alpha/sqrt(r) (StoryMem). Off: classic "
                                         "scale alpha/r."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the StoryMem LoRA; connect to a sampler, or to further "
                                             "LoRA loaders.")],
        )

    @classmethod
    def fingerprint_inputs(cls, lora_name: str, **_):  # linked inputs (model) are not passed here
        path = folder_paths.get_full_path("loras", lora_name)
        return (os.path.getmtime(path), os.path.getsize(path)) if path and os.path.isfile(path) else float("nan")

    @classmethod
    def execute(cls, model, lora_name: str, strength: float = 1.0, rank: int = STORYMEM_RANK,
                alpha: float = STORYMEM_ALPHA, rs_lora: bool = True) -> io.NodeOutput:
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise ValueError(f"lora_name ({lora_name!r}) is not in models/loras; put the file there and refresh "
                             "the page.")
        lora = load_storymem_lora(path, rank=rank, alpha=alpha, rs_lora=rs_lora)
        targets = check_fits(model, lora)
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora.tensors, strength, 0)
        applied = sum(len(patched.patches.get(k, ())) > len(model.patches.get(k, ())) for k in targets)
        text = (f"{lora.summary()}\n{applied} of {len(targets)} layers patched at scale {lora.scale:.4f} x strength "
                f"{strength:g} = {lora.scale * strength:.4f}")
        if applied != len(targets):
            log.warning("Memory-V2V StoryMem LoRA: only %d of %d layers were patched", applied, len(targets))
        return io.NodeOutput(patched, ui=ui.PreviewText(text))


NODES = [StoryMemLoraLoader]
