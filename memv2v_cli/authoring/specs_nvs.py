"""Shipped workflow specs for multi-turn novel view synthesis (ReCamMaster / Memory-V2V).

ReCamMaster's own setting: 81 frames at 832x480, its Wan2.1-T2V-1.3B port ``step20000.ckpt`` in
``models/diffusion_models`` (the same file feeds Load Diffusion Model and Load Modules), 50 Euler steps, CFG 5, shift 5.
Camera convention: ReCamMaster's -- the source video's frame j gets the target's camera j (Apply Memory
``user_camera = target``); each memory its own stored trajectory (Memory-V2V).
Node titles are how ``python -m memv2v_cli run --set "TITLE.input=..."`` finds nodes; keep them stable.
"""

from __future__ import annotations

from .spec import Note, WorkflowSpec
from .parts import NEGATIVE, UMT5, WAN21_VAE, node

RECAMMASTER_CKPT = "step20000.ckpt"
SOURCE_VIDEO = "source_video.mp4"
FRAMES, WIDTH, HEIGHT = 81, 832, 480
PROMPT = "a woman walks through a sunlit garden, the same scene seen from a new camera"


def _rerender_nodes() -> dict:
    """Models, the source video encoded at ReCamMaster's size, the prompt, the target camera (nodes 1-13)."""
    return {
        "1": node("UNETLoader", "Load ReCamMaster DiT", unet_name=RECAMMASTER_CKPT, weight_dtype="default"),
        "2": node("CLIPLoader", "Load Text Encoder", clip_name=UMT5, type="wan", device="default"),
        "3": node("VAELoader", "Load VAE", vae_name=WAN21_VAE),
        "4": node("MemV2V_LoadModules", "Load Camera Modules", checkpoint=RECAMMASTER_CKPT, allow_partial=False),
        "5": node("LoadVideo", "Source Video", file=SOURCE_VIDEO),
        "6": node("GetVideoComponents", "Video Frames", video=["5", 0]),
        "7": node("ImageFromBatch", "Trim Frames", image=["6", 0], batch_index=0, length=FRAMES),
        "8": node("ImageScale", "Resize", image=["7", 0], upscale_method="lanczos", width=WIDTH, height=HEIGHT,
                  crop="center"),
        "9": node("VAEEncode", "Encode Source", pixels=["8", 0], vae=["3", 0]),
        "10": node("CLIPTextEncode", "Prompt", clip=["2", 0], text=PROMPT),
        "11": node("CLIPTextEncode", "Negative Prompt", clip=["2", 0], text=NEGATIVE),
        "12": node("ModelSamplingSD3", "Model Sampling (shift)", model=["1", 0], shift=5.0),
        "13": node("MemV2V_CameraPreset", "Camera Preset", preset="pan_right", frames=FRAMES, strength=1.0,
                   subject_distance=4.0),
    }


def _output_nodes(model: list, context: list) -> dict:
    """Apply Memory (camera on), sampler, decode and save (nodes 17-21)."""
    return {
        "17": node("MemV2V_ApplyMemory", "Apply Memory", model=model, context=context, merge_blocks="auto",
                   merge_ratio=0.5, merge_mode="merge", modules=["4", 0], camera=["13", 0], user_camera="target"),
        "18": node("KSampler", "Sampler", model=["17", 0], positive=["10", 0], negative=["11", 0],
                   latent_image=["9", 0], seed=42, steps=50, cfg=5.0, sampler_name="euler", scheduler="simple",
                   denoise=1.0),
        "19": node("VAEDecode", "Decode", samples=["18", 0], vae=["3", 0]),
        "20": node("CreateVideo", "Create Video", images=["19", 0], fps=["6", 2]),
        "21": node("SaveVideo", "Save Video", video=["20", 0], filename_prefix="memv2v/nvs", format="auto",
                   codec="auto"),
    }


MODELS_NOTE = Note(
    "Models: ReCamMaster's `step20000.ckpt` (KwaiVGI/ReCamMaster-Wan2.1) in `models/diffusion_models` -- both "
    "**Load ReCamMaster DiT** and **Load Camera Modules** read it (or Memory-V2V's `memoryv2v.ckpt`); "
    "`umt5_xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders`; `wan_2.1_vae.safetensors` in `models/vae`.",
    column=0, title="Models", height=170)
SIZE_NOTE = Note(
    "ReCamMaster was trained on **81 frames at 832x480**. **Trim Frames** keeps 81 frames, **Resize** sets the size "
    "(a multiple of 16 px), and the **Camera Preset**'s `frames` must be at least the video's frame count. A "
    "camera file works too: swap the preset for **Memory-V2V Camera Load** (ReCamMaster's `camera_extrinsics.json` "
    "gives 21 poses, one per latent frame of 81 frames). The sampler starts from pure noise (denoise 1.0); the "
    "encoded source only sets the output's size and length.",
    column=2, title="Size and length", height=230)
CAMERA_NOTE = Note(
    "Camera convention: ReCamMaster's. **Apply Memory**'s `user_camera` is `target`: the source video's frame j gets "
    "the target's camera j, exactly as ReCamMaster was trained (`identity` puts every source frame at the first "
    "camera; `own trajectory` uses the source's known poses from `user_trajectory`).",
    column=5, title="Camera convention", height=170)


