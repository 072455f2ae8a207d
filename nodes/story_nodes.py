"""Multi-shot stories (StoryMem): keyframes of earlier shots condition the next shot of ComfyUI's own Wan 2.2 I2V A14B.

One queue run makes one shot: Story Memory Select picks stored keyframes (sink + window, or by relevance), Story
Previous Shot gives the last frames of the previous shot (MI2V / MM2V), Story Conditioning builds the official
conditioning (``memv2v_core.story.storymem_inputs``) on ComfyUI's own I2V fields and patches the RoPE of both
experts, the native samplers run, and after decoding Keyframe Select picks up to 3 keyframes for Bank Add.
"""

from __future__ import annotations

import logging

import torch
import node_helpers
import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..memv2v_core.retrieval.embedders import ColorHistogramEmbedder, EncodeImageEmbedder
from ..memv2v_core.retrieval.selection import SelectedMemory, Selection as SelectionType
from ..memv2v_core.story.conditioning import CONDITION_PIXEL_FRAMES, given_latent_frames, storymem_inputs
from ..memv2v_core.story.keyframes import (DUPLICATE_THRESHOLD, MAX_KEYFRAMES, SIMILARITY_THRESHOLD, embed,
                                           select_keyframes)
from ..memv2v_core.story.memory_select import MAX_MEMORIES, MEMORY_MODES, SINK, relevance_scores, select_memories
from ..memv2v_core.story.script import SHOT_MODES
from ..memv2v_core.story.shots import shot_of, story_shots
from .edit_nodes import concat_channels
from .patches.story_patch import DEFAULT_GAP, apply_story_rope
from .socket_types import Bank, Embedder, Selection

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/story"
CONDITION_FRAMES = dict(zip(SHOT_MODES, CONDITION_PIXEL_FRAMES))  # cut 0, MI2V 1, MM2V 5
STORY_ID_TOOLTIP = ("The story's id: the shots of one story share it in the bank (Bank Add's story_id). Letters, "
                    "digits and spaces; e.g. the script's story_name.")
SHOT_INDEX_TOOLTIP = ("This shot's index (0 = the first shot): only shots with a smaller index are used, so running "
                      "a shot again never sees itself. -1 = every stored shot of the story.")
EMPTY_IMAGE = (0, 64, 64, 3)  # "no frames": an IMAGE batch of length 0 (the story nodes skip it; PreviewImage fails on it)


# -- helpers -------------------------------------------------------------------------------------------------------

class _SquashedClipVision(EncodeImageEmbedder):
    """ComfyUI's CLIP_VISION on whole frames squashed to its input size (StoryMem's CLIP preprocessing: no crop)."""

    def _embed_batch(self, frames: torch.Tensor) -> torch.Tensor:
        output = self.encoder.encode_image(frames, crop=False)
        embeds = output["image_embeds"] if not isinstance(output, torch.Tensor) else output
        if embeds is None:
            raise ValueError("clip_vision: the model returned no image_embeds; use a CLIP or SigLIP vision model.")
        return embeds



def _retrievable(bank):
    """The entries retrieval may use (visible, and on the active branch): what the story's memory is drawn from."""
    return [bank.entry(entry_id) for entry_id in bank.retrieval_ids()]

def image_embedder(clip_vision, embedder, required: bool, fallback: bool = False):
    """The image embedder from the connected input (clip_vision or a pack embedder); None when neither is
    connected and it is not ``required``."""
    if clip_vision is not None and embedder is not None:
        raise ValueError("clip_vision / embedder: both are connected; connect only the one that embeds the story's "
                         "keyframes (the same one in every shot).")
    if clip_vision is not None:
        name = type(getattr(clip_vision, "model", clip_vision)).__name__
        return _SquashedClipVision(clip_vision, name=f"clip_vision:{name}", batch_size=16)
    if embedder is not None:
        return embedder
    if fallback:
        return ColorHistogramEmbedder()
    if required:
        raise ValueError("clip_vision / embedder: neither is connected. Connect Load CLIP Vision (StoryMem uses "
                         "CLIP image embeddings), or Memory-V2V Embedder Load (an open_clip file, e.g. ViT-B-32 as "
                         "in the official code, or its built-in colour histogram, which needs no weights).")
    return None


