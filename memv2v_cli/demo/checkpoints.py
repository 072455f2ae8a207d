"""Tiny ReCamMaster- and Memory-V2V-layout checkpoints on the tiny Wan DiT, for demo runs and tests.

Run inside ComfyUI's Python environment (the DiT is ComfyUI's own WanModel):
``python -m memv2v_cli.demo.checkpoints --comfyui ~/comfy/ComfyUI --out DIR``. Each checkpoint is written twice, as
``.safetensors`` and as ``.ckpt`` (``torch.save`` of a plain dict of tensors, loadable with ``weights_only=True``).

Layouts (bare Wan key names, as ReCamMaster's training script saves ``dit.state_dict()``):

* ReCamMaster: the tiny DiT + ``blocks.N.cam_encoder.{weight [dim, 12], bias [dim]}`` (zero) and
  ``blocks.N.projector.{weight [dim, dim], bias [dim]}`` (identity, zero): ReCamMaster's own initialisation.
* Memory-V2V (the real key layout is unpublished; these names are ours): the ReCamMaster layout +
  ``cond_patch_embedding_1x4x4`` / ``cond_patch_embedding_1x8x8`` ``.{weight [dim, in_dim, 1, k, k], bias [dim]}``
  (the base patch embedding made coarse training-free: nearest-upsampled, divided by the area) +
  ``token_merger.{weight [dim, dim, 2, 2], bias [dim]}`` (a stride-2 conv initialised as 2x2 average pooling).

The functions without ``comfyui`` in their signature need no ComfyUI (tests build on them with synthetic DiTs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from memv2v_core.memory.tokenize import derive_kernel

from .models import BUILDER_VERSION, _atomic_save, bootstrap_comfy, build_wan_dit

RECAMMASTER = f"memv2v_demo_recammaster_tiny_v{BUILDER_VERSION}"
MEMORYV2V = f"memv2v_demo_memoryv2v_tiny_v{BUILDER_VERSION}"
TOKENIZER_KERNELS = ((1, 4, 4), (1, 8, 8))
MERGER_MODULE = "token_merger"
CAMERA_INPUT = 12


def tokenizer_module(kernel) -> str:
    """The demo's module name for a condition patch embedder of ``kernel``, e.g. cond_patch_embedding_1x4x4."""
    return "cond_patch_embedding_" + "x".join(str(k) for k in kernel)


