"""CPU step timings of a real ComfyUI WanModel with memory tokens, side by side (part (b) of the DiT benchmark).

Run inside ComfyUI's Python environment (``python -m memv2v_core.bench dit`` starts it as a subprocess):
``python -m memv2v_cli.demo.bench_dit_steps --comfyui ~/comfy/ComfyUI``. Prints a table, then one JSON line of step
times (ms, medians of interleaved repetitions) and ratios. One step = one batched cond+uncond model call, through
``BaseModel.apply_model`` with the transformer options a sampler would pass.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "memv2v_bench_pack"


def bootstrap(comfyui: str, attention: str) -> None:
    """CPU-only ComfyUI imports: the torchvision shim, ComfyUI on sys.path, the cpu flag, the pack as one package."""
    shim = REPO / "memv2v_cli" / "host" / "cpu_torchvision" / "sitecustomize.py"
    spec = importlib.util.spec_from_file_location("memv2v_cpu_torchvision", shim)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # the shim keeps its registration alive on its own module
    spec.loader.exec_module(module)  # acts only if torchvision's compiled ops cannot load
    sys.path.insert(0, str(Path(comfyui).expanduser().resolve()))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    # ComfyUI's CPU default is its chunked sub-quadratic attention; --use-pytorch-cross-attention (SDPA) behaves like
    # the fused kernels a GPU runs, so it is the default here
    comfy.cli_args.args.use_pytorch_cross_attention = attention == "pytorch"
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(REPO)]
    sys.modules[PACKAGE] = package


def pack(name: str):
    return importlib.import_module(f"{PACKAGE}.{name}")


def build_model(folder: Path, dim: int, layers: int, ffn: int):
    """A random Wan 2.1 T2V DiT built with ComfyUI's own class and loaded the way UNETLoader loads one."""
    import comfy.sd

    from memv2v_cli.demo.models import build_wan_dit

    path = build_wan_dit(folder / "bench_wan.safetensors", dim=dim, layers=layers, ffn_dim=ffn, seed=1)
    return comfy.sd.load_diffusion_model(str(path))


def contexts(frames: int, size: int, memories: int):
    """The contexts compared: empty, user video only (plain ReCamMaster), dynamic memory, naive all-1x2x2 memory."""
    import torch

    context_lib = pack("memv2v_core.memory.context")
    tokenize = pack("memv2v_core.memory.tokenize")
    g = torch.Generator().manual_seed(0)
    user = torch.randn(1, 16, frames, size, size, generator=g)
    stored = [(f"m{i}", torch.randn(1, 16, frames, size, size, generator=g), 1.0 - i / 10, None)
              for i in range(memories)]
    naive_plan = tokenize.KernelPlan(fine=(1, 2, 2), coarse=(1, 2, 2))
    return {
        "empty": context_lib.build_context(None, [], "nvs", target_frames=frames, latent_format="wan21"),
        "none": context_lib.build_context(user, [], "nvs", latent_format="wan21"),
        "dynamic": context_lib.build_context(user, stored, "nvs", latent_format="wan21"),
        "naive": context_lib.build_context(user, stored, "nvs", naive_plan, latent_format="wan21"),
    }


