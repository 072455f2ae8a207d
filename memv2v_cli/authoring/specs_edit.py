"""Shipped workflow specs for long text-guided video editing (LucyEdit or any Wan V2V model).

memv2v_long_video_edit: one queue run edits one segment; Split Segments' index steps on by itself ("increment"), the
edited segment is kept in the bank with its source descriptor, and the stitched preview fills not-yet-edited segments
from the source. memv2v_long_video_edit_all: one queue run edits every segment (Long Video Edit), resumable.
"""

from __future__ import annotations

from .spec import Note, WorkflowSpec
from .parts import NEGATIVE, UMT5, WAN22_VAE, node

# Decart's own ComfyUI-layout file (repository decart-ai/Lucy-Edit-Dev-ComfyUI), loaded by the native UNETLoader.
LUCY_EDIT = "lucy-edit-dev-cui-fp16.safetensors"
# facebook/dinov2-large's model.safetensors, renamed: ComfyUI's Load CLIP Vision reads DINOv2 large and giant.
DINOV2 = "dinov2_large.safetensors"
EDIT_INSTRUCTION = ("Change the sky to a dramatic orange sunset with glowing clouds, keep the buildings, the street "
                    "and the camera motion exactly as they are")
SEGMENT_LENGTH, OVERLAP = 81, 8
WIDTH, HEIGHT = 832, 480  # Wan 2.2 VAE: sides must be multiples of 16
SPLIT = "9"  # Split Segments: its index steps on by itself after every queue run


def _models_and_source() -> dict:
    """Nodes 1-7 both edit workflows share: LucyEdit, the text encoder and prompts, the VAE and the source video."""
    return {
        "1": node("UNETLoader", "Load LucyEdit", unet_name=LUCY_EDIT, weight_dtype="default"),
        "2": node("CLIPLoader", "Load Text Encoder", clip_name=UMT5, type="wan", device="default"),
        "3": node("PrimitiveStringMultiline", "Edit Instruction", value=EDIT_INSTRUCTION),
        "4": node("CLIPTextEncode", "Encode Instruction", clip=["2", 0], text=["3", 0]),
        "5": node("CLIPTextEncode", "Negative Prompt", clip=["2", 0], text=NEGATIVE),
        "6": node("VAELoader", "Load Wan 2.2 VAE", vae_name=WAN22_VAE),
        "7": node("LoadVideo", "Source Video", file="my_long_video.mp4"),
    }


