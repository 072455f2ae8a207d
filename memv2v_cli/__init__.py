"""Command-line tools of the Memory-V2V pack: the headless runner and UI<->API workflow conversion (what users run), with
``host`` (driving a ComfyUI), ``demo`` (tiny models, demo pack) and ``authoring`` (the shipped workflows' sources)."""
