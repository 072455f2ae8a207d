"""The StoryMem story workflow (Wan 2.2 I2V A14B + the StoryMem LoRA): one queue run makes one shot of a story.

The per-shot settings sit on titled nodes ("Shot Prompt", "Shot Mode", "Shot Index", "Story ID", "Seed"), so the
runner (or the artist) changes only those between shots. Sampler defaults are the official ones (``pipeline.py`` and
``wan/configs``): 40 steps, shift 4, CFG 3.5 on both experts, 81 frames at 832x480. The experts switch where the
official code does, at timestep 900 (``boundary`` 0.9): with shift 4 and 40 steps the official UniPC timesteps are
999.0, ..., 913.1, 902.9 (steps 0-12) and then 892.3, and ComfyUI's simple schedule gives sigmas ..., 0.913, 0.903,
then 0.893 at step 13, so both run the first 13 steps on the high-noise expert.
"""

from __future__ import annotations

from .parts import UMT5, WAN21_VAE, node
from .spec import Note, WorkflowSpec

HIGH = "wan2.2_i2v_high_noise_14B_fp16.safetensors"
LOW = "wan2.2_i2v_low_noise_14B_fp16.safetensors"
LORA_HIGH = "Wan2.2-MI2V-A14B/backbone_high_noise.pth"  # Kevin-thu/StoryMem keeps MI2V and MM2V in two folders
LORA_LOW = "Wan2.2-MI2V-A14B/backbone_low_noise.pth"
CLIP_VISION = "clip_vision_h.safetensors"  # ComfyUI's Wan 2.1 I2V templates already use it
STEPS, SWITCH_STEP, SHIFT, CFG = 40, 13, 4.0, 3.5
WIDTH, HEIGHT, LENGTH, FPS = 832, 480, 81, 16
# Wan's default negative prompt (shared_config.sample_neg_prompt), which StoryMem uses when n_prompt is empty.
WAN_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
                "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
                "三条腿，背景人很多，倒着走")
FIRST_PROMPT = ("A lighthouse keeper climbs the spiral stairs of an old lighthouse at dusk, holding a lantern; warm "
                "light on the stone walls, medium shot.")

# Node ids the runner and tests address by title; kept here so they stay in step with the titles.
TITLES = {"prompt": "Shot Prompt", "mode": "Shot Mode", "shot_index": "Shot Index", "story_id": "Story ID",
          "seed": "Seed", "steps": "Steps", "switch": "Expert Switch Step", "bank": "Story Bank",
          "memory": "Story Memory", "keyframes": "Keyframe Select"}


