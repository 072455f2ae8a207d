"""Memory-V2V core: a host-independent torch library for video memory.

One package per stage of the data flow, bank -> retrieval -> tokenization -> sampling -> bank: ``bank`` (the
persistent memory), ``camera`` (trajectories), ``retrieval`` (what a turn remembers), ``memory`` (memory tokens,
positions, merging, the stream through the DiT); beside them ``segments`` (long videos in pieces), ``story``
(multi-shot keyframe memory, StoryMem) and ``checkpoints`` (model files). Nothing here imports ComfyUI; the nodes in ``nodes/`` are thin glue over it.
Packages are imported on demand so that ``import memv2v_core`` stays cheap. Public API: ``docs/public-api.md``.
"""

__version__ = "0.1.0"