def check_frames(value, name: str, allow_empty: bool = True) -> torch.Tensor | None:
    """An IMAGE batch [N, H, W, 3] (None or N = 0: no frames), refusing other layouts with a message."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.ndim != 4:
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} is {got}; connect an IMAGE batch [frames, height, width, 3].")
    if value.shape[0] == 0:
        if allow_empty:
            return None
        raise ValueError(f"{name} has no frames.")
    if value.shape[-1] != 3:
        raise ValueError(f"{name} has {value.shape[-1]} colour channels ({list(value.shape)}); StoryMem takes RGB "
                         "images. Drop the alpha channel first (e.g. Split Image with Alpha) or load the images as "
                         "RGB.")
    return value


def resize(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Bicubic, no crop (a stretch), as the official code's ``F.interpolate(..., mode='bicubic')``."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    return comfy.utils.common_upscale(frames.movedim(-1, 1), width, height, "bicubic", "disabled").movedim(1, -1)


def empty_image() -> torch.Tensor:
    return torch.zeros(EMPTY_IMAGE, device=comfy.model_management.intermediate_device())


def stored_keyframes(bank, shots) -> list[tuple[str, torch.Tensor, object]]:
    """(id, image [H, W, 3], entry) for every stored keyframe of ``shots``, in story order."""
    found = []
    for entry in shots:
        if not entry.has("keyframes"):
            continue
        images = bank.load_tensor(entry.entry_id, "keyframes")
        shot = shot_of(entry)[1]
        found.extend((f"shot {shot} kf {k} ({entry.entry_id[:8]})", images[k], entry) for k in range(images.shape[0]))
    return found


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """One IMAGE batch; keyframes of another size are stretched (bicubic) to the size of the last one."""
    height, width = images[-1].shape[0], images[-1].shape[1]
    return torch.cat([resize(image[None].float(), width, height).clamp(0, 1) for image in images])


def _story_id(story_id: str) -> str:
    story_id = (story_id or "").strip()
    if not story_id:
        raise ValueError("story_id: empty; give the story a name (the same in every shot and in Bank Add).")
    return story_id


def _check_story_model(model, name: str, latent_channels: int | None) -> None:
    channels = concat_channels(model)
    if channels is None:
        raise ValueError(f"{name}: a {type(getattr(model, 'model', model)).__name__} is not a Wan DiT; load a Wan 2.2 "
                         "I2V A14B expert with Load Diffusion Model.")
    in_dim, model_latent = channels
    if in_dim != 2 * model_latent + 4:
        raise ValueError(f"{name}: its patch embedding takes {in_dim} channels for {model_latent}-channel latents, "
                         f"not {2 * model_latent + 4} (noise + 4 mask + condition latent), so it cannot see "
                         "StoryMem's memory. Load the Wan 2.2 I2V A14B experts (36 channels: "
                         "wan2.2_i2v_high_noise_14B / wan2.2_i2v_low_noise_14B), not a T2V or TI2V model.")
    if latent_channels is not None and latent_channels != model_latent:
        raise ValueError(f"vae: it makes {latent_channels}-channel latents but {name} takes {model_latent}-channel "
                         "latents; use the Wan 2.1 VAE (wan_2.1_vae.safetensors) with Wan 2.2 A14B.")


def encode_frames(vae, frames: torch.Tensor, name: str) -> torch.Tensor:
    latent = vae.encode(frames[..., :3])
    if latent.ndim != 5:
        raise ValueError(f"vae: encoded {name} to shape {list(latent.shape)}, not a video latent; connect the Wan "
                         "2.1 VAE (wan_2.1_vae.safetensors).")
    return latent


# -- nodes ---------------------------------------------------------------------------------------------------------

class StoryConditioning(io.ComfyNode):
    """StoryMem's conditioning of one shot, exactly as the official M2V code builds it, on ComfyUI's I2V fields."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_StoryConditioning",
            display_name="Memory-V2V Story Conditioning",
            category=CATEGORY,
            description="StoryMem (Wan 2.2 I2V A14B + the StoryMem LoRA): the memory keyframes are resized to the "
                        "shot size (bicubic, no crop) and VAE-encoded one by one (one latent frame each) in front of "
                        "the shot; the shot is the encoding of [condition frames, grey] (none for a cut, the previous "
                        "shot's last frame for MI2V, its last 5 frames for MM2V); the mask marks memories and "
                        "condition frames as given. Both go on positive and negative as ComfyUI's own "
                        "concat_latent_image / concat_mask, so the native samplers work unchanged. Both experts get "
                        "the memory RoPE shift (memories at -M*S .. -S). After sampling drop the first "
                        "memory_frames latent frames (Trim Video Latent) and, after decoding, the first drop_frames "
                        "frames (Image From Batch).",
            inputs=[
                io.Model.Input("model", tooltip="The high-noise expert (Wan 2.2 I2V A14B, with the StoryMem LoRA); "
                                                "it gets the memory RoPE shift."),
                io.Conditioning.Input("positive", tooltip="The shot's prompt (CLIP Text Encode with umt5)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (StoryMem uses Wan's default)."),
                io.Vae.Input("vae", tooltip="The Wan 2.1 VAE (wan_2.1_vae.safetensors): encodes keyframes and "
                                            "condition frames."),
                io.Int.Input("width", default=832, min=16, max=8192, step=16,
                             tooltip="Shot width in pixels, a multiple of 16 (StoryMem: 832)."),
                io.Int.Input("height", default=480, min=16, max=8192, step=16,
                             tooltip="Shot height in pixels, a multiple of 16 (StoryMem: 480)."),
                io.Int.Input("length", default=81, min=1, max=8192, step=4,
                             tooltip="Shot length in frames, 4k+1 (StoryMem: 81 = 21 latent frames)."),
                io.Combo.Input("mode", options=list(SHOT_MODES), default=SHOT_MODES[0],
                               tooltip="cut: memory only (a new scene). MI2V: continue from the previous shot's last "
                                       "frame. MM2V: continue from its last 5 frames (load the MM2V LoRA). MI2V and "
                                       "MM2V need previous_frames."),
                io.Image.Input("memory_keyframes", optional=True,
                               tooltip="The memory: keyframes of earlier shots in story order (Story Memory Select). "
                                       "Each is stretched to the shot size and encoded alone. Empty or open: no "
                                       "memory (the first shot)."),
                io.Image.Input("previous_frames", optional=True, lazy=True,
                               tooltip="The previous shot's last frames (Story Previous Shot): MI2V uses the last "
                                       "one, MM2V the last 5. Not evaluated for a cut (no decode)."),
                io.Model.Input("model_low", optional=True,
                               tooltip="The low-noise expert (with its StoryMem LoRA); it gets the same RoPE shift."),
                io.Float.Input("rope_gap", default=float(DEFAULT_GAP), min=0.5, max=100.0, step=0.5,
                               tooltip="S: latent-frame distance between memories on the time axis (memories at "
                                       "-M*S .. -S, the shot at 0..). 5 = the corrected official code."),
                io.Int.Input("max_memories", default=MAX_MEMORIES, min=0, max=64,
                             tooltip="Refuse more memory keyframes than this (Story Memory Select's budget; "
                                     "StoryMem: 8, its README uses 10)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The high-noise expert with the memory RoPE shift."),
                io.Model.Output(display_name="model_low",
                                tooltip="The low-noise expert with the memory RoPE shift (None when not connected)."),
                io.Conditioning.Output(display_name="positive", tooltip="Positive with the StoryMem conditioning."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative with the same conditioning."),
                io.Latent.Output(display_name="latent",
                                 tooltip="Empty latent of memory_frames + shot latent frames: the sampler's latent."),
                io.Int.Output(display_name="memory_frames",
                              tooltip="Latent frames to drop after sampling (the memories): Trim Video Latent's "
                                      "trim_amount."),
                io.Int.Output(display_name="drop_frames",
                              tooltip="Decoded frames to drop (0 cut, 1 MI2V, 5 MM2V: the repeated condition "
                                      "frames): Image From Batch's batch_index."),
                io.Boolean.Output(display_name="cut", tooltip="True for a cut: Bank Add's cut input."),
            ],
        )

    @classmethod
    def check_lazy_status(cls, mode=None, previous_frames=None, **_) -> list[str]:
        # a cut never looks at the previous shot, so Story Previous Shot (a VAE decode) does not run for it
        return ["previous_frames"] if mode in SHOT_MODES[1:] and previous_frames is None else []

    @classmethod
    def execute(cls, model, positive, negative, vae, width: int, height: int, length: int, mode: str,
                memory_keyframes=None, previous_frames=None, model_low=None, rope_gap: float = DEFAULT_GAP,
                max_memories: int = MAX_MEMORIES) -> io.NodeOutput:
        if mode not in CONDITION_FRAMES:
            raise ValueError(f"mode ({mode!r}) must be one of {list(SHOT_MODES)}.")
        condition = CONDITION_FRAMES[mode]
        if width % 16 or height % 16:
            raise ValueError(f"width x height ({width}x{height}) must be multiples of 16 (Wan: 8-pixel VAE cells, "
                             f"2x2 patches); e.g. {max(16, width // 16 * 16)}x{max(16, height // 16 * 16)}.")
        if (length - 1) % 4:
            raise ValueError(f"length ({length}) must be 4k+1 frames (the Wan VAE folds 4 frames per latent frame "
                             f"after the first); e.g. {(length - 1) // 4 * 4 + 1} or {(length - 1) // 4 * 4 + 5}.")
        latent_channels = getattr(vae, "latent_channels", None)
        _check_story_model(model, "model", latent_channels)
        if model_low is not None:
            _check_story_model(model_low, "model_low", latent_channels)
        shot_latents = (length - 1) // 4 + 1
        if condition and shot_latents <= given_latent_frames(condition):
            raise ValueError(f"length ({length}): {mode} gives the first {condition} frames, so the shot needs more "
                             f"than {given_latent_frames(condition)} latent frames; use length >= "
                             f"{4 * given_latent_frames(condition) + 1}.")

        memory = check_frames(memory_keyframes, "memory_keyframes")
        count = 0 if memory is None else memory.shape[0]
        if count > max_memories:
            raise ValueError(f"memory_keyframes: {count} keyframes but max_memories is {max_memories}; select at "
                             f"most {max_memories} (Story Memory Select's budget) or raise max_memories.")
        previous = check_frames(previous_frames, "previous_frames")
        notes = []
        if condition and previous is None:
            raise ValueError(f"mode ({mode}): this is the first shot of the story (previous_frames is empty), so "
                             f"there is nothing to continue from; use mode 'cut' for the first shot, or connect "
                             f"the previous shot's frames (Story Previous Shot).")
        if condition and previous.shape[0] < condition:
            raise ValueError(f"previous_frames has {previous.shape[0]} frame(s) but {mode} continues from the last "
                             f"{condition}; connect at least {condition} frames of the previous shot.")

        if memory is not None:
            if tuple(memory.shape[1:3]) != (height, width):
                notes.append(f"memory keyframes {memory.shape[2]}x{memory.shape[1]} stretched to {width}x{height}")
            resized = resize(memory, width, height)
            memory_latent = torch.cat([encode_frames(vae, resized[i:i + 1], f"memory keyframe {i}")
                                       for i in range(count)], dim=2)
        else:
            memory_latent = None
        video = torch.full((length, height, width, 3), 0.5)  # grey: 0 in the official [-1, 1] pixels
        if condition:
            frames = previous[-condition:]
            if tuple(frames.shape[1:3]) != (height, width):
                notes.append(f"previous frames {frames.shape[2]}x{frames.shape[1]} stretched to {width}x{height}")
            video[:condition] = resize(frames, width, height).to(video)
        shot_latent = encode_frames(vae, video, "the shot's condition video")
        latent, mask = storymem_inputs(memory_latent, shot_latent, condition)

        values = {"concat_latent_image": latent, "concat_mask": mask}
        positive = node_helpers.conditioning_set_values(positive, values)
        negative = node_helpers.conditioning_set_values(negative, values)
        empty = {"samples": torch.zeros([1, latent.shape[1], latent.shape[2], latent.shape[3], latent.shape[4]],
                                        device=comfy.model_management.intermediate_device())}
        patched = apply_story_rope(model, count, rope_gap)
        patched_low = apply_story_rope(model_low, count, rope_gap) if model_low is not None else None

        positions = ", ".join(f"{-(count - m) * rope_gap:g}" for m in range(count)) or "none"
        kept = length - condition
        text = [f"{mode}: {count} memory keyframe{'s' if count != 1 else ''} + {shot_latents} shot latent frames = "
                f"{count + shot_latents} ({width}x{height}, {length} frames)",
                f"memory RoPE positions: {positions}; shot 0..{shot_latents - 1}",
                f"after sampling: trim {count} latent frame{'s' if count != 1 else ''}, drop {condition} decoded "
                f"frame{'s' if condition != 1 else ''} -> {kept} frames"]
        if model_low is None:
            text.append("model_low not connected: only one expert is patched")
        if previous is not None and not condition:
            text.append("previous_frames ignored (cut)")
        text.extend(notes)
        return io.NodeOutput(patched, patched_low, positive, negative, empty, count, condition, mode == "cut",
                             ui={"text": ["\n".join(text)]})


