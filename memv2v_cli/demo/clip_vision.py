"""Tiny random DINOv2-layout clip vision models, built with ComfyUI's own ``Dinov2Model``, for demo runs and tests.

Run inside ComfyUI's Python environment: ``python -m memv2v_cli.demo.clip_vision --comfyui ~/comfy/ComfyUI --out DIR``.

ComfyUI's Load CLIP Vision picks the config from the key names and knows only DINOv2 large and giant (300 M and
1.1 B parameters, far too slow for a CPU test at 518 px), so the tiny files carry their own config in the
safetensors metadata (``memv2v.clip_vision_config``) and the demo pack's ``MemV2VDemo_CLIPVisionLoader`` builds
ComfyUI's ``ClipVisionModel`` from it: the CLIP_VISION that reaches the pack is ComfyUI's own class either way.
Two files with the same layout and different seeds stand for two encoders with the same output size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .models import BUILDER_VERSION, _atomic_save, _random_state_dict, bootstrap_comfy

CONFIG_KEY = "memv2v.clip_vision_config"
DINOV2 = f"memv2v_demo_dinov2_tiny_v{BUILDER_VERSION}.safetensors"
DINOV2_OTHER = f"memv2v_demo_dinov2_tiny_other_v{BUILDER_VERSION}.safetensors"  # same layout, another seed
# dino2_large.json's keys at a tiny size; image_size must stay 518: ComfyUI's Dino2Embeddings has 37x37+1 positions.
TINY_DINOV2 = {"model_type": "dinov2", "hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2,
               "layer_norm_eps": 1e-6, "use_swiglu_ffn": False, "patch_size": 14, "image_size": 518,
               "num_channels": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def build_tiny_dinov2(path: Path, *, seed: int = 0) -> Path:
    """ComfyUI's Dinov2Model at a tiny size with seeded weights (layer scales 1, so the output depends on the image)."""
    import comfy.ops
    import torch
    from comfy.image_encoders.dino2 import Dinov2Model
    from safetensors.torch import save_file

    model = Dinov2Model(TINY_DINOV2, torch.float32, "cpu", comfy.ops.disable_weight_init)
    state = _random_state_dict(model, seed)
    for name in state:
        if name.endswith("lambda1"):
            state[name] = torch.ones_like(state[name])
    metadata = {CONFIG_KEY: json.dumps(TINY_DINOV2)}
    _atomic_save(lambda tmp: save_file(state, str(tmp), metadata=metadata), path)
    return path


def build_all(out: Path) -> dict[str, str]:
    """Build (or reuse) both tiny DINOv2 files in ``out``; {"dinov2": path, "dinov2_other": path}."""
    assets = {"dinov2": (out / DINOV2, 0), "dinov2_other": (out / DINOV2_OTHER, 1)}
    for path, seed in assets.values():
        if not path.exists():
            build_tiny_dinov2(path, seed=seed)
    return {kind: str(path) for kind, (path, _) in assets.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI folder (its Dinov2Model builds the models)")
    parser.add_argument("--out", required=True, help="folder for the files (reused when already there)")
    args = parser.parse_args(argv)
    bootstrap_comfy(args.comfyui)
    print(json.dumps(build_all(Path(os.path.expanduser(args.out)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