def interleaved(configs: dict, step, reps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each configuration, repetitions interleaved (order rotated each round), warm-up dropped."""
    names = list(configs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = step(configs[name])
            if rep >= warmup:
                samples[name].append(elapsed)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI folder")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--frames", type=int, default=9, help="latent frames")
    parser.add_argument("--size", type=int, default=16, help="latent height = width")
    parser.add_argument("--memories", type=int, default=6)
    parser.add_argument("--text-tokens", type=int, default=None,
                        help="text tokens (default: Wan's 512 scaled by video tokens / 32,760, the real model's share)")
    parser.add_argument("--reps", type=int, default=12, help="timed repetitions per configuration")
    parser.add_argument("--overhead-reps", type=int, default=40,
                        help="repetitions of the separate, interleaved unpatched / empty-memory pair")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--attention", choices=("pytorch", "comfy-cpu-default"), default="pytorch",
                        help="ComfyUI attention: pytorch SDPA (like a GPU's fused kernels) or its CPU default "
                             "(sub-quadratic chunks)")
    args = parser.parse_args(argv)
    bootstrap(args.comfyui, args.attention)

    import torch

    patch = pack("nodes.patches.memory_patch")
    context_lib = pack("memv2v_core.memory.context")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        model = build_model(Path(folder), args.dim, args.layers, args.ffn)
    dm = model.model.diffusion_model
    depth = len(dm.blocks)
    video_tokens = args.frames * (args.size // 2) ** 2
    text_tokens = args.text_tokens or max(1, round(512 * video_tokens / 32_760))
    ctx = contexts(args.frames, args.size, args.memories)
    k = args.memories

    def patched(context, mode: str) -> tuple:
        merge = patch.merge_settings(depth, context.memory_count, "auto", 0.5, mode)
        return patch.apply_memory(model, context, merge), merge, context

    configs = {
        "unpatched": (model, None, None),
        "empty memory": patched(ctx["empty"], "merge"),
        "user only (no memory)": patched(ctx["none"], "merge"),
        f"{k} dynamic + merge": patched(ctx["dynamic"], "merge"),
        f"{k} dynamic, no merge": patched(ctx["dynamic"], "off"),
        f"{k} naive 1x2x2": patched(ctx["naive"], "off"),
    }
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, args.frames, args.size, args.size, generator=g)
    sigma = torch.full((2,), 0.7)
    text = torch.randn(2, text_tokens, 4096, generator=g)

    def step(config: tuple) -> float:
        patcher = config[0]
        options = dict(patcher.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in patcher.wrappers.items()}
        options["cond_or_uncond"] = [1, 0]
        start = time.perf_counter()
        with torch.no_grad():
            patcher.model.apply_model(x, sigma, c_crossattn=text, transformer_options=options)
        return time.perf_counter() - start

    samples = interleaved(configs, step, args.reps, args.warmup)
    pair = {name: configs[name] for name in ("unpatched", "empty memory")}
    overhead = interleaved(pair, step, args.overhead_reps, args.warmup)
    ms = {name: statistics.median(values) * 1000 for name, values in samples.items()}

    print(f"WanModel dim {args.dim}, {depth} blocks, {dm.num_heads} heads, ffn {args.ffn}; latent {args.frames}x"
          f"{args.size}x{args.size} ({video_tokens} video tokens), batch 2 (cond+uncond), {text_tokens} text tokens "
          f"(Wan's 512 per 32,760 video tokens, scaled); {args.attention} attention; {args.threads} threads; "
          f"medians of {args.reps} interleaved reps after {args.warmup} warm-up")
    print(f"{'configuration':<24} | {'memory tokens':>13} | {'merge':<20} | {'step ms':>8} | {'min..max ms':>17}")
    for name, (_, merge, context) in configs.items():
        tokens = 0 if context is None else context_lib.context_layout(context).num_tokens
        merging = "-" if merge is None else f"{merge.ratio:.0%} {merge.factor}x{merge.factor} at {merge.blocks}"
        low, high = min(samples[name]) * 1000, max(samples[name]) * 1000
        print(f"{name:<24} | {tokens:>13,} | {merging:<20} | {ms[name]:>8.1f} | {low:>8.1f}..{high:<7.1f}")
    plain, empty = (statistics.median(overhead[name]) * 1000 for name in pair)
    print(f"empty-memory overhead, separate interleaved pair ({args.overhead_reps} reps): unpatched {plain:.1f} ms, "
          f"empty memory {empty:.1f} ms")
    dynamic, naive, none = ms[f"{k} dynamic + merge"], ms[f"{k} naive 1x2x2"], ms["user only (no memory)"]

    def paired(a: list[float], b: list[float]) -> float:
        """Median over rounds of a/b measured in the same round: less sensitive to load that changes over time."""
        return statistics.median(x / y for x, y in zip(a, b))

    print(f"cross-check, median of per-round ratios: {k} memories vs none "
          f"{paired(samples[f'{k} dynamic + merge'], samples['user only (no memory)']):.2f}x, naive vs dynamic "
          f"{paired(samples[f'{k} naive 1x2x2'], samples[f'{k} dynamic + merge']):.2f}x, empty overhead "
          f"{paired(overhead['empty memory'], overhead['unpatched']) - 1:+.1%}")
    result = {
        "step_ms_unpatched": plain,
        "step_ms_empty": empty,
        "step_ms_user_only": none,
        "step_ms_dynamic": dynamic,
        "step_ms_dynamic_no_merge": ms[f"{k} dynamic, no merge"],
        "step_ms_naive": naive,
        f"cpu_step_ratio_{k}_vs_none": dynamic / none,
        f"cpu_speedup_vs_naive_{k}": naive / dynamic,
        "empty_overhead": empty / plain - 1.0,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
