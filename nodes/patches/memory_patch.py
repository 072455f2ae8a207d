"""Memory tokens inside ComfyUI's native Wan DiT: one keyed DIFFUSION_MODEL wrapper and a replace patch on every block.

Pure glue over ``memv2v_core.memory.stream``: the wrapper embeds the context once per model call (so cond/uncond batches,
context windows and re-entrant calls each get their own state), every ``("double_block", i)`` patch hands its block to
``MemoryStreamState.run_block`` (concatenate, run the real block, split), and the head and unpatchify never see memory.
A keyed CALC_COND_BATCH wrapper makes one merge plan per step: when the host runs the conditional and unconditional
passes as separate calls, the unconditional one merges the frames the conditional one chose (see ``_make_cond_batch``).
Patches are plain closures: ``ModelPatcher.clone()`` deep-copies ``model_options``, and closures are shared, not copied.

Cost on a GPU: a keyed OUTER_SAMPLE wrapper opens one cache per sampling run, so the memory latents go to the device
and through the tokenizers once per run (per device and dtype), not on every model call; keyed PREPARE_SAMPLING and
CALC_COND_BATCH wrappers add the memory tokens to ComfyUI's activation estimate (``BaseModel.memory_required``), which
decides how much of the model stays on the GPU and whether cond and uncond run as one batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import logging
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

import comfy.ldm.wan.model as wan_model
import comfy.model_patcher
import comfy.ops
import comfy.patcher_extension

from ...memv2v_core.bank.memory_bank import check_latent_format
from ...memv2v_core.memory.context import MemoryContext, MemoryTokens, context_layout, embed_context
from ...memv2v_core.memory.merge import MERGE_MODES
from ...memv2v_core.memory.positions import scale_shift_positions
from ...memv2v_core.memory.stream import MemoryStreamState, MergeSettings, default_merge_blocks, rows_for_conditional
from ...memv2v_core.memory.tokenize import DerivedTokenizer, Kernel

log = logging.getLogger(__name__)

WRAPPER_KEY = "memv2v.memory"
STATE_KEY = "memv2v_memory_call"
MERGE_CHOICES = (*MERGE_MODES, "off")
PATCH_MARK = "_memv2v_memory_patch"


@dataclass(eq=False)
class MemoryCall:
    """One model call's memory: the stream state, the model's RoPE function, and the responsiveness per merge block."""

    state: MemoryStreamState
    rope_fn: Callable[[torch.Tensor], torch.Tensor]
    cond_or_uncond: tuple[int, ...]
    responsiveness: dict[int, torch.Tensor] = field(default_factory=dict)
    blocks_run: int = 0


Observer = Callable[[MemoryCall], None]


class _QKCaptured(Exception):
    """Raised by the attention override once the block's self-attention q and k are in hand (stops the block there)."""


class _ConditionalFirst(Exception):
    """Raised (before any work) by a call without conditional rows that came before its step's conditional pass."""


# --- validation ------------------------------------------------------------------------------------------------------
def wan_diffusion_model(model: Any) -> wan_model.WanModel:
    """The Wan DiT inside a ComfyUI MODEL, or a ValueError saying what the model is instead."""
    get = getattr(model, "get_model_object", None)
    dm = get("diffusion_model") if callable(get) else None
    if not isinstance(dm, wan_model.WanModel):
        kind = type(dm).__name__ if dm is not None else type(model).__name__
        raise ValueError(
            f"model: the diffusion model is a {kind}, not a Wan DiT; memory tokens need ComfyUI's native WanModel. "
            "Load a Wan 2.1 / 2.2 model (e.g. with Load Diffusion Model) and connect it here."
        )
    return dm


