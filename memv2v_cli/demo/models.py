"""Tiny random models and a synthetic clip for demo runs and tests, built with ComfyUI's own classes.

Run inside ComfyUI's Python environment (it imports ``comfy``):
``python -m memv2v_cli.demo.models --comfyui ~/comfy/ComfyUI --out DIR``. The outputs are noise by design:
they exist so the whole pipeline can be seen working on a CPU in seconds, never to make pictures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from fractions import Fraction
from pathlib import Path

BUILDER_VERSION = 1  # bump when a model's layout or init changes, so cached files are rebuilt

WAN21_DIT = f"memv2v_demo_wan21_t2v_tiny_v{BUILDER_VERSION}.safetensors"
WAN21_VAE = f"memv2v_demo_wan21_vae_random_v{BUILDER_VERSION}.safetensors"
DEMO_VIDEO = f"memv2v_demo_clip_v{BUILDER_VERSION}.mp4"
LUCY_DIT = f"memv2v_demo_lucyedit_wan22_tiny_v{BUILDER_VERSION}.safetensors"  # 96 in (48 noisy + 48 source), 48 out
WAN22_VAE = f"memv2v_demo_wan22_vae_random_v{BUILDER_VERSION}.safetensors"
# Wan 2.2 I2V A14B layout: two experts with 36 input channels (16 noisy + 4 mask + 16 condition), no image embedder.
I2V_HIGH = f"memv2v_demo_wan22_i2v_high_noise_tiny_v{BUILDER_VERSION}.safetensors"
I2V_LOW = f"memv2v_demo_wan22_i2v_low_noise_tiny_v{BUILDER_VERSION}.safetensors"
STORYMEM_LORA = f"memv2v_demo_storymem_lora_tiny_v{BUILDER_VERSION}.pth"  # StoryMem's PEFT layout, rank 4
STORYMEM_LORA_RANK = 4


def bootstrap_comfy(comfyui: str | os.PathLike) -> None:
    """Make ``comfy`` importable on a CPU-only machine (the cpu flag must be set before model_management loads)."""
    sys.path.insert(0, str(comfyui))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def _random_state_dict(module, seed: int, std: float = 0.02) -> dict:
    """Seeded weights: norms (weight/gamma) 1, biases 0, everything else N(0, std); ComfyUI's ops leave them uninitialised."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in module.state_dict().items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            value = torch.zeros(tensor.shape)
        elif leaf == "gamma" or (leaf == "weight" and "norm" in name):
            value = torch.ones(tensor.shape)
        else:
            value = torch.randn(tensor.shape, generator=generator) * std
        state[name] = value.to(torch.float32).contiguous()
    return state


def build_wan_dit(path: Path, *, in_dim: int = 16, out_dim: int = 16, dim: int = 128, layers: int = 2,
                  ffn_dim: int = 256, seed: int = 0, extra: dict | None = None) -> Path:
    """A tiny Wan DiT (t2v layout) that ComfyUI's UNETLoader detects as Wan; ``extra`` adds tensors (e.g. camera modules)."""
    import comfy.ops
    from comfy.ldm.wan.model import WanModel
    from safetensors.torch import save_file

    model = WanModel(model_type="t2v", patch_size=(1, 2, 2), in_dim=in_dim, dim=dim, ffn_dim=ffn_dim, freq_dim=256,
                     text_dim=4096, out_dim=out_dim, num_heads=dim // 128, num_layers=layers,
                     operations=comfy.ops.disable_weight_init)
    state = _random_state_dict(model, seed)
    state.update(extra or {})
    _atomic_save(lambda tmp: save_file(state, str(tmp)), path)
    return path


def build_i2v_expert(path: Path, *, seed: int) -> Path:
    """A tiny Wan 2.2 I2V A14B-shaped expert: 36 input channels, 16 output channels, no image embedder."""
    return build_wan_dit(path, in_dim=36, out_dim=16, seed=seed)


