"""Command-line tools of the Memory-V2V pack: workflow conversion, a ComfyUI server handle and the headless runner."""
