"""DiT cost of memory: dynamic tokenization vs naive 1x2x2 memory, and the extra saving of token merging.

Part (a): exact matmul FLOPs of Wan2.1-1.3B at 480x832x81 (latent 21x60x104), memory tokens counted through every
block, merges replayed with the runtime merge planner. Part (b): CPU step times of a small real ComfyUI WanModel with
and without memory, run in ComfyUI's Python as a subprocess (skipped with the reason when no ComfyUI is found).
Run: ``python -m memv2v_core.bench dit [--memories 6 10] [--seeds 16] [--skip-timings] [--reps 12]``.

On a device, at real size: ``python -m memv2v_core.bench dit --device cuda [--size 1.3B|5B|14B]`` times one model
call and its peak memory for plain T2V, empty memory, the user video alone and 4 / 6 / 10 memories (merged and not,
and naive all-1x2x2), with ratios, seconds per 50-step CFG turn, the merge saving against memory count, merge ratio
and pooling, ComfyUI's memory estimate against the measured peak and one JSON line (about 3-4 minutes on an H100/H200
at 1.3B). It runs ``memv2v_cli.bench_gpu`` in ComfyUI's Python (this library never imports ComfyUI); that file's
docstring says what an artist trades by raising the merge ratio. ``--device cpu --size tiny`` checks it on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch

from ..memory.context import MemoryContext, build_context, context_layout, token_budget
from ..memory.flops import (
    WAN21_1_3B,
    BlockFlops,
    DiTShape,
    block_flops,
    counted_block_flops,
    dit_flops,
    responsiveness_flops,
    simulate_merges,
)
from ..memory.merge import default_pool_factor
from ..memory.stream import default_merge_blocks
from ..memory.tokenize import TokenLayout

LATENT = (16, 21, 60, 104)  # Wan 2.1 VAE latent of 81 frames at 480x832
RATIO = 0.5


def make_context(memories: int) -> MemoryContext:
    """An NVS context with a user video and ``memories`` retrieved videos, all of the benchmark latent shape."""
    latent = torch.zeros(1, *LATENT).expand(1, *LATENT)  # shapes only; nothing is embedded
    return build_context(latent, [(f"m{i}", latent, 1.0 - i / 100, None) for i in range(memories)], mode="nvs")


def naive_context(memories: int) -> MemoryContext:
    """The same context with every stream at the base 1x2x2 kernel."""
    from ..memory.tokenize import KernelPlan

    latent = torch.zeros(1, *LATENT).expand(1, *LATENT)
    plan = KernelPlan(fine=(1, 2, 2), coarse=(1, 2, 2))
    return build_context(latent, [(f"m{i}", latent, None, None) for i in range(memories)], mode="nvs", plan=plan)


def flat_flops(sequence: int, shape: DiTShape) -> BlockFlops:
    return dit_flops([sequence] * shape.depth, shape)


def cut(new: float, old: float) -> float:
    return 1.0 - new / old


# --- responsiveness scenarios: which frames the planner sees as least responsive -----------------------------------
def stable_random(seed: int) -> Callable[[int, int], torch.Tensor]:
    """One random ranking kept at every merge block (papers §2.6 Table 1: rankings persist across blocks)."""
    fixed: dict[int, torch.Tensor] = {}

    def fn(block: int, frames: int) -> torch.Tensor:
        if frames not in fixed:
            fixed[frames] = torch.rand(frames, generator=torch.Generator().manual_seed(seed))
        return fixed[frames]

    return fn


def fresh_random(seed: int) -> Callable[[int, int], torch.Tensor]:
    """An independent random ranking at each merge block."""
    return lambda block, frames: torch.rand(frames, generator=torch.Generator().manual_seed(seed * 1000 + block))


def by_stream(layout: TokenLayout, coarse_least: bool) -> Callable[[int, int], torch.Tensor]:
    """Least responsive = lowest-ranked (coarse) memories first, or the reverse; stable across blocks."""
    stream = torch.tensor(layout.frame_stream, dtype=torch.float32)
    order = -stream if coarse_least else stream
    return lambda block, frames: order + torch.arange(frames) * 1e-6


def merged_dit(context: MemoryContext, target: int, factor: int, scenario, shape: DiTShape) -> tuple[BlockFlops, int]:
    """DiT FLOPs with merging under one responsiveness scenario, plus the merge-decision overhead."""
    layout = context_layout(context)
    blocks = default_merge_blocks(shape.depth)
    schedule = simulate_merges(layout.frame_grids, layout.mergeable, shape.depth, blocks, RATIO, factor, scenario)
    total = dit_flops([target + m for m in schedule.memory_tokens], shape)
    overhead = sum(
        responsiveness_flops(target + schedule.memory_tokens[block], target, frames, shape)
        for block, frames in schedule.merge_frames
    )
    return total, overhead


def merge_saving(
    context: MemoryContext, target: int, factor: int, scenarios: list, shape: DiTShape
) -> tuple[float, float]:
    """Mean DiT-FLOP and self-attention-FLOP saving of merging over ``scenarios`` (overhead included)."""
    base = flat_flops(target + context_layout(context).num_tokens, shape)
    dit_cuts, attn_cuts = [], []
    for scenario in scenarios:
        merged, overhead = merged_dit(context, target, factor, scenario, shape)
        dit_cuts.append(cut(merged.total + overhead, base.total))
        attn_cuts.append(cut(merged.self_attention + overhead, base.self_attention))
    return sum(dit_cuts) / len(dit_cuts), sum(attn_cuts) / len(attn_cuts)


def part_a(memory_counts: list[int], seeds: int, shape: DiTShape = WAN21_1_3B) -> dict[str, float]:
    """FLOP tables; returns the headline fractions."""
    results: dict[str, float] = {}
    n_check = 96_642
    formula, counted = block_flops(n_check, shape).total, counted_block_flops(n_check, shape)
    print(
        f"Wan2.1-1.3B (dim {shape.dim}, {shape.depth} blocks, {shape.heads} heads, ffn {shape.ffn}, text {shape.text_tokens}),"
        f" latent {LATENT[1]}x{LATENT[2]}x{LATENT[3]} (480x832x81)"
    )
    print(
        f"formula check at N={n_check:,}: block_flops {formula:.6e} vs torch flop_counter {counted:.6e} -> "
        f"{'exact match' if formula == counted else 'MISMATCH'}"
    )
    print()
    print("(1) dynamic tokenization vs every memory at 1x2x2 (no merging); FLOPs of all 30 blocks")
    print(
        f"{'memories':>8} | {'tokens dyn':>10} | {'tokens naive':>12} | {'self-attn dyn':>13} | {'self-attn naive':>15} |"
        f" {'attn cut':>8} | {'QK/AV cut':>9} | {'DiT cut':>7}"
    )
    for k in memory_counts:
        ctx = make_context(k)
        budget = token_budget(ctx)
        naive = token_budget(naive_context(k))
        assert naive.total == budget.naive_total
        dyn, nai = flat_flops(budget.total, shape), flat_flops(budget.naive_total, shape)
        attn_cut = cut(dyn.self_attention, nai.self_attention)
        results[f"attn_flops_cut_{k}"] = attn_cut
        results[f"token_cut_{k}"] = budget.saving
        results[f"dit_flops_cut_{k}"] = cut(dyn.total, nai.total)
        print(
            f"{k:>8} | {budget.total:>10,} | {budget.naive_total:>12,} | {dyn.self_attention:>13.4e} | {nai.self_attention:>15.4e} |"
            f" {attn_cut:>8.1%} | {cut(dyn.self_scores, nai.self_scores):>9.1%} | {cut(dyn.total, nai.total):>7.1%}"
        )
    print(
        "    attn = self-attention projections + QK^T + AV; DiT = all matmuls of the 30 blocks (cross-attention and FFN too)"
    )
    print()
    blocks = default_merge_blocks(shape.depth)
    print(
        f"(2) extra saving of token merging at the input of blocks {blocks} (least responsive {RATIO:.0%} of the memory frames"
        " present, merged frames included, pooled factor x factor; overhead of the q/k and responsiveness pass included)"
    )
    print(f"{'memories':>8} | {'factor':<13} | {'scenario':<46} | {'DiT cut':>7} | {'attn cut':>8}")
    for k in memory_counts:
        ctx = make_context(k)
        target = token_budget(ctx).target
        layout = context_layout(ctx)
        scenarios = {
            f"stable random ranking ({seeds} seeds)": [stable_random(s) for s in range(seeds)],
            f"fresh random ranking per block ({seeds} seeds)": [fresh_random(s) for s in range(seeds)],
            "coarse memories least responsive": [by_stream(layout, coarse_least=True)],
            "fine memories least responsive": [by_stream(layout, coarse_least=False)],
        }
        auto = default_pool_factor(ctx.memory_count)
        for factor in sorted({2, auto}):
            label = f"{factor}x{factor}" + (" (default)" if factor == auto else "")
            for name, group in scenarios.items():
                dit_cut, attn_cut = merge_saving(ctx, target, factor, group, shape)
                if name.startswith("stable"):
                    results[f"merge_extra_cut_{k}" if factor == auto else f"merge_extra_cut_{k}_f{factor}"] = dit_cut
                print(f"{k:>8} | {label:<13} | {name:<46} | {dit_cut:>7.1%} | {attn_cut:>8.1%}")
    print(
        "    The ranking decides WHICH frames are merged, never how many; a fine (1x4x4) frame holds 390 tokens and a coarse"
    )
    print(
        "    (1x8x8) one 104, so the saving depends on the ranking. Headline = stable random ranking at the default factor"
    )
    print(
        "    (2x2 up to 6 memories, 4x4 up to 12: the paper scales the reduction with the memory count). If responsiveness"
    )
    print(
        "    follows the retrieval rank (coarse memories least responsive), the saving is the lower row, well under 20%."
    )
    return results


TIMING_TARGETS = (  # (key, limit, "max" = at most / "min" = at least, what it means)
    ("cpu_step_ratio_6_vs_none", 1.6, "max", "step time with 6 memories vs user video only (plain ReCamMaster)"),
    ("cpu_speedup_vs_naive_6", 2.5, "min", "speed-up of dynamic + merged memory over naive all-1x2x2 memory"),
    ("empty_overhead", 0.03, "max", "extra step time of the patch with an empty memory"),
)
STEP_SCRIPT = "memv2v_cli.demo.bench_dit_steps"  # runs inside ComfyUI's Python; this library never imports comfy
DEVICE_SCRIPT = "memv2v_cli.bench_gpu"


def find_comfyui() -> tuple[Path | None, str]:
    """A ComfyUI checkout from $COMFYUI_PATH, else ~/comfy/ComfyUI, else the ComfyUI whose custom_nodes holds this
    pack; None and the places looked at otherwise."""
    candidates = [Path(os.environ["COMFYUI_PATH"]).expanduser()] if os.environ.get("COMFYUI_PATH") else []
    candidates.append(Path("~/comfy/ComfyUI").expanduser())
    repo = Path(__file__).resolve().parents[2]
    if repo.parent.name == "custom_nodes":
        candidates.append(repo.parent.parent)
    for path in candidates:
        if (path / "main.py").is_file() and (path / "comfy").is_dir():
            return path, str(path)
    return None, ", ".join(str(p) for p in candidates)


def part_b_cpu_timings(args: argparse.Namespace) -> dict[str, float] | None:
    """CPU step timings of a real ComfyUI WanModel (run as a subprocess in ComfyUI's Python), with the targets."""
    if args.skip_timings:
        print("(b) CPU step timings: skipped (--skip-timings).")
        return None
    comfyui, where = find_comfyui()
    repo = Path(__file__).resolve().parents[2]
    if comfyui is None:
        print(f"(b) CPU step timings: skipped, no ComfyUI found (looked at {where}); set COMFYUI_PATH to a checkout.")
        return None
    if not (repo / (STEP_SCRIPT.replace(".", "/") + ".py")).is_file():
        print(f"(b) CPU step timings: skipped, {STEP_SCRIPT} is not beside this library (run it from the pack's "
              "checkout).")
        return None
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    command = [sys.executable, "-m", STEP_SCRIPT, "--comfyui", str(comfyui), "--threads", str(threads),
               "--reps", str(args.reps), *args.timing_args]
    print(f"(b) CPU step timings with a real ComfyUI WanModel ({comfyui}): {' '.join(command[1:])}")
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        print(f"    failed with exit code {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return None
    print("\n".join(lines[:-1]))
    measured = json.loads(lines[-1])
    timings = {key: value for key, value in measured.items() if not key.startswith("step_ms_")}
    for key, limit, kind, meaning in TIMING_TARGETS:
        value = timings.get(key)
        if value is None:
            print(f"    {key}: not measured ({meaning})")
            continue
        met = value <= limit if kind == "max" else value >= limit
        shown = f"{value:+.1%}" if key == "empty_overhead" else f"{value:.2f}x"
        bound = f"{limit:.0%}" if key == "empty_overhead" else f"{limit}x"
        print(f"    {meaning}: {shown} (target {'at most' if kind == 'max' else 'at least'} {bound}) -> "
              f"{'met' if met else 'NOT MET'}")
    return timings


def device_bench(args: argparse.Namespace) -> int:
    """The real-size device benchmark, run in ComfyUI's Python; a clear message and exit status 3 without the device."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"No CUDA GPU is visible to this Python (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}), so the real-size benchmark cannot run here. Run it on a machine "
              "with an NVIDIA GPU in ComfyUI's Python, or check it on the CPU at a small size: "
              "python -m memv2v_core.bench dit --device cpu --size tiny", file=sys.stderr)
        return 3
    comfyui, where = find_comfyui()
    repo = Path(__file__).resolve().parents[2]
    if comfyui is None:
        print(f"The device benchmark builds the model with ComfyUI's own classes, but no ComfyUI was found (looked at "
              f"{where}); set COMFYUI_PATH to a ComfyUI folder.", file=sys.stderr)
        return 2
    if not (repo / (DEVICE_SCRIPT.replace(".", "/") + ".py")).is_file():
        print(f"{DEVICE_SCRIPT} is not beside this library; run the benchmark from the pack's checkout.",
              file=sys.stderr)
        return 2
    command = [sys.executable, "-m", DEVICE_SCRIPT, "--comfyui", str(comfyui), "--device", args.device,
               "--size", args.size, *args.timing_args]
    print(f"real-size model calls on {args.device} with ComfyUI's WanModel ({comfyui}): {' '.join(command[1:])}",
          flush=True)
    return subprocess.run(command, cwd=repo).returncode  # its output streams through as it measures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m memv2v_core.bench dit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", help="run the real-size benchmark on this device instead (cuda, cuda:1, cpu)")
    parser.add_argument("--size", default=None, choices=("1.3B", "5B", "14B", "tiny"),
                        help="with --device: the Wan size (default 1.3B; tiny for a CPU check)")
    parser.add_argument("--memories", type=int, nargs="+", default=[6, 10], help="memory counts to compare")
    parser.add_argument("--seeds", type=int, default=16, help="random rankings averaged per scenario")
    parser.add_argument("--skip-timings", action="store_true", help="skip part (b), the CPU step timings")
    parser.add_argument("--reps", type=int, default=12, help="part (b): timed repetitions per configuration")
    parser.add_argument("timing_args", nargs="*", help="further options (after --) for part (b)'s "
                        "memv2v_cli.demo.bench_dit_steps, e.g. -- --attention comfy-cpu-default, or with --device for "
                        "memv2v_cli.bench_gpu, e.g. -- --budget-s 120")
    args = parser.parse_args(argv)
    if args.device is not None:
        args.size = args.size or ("tiny" if args.device == "cpu" else "1.3B")
        return device_bench(args)
    if args.size is not None:
        parser.error("--size needs --device (e.g. --device cuda --size 14B)")
    results = part_a(args.memories, args.seeds)
    print()
    timings = part_b_cpu_timings(args)
    if timings:
        results.update(timings)
    print(json.dumps({key: round(value, 4) for key, value in results.items()}))
    return 0
