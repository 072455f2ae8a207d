"""Memory-V2V core: a host-independent torch library for video memory.

The memory bank, camera trajectories and FOV retrieval, segment descriptors,
dynamic tokenization, memory-token streams and token merging live here. Nothing in
this package imports ComfyUI; the ComfyUI nodes in ``nodes/`` are thin glue over it.
Submodules are imported on demand so that ``import memv2v_core`` stays cheap.
"""

__version__ = "0.1.0"
