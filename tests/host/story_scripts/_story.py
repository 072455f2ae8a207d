"""Shared by the story scripts (run inside ComfyUI's Python, cwd = the ComfyUI folder): bootstrap, and tiny Wan 2.2
A14B-layout DiTs built with ComfyUI's own WanModel and loaded through ComfyUI's own detection."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "memory_scripts"))

from _pack import bootstrap as _bootstrap, pack  # noqa: E402

__all__ = ["bootstrap", "pack", "tiny_wan", "DIM", "FFN", "LAYERS"]

DIM, FFN, LAYERS = 128, 256, 2  # one head of 128: the real Wan head width, so RoPE axes are 44/42/42


def bootstrap() -> None:
    """CPU, PyTorch attention (deterministic, so runs compare exactly), ComfyUI's nodes importable."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    import comfy.cli_args

    comfy.cli_args.args.use_pytorch_cross_attention = True
    _bootstrap(with_nodes=True)


def tiny_wan(model_type: str = "t2v", in_dim: int = 36, seed: int = 0, std: float = 0.05):
    """A ComfyUI MODEL: WanModel(model_type, in_dim) at tiny width with seeded random weights (norms 1, biases 0).

    ``t2v`` with in_dim 36 is the Wan 2.2 I2V-A14B expert layout (no image embedding); ``i2v`` adds CLIP image input.
    """
    import torch
    import comfy.ops
    import comfy.sd
    from comfy.ldm.wan.model import WanModel

    dm = WanModel(model_type=model_type, patch_size=(1, 2, 2), in_dim=in_dim, dim=DIM, ffn_dim=FFN, freq_dim=256,
                  text_dim=4096, out_dim=16, num_heads=1, num_layers=LAYERS, operations=comfy.ops.disable_weight_init)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in dm.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            state[name] = torch.zeros(tensor.shape)
        elif "norm" in name:
            state[name] = torch.ones(tensor.shape)
        else:
            state[name] = torch.randn(tensor.shape, generator=g) * std
    model = comfy.sd.load_diffusion_model_state_dict(state)
    assert model is not None, "ComfyUI did not detect the tiny Wan model"
    return model
