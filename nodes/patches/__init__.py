"""The pack's ComfyUI-internal layer: model patches that carry memory tokens and camera conditioning through ComfyUI's
own WanModel. Not nodes: the nodes in ``nodes/`` apply them to a MODEL."""