def parse_merge_blocks(text: str, depth: int) -> tuple[int, ...]:
    """``"auto"``: the paper's blocks 10 and 20 of 30 scaled to ``depth``; ``"10,20"``: (10, 20), checked on depth."""
    value = (text or "").strip().lower()
    if value == "auto":
        return default_merge_blocks(depth)
    try:
        blocks = tuple(sorted({int(part) for part in value.replace(" ", "").split(",") if part}))
    except ValueError:
        raise ValueError(
            f"merge_blocks ({text!r}) must be 'auto' or 0-based block numbers separated by commas, e.g. '10,20'."
        ) from None
    if not blocks:
        raise ValueError(f"merge_blocks ({text!r}) names no block; use 'auto', e.g. '10,20', or merge_mode 'off'.")
    beyond = [b for b in blocks if not 0 <= b < depth]
    if beyond:
        raise ValueError(
            f"merge_blocks ({text!r}): block(s) {beyond} do not exist in this model of {depth} blocks "
            f"(0..{depth - 1}); "
            f"use 'auto' ({','.join(map(str, default_merge_blocks(depth))) or 'none'}) or numbers below {depth}."
        )
    return blocks


def _kernel_key(kernel: Any) -> Kernel:
    if isinstance(kernel, str):
        kernel = kernel.lower().split("x")
    try:
        values = tuple(int(v) for v in kernel)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3:
        raise ValueError(f"modules: tokenizer kernel {kernel!r} must be (t, h, w) or a string like '1x4x4'.")
    return values  # type: ignore[return-value]


def _field(modules: Any, name: str) -> Any:
    return modules.get(name) if isinstance(modules, Mapping) else getattr(modules, name, None)