def camera_module_tensors(dim: int, depth: int, *, std: float = 0.0, seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Per-block cam_encoder (zero) and projector (identity) as ReCamMaster initialises them; ``std`` > 0 adds noise.

    Noise makes the camera path change the output, which a test of the camera patch needs.
    """
    generator = torch.Generator().manual_seed(seed)

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator) * std if std > 0 else torch.zeros(shape)

    state = {}
    for block in range(depth):
        state[f"blocks.{block}.cam_encoder.weight"] = noise(dim, CAMERA_INPUT)
        state[f"blocks.{block}.cam_encoder.bias"] = noise(dim)
        state[f"blocks.{block}.projector.weight"] = torch.eye(dim) + noise(dim, dim)
        state[f"blocks.{block}.projector.bias"] = noise(dim)
    return {name: tensor.to(dtype).contiguous() for name, tensor in state.items()}


def memory_module_tensors(patch_weight: torch.Tensor, patch_bias: torch.Tensor | None, *,
                          kernels=TOKENIZER_KERNELS, std: float = 0.0, seed: int = 1,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Condition patch embedders derived from the base patch embedding, plus a 2x2 average-pooling token merger.

    ``std`` > 0 perturbs the tokenizers, so loaded weights can be told apart from derived ones in tests.
    """
    generator = torch.Generator().manual_seed(seed)
    dim = patch_weight.shape[0]
    bias = patch_bias if patch_bias is not None else torch.zeros(dim)
    state = {}
    for kernel in kernels:
        weight = derive_kernel(patch_weight.float(), kernel)
        if std > 0:
            weight = weight + torch.randn(weight.shape, generator=generator) * std
        state[f"{tokenizer_module(kernel)}.weight"] = weight
        state[f"{tokenizer_module(kernel)}.bias"] = bias.float().clone()
    pooling = torch.zeros(dim, dim, 2, 2)
    pooling[torch.arange(dim), torch.arange(dim)] = 0.25  # each output channel averages its own channel's 2x2 window
    state[f"{MERGER_MODULE}.weight"] = pooling
    state[f"{MERGER_MODULE}.bias"] = torch.zeros(dim)
    return {name: tensor.to(dtype).contiguous() for name, tensor in state.items()}


def write_checkpoint(state: dict[str, torch.Tensor], out: Path, stem: str) -> dict[str, str]:
    """Write ``state`` as ``<stem>.safetensors`` and ``<stem>.ckpt`` in ``out``; returns {format: path}."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.contiguous() for name, tensor in state.items()}
    paths = {"safetensors": out / f"{stem}.safetensors", "ckpt": out / f"{stem}.ckpt"}
    _atomic_save(lambda tmp: save_file(tensors, str(tmp)), paths["safetensors"])
    _atomic_save(lambda tmp: torch.save(dict(tensors), str(tmp)), paths["ckpt"])
    return {kind: str(path) for kind, path in paths.items()}


def _tiny_dit_state(dim: int, layers: int, seed: int) -> dict[str, torch.Tensor]:
    """The tiny Wan DiT of demo_models (ComfyUI's WanModel with seeded weights) as a state dict."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="memv2v-dit-") as folder:
        path = build_wan_dit(Path(folder) / "dit.safetensors", dim=dim, layers=layers, ffn_dim=2 * dim, seed=seed)
        return load_file(str(path))


def build_recammaster(out: Path, *, dim: int = 128, layers: int = 2, seed: int = 0,
                      camera_std: float = 0.0) -> dict[str, str]:
    """A tiny ReCamMaster-layout checkpoint (.safetensors and .ckpt); needs ComfyUI importable (bootstrap_comfy)."""
    state = _tiny_dit_state(dim, layers, seed)
    state.update(camera_module_tensors(dim, layers, std=camera_std, seed=seed))
    return write_checkpoint(state, out, RECAMMASTER if camera_std == 0 else f"{RECAMMASTER}_cam{camera_std:g}")


def build_memoryv2v(out: Path, *, dim: int = 128, layers: int = 2, seed: int = 0, camera_std: float = 0.0,
                    tokenizer_std: float = 0.0) -> dict[str, str]:
    """A tiny Memory-V2V-layout checkpoint (.safetensors and .ckpt); needs ComfyUI importable (bootstrap_comfy)."""
    state = _tiny_dit_state(dim, layers, seed)
    state.update(camera_module_tensors(dim, layers, std=camera_std, seed=seed))
    state.update(memory_module_tensors(state["patch_embedding.weight"], state.get("patch_embedding.bias"),
                                       std=tokenizer_std, seed=seed + 1))
    plain = camera_std == 0 and tokenizer_std == 0
    stem = MEMORYV2V if plain else f"{MEMORYV2V}_cam{camera_std:g}_tok{tokenizer_std:g}"
    return write_checkpoint(state, out, stem)


def build_all(out: Path) -> dict[str, str]:
    """Build (or reuse) both demo checkpoints in ``out``; returns {"recammaster_safetensors": path, ...}."""
    assets = {}
    for name, stem, builder in (("recammaster", RECAMMASTER, build_recammaster),
                                ("memoryv2v", MEMORYV2V, build_memoryv2v)):
        paths = {kind: out / f"{stem}.{kind}" for kind in ("safetensors", "ckpt")}
        built = ({kind: str(path) for kind, path in paths.items()} if all(p.exists() for p in paths.values())
                 else builder(out))
        assets.update({f"{name}_{kind}": path for kind, path in built.items()})
    return assets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI folder (its WanModel builds the DiT)")
    parser.add_argument("--out", required=True, help="folder for the checkpoints (reused when already there)")
    args = parser.parse_args(argv)
    bootstrap_comfy(args.comfyui)
    print(json.dumps(build_all(Path(os.path.expanduser(args.out)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
