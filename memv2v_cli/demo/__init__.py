"""What demo mode and the tests build: tiny random models with ComfyUI's own classes (``models``, ``checkpoints``),
a private ComfyUI that serves them (``setup``), the demo node pack (``nodes/``) and the CPU step benchmark."""