class LearnedMemoryWeights(torch.nn.Module):
    """Loaded memory weights (tokenizer kernels, optional merge operator), held by an additional ModelPatcher."""

    def __init__(self, tokenizers: Mapping[Kernel, tuple[torch.Tensor, torch.Tensor | None]], merger: Any = None):
        super().__init__()
        self.kernels = tuple(tokenizers)
        for kernel, (weight, bias) in tokenizers.items():
            name = "x".join(map(str, kernel))
            self.register_buffer(f"weight_{name}", weight.detach().clone())
            self.register_buffer(f"bias_{name}", None if bias is None else bias.detach().clone())
        self.merger = merger if isinstance(merger, torch.nn.Module) else None
        self._merge_fn = None if isinstance(merger, torch.nn.Module) or merger is None else merger

    def tokenizer(self, kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        if kernel not in self.kernels:
            return None
        name = "x".join(map(str, kernel))
        return getattr(self, f"weight_{name}"), getattr(self, f"bias_{name}")

    @property
    def merge_operator(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.merger if self.merger is not None else self._merge_fn


def learned_weights(modules: Any, dim: int) -> LearnedMemoryWeights | None:
    """Read the tokenizer kernels (``tokenizers``: kernel -> (weight, bias)) and ``merger`` of a MEMV2V_MODULES value.

    Kernels it does not hold are derived from the model's patch embedding instead; None when it holds nothing usable.
    """
    if modules is None:
        return None
    tokenizers = _field(modules, "tokenizers") or {}
    if not isinstance(tokenizers, Mapping):
        raise ValueError(
            f"modules: 'tokenizers' is a {type(tokenizers).__name__}; it must map kernels like (1, 4, 4) to "
            "(weight, bias) pairs. Connect the output of Memory-V2V Load Modules."
        )
    checked: dict[Kernel, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for key, pair in tokenizers.items():
        kernel = _kernel_key(key)
        weight, bias = pair if isinstance(pair, (tuple, list)) else (pair, None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 5 or tuple(weight.shape[2:]) != kernel:
            shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise ValueError(
                f"modules: tokenizer {kernel} has weight {shape}; expected "
                f"[dim, C, {kernel[0]}, {kernel[1]}, {kernel[2]}]."
            )
        if weight.shape[0] != dim:
            raise ValueError(
                f"modules: tokenizer {kernel} produces {weight.shape[0]}-wide tokens but the model's width is {dim}; "
                "load the modules made for this base model."
            )
        checked[kernel] = (weight, bias)
    merger = _field(modules, "merger")
    if not checked and merger is None:
        return None
    return LearnedMemoryWeights(checked, merger)


def check_context_fits(
    dm: wan_model.WanModel, latent_format: Any, context: MemoryContext, learned: LearnedMemoryWeights | None
) -> None:
    """Refuse, before sampling, a context whose latents or kernels cannot go through this model."""
    if not isinstance(context, MemoryContext):
        raise ValueError(
            f"context is a {type(context).__name__}; connect the MEMV2V_CONTEXT output of Memory-V2V Dynamic Tokenize."
        )
    if context.latent_format is not None:
        check_latent_format(context.latent_format, latent_format, "Memory-V2V Apply Memory (context)")
    channels = context.channels
    model_channels = getattr(latent_format, "latent_channels", None)
    if channels is not None and model_channels is not None and channels != model_channels:
        raise ValueError(
            f"context: the memory latents have {channels} channels but this model's latent format "
            f"({type(latent_format).__name__}) has {model_channels}; use memories made with this model's VAE."
        )
    base = tuple(dm.patch_embedding.weight.shape[2:])
    in_dim = int(dm.patch_embedding.weight.shape[1])
    for index, stream in enumerate(context.streams):
        name = f"context stream {index} ({stream.role}{'' if stream.entry_id is None else ' ' + stream.entry_id})"
        kernel = stream.kernel
        height, width = stream.latent.shape[-2:]
        if kernel[1] > height or kernel[2] > width:
            raise ValueError(
                f"{name}: kernel {'x'.join(map(str, kernel))} does not fit its {height}x{width} latent; choose a "
                f"smaller kernel in Dynamic Tokenize (at most 1x{height}x{width}) or use a larger video."
            )
        if learned is not None and learned.tokenizer(kernel) is not None:
            weight = learned.tokenizer(kernel)[0]
            if weight.shape[1] != stream.latent.shape[1]:
                raise ValueError(
                    f"{name}: the loaded tokenizer {kernel} takes {weight.shape[1]} channels but the latent has "
                    f"{stream.latent.shape[1]}; load modules made for this latent format."
                )
            continue
        if stream.latent.shape[1] != in_dim and not (
            model_channels is not None and stream.latent.shape[1] == model_channels < in_dim
        ):
            raise ValueError(
                f"{name}: the latent has {stream.latent.shape[1]} channels but the model's patch embedding takes "
                f"{in_dim}; training-free tokenizers need matching channels (or the model's latent channels, "
                "zero-padded for channel-concat models). Load tokenizer modules for this model, "
                "or use memories made for it."
            )
        if kernel[0] != base[0] or kernel[1] % base[1] or kernel[2] % base[2]:
            raise ValueError(
                f"{name}: kernel {'x'.join(map(str, kernel))} is not a multiple of the model's patch size "
                f"{'x'.join(map(str, base))}; use e.g. 1x{2 * base[1]}x{2 * base[2]} in Dynamic Tokenize."
            )


def merge_settings(
    depth: int, memory_count: int, blocks: str, ratio: float, mode: str, operator: Callable | None = None
) -> MergeSettings | None:
    """The merge settings for ``mode`` ("merge", "discard" or "off" -> None); factor grows with the memory count."""
    if mode not in MERGE_CHOICES:
        raise ValueError(f"merge_mode ({mode!r}) must be one of {MERGE_CHOICES}.")
    if mode == "off":
        return None
    chosen = parse_merge_blocks(blocks, depth)
    factor = getattr(operator, "kernel", None)  # a learned operator fixes the reduction; else it grows with memory
    return dataclasses.replace(
        MergeSettings.for_model(depth, memory_count, ratio=ratio, factor=factor, mode=mode, operator=operator),
        blocks=chosen,
    )


# --- per call ------------------------------------------------------------------------------------------------------
def _base_patch_weights(dm: wan_model.WanModel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The patch embedding's weights as this call sees them (LoRA, low-VRAM casting included), in fp32 on ``device``.

    Newer ComfyUI casts through an offload-aware API (``CastBiasWeightContext``, or ``cast_bias_weight(...,
    offloadable=True)`` + ``uncast_bias_weight``): the cast may live in a reused buffer or a pinned mmap until it is
    released, so the weights are cloned before release. ComfyUI 0.3.64 has only the plain ``cast_bias_weight``.
    """
    layer = dm.patch_embedding
    if not isinstance(layer, comfy.ops.CastWeightBiasOp):
        bias = None if layer.bias is None else layer.bias.to(device, torch.float32)
        return layer.weight.to(device, torch.float32), bias
    kwargs = {"dtype": torch.float32, "device": device, "bias_dtype": torch.float32}
    context = getattr(comfy.ops, "CastBiasWeightContext", None)
    if context is not None:
        with context(layer, offloadable=True, **kwargs) as (weight, bias):
            return weight.clone(), None if bias is None else bias.clone()
    uncast = getattr(comfy.ops, "uncast_bias_weight", None)
    if uncast is not None:
        weight, bias, offload = comfy.ops.cast_bias_weight(layer, offloadable=True, **kwargs)
        try:
            return weight.clone(), None if bias is None else bias.clone()
        finally:
            uncast(layer, weight, bias, offload)
    return comfy.ops.cast_bias_weight(layer, **kwargs)


def model_reads_rope_options(dm: wan_model.WanModel) -> bool:
    """Whether this ComfyUI's Wan places video tokens by ``transformer_options["rope_options"]`` (ScaleROPE node).

    Newer ``rope_encode`` takes ``transformer_options``; 0.3.64's does not and ignores the key, so memory must too.
    """
    try:
        return "transformer_options" in inspect.signature(dm.rope_encode).parameters
    except (TypeError, ValueError):
        return False


def _rope_fn(dm: wan_model.WanModel, options: Mapping, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's RoPE on memory ids, moved by ``rope_options`` exactly where the model moves the video's."""
    rope_options = options.get("rope_options")
    if rope_options is None or not model_reads_rope_options(dm):
        return lambda ids: dm.rope_embedder(ids.unsqueeze(0)).movedim(1, 2)
    return lambda ids: dm.rope_embedder(scale_shift_positions(ids, rope_options, dtype).unsqueeze(0)).movedim(1, 2)


def blocks_receive_options(dm: wan_model.WanModel) -> bool:
    """Whether this ComfyUI hands ``transformer_options`` to the blocks (and their attention) of ``dm``'s class.

    WanModel always does; WanModel_S2V only since ComfyUI 0.5.0: its ``block_wrap`` then reads
    ``args["transformer_options"]`` (a string constant in its code, found without running or parsing source).
    """
    if not isinstance(dm, wan_model.WanModel_S2V):
        return True
    code = type(dm).forward_orig.__code__
    wraps = [c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == "block_wrap"]
    return any("transformer_options" in c.co_consts for c in wraps)


def _weights_for(dm: wan_model.WanModel, learned: LearnedMemoryWeights | None, device: torch.device):
    derived = DerivedTokenizer(*_base_patch_weights(dm, device))

    def weights_for(kernel: Kernel) -> tuple[torch.Tensor, torch.Tensor | None]:
        loaded = learned.tokenizer(tuple(kernel)) if learned is not None else None
        return loaded if loaded is not None else derived(kernel)

    return weights_for


def _capture_qk(original_block: Callable, args: dict, x_cat: torch.Tensor, pe_cat: torch.Tensor, vec_cat: torch.Tensor):
    """The real block's self-attention q and k on [video, memory]: run it until its first attention call, then stop.

    Uses ComfyUI's ``optimized_attention_override`` hook, so the q/k are exactly the block's own (norms, RoPE included).
    """
    captured: dict[str, Any] = {}

    def capture(func, *a, **kw):
        captured["q"], captured["k"] = a[0], a[1]
        captured["heads"] = kw["heads"] if "heads" in kw else a[3]
        captured["skip_reshape"] = kw.get("skip_reshape", False)
        raise _QKCaptured

    options = {**(args.get("transformer_options") or {}), "optimized_attention_override": capture}
    try:
        original_block({**args, "img": x_cat, "pe": pe_cat, "vec": vec_cat, "transformer_options": options})
    except _QKCaptured:
        pass
    if "q" not in captured:
        raise RuntimeError(
            "memory merging needs the block's self-attention queries, but this Wan variant's blocks ignore "
            "transformer_options; set merge_mode to 'off' in Memory-V2V Apply Memory."
        )
    q, k, heads = captured["q"], captured["k"], int(captured["heads"])
    if captured["skip_reshape"]:  # [B, heads, N, d]
        return q.transpose(1, 2), k.transpose(1, 2)
    batch, tokens, width = q.shape
    return q.view(batch, tokens, heads, width // heads), k.view(batch, tokens, heads, width // heads)


@dataclass(eq=False)
class _Installed:
    """What the closures of one Apply Memory share: the processed context and its settings (never deep-copied)."""

    context: MemoryContext
    merge: MergeSettings | None
    learned: LearnedMemoryWeights | None
    observer: Observer | None
    fallback: dict = field(default_factory=dict)  # for Wan variants whose block patches get no transformer_options
    warned: set = field(default_factory=set)
    step: "_Step | None" = None  # the sampling step (one CALC_COND_BATCH call) now running, if any
    runs: list = field(default_factory=list)  # one embedding cache per sampling run in progress (innermost last)

    @property
    def memory_tokens(self) -> int:
        """Memory tokens per batch row before any merge (the most the blocks ever carry)."""
        return context_layout(self.context).num_tokens if self.context.streams else 0

    def warn_once(self, key: str, message: str, *args) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message, *args)


@dataclass(eq=False)
class _Step:
    """One CALC_COND_BATCH call (a step, or one context window of it): the merge plan of its conditional pass."""

    has_conditional: bool
    plan: tuple[tuple[int, tuple[int, ...]], ...] | None = None
    conditional_first: bool = False  # set when the calls were re-run so the conditional pass comes first


def _merge_for_call(installed: _Installed, cond_or_uncond: tuple[int, ...], batch: int) -> MergeSettings | None:
    """This call's merge settings: ranked on its conditional rows, or the plan of its step's conditional pass."""
    merge = installed.merge
    if merge is None:
        return None
    rows = rows_for_conditional(cond_or_uncond, batch)
    step = installed.step
    if rows is not None or step is None or not step.has_conditional or not cond_or_uncond:
        return dataclasses.replace(merge, plan_rows=rows)
    if step.plan is not None:
        return dataclasses.replace(merge, plan_rows=None, fixed_frames=step.plan)
    if not step.conditional_first:
        raise _ConditionalFirst
    installed.warn_once("own-plan", "Memory-V2V: an unconditional pass ran without its step's conditional pass; it "
                        "ranks memory frames on its own rows.")
    return dataclasses.replace(merge, plan_rows=None)


def _make_cond_batch(installed: _Installed, patch_size: tuple[int, ...]) -> Callable:
    """CALC_COND_BATCH wrapper: one merge plan per step, made by the conditional pass, as in a batched call.

    ComfyUI runs conditional and unconditional separately when they cannot be batched (low VRAM, unequal
    conditioning) and then the unconditional first. Its call stops at once (``_ConditionalFirst``) and the step is
    run again as two calls, conditional first; outputs go back in ComfyUI's order.
    """
    def memory_cond_batch(executor, model, conds, x_in, timestep, model_options):
        with counting_memory_tokens(model, installed.memory_tokens, patch_size):  # cond/uncond batching counts it
            return planned(executor, model, conds, x_in, timestep, model_options)

    def planned(executor, model, conds, x_in, timestep, model_options):
        if installed.merge is None or not installed.context.streams or not conds:
            return executor(model, conds, x_in, timestep, model_options)
        outer, step = installed.step, _Step(has_conditional=conds[0] is not None)
        installed.step = step
        try:
            try:
                return executor(model, conds, x_in, timestep, model_options)
            except _ConditionalFirst:
                step.conditional_first = True
                first = executor(model, [conds[0]] + [None] * (len(conds) - 1), x_in, timestep, model_options)
                rest = executor(model, [None] + list(conds[1:]), x_in, timestep, model_options)
                return [first[0], *rest[1:]]
        finally:
            installed.step = outer

    return memory_cond_batch


def _weights_key(weight: torch.Tensor) -> tuple:
    """Which patch-embedding weights these are: object, storage and, where torch keeps one, the in-place version.

    Inference tensors (ComfyUI runs nodes in inference mode) keep no version counter; weight patches land before a
    run starts, so within one run the object and storage identify them.
    """
    try:
        version = weight._version
    except RuntimeError:
        version = None
    return id(weight), weight.data_ptr(), version


def _embedded(installed: _Installed, dm: wan_model.WanModel, device: torch.device, dtype: torch.dtype) -> MemoryTokens:
    """The embedded context on ``device`` in ``dtype``: made once per sampling run (and per device / dtype / patch
    embedding weights), or per call outside a sampling run. The stream never changes these tensors in place."""
    key = (str(device), dtype, _weights_key(dm.patch_embedding.weight))
    cache = installed.runs[-1] if installed.runs else None
    if cache is not None and key in cache:
        return cache[key]
    embedded = embed_context(installed.context, _weights_for(dm, installed.learned, device), device=device,
                             dtype=dtype, grid_unit=tuple(dm.patch_size))
    if cache is not None:
        cache[key] = embedded
    return embedded


def _make_outer_sample(installed: _Installed) -> Callable:
    """OUTER_SAMPLE wrapper: one embedding cache for the whole sampling run, dropped when the run ends."""
    def memory_outer_sample(executor, *args, **kwargs):
        installed.runs.append({})
        try:
            return executor(*args, **kwargs)
        finally:
            installed.runs.pop()

    return memory_outer_sample


@contextlib.contextmanager
def sampling_run(patched: Any):
    """Treat the model calls inside as one sampling run (what the OUTER_SAMPLE wrapper does for a sampler), e.g. to
    time single model calls the way a sampler makes them."""
    wrapper = patched.wrappers.get(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, {}).get(WRAPPER_KEY, [None])[0]
    installed = getattr(wrapper, "_memv2v_installed", None)
    if installed is None:
        yield
        return
    installed.runs.append({})
    try:
        yield
    finally:
        installed.runs.pop()


def memory_tokens_estimate(base_model: Any, input_shape: Any, tokens: int, patch_size: tuple[int, ...],
                           original: Callable | None = None) -> float:
    """What ComfyUI's ``memory_required`` adds for ``tokens`` memory tokens per row: its own (linear) formula on the
    latent elements those tokens stand for, ``rows x tokens x prod(patch_size)``."""
    original = base_model.memory_required if original is None else original
    return original([int(input_shape[0]), 1, tokens * math.prod(patch_size)], {})


@contextlib.contextmanager
def counting_memory_tokens(base_model: Any, tokens: int, patch_size: tuple[int, ...]):
    """Inside, ``base_model.memory_required`` also counts ``tokens`` memory tokens per batch row.

    ComfyUI has no hook for tokens a patch adds; its own context windows change the estimate through a
    PREPARE_SAMPLING wrapper. The shadow is an instance attribute, removed again on the way out.
    """
    if tokens <= 0:
        yield
        return
    attrs = vars(base_model)
    had, previous = "memory_required" in attrs, attrs.get("memory_required")
    original = base_model.memory_required

    def memory_required(input_shape, cond_shapes={}):
        return original(input_shape, cond_shapes) + memory_tokens_estimate(base_model, input_shape, tokens,
                                                                           patch_size, original)

    base_model.memory_required = memory_required
    try:
        yield
    finally:
        if had:
            base_model.memory_required = previous
        else:
            attrs.pop("memory_required", None)


def _make_prepare_sampling(installed: _Installed, patch_size: tuple[int, ...]) -> Callable:
    """PREPARE_SAMPLING wrapper: the load-time estimate (how much of the model stays on the GPU) counts memory."""
    def memory_prepare_sampling(executor, model, noise_shape, *args, **kwargs):
        with counting_memory_tokens(model.model, installed.memory_tokens, patch_size):
            return executor(model, noise_shape, *args, **kwargs)

    return memory_prepare_sampling


def _make_wrapper(installed: _Installed) -> Callable:
    def memory_wrapper(executor, x, timestep, text, clip_fea=None, time_dim_concat=None, transformer_options=None,
                       **kwargs):
        options = transformer_options if transformer_options is not None else {}
        if not installed.context.streams:
            return executor(x, timestep, text, clip_fea, time_dim_concat, transformer_options, **kwargs)
        dm = executor.class_obj
        cond_or_uncond = tuple(options.get("cond_or_uncond") or ())
        merge = _merge_for_call(installed, cond_or_uncond, x.shape[0])  # may stop here, before any work
        frames = x.shape[2] + (0 if time_dim_concat is None else time_dim_concat.shape[2])
        if installed.context.mode != "story" and frames > installed.context.target_frames:
            installed.warn_once("frames", "Memory-V2V: the model sees %d latent frames but the memory context was made "
                                "for %d; video positions now overlap the memory's range. Set target_frames in "
                                "Dynamic Tokenize to the generated video's latent frames.", frames,
                                installed.context.target_frames)
        embedded = _embedded(installed, dm, x.device, x.dtype)
        call = MemoryCall(MemoryStreamState.from_embedded(embedded, merge), _rope_fn(dm, options, x.dtype),
                          cond_or_uncond)
        installed.fallback["call"] = call
        try:
            out = executor(x, timestep, text, clip_fea, time_dim_concat, {**options, STATE_KEY: call}, **kwargs)
        finally:
            installed.fallback.pop("call", None)
        step = installed.step
        if merge is not None and step is not None and merge.plan_rows is not None:
            step.plan = tuple((event.block_index, event.frames) for event in call.state.events)
        if call.blocks_run != len(dm.blocks):
            installed.warn_once("blocks", "Memory-V2V: the memory passed through %d of %d blocks; another node "
                                "replaced the block patches after Apply Memory. Apply Memory last to keep it "
                                "everywhere.",
                                call.blocks_run, len(dm.blocks))
        if installed.observer is not None:
            installed.observer(call)
        return out

    return memory_wrapper


def _make_block_patch(installed: _Installed, index: int, previous: Callable | None) -> Callable:
    def memory_block(args: dict, extra: dict) -> dict:
        original_block = extra["original_block"]
        inner = original_block if previous is None else (lambda a: previous(a, extra))
        options = args.get("transformer_options")
        call = options.get(STATE_KEY) if options is not None else installed.fallback.get("call")
        if call is None:
            return inner(args)
        state = call.state
        merges_before = len(state.events)
        call.blocks_run += 1

        def block_fn(img, pe, vec):
            return inner({**args, "img": img, "pe": pe, "vec": vec})["img"]

        def qk_fn(x_cat, pe_cat, vec_cat):
            return _capture_qk(original_block, args, x_cat, pe_cat, vec_cat)

        x = state.run_block(block_fn, args["img"], args["pe"], args["vec"], call.rope_fn, index, qk_fn)
        if len(state.events) > merges_before and state.responsiveness is not None:
            call.responsiveness[index] = state.responsiveness
        return {"img": x}

    setattr(memory_block, PATCH_MARK, True)
    return memory_block


def _memory_latent(base_model: Any, stream: Any, dm: wan_model.WanModel, learned: LearnedMemoryWeights | None):
    """A stream's latent in model space, zero-padded to the patch embedding's channels for derived tokenizers."""
    latent = base_model.process_latent_in(stream.latent.float())
    if learned is not None and learned.tokenizer(tuple(stream.kernel)) is not None:
        return latent
    return pad_condition_channels(latent, int(dm.patch_embedding.weight.shape[1]))


def pad_condition_channels(latent: torch.Tensor, in_dim: int) -> torch.Tensor:
    """Memory latents on a channel-concat Wan (LucyEdit 96 = 48 noisy + 48 source; Wan I2V 36 = 16 + 4 mask + 16):
    the memory fills the latent channels and its conditioning channels are zeros, which is what ComfyUI's
    ``WAN21.concat_cond`` feeds such a model when no conditioning latent is given (papers §8.3 item 16)."""
    missing = in_dim - latent.shape[1]
    if missing <= 0:
        return latent
    zeros = latent.new_zeros(latent.shape[0], missing, *latent.shape[2:])
    return torch.cat([latent, zeros], dim=1)


def apply_memory(
    model: Any,
    context: MemoryContext,
    merge: MergeSettings | None,
    learned: LearnedMemoryWeights | None = None,
    observer: Observer | None = None,
) -> Any:
    """A clone of ``model`` that carries ``context`` through every Wan block (validated first; see check_context_fits).

    Context latents are brought into the model's latent space (``process_latent_in``) once, here. Loaded weights ride
    in an additional ModelPatcher, so ComfyUI loads and offloads them with the model.
    """
    dm = wan_diffusion_model(model)
    if merge is not None and not blocks_receive_options(dm):
        raise ValueError(
            f"merge_mode ({merge.mode!r}): this ComfyUI's {type(dm).__name__} blocks get no transformer options, so "
            "memory responsiveness cannot be measured (ComfyUI 0.5.0 and later pass them on Wan S2V); set merge_mode "
            "to 'off' for this model, or update ComfyUI."
        )
    base_model = model.model
    check_context_fits(dm, base_model.latent_format, context, learned)
    processed = dataclasses.replace(
        context,
        streams=tuple(dataclasses.replace(s, latent=_memory_latent(base_model, s, dm, learned))
                      for s in context.streams),
    )
    installed = _Installed(processed, merge, learned, observer)
    patched = model.clone()
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 _make_wrapper(installed))
    patch_size = tuple(int(p) for p in dm.patch_size)
    outer_sample = _make_outer_sample(installed)
    outer_sample._memv2v_installed = installed  # for sampling_run()
    for kind, wrapper in ((comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, _make_cond_batch(installed, patch_size)),
                          (comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING,
                           _make_prepare_sampling(installed, patch_size)),
                          (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, outer_sample)):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for index in range(len(dm.blocks)):
        previous = existing.get(("double_block", index))
        if previous is not None and getattr(previous, PATCH_MARK, False):
            previous = None  # a second Apply Memory replaces the first instead of nesting inside it
        patched.set_model_patch_replace(_make_block_patch(installed, index, previous), "dit", "double_block", index)
    if learned is not None:
        patched.set_additional_models(WRAPPER_KEY, [comfy.model_patcher.ModelPatcher(
            learned, load_device=model.load_device, offload_device=model.offload_device)])
    else:
        patched.remove_additional_models(WRAPPER_KEY)
    return patched