def multiturn_nvs() -> WorkflowSpec:
    """Re-render the user's video along a new camera each turn, remembering every result (Memory-V2V)."""
    prompt = _rerender_nodes()
    prompt.update({
        "14": node("MemV2V_BankLoad", "Memory Bank", name="my_scene"),
        "15": node("MemV2V_FOVRetrieve", "FOV Retrieve", bank=["14", 0], camera=["13", 0], top_k=6, lam=0.5,
                   sphere_radius=1.0),
        "16": node("MemV2V_DynamicTokenize", "Dynamic Tokenize", selection=["15", 0], latent=["9", 0], mode="nvs",
                   fine_ranks=3, user_kernel="1x2x2", fine_kernel="1x4x4", coarse_kernel="1x8x8",
                   reverse_memory=True, story_gap=5.0, target_frames=0),
    })
    prompt.update(_output_nodes(["12", 0], ["16", 0]))
    prompt["22"] = node("MemV2V_BankAdd", "Remember This Turn", bank=["14", 0], samples=["18", 0], camera=["13", 0],
                        parents=["15", 0], model=["1", 0])
    # What an artist looks at after a run: why these memories (the cameras and their fields of view, ranked as FOV
    # Retrieve ranked them; it reads the bank as loaded, before this turn is added) and what the bank now holds.
    prompt["23"] = node("MemV2V_CameraPreview", "Why These Memories (camera preview)", camera=["13", 0],
                        bank=["14", 0], top_k=6, lam=0.5, sphere_radius=1.0)
    prompt["24"] = node("MemV2V_BankInspect", "What The Bank Holds", bank=["22", 0], max_entries=12, frames=6,
                        thumb_height=60)
    prompt["25"] = node("PreviewImage", "Contact Sheet", images=["24", 0])
    notes = [
        Note("### Multi-turn novel view synthesis\nEach queue run re-renders **Source Video** along a new camera and "
             "**adds the result to the bank** `my_scene` (under `output/memory_banks/`). Later turns retrieve the "
             "earlier results whose field of view overlaps the new camera's and attend to them, so the scene stays "
             "consistent across turns.\n\n**Each turn:** pick another preset in **Camera Preset** (e.g. pan_left, "
             "then tilt_up), optionally change the seed, and queue again. Keep the bank name for the same scene; "
             "use a new name for a new video. **FOV Retrieve** shows which memories were used and their scores.",
             column=0, title="How to use (read me)", height=330),
        MODELS_NOTE,
        SIZE_NOTE,
        Note("Turn 1 retrieves nothing (the bank is empty) and is plain ReCamMaster. **Apply Memory** adds the "
             "camera of every video (target; source with the target's camera per frame, as ReCamMaster; each "
             "memory its own stored trajectory) and merges the least responsive memory frames at blocks 10 and 20. "
             "**Remember This Turn** stores the latent with its camera, the memories it used, and the seed, "
             "prompt and settings the **Sampler** really used (read from the graph, so the turn can be replayed).",
             column=5, title="What happens", height=210),
        CAMERA_NOTE,
    ]
    groups = {"1. Models": ["1", "2", "3", "4", "12"],
              "2. Source and camera": ["5", "6", "7", "8", "9", "10", "11", "13"],
              "3. Memory": ["14", "15", "16"],
              "4. Render": ["17", "18", "19", "20", "21"],
              "5. Remember, see why": ["22", "23", "24", "25"]}
    return WorkflowSpec("memv2v_multiturn_nvs", prompt, notes, groups, title="Memory-V2V: multi-turn novel views",
                        description="Render your video again along a new camera each turn; every turn remembers the "
                                    "earlier ones so the scene stays the same.")


def recammaster_no_memory() -> WorkflowSpec:
    """Plain ReCamMaster re-rendering (the source video and the target camera only), to compare against memory."""
    prompt = _rerender_nodes()
    prompt["16"] = node("MemV2V_DynamicTokenize", "Source Tokens", latent=["9", 0], mode="nvs", fine_ranks=3,
                        user_kernel="1x2x2", fine_kernel="1x4x4", coarse_kernel="1x8x8", reverse_memory=True,
                        story_gap=5.0, target_frames=0)
    prompt.update(_output_nodes(["12", 0], ["16", 0]))
    prompt["21"]["inputs"]["filename_prefix"] = "memv2v/recammaster"
    prompt["22"] = node("MemV2V_CameraPreview", "Camera Path", camera=["13", 0], top_k=6, lam=0.5,
                        sphere_radius=1.0)
    notes = [
        Note("### ReCamMaster without memory\nRe-renders **Source Video** along the **Camera Preset** with the "
             "source as the only condition, as ReCamMaster does (no bank, nothing remembered). Use it to compare "
             "with the multi-turn workflow: same seed and preset, with and without memory.",
             column=0, title="How to use (read me)", height=200),
        MODELS_NOTE,
        SIZE_NOTE,
        CAMERA_NOTE,
    ]
    groups = {"1. Models": ["1", "2", "3", "4", "12"],
              "2. Source and camera": ["5", "6", "7", "8", "9", "10", "11", "13", "22"],
              "3. Render": ["16", "17", "18", "19", "20", "21"]}
    return WorkflowSpec("memv2v_recammaster_no_memory", prompt, notes, groups,
                        title="ReCamMaster without memory (for comparison)",
                        description="Render your video along a new camera with plain ReCamMaster: no bank, nothing "
                                    "remembered, to compare with the multi turn workflow.")


def specs() -> list[WorkflowSpec]:
    return [multiturn_nvs(), recammaster_no_memory()]
