"""Real-size cost of memory tokens on ComfyUI's own WanModel: ms per model call and peak memory, side by side.

Started by ``python -m memv2v_core.bench dit --device cuda`` (which finds ComfyUI and runs this in its Python), or
directly: ``python -m memv2v_cli.bench_gpu --comfyui ~/ComfyUI --device cuda [--size 1.3B|5B|14B]``. It builds a
random Wan DiT with ComfyUI's own model config and classes, in bf16, directly on the device (no CPU copy of the
weights), patches it with the pack's memory patch exactly as Apply Memory does, and times one model call at batch 1
(one of the two calls of a CFG step) for: plain T2V unpatched, empty memory (with its max difference to unpatched),
the user video alone (ReCamMaster), 4 / 6 / 10 memories with dynamic tokenization with and without merging, and 6
memories all at 1x2x2 (naive). Then ratios, the seconds a 50-step CFG turn implies (100 calls), the merge saving
against memory count, merge ratio and pooling factor, ComfyUI's memory estimate (memory tokens included) against the
measured peak, the peak memory of one block with per-frame timesteps before and after grouped modulation, and one
JSON line. Calls run inside one sampling run (``memory_patch.sampling_run``), as a sampler makes them: the memory is
embedded once, in the warm-up call. A time budget (``--budget-s``, 170 s of measuring by default) keeps the default run under 4
minutes on an H100/H200; what does not fit is reported as skipped.

What an artist trades by raising the merge ratio (default 0.5, the paper's): at blocks 10 and 20 of 30 that share of
the memory frames present, least responsive to the generated video first, is pooled 2x2 (4x4 from 7 memories on) or
dropped ("discard"), so the last two thirds of the network carry fewer memory tokens and a turn gets faster (on the
H200, 6 memories: 3.06 s per call at 0.5, 2.81 s at 0.75, against 3.62 s unmerged). The price is detail: a merged
frame is seen at a quarter (or a sixteenth) of its resolution in the deeper blocks, so small things and textures that
only those memories show are held less exactly when the camera comes back to them. The user video is never merged, and
the frames that matter most to the current target stay at full resolution; at ratio 1.0 every memory frame is pooled.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import statistics
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "memv2v_bench_pack"
STEPS, CFG_CALLS = 50, 2


@dataclass(frozen=True)
class Size:
    """A Wan DiT shape and the latent it is benchmarked at (C, T, H, W)."""

    name: str
    dim: int
    ffn: int
    layers: int
    channels: int
    latent: tuple[int, int, int, int]
    text_tokens: int = 512
    video: str = ""


SIZES = {
    "1.3B": Size("Wan2.1-T2V-1.3B", 1536, 8960, 30, 16, (16, 21, 60, 104), video="480x832x81"),
    "14B": Size("Wan2.1-T2V-14B", 5120, 13824, 40, 16, (16, 21, 60, 104), video="480x832x81"),
    "5B": Size("Wan2.2-TI2V-5B", 3072, 14336, 30, 48, (48, 31, 44, 80), video="704x1280x121"),
    "tiny": Size("tiny Wan (CPU check)", 256, 512, 4, 16, (16, 5, 16, 16), text_tokens=16, video="64x64x17"),
}


def bootstrap(comfyui: str, device: str) -> None:
    """ComfyUI importable (CPU mode and the torchvision shim for a CPU run), the pack as one package."""
    if device == "cpu":
        shim = REPO / "memv2v_cli" / "host" / "cpu_torchvision" / "sitecustomize.py"
        spec = importlib.util.spec_from_file_location("memv2v_cpu_torchvision", shim)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)  # acts only if torchvision's compiled ops cannot load
    sys.path.insert(0, str(Path(comfyui).expanduser().resolve()))
    import comfy.cli_args

    if device == "cpu":
        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA, like the fused kernels a GPU runs
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(REPO)]
    sys.modules[PACKAGE] = package


def pack(name: str):
    return importlib.import_module(f"{PACKAGE}.{name}")


def build_model(size: Size, device, dtype):
    """A WAN21/WAN22 model from ComfyUI's own config for this shape, built on ``device`` and filled with seeded random
    weights there (norms 1, biases 0, the rest N(0, 0.02)); wrapped in a ModelPatcher like a loaded model."""
    import torch

    import comfy.model_detection
    import comfy.model_patcher

    config = {"image_model": "wan2.1", "model_type": "t2v", "dim": size.dim, "out_dim": size.channels,
              "num_heads": size.dim // 128, "ffn_dim": size.ffn, "num_layers": size.layers, "patch_size": (1, 2, 2),
              "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
              "in_dim": size.channels}
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    if model_config is None:
        raise SystemExit(f"this ComfyUI has no model config for {size.name} ({config}); update ComfyUI.")
    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({}, "", device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in base.diffusion_model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                param.zero_()
            elif leaf == "weight" and "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


# --- measuring ---------------------------------------------------------------------------------------------------
class Meter:
    """Wall time (device-synchronised) and peak memory of one call: CUDA's allocator statistics, or on the CPU a
    tensor tracker (torch's MemTracker) when this torch has it."""

    def __init__(self, device):
        import torch

        self.torch, self.device, self.cuda = torch, device, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def peak(self, out: dict):
        torch = self.torch
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            yield
            self.sync()
            out["peak"] = torch.cuda.max_memory_allocated(self.device)
            out["above_start"] = out["peak"] - before
            return
        try:
            from torch.distributed._tools.mem_tracker import MemTracker
        except Exception:  # noqa: BLE001 - optional, private torch tool
            yield
            out["peak"] = out["above_start"] = None
            return
        tracker = MemTracker()
        with tracker:
            yield
        snapshot = tracker.get_tracker_snapshot("peak")
        out["above_start"] = max((v["Total"] for v in snapshot.values()), default=0)
        out["peak"] = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="the ComfyUI folder")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu ...")
    parser.add_argument("--size", choices=sorted(SIZES), default="1.3B")
    parser.add_argument("--dim", type=int, help="override the width (with --ffn/--layers/--latent: checks at any size)")
    parser.add_argument("--ffn", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--latent", help="override the latent, CxTxHxW, e.g. 16x21x60x104")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per configuration (the first embeds)")
    parser.add_argument("--reps", type=int, default=3, help="timed calls per main configuration (median)")
    parser.add_argument("--table-reps", type=int, default=2, help="timed calls per merge-table configuration")
    parser.add_argument("--naive", choices=("on", "off", "auto"), default="auto",
                        help="the 6-memory all-1x2x2 configuration (auto: on up to the 1.3B size; 8x slower)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                        help="weights and activations (default bf16; fp32 on the CPU, whose bf16 matmuls are slow)")
    parser.add_argument("--block-only", action="store_true",
                        help="only the one-block per-frame-timestep memory measurement (no model-call timings)")
    parser.add_argument("--naive-reps", type=int, default=1, help="timed calls of the naive configuration (24 s each "
                        "at 1.3B on an H200)")
    parser.add_argument("--budget-s", type=float, default=170.0,
                        help="stop starting new configurations after this many seconds of measuring")
    args = parser.parse_args(argv)
    preset = SIZES[args.size]
    latent = tuple(int(v) for v in args.latent.lower().split("x")) if args.latent else preset.latent
    size = Size(preset.name + (" (overridden)" if args.dim or args.ffn or args.layers or args.latent else ""),
                args.dim or preset.dim, args.ffn or preset.ffn, args.layers or preset.layers, latent[0], latent,
                preset.text_tokens, preset.video if not args.latent else "")
    bootstrap(args.comfyui, "cpu" if args.device == "cpu" else args.device)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device visible to this Python (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); run on a machine with an NVIDIA GPU, or use --device cpu --size tiny.",
              file=sys.stderr)
        return 3
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if device.type == "cpu" else "bf16")]
    patch = pack("nodes.patches.memory_patch")
    context_lib = pack("memv2v_core.memory.context")
    tokenize = pack("memv2v_core.memory.tokenize")
    stream_lib = pack("memv2v_core.memory.stream")
    meter = Meter(device)

    started = time.perf_counter()
    model = build_model(size, device, dtype)
    dm = model.model.diffusion_model
    depth = len(dm.blocks)
    weights = sum(p.numel() * p.element_size() for p in dm.parameters())
    built_s = time.perf_counter() - started
    channels, frames, height, width = size.latent
    latent_format = type(model.model.latent_format).__name__.lower()
    video_tokens = frames * (height // 2) * (width // 2)
    g = torch.Generator().manual_seed(1)
    user = torch.randn(1, channels, frames, height, width, generator=g)
    stored = [(f"m{i}", torch.randn(1, channels, frames, height, width, generator=g), 1.0 - i / 100, None)
              for i in range(10)]
    naive_plan = tokenize.KernelPlan(fine=(1, 2, 2), coarse=(1, 2, 2))

    def context(memories: int, plan=None):
        return context_lib.build_context(user, stored[:memories], "nvs", plan, latent_format=latent_format)

    empty = context_lib.build_context(None, [], "nvs", target_frames=frames, latent_format=latent_format)

    def patched(ctx, mode="merge", ratio=0.5, factor=None):
        merge = patch.merge_settings(depth, ctx.memory_count, "auto", ratio, mode)
        if merge is not None and factor is not None:
            merge = type(merge)(**{**merge.__dict__, "factor": factor})
        return patch.apply_memory(model, ctx, merge), merge, ctx

    x = torch.randn(1, channels, frames, height, width, generator=g).to(device, dtype)
    sigma = torch.full((1,), 0.7, device=device)
    text = (torch.randn(1, size.text_tokens, 4096, generator=g)).to(device, dtype)

    def call(patcher):
        options = dict(patcher.model_options.get("transformer_options", {}))
        options["wrappers"] = {kind: dict(by_key) for kind, by_key in patcher.wrappers.items()}
        options["cond_or_uncond"] = [0]
        with torch.no_grad():
            return patcher.model.apply_model(x, sigma, c_crossattn=text, transformer_options=options)

    def estimate(ctx) -> float:
        """ComfyUI's activation estimate for this call (batch 1), memory tokens included as the patch adds them."""
        shape = [1, channels, frames, height, width]
        tokens = 0 if ctx is None or not ctx.streams else context_lib.context_layout(ctx).num_tokens
        return model.model.memory_required(shape) + (
            patch.memory_tokens_estimate(model.model, shape, tokens, tuple(dm.patch_size)) if tokens else 0.0)

    results: dict[str, dict] = {}
    skipped: list[str] = []
    measure_start = time.perf_counter()

    def measure(name, config, reps, warmup, keep=False):
        if time.perf_counter() - measure_start > args.budget_s:
            skipped.append(name)
            print(f"  {name}: skipped (time budget {args.budget_s:.0f} s spent)", flush=True)
            return None
        patcher, merge, ctx = config
        runner = patch.sampling_run(patcher) if ctx is not None else contextlib.nullcontext()
        with runner:
            output = None
            for _ in range(warmup):
                output = call(patcher)
            times, mem = [], {}
            # CUDA's peak statistics cost nothing, so they cover the timed calls; the CPU tracker slows a call down,
            # so there it watches one extra, untimed call
            with meter.peak(mem) if meter.cuda else contextlib.nullcontext():
                for _ in range(reps):
                    meter.sync()
                    start = time.perf_counter()
                    output = call(patcher)
                    meter.sync()
                    times.append(time.perf_counter() - start)
            if not meter.cuda:
                with meter.peak(mem):
                    output = call(patcher)
        tokens = video_tokens + (0 if ctx is None or not ctx.streams else context_lib.context_layout(ctx).num_tokens)
        row = {"tokens": tokens, "ms": statistics.median(times) * 1000, "peak": mem.get("peak"),
               "above_start": mem.get("above_start"), "estimate": estimate(ctx),
               "merge": "-" if merge is None else f"{merge.mode} {merge.ratio:g} {merge.factor}x{merge.factor}"}
        results[name] = row
        print(f"  {name:<34} {tokens:>9,} tokens {row['ms']:>10.1f} ms" +
              ("" if row["peak"] is None else f"  peak {row['peak'] / 2**30:6.2f} GiB"), flush=True)
        return output if keep else None

    if args.block_only:
        rows = block_memory(dm, context(6), model, patch, context_lib, stream_lib, meter, device, dtype, x, text)
        print(f"{size.name}: dim {size.dim}, latent {frames}x{height}x{width}, {dtype}; one block, per-frame "
              "timesteps, 6 memories:")
        for key, value in rows.items():
            print(f"  {key}: {value}")
        print(json.dumps({"device": str(device), "size": args.size, "dim": size.dim, "latent": list(size.latent),
                          "block_per_frame": rows}))
        return 0
    print(f"{size.name}: dim {size.dim}, {depth} blocks, {size.dim // 128} heads, ffn {size.ffn}; "
          f"{weights / 2**30:.2f} GiB of {str(dtype).replace('torch.', '')} weights built on {device} in {built_s:.1f} s; latent "
          f"{frames}x{height}x{width} ({size.video or 'custom'}), {video_tokens:,} video tokens, batch 1, "
          f"{size.text_tokens} text tokens; torch {torch.__version__}"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""), flush=True)
    call(model)  # the device's own first-call costs (kernel selection, allocator growth) go to no configuration
    plain_out = measure("plain T2V (unpatched)", (model, None, None), args.reps, args.warmup, keep=True)
    empty_out = measure("empty memory", patched(empty), args.reps, args.warmup, keep=True)
    empty_diff = None if plain_out is None or empty_out is None else float((plain_out - empty_out).abs().max())
    del plain_out, empty_out
    main_configs = [("user video only (ReCamMaster)", lambda: patched(context(0)))]
    for k in (4, 6, 10):
        main_configs.append((f"{k} memories, dynamic + merge", lambda k=k: patched(context(k))))
        main_configs.append((f"{k} memories, dynamic, no merge", lambda k=k: patched(context(k), "off")))
    for name, make in main_configs:
        measure(name, make(), args.reps, args.warmup)
    table_configs = [("6 memories, merge ratio 0.25", lambda: patched(context(6), ratio=0.25)),
                     ("6 memories, merge ratio 0.75", lambda: patched(context(6), ratio=0.75)),
                     ("6 memories, merge 4x4", lambda: patched(context(6), factor=4)),
                     ("6 memories, discard 0.5", lambda: patched(context(6), "discard")),
                     ("10 memories, merge 2x2", lambda: patched(context(10), factor=2))]
    for name, make in table_configs:
        measure(name, make(), args.table_reps, 0)
    naive = args.naive == "on" or (args.naive == "auto" and size.dim <= 1536)
    if naive:
        measure("6 memories, all 1x2x2 (naive)", patched(context(6, naive_plan), "off"), args.naive_reps, 0)
    else:
        skipped.append("6 memories, all 1x2x2 (naive)")

    # --- one block, per-frame timesteps (Wan 2.2 TI2V / I2V), 6 memories: modulation per token vs grouped -------
    block_rows = block_memory(dm, context(6), model, patch, context_lib, stream_lib, meter, device, dtype, x, text)

    # --- report ------------------------------------------------------------------------------------------------
    def ms(name):
        return results.get(name, {}).get("ms")

    def ratio(a, b):
        return None if ms(a) is None or ms(b) is None else ms(a) / ms(b)

    print()
    print(f"{'configuration':<34} | {'tokens':>9} | {'merge':<16} | {'ms/call':>9} | {'peak GiB':>8} | "
          f"{'+act GiB':>8} | {'est. GiB':>8} | {'50-step CFG s':>13}")
    for name, row in results.items():
        peak = "-" if row["peak"] is None else f"{row['peak'] / 2**30:.2f}"
        act = "-" if row["above_start"] is None else f"{row['above_start'] / 2**30:.3f}"
        print(f"{name:<34} | {row['tokens']:>9,} | {row['merge']:<16} | {row['ms']:>9.1f} | {peak:>8} | {act:>8} | "
              f"{row['estimate'] / 2**30:>8.3f} | {row['ms'] * STEPS * CFG_CALLS / 1000:>13.1f}")
    for name in skipped:
        print(f"{name:<34} | skipped")
    print("  +act = memory above what was allocated before the call (activations); est. = ComfyUI's memory_required "
          "for this call, memory tokens included (the pack's PREPARE_SAMPLING / CALC_COND_BATCH wrappers add them)")
    print(f"  empty memory vs unpatched: max diff {empty_diff}")
    user_only = "user video only (ReCamMaster)"
    ratios = {
        "empty_overhead": None if ratio("empty memory", "plain T2V (unpatched)") is None
        else ratio("empty memory", "plain T2V (unpatched)") - 1,
        "user_only_vs_plain": ratio(user_only, "plain T2V (unpatched)"),
    }
    for k in (4, 6, 10):
        ratios[f"mem{k}_vs_user_only"] = ratio(f"{k} memories, dynamic + merge", user_only)
        saving = ratio(f"{k} memories, dynamic + merge", f"{k} memories, dynamic, no merge")
        ratios[f"merge_saving_{k}"] = None if saving is None else 1 - saving
    ratios["naive_vs_dynamic_6"] = ratio("6 memories, all 1x2x2 (naive)", "6 memories, dynamic + merge")
    print("ratios:", ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in ratios.items()))
    print()
    print("merge saving against the same memories unmerged (ms per call):")
    print(f"{'memories':>8} | {'ratio':>5} | {'pooling':<8} | {'mode':<8} | {'ms/call':>9} | {'saving':>7}")
    table = [(4, 0.5, "default", "merge", "4 memories, dynamic + merge"),
             (6, 0.25, "default", "merge", "6 memories, merge ratio 0.25"),
             (6, 0.5, "default", "merge", "6 memories, dynamic + merge"),
             (6, 0.75, "default", "merge", "6 memories, merge ratio 0.75"),
             (6, 0.5, "4x4", "merge", "6 memories, merge 4x4"),
             (6, 0.5, "-", "discard", "6 memories, discard 0.5"),
             (10, 0.5, "2x2", "merge", "10 memories, merge 2x2"),
             (10, 0.5, "default", "merge", "10 memories, dynamic + merge")]
    merge_table = []
    for memories, merge_ratio, pooling, mode, name in table:
        unmerged = ms(f"{memories} memories, dynamic, no merge")
        if ms(name) is None or unmerged is None:
            continue
        pooled = results[name]["merge"].split()[-1] if pooling == "default" else pooling
        saving = 1 - ms(name) / unmerged
        merge_table.append({"memories": memories, "ratio": merge_ratio, "pooling": pooled, "mode": mode,
                            "ms": ms(name), "saving": saving})
        print(f"{memories:>8} | {merge_ratio:>5} | {pooled:<8} | {mode:<8} | {ms(name):>9.1f} | {saving:>7.1%}")
    print()
    print("one block, per-frame timesteps, 6 memories (peak memory of the block call):")
    for key, value in block_rows.items():
        print(f"  {key}: {value}")
    result = {"device": str(device), "size": args.size, "dim": size.dim, "layers": depth,
              "latent": list(size.latent), "empty_max_diff": empty_diff, "skipped": skipped,
              "ms": {k: round(v["ms"], 2) for k, v in results.items()},
              "peak_gib": {k: None if v["peak"] is None else round(v["peak"] / 2**30, 3) for k, v in results.items()},
              "estimate_gib": {k: round(v["estimate"] / 2**30, 4) for k, v in results.items()},
              "ratios": {k: None if v is None else round(v, 4) for k, v in ratios.items()},
              "merge_table": merge_table, "block_per_frame": block_rows,
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return 0


def block_memory(dm, ctx, model, patch, context_lib, stream_lib, meter, device, dtype, x, text) -> dict:
    """Peak memory of block 0 run on [video, 6 memories] with per-frame timesteps [B, F]: the modulation expanded to
    every token (before) against grouped modulation (now); the outputs must be bit-identical."""
    import torch

    frames = x.shape[2]
    processed = patch.apply_memory(model, ctx, None)
    installed = processed.wrappers["outer_sample"][patch.WRAPPER_KEY][0]._memv2v_installed
    with torch.no_grad():
        embedded = patch._embedded(installed, dm, device, dtype)
        tokens = dm.patch_embedding(x.float()).to(dtype)
        grid = tokens.shape[2:]
        tokens = tokens.flatten(2).transpose(1, 2)
        t = torch.linspace(0.0, 999.0, frames, device=device).unsqueeze(0)  # one timestep per latent frame
        e = dm.time_embedding(stream_lib_sinusoidal(dm, t).to(dtype))
        vec = dm.time_projection(e.reshape(1, frames, -1)).unflatten(2, (6, dm.dim))
        pe = dm.rope_encode(*[int(v) for v in x.shape[2:]], device=device, dtype=dtype)
        context = dm.text_embedding(text)
    rope_fn = lambda ids: dm.rope_embedder(ids.unsqueeze(0)).movedim(1, 2)  # noqa: E731
    block = dm.blocks[0]
    rows, outputs = {}, {}
    for label, expand in (("per_token", stream_lib.per_token_modulation), ("grouped", stream_lib.grouped_modulation)):
        state = stream_lib.MemoryStreamState.from_embedded(embedded)
        original = stream_lib.grouped_modulation
        stream_lib.grouped_modulation = expand  # what _concat uses: the old expansion, or the current one
        mem: dict = {}
        try:
            with torch.no_grad(), meter.peak(mem):
                outputs[label] = state.run_block(
                    lambda img, freqs, e: block(img, e=e, freqs=freqs, context=context), tokens, pe, vec, rope_fn, 0)
        finally:
            stream_lib.grouped_modulation = original
        rows[f"{label}_peak_mib"] = None if mem.get("above_start") is None else round(mem["above_start"] / 2**20, 2)
    rows["tokens"] = f"{tokens.shape[1]:,} video + {embedded.tokens.shape[1]:,} memory, grid {tuple(grid)}"
    rows["modulation_entries"] = int(stream_lib.grouped_modulation(vec, tokens.shape[1],
                                                                    embedded.tokens.shape[1]).shape[1])
    rows["max_diff"] = float((outputs["per_token"].float() - outputs["grouped"].float()).abs().max())
    return rows


def stream_lib_sinusoidal(dm, t):
    """ComfyUI's sinusoidal timestep embedding, from the model's own module."""
    import comfy.ldm.wan.model as wan_model

    return wan_model.sinusoidal_embedding_1d(dm.freq_dim, t.flatten())


if __name__ == "__main__":
    sys.exit(main())
