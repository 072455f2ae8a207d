"""Memory bank nodes: load (or create) a bank, add a generation to it, save a copy, and inspect it.

Glue only: names and ComfyUI types in, ``memv2v_core.bank.memory_bank`` calls, a one-line summary out.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime

import torch
from comfy_api.latest import io

from ..memv2v_core.bank.memory_bank import (BankFormatError, MemoryBank, NewerSchemaError, check_latent_format,
                                latent_format_for_channels, normalize_latent_format, read_revision, safe_bank_dir)
from ..memv2v_core.camera.trajectory import Trajectory
from ..memv2v_core.bank.contact_sheet import contact_sheet
from ..memv2v_core.bank.inputs import run_text
from ..memv2v_core.bank.provenance import run_provenance
from ..memv2v_core.retrieval.fov import fov_mask
from ..memv2v_core.segments import check_source_frames
from ..memv2v_core.story.shots import next_shot_index, story_extra
from .paths import banks_root
from .previews import latent_previews
from .socket_types import Bank, Camera, Descriptor, Selection

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/bank"
BANK_NAME_TOOLTIP = ("Name of the memory bank: a folder under ComfyUI's output/memory_banks. One bank per scene and "
                     "base-model family. Letters, digits, spaces, '-', '_' and '.'; at most 64 characters.")


def _bank_dir(name: str, input_name: str = "name"):
    try:
        return safe_bank_dir(banks_root(), name)
    except ValueError as error:
        raise ValueError(f"{input_name}: {error}") from None


def _summary(bank: MemoryBank) -> str:
    problems = len(bank.problems)
    return (f"'{bank.name}': {len(bank)} entries ({bank.latent_format or 'empty'})"
            + (f", {problems} damaged (see the log)" if problems else ""))


class BankLoad(io.ComfyNode):
    """Open a memory bank by name, creating it when missing; re-runs whenever the bank changes on disk."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_BankLoad",
            display_name="Memory-V2V Bank Load",
            category=CATEGORY,
            description="Opens the memory bank with this name (an empty one is created if it does not exist yet). "
                        "The bank keeps every generation between turns; this node runs again whenever the bank "
                        "changes on disk, so retrieval always sees the latest entries.",
            inputs=[
                io.String.Input("name", default="default", tooltip=BANK_NAME_TOOLTIP),
                io.Boolean.Input("rebuild_manifest", default=False, optional=True,
                                 tooltip="Only when the bank reports a damaged manifest: rebuild it from the entry "
                                         "files (the damaged manifest is kept beside it). Leave off otherwise."),
            ],
            outputs=[Bank.Output(display_name="bank", tooltip="The opened memory bank, for retrieval and Bank Add.")],
        )

    @classmethod
    def validate_inputs(cls, name=None):  # only the input it checks: ComfyUI repeats the message per named input
        if isinstance(name, str):  # a linked name arrives at run time and is checked then
            try:
                _bank_dir(name)
            except ValueError as error:
                return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, name=None, rebuild_manifest=None):
        if not isinstance(name, str):
            return float("nan")  # name comes from a link: always re-run
        try:
            return f"{name}:{read_revision(_bank_dir(name))}"
        except ValueError:
            return f"invalid:{name}"

    @classmethod
    def execute(cls, name: str, rebuild_manifest: bool = False) -> io.NodeOutput:
        path = _bank_dir(name)
        try:
            bank = MemoryBank.open(path, create=True)
        except NewerSchemaError as error:
            raise ValueError(f"name: bank '{name}': {error}") from None
        except OSError as error:  # e.g. the name belongs to a file, or the folder cannot be created
            raise ValueError(f"name: bank '{name}' cannot be opened or created: {error}") from None
        except BankFormatError as error:
            if not rebuild_manifest:
                raise ValueError(f"name: bank '{name}' cannot be opened: {error} To rebuild it, turn on "
                                 "'rebuild_manifest' and queue again.") from None
            logger.warning("Memory-V2V: rebuilding the manifest of bank '%s' (%s)", name, error)
            bank = MemoryBank.recover(path)
        return io.NodeOutput(bank, ui={"text": [_summary(bank)]})