def build_storymem_lora(path: Path, *, dim: int = 128, ffn_dim: int = 256, layers: int = 2, seed: int = 3) -> Path:
    """A random LoRA for the tiny DiT in StoryMem's release layout: a PEFT state dict (``base_model.model.`` keys,
    ``lora_A`` / ``lora_B``, no alpha tensors) saved with ``torch.save`` as the official ``.pth`` files are."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    rank = STORYMEM_LORA_RANK
    shapes = {f"{attn}.{proj}": (dim, dim) for attn in ("self_attn", "cross_attn") for proj in "qkvo"}
    shapes.update({"ffn.0": (ffn_dim, dim), "ffn.2": (dim, ffn_dim)})
    state = {}
    for block in range(layers):
        for name, (out_features, in_features) in shapes.items():
            key = f"base_model.model.blocks.{block}.{name}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.02
            state[f"{key}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.02
    _atomic_save(lambda tmp: torch.save(state, str(tmp)), path)
    return path


def build_wan_vae(path: Path, *, seed: int = 0) -> Path:
    """The real Wan 2.1 VAE class (its config is fixed by ComfyUI's loader) with random fp16 weights."""
    import torch
    from comfy.ldm.wan.vae import WanVAE
    from safetensors.torch import save_file

    vae = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    state = {k: v.to(torch.float16) for k, v in _random_state_dict(vae, seed).items()}
    _atomic_save(lambda tmp: save_file(state, str(tmp)), path)
    return path


def build_lucy_edit_dit(path: Path, *, seed: int = 0) -> Path:
    """A tiny LucyEdit-shaped Wan 2.2 DiT: 96 input channels (48 noisy + 48 source latent), 48 output channels."""
    return build_wan_dit(path, in_dim=96, out_dim=48, seed=seed)


def build_wan22_vae(path: Path, *, seed: int = 0) -> Path:
    """The real Wan 2.2 VAE class (48 channels, 4x16x16; config fixed by ComfyUI's loader) with random fp16 weights."""
    import torch
    from comfy.ldm.wan.vae2_2 import WanVAE
    from safetensors.torch import save_file

    vae = WanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True], dropout=0.0)
    state = {k: v.to(torch.float16) for k, v in _random_state_dict(vae, seed).items()}
    _atomic_save(lambda tmp: save_file(state, str(tmp)), path)
    return path


def build_demo_video(path: Path, *, frames: int = 17, width: int = 64, height: int = 64, fps: int = 16) -> Path:
    """A short synthetic clip (a moving colour gradient with a bright square) to stand in for the user's video."""
    import av
    import numpy as np

    def write(tmp: Path) -> None:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            ys, xs = np.mgrid[0:height, 0:width]
            for i in range(frames):
                image = np.stack([(xs * 4 + i * 8) % 256, (ys * 4) % 256, np.full_like(xs, 128)], axis=-1)
                x0 = (i * 3) % max(1, width - 16)
                image[16:32, x0:x0 + 16] = 255
                for packet in stream.encode(av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    _atomic_save(write, path)
    return path


def _atomic_save(write, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp" + path.suffix)
    write(tmp)
    os.replace(tmp, path)


EDIT_BUILDERS = {
    "lucy_dit": (LUCY_DIT, build_lucy_edit_dit),
    "wan22_vae": (WAN22_VAE, build_wan22_vae),
    "i2v_high": (I2V_HIGH, lambda path: build_i2v_expert(path, seed=1)),
    "i2v_low": (I2V_LOW, lambda path: build_i2v_expert(path, seed=2)),
    "storymem_lora": (STORYMEM_LORA, build_storymem_lora),
}


def build_all(out: Path, kinds: tuple[str, ...] = ()) -> dict[str, str]:
    """Build (or reuse) every demo asset in ``out``, plus the optional ``kinds`` (e.g. "lucy_dit", "wan22_vae" for
    editing: the Wan 2.2 VAE is 1.4 GB of fp16, so only tests that need it build it; "i2v_high", "i2v_low",
    "storymem_lora" for stories); {kind: path}."""
    out.mkdir(parents=True, exist_ok=True)
    assets = {"dit": out / WAN21_DIT, "vae": out / WAN21_VAE, "video": out / DEMO_VIDEO}
    builders = {"dit": build_wan_dit, "vae": build_wan_vae, "video": build_demo_video}
    for kind in kinds:
        if kind not in EDIT_BUILDERS:
            raise ValueError(f"kinds: unknown asset {kind!r}; choose from {sorted(EDIT_BUILDERS)}")
        name, builder = EDIT_BUILDERS[kind]
        assets[kind], builders[kind] = out / name, builder
    for kind, path in assets.items():
        if not path.exists():
            builders[kind](path)
    return {kind: str(path) for kind, path in assets.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI folder (its code builds the models)")
    parser.add_argument("--out", required=True, help="folder for the demo assets (reused when already there)")
    parser.add_argument("--with", dest="kinds", action="append", default=[], choices=sorted(EDIT_BUILDERS),
                        help="also build this optional asset (repeatable)")
    args = parser.parse_args(argv)
    bootstrap_comfy(args.comfyui)
    print(json.dumps(build_all(Path(args.out), tuple(args.kinds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
