"""Load Modules node: the modules ReCamMaster / Memory-V2V add to the Wan DiT (camera, tokenizers, mergers)."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..memv2v_core.checkpoints import (
    CHECKPOINT_SUFFIXES, COMFY_STRIPPED_PREFIXES, ModuleReport, inspect_checkpoint, load_modules,
)
from .paths import MODELS_FOLDER
from .socket_types import Modules

CATEGORY = "MemoryV2V/sampling"
SEARCHED_FOLDERS = ("diffusion_models", MODELS_FOLDER)


def checkpoint_files() -> list[str]:
    """Checkpoint files in models/diffusion_models and models/memv2v (names as ComfyUI lists them)."""
    names: list[str] = []
    for folder in SEARCHED_FOLDERS:
        for name in folder_paths.get_filename_list(folder):
            if name.lower().endswith(CHECKPOINT_SUFFIXES) and name not in names:
                names.append(name)
    return sorted(names)


def checkpoint_path(name: str) -> str | None:
    """The file behind a listed name: diffusion_models first, then the memv2v folder."""
    for folder in SEARCHED_FOLDERS:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    return None


def dit_advice(report: ModuleReport) -> str:
    """Whether ComfyUI's own Load Diffusion Model can take the DiT from this same file, and what to do if not."""
    if not report.has_dit:
        return "DiT: not in this file; load the base Wan2.1-T2V-1.3B DiT with Load Diffusion Model."
    # comfy.utils.load_torch_file unwraps one level: a "state_dict" key, or the only key of the file
    wrapper_ok = not report.wrapper or (len(report.wrapper) == 1 and (report.wrapper == ("state_dict",)
                                                                     or report.wrapper_sole_key))
    if report.prefix in COMFY_STRIPPED_PREFIXES and wrapper_ok and not report.nested:
        return ("DiT: load this same file with Load Diffusion Model (UNETLoader); ComfyUI detects Wan 2.1 T2V and "
                "skips the camera/tokenizer/merger keys (its log lists them as 'unet unexpected'). Connect this "
                "node to Apply Memory so they are used.")
    target = os.path.splitext(os.path.basename(report.source))[0] + "_bare.safetensors"
    return (f"DiT: ComfyUI's Load Diffusion Model cannot detect this file's DiT (key prefix {report.prefix!r}"
            f"{', nested dicts' if report.nested else ''}). Convert it once, from the pack's folder: python -c "
            f"\"from memv2v_core.checkpoints import convert_to_safetensors as c; c({report.source!r}, "
            f"{os.path.join(os.path.dirname(report.source), target)!r})\", then load {target} with Load Diffusion "
            "Model and with this node.")


class LoadModules(io.ComfyNode):
    """Reads only the added modules of a ReCamMaster or Memory-V2V checkpoint and reports what it found."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_LoadModules",
            display_name="Memory-V2V Load Modules",
            category=CATEGORY,
            description=("Reads the modules ReCamMaster and Memory-V2V add to the Wan DiT: per-block camera "
                         "encoders (Linear 12->dim) and projectors (Linear dim->dim), condition tokenizers by "
                         "kernel size and token mergers, and never the DiT itself (load that with Load Diffusion "
                         "Model from the same file). Shows what it found; fails with a list of what is missing or "
                         "mismatched. .ckpt files are read only with torch.load(weights_only=True); safetensors "
                         "are preferred and read lazily."),
            inputs=[
                io.Combo.Input("checkpoint", options=checkpoint_files(),
                               tooltip="ReCamMaster's step20000.ckpt or Memory-V2V's memoryv2v.ckpt (or a "
                                       "safetensors copy) from models/diffusion_models or models/memv2v."),
                io.Boolean.Input("allow_partial", default=False,
                                 tooltip="Off: any missing or mismatched module is an error. On: load the complete "
                                         "modules only and list the rest in the report (e.g. a file with "
                                         "tokenizers but no camera modules)."),
            ],
            outputs=[
                Modules.Output(display_name="modules",
                               tooltip="Camera encoders and projectors per block, tokenizers by kernel, merge "
                                       "operator: connect to Memory-V2V Apply Memory."),
                io.String.Output(display_name="report",
                                 tooltip="What the checkpoint holds: DiT shape, camera blocks, tokenizers, mergers, "
                                         "unknown extra tensors, and anything missing."),
            ],
        )

    @classmethod
    def validate_inputs(cls, checkpoint: str):  # only the input it checks: ComfyUI repeats the message per name
        """Before the run: the file is there and readable (what is inside is checked when the node runs)."""
        if not isinstance(checkpoint, str):
            return True
        path = checkpoint_path(checkpoint)
        if path is None or not os.path.isfile(path):
            return (f"checkpoint '{checkpoint}' is not in models/diffusion_models or models/memv2v; put "
                    "ReCamMaster's step20000.ckpt (or memoryv2v.ckpt) there and refresh the page (press R).")
        if not os.access(path, os.R_OK):
            return f"checkpoint '{checkpoint}' ({path}) cannot be read; check the file's permissions."
        return True

    @classmethod
    def fingerprint_inputs(cls, checkpoint: str, allow_partial: bool):
        path = checkpoint_path(checkpoint)
        return (os.path.getmtime(path), os.path.getsize(path)) if path and os.path.isfile(path) else float("nan")

    @classmethod
    def execute(cls, checkpoint: str, allow_partial: bool) -> io.NodeOutput:
        path = checkpoint_path(checkpoint)
        if path is None:
            raise ValueError(f"checkpoint ({checkpoint!r}) is not in models/diffusion_models or models/memv2v; put "
                             "the file there and refresh the page.")
        report = inspect_checkpoint(path)  # CheckpointError (a ValueError) names the file, the problem and the fix
        modules = load_modules(path, report, allow_partial=allow_partial)
        text = modules.summary() + "\n" + dit_advice(report)
        return io.NodeOutput(modules, text, ui=ui.PreviewText(text))


NODES = [LoadModules]