def latent_format_of(samples: dict, model) -> str:
    """The latent's format: from the LATENT itself, else the model's latent_format class, else its channel count."""
    model_format = None
    if model is not None:
        latent_format = getattr(getattr(model, "model", None), "latent_format", None)
        model_format = normalize_latent_format(latent_format) if latent_format is not None else None
    given = samples.get("latent_format")
    if given is not None:
        fmt = normalize_latent_format(given)
        if model_format is not None:
            check_latent_format(fmt, model_format, "MemV2V_BankAdd (inputs samples and model)")
        return fmt
    if model_format is not None:
        return model_format
    channels = samples["samples"].shape[-4] if samples["samples"].ndim >= 4 else -1
    fmt = latent_format_for_channels(channels)
    if fmt is None:
        raise ValueError(f"samples: cannot tell the latent format of a {channels}-channel latent; connect the "
                         "'model' input so the bank can record which VAE family made it")
    return fmt


def model_identity(model) -> str | None:
    """A readable identity of the base model: its config class and size, e.g. WAN21_T2V(dim=1536, num_layers=30)."""
    if model is None:
        return None
    inner = getattr(model, "model", None)
    config = getattr(inner, "model_config", None)
    unet = getattr(config, "unet_config", None) or {}
    details = ", ".join(f"{k}={unet[k]}" for k in ("model_type", "dim", "num_layers", "in_dim") if k in unet)
    return f"{type(config or inner).__name__}({details})"


@functools.lru_cache(maxsize=1024)
def input_types(class_type: str) -> dict[str, str] | None:
    """{input name: socket type} of a registered node class (combos as "COMBO"), for the provenance walk."""
    import nodes as comfy_nodes

    node_class = comfy_nodes.NODE_CLASS_MAPPINGS.get(class_type)
    if node_class is None:
        return None
    info = node_class.INPUT_TYPES()
    types = {}
    for section in ("required", "optional"):
        for name, spec in (info.get(section) or {}).items():
            kind = spec[0] if isinstance(spec, (list, tuple)) and spec else None
            types[name] = kind if isinstance(kind, str) else "COMBO"
    return types


def as_queued(api_prompt: dict) -> dict:
    """The prompt as it was queued: ComfyUI's cache writes its own ``is_changed`` keys into the same dict while the
    prompt runs (fingerprints, possibly NaN), which are not part of the graph."""
    return {node_id: {k: v for k, v in node.items() if k != "is_changed"} if isinstance(node, dict) else node
            for node_id, node in api_prompt.items()}


@dataclass
class _Recorded:
    """What Bank Add records about the run: seed, prompt, sampler and provenance, the run itself, and a summary."""

    seed: int | None
    prompt: str
    sampler: dict
    provenance: dict | None
    run: dict | None
    lines: list


def _from_graph(bank: MemoryBank, seed: int, prompt: str, api_prompt, node_id, extra_pnginfo) -> _Recorded:
    """Seed, prompt text and sampler settings as the graph's sampler used them (the widgets override only when set:
    seed >= 0, prompt not empty), the model files, and the run (the exact API prompt and the UI workflow)."""
    given_seed = None if seed is None or seed < 0 else seed
    given_prompt = prompt if isinstance(prompt, str) and prompt.strip() else None
    if not isinstance(api_prompt, dict) or node_id is None:  # called outside a queued prompt (e.g. from Python)
        return _Recorded(given_seed, given_prompt or "", {}, None, None, [])
    node_id = str(node_id)
    api_prompt = as_queued(api_prompt)
    found = run_provenance(api_prompt, node_id, "samples", input_types)
    provenance = {"source": "graph", "node": node_id, "models": found.models}
    lines, overrides = [], {}
    for name, given, graph_value in (("seed", given_seed, found.seed), ("prompt", given_prompt, found.prompt)):
        if given is not None and graph_value is not None and given != graph_value:
            overrides[name] = graph_value
            shown = graph_value if name == "seed" else repr(graph_value[:40])
            lines.append(f"warning: the {name} widget overrides the sampler's {name} {shown}; set it to "
                         f"{'-1' if name == 'seed' else 'empty'} to record what the sampler used")
            logger.warning("Memory-V2V Bank Add #%s: %s", node_id, lines[-1])
    if overrides:
        provenance["overrides"] = overrides
    if found.notes:
        provenance["notes"] = found.notes
    stages = found.sampler.get("stages", [])
    if stages:
        last = stages[-1]
        settings = "/".join(str(last.get(k)) for k in ("sampler_name", "scheduler") if last.get(k) is not None)
        names = ", ".join(f"{stage['class_type']} #{stage['node']}" for stage in stages)
        used = given_seed if given_seed is not None else found.seed
        lines.insert(0, f"seed {used if used is not None else '(not readable)'} from {names}"
                        + (f" ({last.get('steps')} steps, {settings})" if settings else ""))
    elif found.notes:
        lines.append(f"provenance: {found.notes[-1]}")
    workflow = extra_pnginfo.get("workflow") if isinstance(extra_pnginfo, dict) else None
    full = {"prompt": api_prompt, "workflow": workflow, "node": node_id, "retrieval_ids": bank.retrieval_ids()}
    for run in (full, {**full, "workflow": None}, None):  # too large for the entry file's header: keep what fits
        try:
            run_text(run)
            break
        except ValueError as error:
            lines.append(f"warning: {error}; {'the UI workflow' if run is full else 'the run'} is not stored")
    return _Recorded(given_seed if given_seed is not None else found.seed,
                     given_prompt if given_prompt is not None else found.prompt or "",
                     found.sampler, provenance, run, lines)


