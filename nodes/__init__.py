"""ComfyUI V3 nodes of the pack: glue between ComfyUI types and ``memv2v_core``.

Every module named ``*_nodes.py`` exposes ``NODES``, the list of its node classes; the pack's
``__init__`` collects them. This package is the only place that imports comfy, comfy_api or folder_paths.
"""