def long_video_edit() -> WorkflowSpec:
    """LucyEdit a long video segment by segment, each segment remembering the edited earlier ones."""
    seg = {"segment_length": SEGMENT_LENGTH, "overlap": OVERLAP}
    prompt = {
        **_models_and_source(),
        SPLIT: node("MemV2V_SplitSegments", "Split Segments (index: increment)", video=["7", 0], index=0,
                    vae_temporal_stride=4, width=WIDTH, height=HEIGHT, **seg),
        "11": node("MemV2V_BankLoad", "Edit Memory Bank", name="my_long_edit"),
        "12": node("CLIPVisionLoader", "Load DINOv2 (segment descriptors)", clip_name=DINOV2),
        "13": node("MemV2V_SegmentRetrieve", "Retrieve Edited Segments", bank=["11", 0], segment=[SPLIT, 0],
                   segment_index=[SPLIT, 1], source_id=[SPLIT, 5], top_k=4, recent_first=True,
                   clip_vision=["12", 0], source_frames=[SPLIT, 6]),
        "14": node("ModelSamplingSD3", "Model Sampling (shift)", model=["1", 0], shift=5.0),
        "15": node("MemV2V_EditConditioning", "Source Segment (channel concat)", positive=["4", 0],
                   negative=["5", 0], vae=["6", 0], source=[SPLIT, 0], model=["14", 0]),
        "16": node("MemV2V_DynamicTokenize", "Memory Tokens", selection=["13", 0], latent=["15", 2], mode="edit",
                   fine_ranks=3, user_kernel="1x2x2", fine_kernel="1x4x4", coarse_kernel="1x8x8",
                   reverse_memory=True, story_gap=5.0, target_frames=0, segment_index=[SPLIT, 1],
                   source_id=[SPLIT, 5]),
        "17": node("MemV2V_ApplyMemory", "Apply Memory", model=["14", 0], context=["16", 0], merge_blocks="auto",
                   merge_ratio=0.5, merge_mode="merge"),
        "18": node("PrimitiveInt", "Seed", value=42),
        "19": node("KSampler", "Edit Segment", model=["17", 0], positive=["15", 0], negative=["15", 1],
                   latent_image=["15", 2], seed=["18", 0], steps=50, cfg=5.0, sampler_name="uni_pc",
                   scheduler="simple", denoise=1.0),
        "20": node("MemV2V_BankAdd", "Remember Edited Segment", bank=["11", 0], samples=["19", 0],
                   segment_index=[SPLIT, 1], source_id=[SPLIT, 5], parents=["13", 0], model=["14", 0],
                   descriptor=["13", 1]),
        "21": node("MemV2V_StitchSegments", "Stitch and Save (unedited segments from the source)", blend="cut",
                   bank=["20", 0], vae=["6", 0], source_video=["7", 0], source_id=[SPLIT, 5], fill_missing=True,
                   vae_temporal_stride=4, filename_prefix="memv2v/long_edit", file_format="mp4", **seg),
    }
    notes = [
        Note("### Long video editing, one segment per queue run\n"
             "1. Put your video in `input/` and pick it in **Source Video**; write the edit in **Edit Instruction** "
             "(LucyEdit likes 20-30 words starting with a verb such as *Change* or *Add*).\n"
             "2. **Queue once per segment.** Split Segments' index is set to *increment*: every run edits the next "
             "segment, remembers it in the bank, and the saved video shows the edit so far (segments not edited "
             "yet come from the source). Its text says `segment i of n`; after the last one the index wraps to 0 "
             "with a message, and the next run starts a new pass.\n"
             "3. Only the current segment is decoded (resized to 832x480 while reading) and Stitch writes the "
             "video to `output/memv2v/` one segment at a time, so the video's length does not matter.\n"
             "4. Keep segment_length and overlap the same in Split and Stitch. 81 frames = 21 latent frames.",
             column=0, title="How to use", height=390),
        Note("Models (ComfyUI folders):\n- `models/diffusion_models/" + LUCY_EDIT + "`: LucyEdit-Dev in "
             "ComfyUI's layout, from decart-ai/Lucy-Edit-Dev-ComfyUI (non-commercial licence), for **Load "
             "LucyEdit**.\n- `models/clip_vision/" + DINOV2 + "`: DINOv2 ViT-L/14 (facebook/dinov2-large's "
             "`model.safetensors`, renamed), for **Load DINOv2**: it describes each source segment so earlier "
             "ones can be retrieved (DINOv2 giant works too). Keep the same file for every segment of a video: "
             "the bank records which encoder made each descriptor and refuses another one. Without DINOv2, "
             "connect Memory-V2V Embedder Load (open_clip, or the colour-histogram fallback) to Retrieve's "
             "embedder input instead.\n"
             "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n- `models/vae/wan2.2_vae.safetensors`"
             "\n\nThe source enters by channel concatenation (Edit Conditioning); earlier edited segments enter as "
             "memory tokens (previous segment first). Any Wan V2V model with concatenated source channels works "
             "the same way.", column=1, title="Models", height=360),
    ]
    groups = {"1. Models": ["1", "2", "6", "12", "14"], "2. Edit instruction": ["3", "4", "5"],
              "3. Source segment": ["7", SPLIT, "15"], "4. Memory": ["11", "13", "16"],
              "5. Edit": ["17", "18", "19"], "6. Remember and stitch": ["20", "21"]}
    return WorkflowSpec("memv2v_long_video_edit", prompt, notes, groups, controls={SPLIT: {"index": "increment"}},
                        title="Long video edit, one segment per run (LucyEdit)",
                        description="Edit a long video segment by segment with a text instruction; each segment sees "
                                    "the segments already edited, so the edit stays consistent.")