class BankAdd(io.ComfyNode):
    """Store a generated latent (with its camera, prompt and provenance) in the bank; saved before it returns."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_BankAdd",
            display_name="Memory-V2V Bank Add",
            category=CATEGORY,
            description="Adds this turn's result to the memory bank: the latent, its camera trajectory and the "
                        "entries it was made from, with what really produced it, read from the queued graph: the "
                        "sampler's seed and settings, the prompt text, the model files and the whole workflow, so "
                        "the turn can be replayed. The entry is safely on disk when the node finishes. Adding the "
                        "same result twice stores it once.",
            is_output_node=True,
            hidden=[io.Hidden.prompt, io.Hidden.unique_id, io.Hidden.extra_pnginfo],
            inputs=[
                Bank.Input("bank", tooltip="The memory bank to add to (from Memory-V2V Bank Load)."),
                io.Latent.Input("samples", tooltip="The generated latent to remember (e.g. the sampler's output)."),
                Camera.Input("camera", optional=True,
                             tooltip="The camera trajectory the latent was generated with; FOV retrieval needs it."),
                io.String.Input("prompt", default="", multiline=True, optional=True,
                                tooltip="Leave empty: the prompt text the sampler was conditioned on is read from "
                                        "the graph. Text here is recorded instead (an override)."),
                io.Int.Input("segment_index", default=-1, min=-1, max=1_000_000, optional=True,
                             tooltip="For long-video editing: which source segment this is (-1: not a segment)."),
                io.String.Input("source_id", default="", optional=True,
                                tooltip="For editing: a name for the source video, so segments of different "
                                        "videos stay apart (empty: none)."),
                Selection.Input("parents", optional=True,
                                tooltip="The retrieved memories this turn was conditioned on, kept as provenance."),
                io.Model.Input("model", optional=True,
                               tooltip="The base model that made the latent: its identity and latent format are "
                                       "recorded, and a latent from a different VAE family is refused."),
                io.Image.Input("keyframes", optional=True,
                               tooltip="Optional keyframes of the result (IMAGE); kept for keyframe memory and "
                                       "shown by Bank Inspect."),
                io.Int.Input("seed", default=-1, min=-1, max=0xFFFFFFFFFFFFFFFF, optional=True,
                             tooltip="Leave at -1: the seed the sampler used is read from the graph. A value of 0 "
                                     "or more is recorded instead (an override)."),
                Descriptor.Input("descriptor", optional=True,
                                 tooltip="For long-video editing: the source segment's descriptor from Segment "
                                         "Retrieve, so later segments can find this one. It also fills "
                                         "segment_index and source_id when those are left empty."),
                io.String.Input("story_id", default="", optional=True,
                                tooltip="For multi-shot stories: the story this shot belongs to (empty: not a "
                                        "story shot). Story Memory Select, Keyframe Select and Story Previous Shot "
                                        "find the story's shots by it."),
                io.Int.Input("shot_index", default=-1, min=-1, max=100_000, optional=True,
                             tooltip="For stories: this shot's index (0 = the first shot; -1 = the next index after "
                                     "the story's last stored shot). Storing a shot index again replaces that shot "
                                     "for later shots."),
                io.Boolean.Input("cut", default=True, optional=True,
                                 tooltip="For stories: on if this shot starts fresh (a cut: conditioned on memory "
                                         "only), off if it continues the previous shot (MI2V / MM2V). Connect Story "
                                         "Conditioning's cut output."),
            ],
            outputs=[
                Bank.Output(display_name="bank", tooltip="The same bank, now holding the new entry."),
                io.String.Output(display_name="entry_id", tooltip="The id of the stored (or already present) entry."),
            ],
        )

    @classmethod
    def execute(cls, bank: MemoryBank, samples: dict, camera=None, prompt: str = "", segment_index: int = -1,
                source_id: str = "", parents=None, model=None, keyframes=None, seed: int = -1,
                descriptor=None, story_id: str = "", shot_index: int = -1, cut: bool = True) -> io.NodeOutput:
        if not isinstance(samples, dict) or not hasattr(samples.get("samples"), "shape"):
            raise ValueError("samples: expected a LATENT (a dict holding a 'samples' tensor); connect a sampler's "
                             "or VAE Encode's LATENT output")
        if samples["samples"].ndim == 5 and samples["samples"].shape[0] != 1:
            raise ValueError(f"samples: a batch of {samples['samples'].shape[0]} videos; a bank entry is one video, "
                             "so add them one at a time (e.g. Latent From Batch with length 1 per Bank Add).")
        c2w = intrinsics = mask = None
        if isinstance(camera, Trajectory):  # FOV retrieval then reads this mask and never re-projects the entry
            mask = fov_mask(camera)
        if camera is not None:
            c2w = getattr(camera, "c2w", camera)
            intrinsics = getattr(camera, "intrinsics", None)
            if intrinsics is not None and getattr(intrinsics, "ndim", 0) not in (2, 3):
                intrinsics = None  # not a [3,3] / [F,3,3] matrix (e.g. normalised numbers): the trajectory has it
        latent_format = latent_format_of(samples, model)  # its errors already name the inputs
        vector = extra = None
        if descriptor is not None:
            vector, extra = descriptor.vector, descriptor.bank_extra()  # the embedder's name and identity
            if segment_index < 0 and descriptor.segment_index is not None:
                segment_index = descriptor.segment_index
            source_id = source_id or descriptor.source_id or ""
            frames = getattr(descriptor, "source_frames", 0)
            if frames and source_id:  # the bank may have changed since Segment Retrieve checked: store nothing wrong
                bank.refresh()
                check_source_frames([e for e in (bank.entry(i) for i in bank.retrieval_ids())
                                     if e.source_id == source_id], frames, source_id)
        if isinstance(keyframes, torch.Tensor) and keyframes.ndim == 4 and keyframes.shape[0] == 0:
            keyframes = None  # Keyframe Select found none worth keeping (all near-duplicates): store the shot alone
        if story_id.strip():
            if shot_index < 0:
                shot_index = next_shot_index([bank.entry(i) for i in bank.retrieval_ids()], story_id)
            extra = {**(extra or {}), **story_extra(story_id, shot_index, cut)}
        elif shot_index >= 0:
            raise ValueError(f"story_id: empty, but shot_index is {shot_index}; give the story's id, or set "
                             "shot_index to -1 for an entry that is not a story shot.")
        hidden = getattr(cls, "hidden", None)
        recorded = _from_graph(bank, seed, prompt, getattr(hidden, "prompt", None), getattr(hidden, "unique_id", None),
                               getattr(hidden, "extra_pnginfo", None))
        before = len(bank)
        try:
            entry_id = bank.add(
                samples["samples"], latent_format=latent_format, camera=c2w, intrinsics=intrinsics,
                keyframes=keyframes, prompt=recorded.prompt, sampler=recorded.sampler,
                segment_index=None if segment_index < 0 else segment_index,
                parents=list(parents.entry_ids) if parents is not None else [], source_id=source_id or None,
                seed=recorded.seed, model=model_identity(model), descriptor=vector, extra=extra,
                fov_mask=mask, provenance=recorded.provenance, run=recorded.run)
        except ValueError as error:
            raise ValueError(f"{_input_for(str(error))}: {error}") from None
        entry = bank.entry(entry_id)
        shape = f"{entry.latent_format} {'x'.join(map(str, entry.latent_shape))}"
        if len(bank) > before:
            text = f"added {entry_id} to '{bank.name}' as turn {entry.turn} ({shape}); {len(bank)} entries"
        else:
            text = f"already in '{bank.name}' as {entry_id} (turn {entry.turn}); not stored twice"
        if story_id.strip():
            kept = entry.shapes.get("keyframes", (0,))[0]
            text += (f"\nstory '{story_id.strip()}' shot {shot_index} ({'cut' if cut else 'continues'}), "
                     f"{kept} keyframe{'s' if kept != 1 else ''}")
        if recorded.lines:
            text += "\n" + "\n".join(recorded.lines)
        return io.NodeOutput(bank, entry_id, ui={"text": [text]})


# The core names its arguments in error messages; say which node input they came from.
_INPUT_OF_FIELD = {"latent": "samples", "latent_format": "samples/model", "camera": "camera", "intrinsics": "camera",
                   "keyframes": "keyframes", "prompt": "prompt", "segment_index": "segment_index",
                   "source_id": "source_id", "parents": "parents", "seed": "seed", "model": "model",
                   "descriptor": "descriptor", "fov_mask": "camera", "extra": "story_id"}


def _input_for(message: str) -> str:
    first = message.split(" ", 1)[0].rstrip(":")
    return _INPUT_OF_FIELD.get(first, "bank")


class BankSave(io.ComfyNode):
    """Write a consistent copy of the bank under a new name (a snapshot or a backup)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_BankSave",
            display_name="Memory-V2V Bank Save",
            category=CATEGORY,
            description="Writes a consistent copy of the bank (every healthy entry, as one snapshot) to a new bank "
                        "folder, e.g. before trying something risky. The copy loads with Bank Load; nothing existing "
                        "is ever overwritten. Banks are already saved entry by entry by Bank Add.",
            is_output_node=True,
            inputs=[
                Bank.Input("bank", tooltip="The memory bank to copy."),
                io.String.Input("copy_name", default="", optional=True,
                                tooltip="Name of the new bank; empty: '<bank>-copy-<date>-<time>'. Must not exist."),
                io.Boolean.Input("include_cache", default=True, optional=True,
                                 tooltip="Also copy derived data such as cached FOV masks (recomputable)."),
            ],
            outputs=[io.String.Output(display_name="copy_name", tooltip="The name of the copy, for Bank Load.")],
        )

    @classmethod
    def execute(cls, bank: MemoryBank, copy_name: str = "", include_cache: bool = True) -> io.NodeOutput:
        name = copy_name or f"{bank.name[:43].rstrip(' .')}-copy-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        dest = _bank_dir(name, "copy_name")
        try:
            copy = bank.export(dest, include_cache=include_cache)
        except FileExistsError as error:
            raise ValueError(f"copy_name: {error}; leave it empty for an automatic name") from None
        return io.NodeOutput(name, ui={"text": [f"copied {_summary(copy)} to {dest}"]})