class KeyframeSelect(io.ComfyNode):
    """StoryMem's keyframe extraction: which frames of a finished shot enter the story's memory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_KeyframeSelect",
            display_name="Memory-V2V Keyframe Select",
            category=CATEGORY,
            description="StoryMem's keyframe selection on a finished shot: the first frame, then every frame whose "
                        "CLIP image similarity to the last chosen one is below the threshold (0.9); while more than "
                        "3 are chosen the threshold drops by 0.01. Keyframes more than 0.9 similar to a stored "
                        "keyframe of the same story are skipped. StoryMem's aesthetic gate (HPSv3) is not run. "
                        "Connect the keyframes to Bank Add.",
            inputs=[
                io.Image.Input("frames", tooltip="The shot's decoded frames, after dropping the condition frames "
                                                 "(StoryMem reads the saved shot video)."),
                io.String.Input("story_id", default="my_story", tooltip=STORY_ID_TOOLTIP),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="ComfyUI's CLIP Vision model for the image embeddings (frames are "
                                            "squashed to its input size, no crop, as StoryMem does). StoryMem uses "
                                            "OpenAI CLIP ViT-B/32, which ComfyUI's loader does not read: use "
                                            "'embedder' with open_clip ViT-B-32 for the exact model."),
                Embedder.Input("embedder", optional=True,
                               tooltip="Instead of clip_vision: an image embedder from Memory-V2V Embedder Load "
                                       "(open_clip, or the built-in colour histogram that needs no weights)."),
                Bank.Input("bank", optional=True,
                           tooltip="The story's bank: keyframes too similar to one already stored for this story "
                                   "are skipped. Open: no duplicate check."),
                io.Int.Input("shot_index", default=-1, min=-1, max=100_000, optional=True,
                             tooltip=SHOT_INDEX_TOOLTIP + " (for the duplicate check)"),
                io.Float.Input("threshold", default=SIMILARITY_THRESHOLD, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Start similarity threshold: a frame less similar than this to the last "
                                       "keyframe becomes a keyframe (StoryMem: 0.9)."),
                io.Int.Input("max_keyframes", default=MAX_KEYFRAMES, min=1, max=16, optional=True,
                             tooltip="At most this many keyframes per shot (StoryMem: 3)."),
                io.Float.Input("duplicate_threshold", default=DUPLICATE_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               optional=True,
                               tooltip="Skip a keyframe more similar than this to a stored one (StoryMem: 0.9; 1.0 "
                                       "never skips)."),
            ],
            outputs=[
                io.Image.Output(display_name="keyframes",
                                tooltip="Up to max_keyframes frames in shot order (may be empty when all were "
                                        "duplicates): Bank Add's keyframes."),
                io.String.Output(display_name="report",
                                 tooltip="Which frames were chosen, their similarities, the final threshold, the "
                                         "skipped duplicates, and that no aesthetic gate ran."),
            ],
        )

    @classmethod
    def execute(cls, frames, story_id: str, clip_vision=None, embedder=None, bank=None, shot_index: int = -1,
                threshold: float = SIMILARITY_THRESHOLD, max_keyframes: int = MAX_KEYFRAMES,
                duplicate_threshold: float = DUPLICATE_THRESHOLD) -> io.NodeOutput:
        frames = check_frames(frames, "frames", allow_empty=False)
        encoder = image_embedder(clip_vision, embedder, required=True)
        stored_ids, stored_embeddings = [], None
        if bank is not None:
            bank.refresh()
            stored = stored_keyframes(bank, story_shots(_retrievable(bank), _story_id(story_id), shot_index))
            if stored:
                stored_ids = [name for name, _, _ in stored]
                stored_embeddings = embed(encoder, stack_images([image for _, image, _ in stored]), "clip_vision")
        result = select_keyframes(frames, encoder, stored_embeddings=stored_embeddings, threshold=threshold,
                                  max_keyframes=max_keyframes, duplicate_threshold=duplicate_threshold)
        lines = [f"keyframes {', '.join(map(str, result.indices)) or 'none'} of {result.frame_count} frames; final "
                 f"threshold {result.threshold:.2f} (start {threshold:.2f}); embedder "
                 f"{getattr(encoder, 'name', type(encoder).__name__)}"]
        chosen = list(result.candidates)
        if len(chosen) > 1:
            all_vectors = torch.nn.functional.normalize(embed(encoder, frames[chosen]), dim=1)
            sims = [f"{a}->{b} {float(all_vectors[i] @ all_vectors[i + 1]):.3f}"
                    for i, (a, b) in enumerate(zip(chosen, chosen[1:]))]
            lines.append("similarity to the previous keyframe: " + ", ".join(sims))
        for frame, index, similarity in result.duplicates:
            lines.append(f"frame {frame} skipped: {similarity:.3f} similar to stored {stored_ids[index]}")
        if bank is None:
            lines.append("no bank connected: no duplicate check against stored keyframes")
        else:
            lines.append(f"checked against {len(stored_ids)} stored keyframe(s) of story '{story_id.strip()}'")
        lines.append("no aesthetic gate ran (StoryMem's HPSv3 >= 3.0 gate is optional and not installed)")
        keyframes = frames[list(result.indices)] if result.indices else empty_image()
        report = "\n".join(lines)
        return io.NodeOutput(keyframes, report, ui={"text": [report]})


class StoryMemorySelect(io.ComfyNode):
    """Which stored keyframes condition the next shot: StoryMem's sink + window, or OneStory-style relevance."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_StoryMemorySelect",
            display_name="Memory-V2V Story Memory Select",
            category=CATEGORY,
            description="Chooses the memory of the next shot from the keyframes stored for this story (story "
                        "order). sink_window (StoryMem): all of them while they fit the budget, else the first "
                        "'sink' plus the most recent. relevance (OneStory-style, training-free): the best by CLIP "
                        "text-image similarity to the caption (needs 'clip' and 'caption') plus image similarity to "
                        "the last shot's keyframes. hybrid: the sink always, the rest by relevance. Outputs the "
                        "keyframes for Story Conditioning, in story order.",
            inputs=[
                Bank.Input("bank", tooltip="The story's bank (Memory-V2V Bank Load)."),
                io.String.Input("story_id", default="my_story", tooltip=STORY_ID_TOOLTIP),
                io.Int.Input("shot_index", default=-1, min=-1, max=100_000, tooltip=SHOT_INDEX_TOOLTIP),
                io.Combo.Input("mode", options=list(MEMORY_MODES), default=MEMORY_MODES[0],
                               tooltip="sink_window: StoryMem's rule. relevance: by similarity to the next shot. "
                                       "hybrid: sink always, the rest by relevance."),
                io.Int.Input("budget", default=MAX_MEMORIES, min=0, max=64,
                             tooltip="How many keyframes the shot sees at most (StoryMem: 8; its README uses 10)."),
                io.Int.Input("sink", default=SINK, min=0, max=64,
                             tooltip="The first keyframes of the story, always kept (StoryMem: 3; not used in "
                                     "relevance mode)."),
                io.String.Input("caption", default="", multiline=True, optional=True,
                                tooltip="For relevance / hybrid: the next shot's prompt, compared with the stored "
                                        "keyframes through 'clip'."),
                io.Clip.Input("clip", optional=True,
                              tooltip="For relevance with a caption: a CLIP text encoder in the same space as "
                                      "clip_vision (clip_l.safetensors, type stable_diffusion, with a ViT-L/14 CLIP "
                                      "Vision; umt5 has no such embedding). Open: image similarity only."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="For relevance / hybrid: embeds the stored keyframes (the same model as "
                                            "Keyframe Select's)."),
                Embedder.Input("embedder", optional=True,
                               tooltip="For relevance / hybrid without clip_vision: an image embedder from "
                                       "Memory-V2V Embedder Load (image similarity only)."),
            ],
            outputs=[
                io.Image.Output(display_name="memory_keyframes",
                                tooltip="The chosen keyframes in story order (empty on the first shot): Story "
                                        "Conditioning's memory_keyframes."),
                Selection.Output(display_name="selection",
                                 tooltip="The bank entries (shots) the chosen keyframes come from: Bank Add's "
                                         "parents, as provenance."),
                io.String.Output(display_name="scores",
                                 tooltip="One row per chosen keyframe: index, shot, why it was chosen, score."),
            ],
        )

    @classmethod
    def execute(cls, bank, story_id: str, shot_index: int, mode: str, budget: int, sink: int, caption: str = "",
                clip=None, clip_vision=None, embedder=None) -> io.NodeOutput:
        story_id = _story_id(story_id)
        if mode not in MEMORY_MODES:
            raise ValueError(f"mode ({mode!r}) must be one of {list(MEMORY_MODES)}.")
        if sink > budget and mode != "relevance":
            raise ValueError(f"sink ({sink}) must not be greater than budget ({budget}): the sink is part of the "
                             "budget.")
        bank.refresh()
        shots = story_shots(_retrievable(bank), story_id, shot_index)
        stored = stored_keyframes(bank, shots)
        notes, scores = [], None
        if mode != "sink_window":
            scores, notes = cls._relevance(stored, caption, clip, clip_vision, embedder) if stored else ([], [])
        selection = select_memories([name for name, _, _ in stored], mode=mode, max_memories=budget, sink=sink,
                                    scores=scores)
        table = selection.table()
        table = table.replace(f"{mode}: ", f"{mode} (story '{story_id}', {len(shots)} shot(s) before this one): ", 1)
        if notes:
            table += "\n" + "\n".join(notes)
        chosen = [stored[i] for i in selection.indices]
        images = stack_images([image for _, image, _ in chosen]) if chosen else empty_image()
        entries = list(dict.fromkeys(entry.entry_id for _, _, entry in chosen))
        per_entry = {e: sum(1 for _, _, entry in chosen if entry.entry_id == e) for e in entries}
        result = SelectionType(bank, tuple(SelectedMemory(e, float(per_entry[e]), {"keyframes": float(per_entry[e])})
                                           for e in entries), mode="story")
        return io.NodeOutput(images, result, table, ui={"text": [table]})

    @staticmethod
    def _relevance(stored, caption, clip, clip_vision, embedder) -> tuple[torch.Tensor, list[str]]:
        encoder = image_embedder(clip_vision, embedder, required=False)
        if encoder is None:
            raise ValueError("clip_vision / embedder: relevance and hybrid modes embed the stored keyframes; connect "
                             "clip_vision (Load CLIP Vision) or an embedder, or use mode sink_window.")
        keys = embed(encoder, stack_images([image for _, image, _ in stored]), "clip_vision")
        last_entry = stored[-1][2].entry_id  # the latest shot that kept keyframes
        last = keys[[i for i, (_, _, entry) in enumerate(stored) if entry.entry_id == last_entry]]
        notes = []
        text = None
        if caption.strip() and clip is not None:
            tokens = clip.tokenize(caption)
            _, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
            if pooled is None:
                raise ValueError("clip: this text encoder gives no pooled CLIP embedding (umt5 has none); connect a "
                                 "CLIP text encoder (clip_l.safetensors, type stable_diffusion) whose space matches "
                                 "clip_vision (ViT-L/14).")
            text = pooled.float().reshape(1, -1).cpu()
            if text.shape[1] != keys.shape[1]:
                raise ValueError(f"clip / clip_vision: the caption embedding has {text.shape[1]} values but the "
                                 f"image embeddings have {keys.shape[1]}; the text encoder and the vision model "
                                 "must be one CLIP model (clip_l with a ViT-L/14 CLIP Vision).")
            notes.append("relevance = caption-keyframe cosine (clip) + mean cosine to the last shot's keyframes")
        else:
            why = "no caption" if not caption.strip() else "no clip connected"
            notes.append(f"relevance = image similarity to the last shot's keyframes only ({why})")
        return relevance_scores(keys, caption_embedding=text, last_shot_embeddings=last), notes