def long_video_edit_all() -> WorkflowSpec:
    """LucyEdit a long video in one queue run: Long Video Edit loops over every segment, resumable."""
    prompt = {
        **_models_and_source(),
        "8": node("MemV2V_BankLoad", "Edit Memory Bank", name="my_long_edit_all"),
        "9": node("CLIPVisionLoader", "Load DINOv2 (segment descriptors)", clip_name=DINOV2),
        "10": node("ModelSamplingSD3", "Model Sampling (shift)", model=["1", 0], shift=5.0),
        "11": node("MemV2V_LongVideoEdit", "Edit Every Segment", model=["10", 0], positive=["4", 0],
                   negative=["5", 0], vae=["6", 0], bank=["8", 0], video=["7", 0], clip_vision=["9", 0],
                   width=WIDTH, height=HEIGHT, segment_length=SEGMENT_LENGTH, overlap=OVERLAP, blend="cut",
                   seed=42, steps=50, cfg=5.0, sampler_name="uni_pc", scheduler="simple", denoise=1.0, top_k=4,
                   recent_first=True, fine_ranks=3, fine_kernel="1x4x4", coarse_kernel="1x8x8",
                   reverse_memory=True, merge_blocks="auto", merge_ratio=0.5, merge_mode="merge",
                   filename_prefix="memv2v/long_edit_all"),
    }
    notes = [
        Note("### Edit a whole video in one queue run\n"
             "1. Put your video in `input/` and pick it in **Source Video**; write the edit in **Edit Instruction** "
             "(LucyEdit likes 20-30 words starting with a verb such as *Change* or *Add*).\n"
             "2. **Queue once.** *Edit Every Segment* reads the video one segment at a time (81 frames, resized to "
             "832x480 while reading), retrieves the segments it already edited from the bank (the previous one "
             "first, then the most similar by DINOv2), samples the edit with ComfyUI's sampler and appends it to "
             "the output video in `output/memv2v/`. Memory holds one segment, so length does not matter; the "
             "progress bar counts every step of every segment.\n"
             "3. **Stopped or crashed?** Queue again with the same settings (the seed's control stays *fixed*): "
             "segments already in the bank for this video and these settings are taken from there, and the edit "
             "continues at the first missing one. Change the instruction, seed or any setting and it edits afresh.\n"
             "4. To look at each segment on its own, use `memv2v_long_video_edit` (one segment per queue run).",
             column=0, title="How to use", height=420),
        Note("Models (ComfyUI folders):\n- `models/diffusion_models/" + LUCY_EDIT + "`: LucyEdit-Dev in "
             "ComfyUI's layout, from decart-ai/Lucy-Edit-Dev-ComfyUI (non-commercial licence), for **Load "
             "LucyEdit**.\n- `models/clip_vision/" + DINOV2 + "`: DINOv2 ViT-L/14 (facebook/dinov2-large's "
             "`model.safetensors`, renamed), for **Load DINOv2** (giant works too; keep the same file for every "
             "run on a video). Without it, connect Memory-V2V Embedder Load to the node's embedder input.\n"
             "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n- `models/vae/wan2.2_vae.safetensors`"
             "\n\nLoRAs and other model patches go between **Model Sampling** and the node: it samples through "
             "ComfyUI's own sampler.", column=1, title="Models", height=330),
    ]
    groups = {"1. Models": ["1", "2", "6", "9", "10"], "2. Edit instruction": ["3", "4", "5"],
              "3. Source and memory": ["7", "8"], "4. Edit every segment": ["11"]}
    return WorkflowSpec("memv2v_long_video_edit_all", prompt, notes, groups,
                        title="Long video edit, all segments in one run (LucyEdit)",
                        description="Edit a whole long video with one text instruction in a single queue run; each "
                                    "segment remembers the ones before it, and a stopped run resumes where it ended.")


def specs() -> list[WorkflowSpec]:
    return [long_video_edit(), long_video_edit_all()]
