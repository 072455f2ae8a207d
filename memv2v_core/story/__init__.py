"""Multi-shot stories (StoryMem, OneStory style): a keyframe memory of earlier shots conditions the next shot.

The two contract functions feed ComfyUI's own Wan 2.2 I2V model (with the StoryMem LoRA):

* ``storymem_inputs(memory_latents, shot_latent, condition_pixel_frames) -> (concat_latent_image, concat_mask)``:
  memory keyframe latents [1, C, M, H, W] (each image encoded alone) are put in front of the shot's latent
  [1, C, f, H, W] (the encoding of [condition frames, grey]); the mask [1, 1, M+f, H, W] is 0 on the memories and on
  the condition latents (1 for MI2V, 2 for MM2V), 1 elsewhere. Set both on the positive and negative conditioning;
  ComfyUI inverts the mask and repeats it to 4 channels, which is exactly the official 4-channel mask.
* ``story_temporal_ids(memory_frames, shot_frames, gap=5)``: temporal RoPE ids, -M*S .. -S for the memories, then
  0 .. f-1 for the shot (the corrected official code, S = 5).

Around them: ``select_keyframes`` (which frames of a finished shot enter the memory), ``select_memories`` and
``relevance_scores`` (which stored keyframes condition the next shot), ``parse_story_script`` (StoryMem's JSON
scripts as a flat list of shots with their modes), ``story_shots`` / ``story_extra`` (a story's shots in the memory
bank: one entry per shot, marked in its ``extra``).
"""

from .conditioning import CONDITION_PIXEL_FRAMES, given_latent_frames, story_temporal_ids, storymem_inputs
from .keyframes import KeyframeSelection, select_keyframes
from .memory_select import MEMORY_MODES, MemorySelection, relevance_scores, select_memories
from .script import SHOT_MODES, StoryScript, StoryScriptError, StoryShot, parse_story_script
from .shots import next_shot_index, shot_of, story_extra, story_shots