class StoryPreviousShot(io.ComfyNode):
    """The previous shot's last frames, decoded from its latent in the bank (for MI2V / MM2V)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_StoryPreviousShot",
            display_name="Memory-V2V Story Previous Shot",
            category=CATEGORY,
            description="Decodes the story's previous shot from its latent in the bank (the same frames its video "
                        "was made from) and returns its last frames, for Story Conditioning's MI2V (last frame) "
                        "and MM2V (last 5 frames). Empty on the first shot. The official code passes them through "
                        "a JPEG / mp4 file; here they are the exact decoded frames.",
            inputs=[
                Bank.Input("bank", tooltip="The story's bank (Memory-V2V Bank Load)."),
                io.String.Input("story_id", default="my_story", tooltip=STORY_ID_TOOLTIP),
                io.Int.Input("shot_index", default=-1, min=-1, max=100_000,
                             tooltip="This shot's index: the previous shot is the stored one just before it. -1 = "
                                     "the story's last stored shot."),
                io.Vae.Input("vae", tooltip="The VAE the shots were decoded with (Wan 2.1 VAE)."),
                io.Int.Input("frames", default=5, min=1, max=81,
                             tooltip="How many of its last frames to return (MM2V uses 5, MI2V the last one)."),
            ],
            outputs=[
                io.Image.Output(display_name="previous_frames",
                                tooltip="The previous shot's last frames (empty on the first shot): Story "
                                        "Conditioning's previous_frames."),
                io.String.Output(display_name="report", tooltip="Which shot the frames come from."),
            ],
        )

    @classmethod
    def execute(cls, bank, story_id: str, shot_index: int, vae, frames: int = 5) -> io.NodeOutput:
        story_id = _story_id(story_id)
        bank.refresh()
        shots = story_shots(_retrievable(bank), story_id, shot_index)
        if not shots:
            text = f"story '{story_id}': no shot before this one (first shot: use mode cut)"
            return io.NodeOutput(empty_image(), text, ui={"text": [text]})
        entry = shots[-1]
        latent = bank.load_latent(entry.entry_id)
        if latent.ndim == 4:
            latent = latent[None]
        channels = getattr(vae, "latent_channels", latent.shape[1])
        if latent.shape[1] != channels:
            raise ValueError(f"vae: it decodes {channels}-channel latents but shot {shot_of(entry)[1]} of story "
                             f"'{story_id}' is a {latent.shape[1]}-channel {entry.latent_format} latent; connect the "
                             "VAE the story was made with (Wan 2.1 VAE).")
        images = vae.decode(latent)
        if images.ndim == 5:
            images = images.reshape(-1, *images.shape[-3:])
        tail = images[-frames:]
        text = (f"story '{story_id}': last {tail.shape[0]} of {images.shape[0]} frames of shot {shot_of(entry)[1]} "
                f"({entry.entry_id[:8]}, {'cut' if shot_of(entry)[2] else 'continued'})")
        return io.NodeOutput(tail, text, ui={"text": [text]})


NODES = [StoryConditioning, KeyframeSelect, StoryMemorySelect, StoryPreviousShot]