def story_storymem() -> WorkflowSpec:
    """One shot of a StoryMem story per queue run; keyframes of every shot go into the story's bank."""
    t = TITLES
    prompt = {
        "1": node("UNETLoader", "Load High-Noise Expert", unet_name=HIGH, weight_dtype="default"),
        "2": node("UNETLoader", "Load Low-Noise Expert", unet_name=LOW, weight_dtype="default"),
        "3": node("MemV2V_StoryMemLoraLoader", "StoryMem LoRA (high noise)", model=["1", 0], lora_name=LORA_HIGH,
                  strength=1.0, rank=128, alpha=128.0, rs_lora=True),
        "4": node("MemV2V_StoryMemLoraLoader", "StoryMem LoRA (low noise)", model=["2", 0], lora_name=LORA_LOW,
                  strength=1.0, rank=128, alpha=128.0, rs_lora=True),
        "5": node("ModelSamplingSD3", "Shift (high)", model=["3", 0], shift=SHIFT),
        "6": node("ModelSamplingSD3", "Shift (low)", model=["4", 0], shift=SHIFT),
        "7": node("CLIPLoader", "Load Text Encoder", clip_name=UMT5, type="wan", device="default"),
        "8": node("PrimitiveStringMultiline", t["prompt"], value=FIRST_PROMPT),
        "9": node("CLIPTextEncode", "Encode Shot Prompt", clip=["7", 0], text=["8", 0]),
        "10": node("CLIPTextEncode", "Negative Prompt", clip=["7", 0], text=WAN_NEGATIVE),
        "11": node("VAELoader", "Load VAE", vae_name=WAN21_VAE),
        "12": node("PrimitiveString", t["story_id"], value="my_story"),
        "13": node("PrimitiveInt", t["shot_index"], value=0),
        "14": node("PrimitiveInt", t["seed"], value=42),
        "15": node("MemV2V_BankLoad", t["bank"], name="my_stories"),
        "16": node("CLIPVisionLoader", "Load CLIP Vision", clip_name=CLIP_VISION),
        "17": node("MemV2V_StoryMemorySelect", t["memory"], bank=["15", 0], story_id=["12", 0],
                   shot_index=["13", 0], mode="sink_window", budget=8, sink=3, caption=["8", 0],
                   clip_vision=["16", 0]),
        "18": node("MemV2V_StoryPreviousShot", "Previous Shot", bank=["15", 0], story_id=["12", 0],
                   shot_index=["13", 0], vae=["11", 0], frames=5),
        "19": node("MemV2V_StoryConditioning", t["mode"], model=["5", 0], positive=["9", 0], negative=["10", 0],
                   vae=["11", 0], width=WIDTH, height=HEIGHT, length=LENGTH, mode="cut", memory_keyframes=["17", 0],
                   previous_frames=["18", 0], model_low=["6", 0], rope_gap=5.0, max_memories=8),
        "20": node("PrimitiveInt", t["steps"], value=STEPS),
        "21": node("PrimitiveInt", t["switch"], value=SWITCH_STEP),
        "22": node("KSamplerAdvanced", "High-Noise Expert (steps 0-13)", model=["19", 0], add_noise="enable",
                   noise_seed=["14", 0], steps=["20", 0], cfg=CFG, sampler_name="uni_pc", scheduler="simple",
                   positive=["19", 2], negative=["19", 3], latent_image=["19", 4], start_at_step=0,
                   end_at_step=["21", 0], return_with_leftover_noise="enable"),
        "23": node("KSamplerAdvanced", "Low-Noise Expert (steps 13-40)", model=["19", 1], add_noise="disable",
                   noise_seed=["14", 0], steps=["20", 0], cfg=CFG, sampler_name="uni_pc", scheduler="simple",
                   positive=["19", 2], negative=["19", 3], latent_image=["22", 0], start_at_step=["21", 0],
                   end_at_step=10000, return_with_leftover_noise="disable"),
        "24": node("TrimVideoLatent", "Drop Memory Latents", samples=["23", 0], trim_amount=["19", 5]),
        "25": node("VAEDecode", "Decode Shot", samples=["24", 0], vae=["11", 0]),
        "26": node("ImageFromBatch", "Drop Condition Frames", image=["25", 0], batch_index=["19", 6], length=4096),
        "27": node("CreateVideo", "Create Video", images=["26", 0], fps=float(FPS)),
        "28": node("SaveVideo", "Save Shot", video=["27", 0], filename_prefix="memv2v/story/shot", format="auto",
                   codec="auto"),
        "29": node("MemV2V_KeyframeSelect", t["keyframes"], frames=["26", 0], story_id=["12", 0],
                   clip_vision=["16", 0], bank=["15", 0], shot_index=["13", 0], threshold=0.9, max_keyframes=3,
                   duplicate_threshold=0.9),
        "30": node("MemV2V_BankAdd", "Remember Shot", bank=["15", 0], samples=["24", 0], parents=["17", 1],
                   model=["5", 0], keyframes=["29", 0], story_id=["12", 0], shot_index=["13", 0], cut=["19", 7]),
        # Memory and keyframes can be empty (first shot, all duplicates), which PreviewImage refuses: the contact
        # sheet shows the stored keyframes instead, one row per shot.
        "31": node("MemV2V_BankInspect", "What The Bank Holds", bank=["30", 0], max_entries=12, frames=6,
                   thumb_height=60),
        "32": node("PreviewImage", "Stored Shots", images=["31", 0]),
    }
    notes = [
        Note("### A story, one shot per queue run (StoryMem)\n"
             "For every shot, in order:\n"
             "1. **Shot Index**: 0, 1, 2, ... (a shot run again replaces that shot for later shots).\n"
             "2. **Shot Prompt**: the shot's text (StoryMem's `video_prompts[i]`).\n"
             "3. **Shot Mode** `mode`: `cut` for the first shot and every new scene (memory only); `MI2V` "
             "continues from the previous shot's last frame; `MM2V` from its last 5 frames (use the MM2V LoRA).\n"
             "4. **Seed**, then queue.\n\n"
             "Memory: the story's keyframes in **Story Bank** (`output/memory_banks/my_stories`), chosen by **Story "
             "Memory** (first 3 + most recent, 8 in all). After each shot, **Keyframe Select** keeps up to 3 "
             "keyframes and **Remember Shot** stores them with the shot. Use one **Story ID** per story.",
             column=2, title="How to use", height=420),
        Note("Models (ComfyUI folders):\n"
             f"- `models/diffusion_models/{HIGH}` and `{LOW}` (Comfy-Org/Wan_2.2_ComfyUI_Repackaged; the "
             "fp8_scaled files work too: pick them in the two loaders)\n"
             "- `models/loras/Wan2.2-MI2V-A14B/backbone_high_noise.pth` and `backbone_low_noise.pth` from "
             "Kevin-thu/StoryMem (keep its folder; for MM2V stories put `Wan2.2-MM2V-A14B/` beside it and pick those "
             "files). They are read with torch.load(weights_only=True).\n"
             f"- `models/text_encoders/{UMT5}`, `models/vae/{WAN21_VAE}`\n"
             f"- `models/clip_vision/{CLIP_VISION}` (keyframe similarity; StoryMem used OpenAI CLIP ViT-B/32: for "
             "it, use Memory-V2V Embedder Load with open_clip ViT-B-32 weights on the `embedder` inputs)\n\n"
             "VRAM: each fp16 expert is ~28.6 GB and ComfyUI loads one at a time; 8 memories add 8 latent frames "
             "to the 21 of the shot.", column=1, title="Models", height=400),
        Note("Official sampling: 40 steps, shift 4, CFG 3.5 on both experts, 81 frames at 832x480, 16 fps. The "
             "experts switch at timestep 900 (boundary 0.9): with shift 4 and 40 steps that is after step 12, so "
             "steps 0-12 (13 steps) run on the high-noise expert (**Expert Switch Step** = 13).\n\n"
             "Not the same as the official run: the official UniPC keeps its multistep history across the switch "
             "(two KSamplerAdvanced restart it), ComfyUI draws other noise for a seed, and the keyframe CLIP "
             "model differs unless you load ViT-B/32.", column=4, title="Sampling", height=260),
    ]
    groups = {"1. Models": ["1", "2", "3", "4", "5", "6", "7", "11", "16"],
              "2. This shot": ["8", "12", "13", "14", "20", "21", "9", "10"],
              "3. Story memory": ["15", "17", "18"],
              "4. Render the shot": ["19", "22", "23", "24", "25", "26", "27", "28"],
              "5. Remember the shot": ["29", "30", "31", "32"]}
    return WorkflowSpec("memv2v_story_storymem", prompt, notes, groups, title="StoryMem: a story, one shot per run",
                        description="Make a multi shot story with Wan 2.2 and the StoryMem LoRAs; each shot remembers "
                                    "keyframes of the earlier shots.")


def specs() -> list[WorkflowSpec]:
    return [story_storymem()]
