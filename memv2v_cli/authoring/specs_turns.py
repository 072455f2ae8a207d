"""The bank-turns workflow (Wan 2.1 text-to-video, every result kept in a memory bank), in API form.

Model file names are those of ComfyUI's own Wan templates, so a standard Wan install finds them.
"""

from __future__ import annotations

from .spec import Note, WorkflowSpec
from .parts import NEGATIVE, UMT5, WAN21_VAE, node

WAN21_T2V = "wan2.1_t2v_1.3B_fp16.safetensors"


def t2v_bank_turns() -> WorkflowSpec:
    """Generate with Wan 2.1 and keep every result in a memory bank; the contact sheet shows what is remembered."""
    prompt = {
        "1": node("UNETLoader", "Load Diffusion Model", unet_name=WAN21_T2V, weight_dtype="default"),
        "2": node("CLIPLoader", "Load Text Encoder", clip_name=UMT5, type="wan", device="default"),
        "3": node("CLIPTextEncode", "Prompt", clip=["2", 0],
                  text="a lighthouse on a rocky coast at dusk, waves breaking, slow tracking camera"),
        "4": node("CLIPTextEncode", "Negative Prompt", clip=["2", 0], text=NEGATIVE),
        "5": node("ModelSamplingSD3", "Model Sampling (shift)", model=["1", 0], shift=8.0),
        "6": node("EmptyHunyuanLatentVideo", "Video Size", width=832, height=480, length=33, batch_size=1),
        "7": node("KSampler", "Sampler", model=["5", 0], positive=["3", 0], negative=["4", 0], latent_image=["6", 0],
                  seed=42, steps=30, cfg=6.0, sampler_name="uni_pc", scheduler="simple", denoise=1.0),
        "8": node("VAELoader", "Load VAE", vae_name=WAN21_VAE),
        "9": node("VAEDecode", "Decode", samples=["7", 0], vae=["8", 0]),
        "10": node("CreateVideo", "Create Video", images=["9", 0], fps=16.0),
        "11": node("SaveVideo", "Save Video", video=["10", 0], filename_prefix="memv2v/t2v", format="auto",
                   codec="auto"),
        "12": node("MemV2V_BankLoad", "Memory Bank", name="my_scene"),
        "13": node("MemV2V_BankAdd", "Remember This Turn", bank=["12", 0], samples=["7", 0], model=["5", 0]),
        "14": node("MemV2V_BankInspect", "What The Bank Holds", bank=["13", 0], max_entries=12, frames=6,
                   thumb_height=60),
        "15": node("PreviewImage", "Contact Sheet", images=["14", 0]),
    }
    notes = [
        Note("### Memory bank turns\nEvery queue run generates a clip and **adds it to the bank** `my_scene` "
             "(under `output/memory_banks/`). The contact sheet shows one row per remembered clip.\n\n"
             "Each turn: change the prompt and the seed (or set the seed to *increment*), then queue again.",
             column=0, title="How to use", height=220),
        Note("Models: `wan2.1_t2v_1.3B_fp16.safetensors` in `models/diffusion_models`, "
             "`umt5_xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders`, "
             "`wan_2.1_vae.safetensors` in `models/vae`.", column=1, title="Models", height=150),
    ]
    groups = {"1. Models": ["1", "2", "5", "8"], "2. Prompt and size": ["3", "4", "6"],
              "3. Generate": ["7", "9", "10", "11"], "4. Remember": ["12", "13", "14", "15"]}
    return WorkflowSpec("memv2v_t2v_bank_turns", prompt, notes, groups,
                        title="Wan 2.1 text to video, every clip remembered",
                        description="Generate clips with Wan 2.1 and keep each one in a memory bank; the contact "
                                    "sheet shows what the bank holds.")


def specs() -> list[WorkflowSpec]:
    return [t2v_bank_turns()]
