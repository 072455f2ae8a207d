"""Node-level checks in ComfyUI's Python: Dynamic Tokenize on a real bank, and Apply Memory's refusals before sampling.

Run with cwd = the ComfyUI folder: ``python checks.py --dit tiny.safetensors --tmp DIR``; prints one JSON line.
Errors are checked in-process (not through the server) so no expected traceback lands in the server log.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _pack import bootstrap, pack


def error_of(fn) -> str | None:
    try:
        fn()
    except ValueError as error:
        return str(error)
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dit", required=True)
    parser.add_argument("--tmp", required=True)
    args = parser.parse_args()
    bootstrap(with_nodes=True)

    import torch
    import comfy.model_patcher
    import comfy.sd

    node = pack("nodes.memory_nodes")
    bank_lib = pack("memv2v_core.bank.memory_bank")
    selection_lib = pack("memv2v_core.retrieval.selection")
    context_lib = pack("memv2v_core.memory.context")

    torch.manual_seed(0)
    out: dict = {}
    bank = bank_lib.MemoryBank.open(Path(args.tmp) / "bank", create=True)
    ids = [bank.add(torch.randn(1, 16, 3, 8, 8), latent_format="wan21", camera=torch.eye(4).repeat(9, 1, 1),
                    prompt=f"turn {i}") for i in range(5)]
    reads: list[str] = []
    original_load = bank.load_latent
    bank.load_latent = lambda entry_id: reads.append(entry_id) or original_load(entry_id)
    chosen = [ids[3], ids[0], ids[4]]
    selection = selection_lib.Selection(bank, tuple(selection_lib.SelectedMemory(i, 0.9 - 0.1 * n)
                                                    for n, i in enumerate(chosen)), "nvs")
    user = {"samples": torch.randn(1, 16, 3, 8, 8)}
    result = node.DynamicTokenize.execute(mode="auto", fine_ranks=2, user_kernel="1x2x2", fine_kernel="1x4x4",
                                          coarse_kernel="1x8x8", reverse_memory=True, story_gap=5.0, target_frames=0,
                                          selection=selection, latent=user)
    context, budget = result.args
    out["reads"] = reads
    out["chosen"] = chosen
    out["roles"] = [s.role for s in context.streams]
    out["kernels"] = ["x".join(map(str, s.kernel)) for s in context.streams]
    out["temporal_ids"] = [s.temporal_ids.tolist() for s in context.streams]
    out["cameras"] = [None if s.camera is None else list(s.camera.shape) for s in context.streams]
    out["latent_format"] = context.latent_format
    out["budget"] = budget
    out["ui_text"] = (result.ui or {}).get("text") if isinstance(result.ui, dict) else None
    edit = node.DynamicTokenize.execute(mode="edit", fine_ranks=3, user_kernel="1x2x2", fine_kernel="1x4x4",
                                        coarse_kernel="1x8x8", reverse_memory=True, story_gap=5.0, target_frames=0,
                                        selection=selection, latent=user)
    edit_context = edit.args[0]
    out["edit_roles"] = [s.role for s in edit_context.streams]
    out["edit_temporal_ids"] = [s.temporal_ids.tolist() for s in edit_context.streams]
    out["edit_budget"] = edit.args[1]
    out["reads"] = list(reads)  # the two executions above; the segment checks below read their own entries

    # long-video editing on segment entries: segment 3 (= i-1 for i = 4) retrieved second, another video's segment 3
    # first; only this video's segment 3 takes the previous range, by index and source, not by rank
    seg = {(source, index): bank.add(torch.randn(1, 16, 3, 8, 8), latent_format="wan21", segment_index=index,
                                     source_id=source, prompt=f"{source} {index}")
           for source, index in (("vid", 1), ("vid", 3), ("other", 3))}
    ranked = [seg[("other", 3)], seg[("vid", 3)], seg[("vid", 1)]]
    seg_selection = selection_lib.Selection(bank, tuple(selection_lib.SelectedMemory(i, 0.9 - 0.1 * n)
                                                        for n, i in enumerate(ranked)), "edit")

    def tokenize_edit(**extra):
        result = node.DynamicTokenize.execute(mode="edit", fine_ranks=3, user_kernel="1x2x2", fine_kernel="1x4x4",
                                              coarse_kernel="1x8x8", reverse_memory=True, story_gap=5.0,
                                              target_frames=3, selection=seg_selection, **extra)
        return {"roles": [s.role for s in result.args[0].streams],
                "temporal_ids": [s.temporal_ids.tolist() for s in result.args[0].streams], "budget": result.args[1]}

    out["segment_edit"] = {"second": tokenize_edit(segment_index=4, source_id="vid"),
                           "missing": tokenize_edit(segment_index=3, source_id="vid"),
                           "unmarked": tokenize_edit()}
    out["error_nvs_without_latent"] = error_of(lambda: node.DynamicTokenize.execute(
        mode="nvs", fine_ranks=3, user_kernel="1x2x2", fine_kernel="1x4x4", coarse_kernel="1x8x8",
        reverse_memory=True, story_gap=5.0, target_frames=0, selection=selection))

    model = comfy.sd.load_diffusion_model(args.dit)
    apply = node.ApplyMemory.execute

    def ctx(channels=16, size=8, latent_format="wan21", kernel=(1, 8, 8)):
        plan = context_lib.KernelPlan(fine=kernel, coarse=kernel)
        return context_lib.build_context(torch.randn(1, channels, 3, size, size),
                                         [("m0", torch.randn(1, channels, 3, size, size), 1.0, None)], "nvs", plan,
                                         latent_format=latent_format)

    class NotWan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.diffusion_model = torch.nn.Linear(4, 4)

    not_wan = comfy.model_patcher.ModelPatcher(NotWan(), torch.device("cpu"), torch.device("cpu"))
    out["errors"] = {
        "latent_format": error_of(lambda: apply(model, ctx(48, latent_format="wan22"), "auto", 0.5, "merge")),
        "channels": error_of(lambda: apply(model, ctx(8, latent_format=None), "auto", 0.5, "merge")),
        "not_wan": error_of(lambda: apply(not_wan, ctx(), "auto", 0.5, "merge")),
        "merge_block_depth": error_of(lambda: apply(model, ctx(), "1,5", 0.5, "merge")),
        "merge_block_text": error_of(lambda: apply(model, ctx(), "ten", 0.5, "merge")),
        "kernel_too_big": error_of(lambda: apply(model, ctx(size=4), "auto", 0.5, "merge")),
        "kernel_not_multiple": error_of(lambda: apply(model, ctx(kernel=(1, 3, 3)), "auto", 0.5, "merge")),
        "modules_dim": error_of(lambda: apply(model, ctx(), "auto", 0.5, "merge",
                                              {"tokenizers": {(1, 8, 8): (torch.zeros(64, 16, 1, 8, 8), None)}})),
        "context_type": error_of(lambda: apply(model, {"samples": torch.zeros(1)}, "auto", 0.5, "merge")),
    }
    ok = apply(model, ctx(), "auto", 0.5, "merge")
    out["ok_ui_text"] = (ok.ui or {}).get("text") if isinstance(ok.ui, dict) else None
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
