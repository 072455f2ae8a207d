"""Driving a ComfyUI from outside (find it, start it privately, queue prompts) for the runner and the host tests, and
the shim that lets a CUDA build of torchvision import on a CPU-only machine."""