class BankInspect(io.ComfyNode):
    """Show what the bank holds: a contact sheet (one row per entry) and a table of every entry's record."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_BankInspect",
            display_name="Memory-V2V Bank Inspect",
            category=CATEGORY,
            description="Draws a contact sheet of the newest entries (thumbnails decoded cheaply from the latent, or "
                        "stored keyframes), numbered like the rows of the text table beside it (id, turn, camera, "
                        "parents, seed, prompt). Damaged entries are listed by file.",
            inputs=[
                Bank.Input("bank", tooltip="The memory bank to show."),
                io.Int.Input("max_entries", default=12, min=1, max=64,
                             tooltip="How many of the newest entries get a row."),
                io.Int.Input("frames", default=6, min=1, max=16, tooltip="Thumbnails per entry, spread over time."),
                io.Int.Input("thumb_height", default=60, min=16, max=256,
                             tooltip="Thumbnail height in pixels (Wan 2.1 latents of 480p video are 60 high)."),
            ],
            outputs=[
                io.Image.Output(display_name="contact_sheet", tooltip="One row of thumbnails per entry, numbered."),
                io.String.Output(display_name="table", tooltip="One line per entry; '#' matches the sheet's numbers."),
            ],
        )

    @classmethod
    def execute(cls, bank: MemoryBank, max_entries: int = 12, frames: int = 6, thumb_height: int = 60) -> io.NodeOutput:
        bank.refresh()
        bank.verify()  # reads only headers: damaged entries are listed rather than drawn
        sheet = contact_sheet(bank, latent_previews(), max_entries=max_entries, frames=frames, thumb_height=thumb_height)
        return io.NodeOutput(sheet.image, sheet.table, ui={"text": [_summary(bank)]})


NODES = [BankLoad, BankAdd, BankSave, BankInspect]
