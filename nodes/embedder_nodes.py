"""Segment retrieval nodes: load an image embedder, and rank earlier source segments by similarity to the current one.

The default image encoder is ComfyUI's own CLIP_VISION (DINOv2, as in the paper, from Load CLIP Vision) connected to
Segment Retrieve; Embedder Load offers open_clip files and the colour-histogram fallback. Glue only: ComfyUI types
in, ``memv2v_core.retrieval.embedders`` / ``memv2v_core.retrieval.descriptors`` do the work.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import folder_paths
from comfy_api.latest import io

from ..memv2v_core.retrieval.descriptors import DEFAULT_TOP_K, describe_segment, format_segment_scores, select_segments
from ..memv2v_core.retrieval.embedders import (DEFAULT_BATCH, ColorHistogramEmbedder, EncodeImageEmbedder,
                                               load_open_clip, open_clip_architectures)
from ..memv2v_core.segments import check_source_frames
from . import socket_types
from .paths import MODELS_FOLDER
from .socket_types import Bank, Embedder, Selection

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/retrieval"
FALLBACK = "(fallback) colour histogram - no weights, not an image encoder"
LEGACY_BUILTIN = "(built-in colour histogram, no weights)"  # the fallback's name in workflows saved before
DEFAULT_ARCHITECTURE = "ViT-B-32"
Descriptor = socket_types.Descriptor  # what Bank Add stores with an edited segment


@functools.lru_cache(maxsize=1)
def _architectures() -> tuple[str, ...]:
    """open_clip architectures buildable without downloads (open_clip is imported once, on first use)."""
    try:
        names = open_clip_architectures(local_only=True)
    except ImportError as error:
        logger.warning("Memory-V2V: open_clip is unavailable (%s); Embedder Load offers only the built-in embedder",
                       error)
        return (DEFAULT_ARCHITECTURE,)
    return tuple(names) or (DEFAULT_ARCHITECTURE,)


def _weight_files() -> list[str]:
    return [FALLBACK] + list(folder_paths.get_filename_list(MODELS_FOLDER))


def _models_dirs() -> list[str]:
    return [os.path.abspath(p) for p in folder_paths.get_folder_paths(MODELS_FOLDER)]


class EmbedderLoad(io.ComfyNode):
    """Load an open_clip image encoder from a local weights file (never downloaded), or the colour-histogram
    fallback, for segment retrieval. DINOv2 comes from ComfyUI's Load CLIP Vision instead."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        architectures = list(_architectures())
        return io.Schema(
            node_id="MemV2V_EmbedderLoad",
            display_name="Memory-V2V Embedder Load",
            category=CATEGORY,
            description="Loads an open_clip image encoder from a weights file in models/memv2v (nothing is "
                        "downloaded) to describe video segments for Segment Retrieve. For DINOv2 (as in the paper, "
                        "and the shipped workflow's default), use ComfyUI's Load CLIP Vision and connect it to "
                        "Segment Retrieve's clip_vision input instead. The '(fallback) colour histogram' entry needs "
                        "no file but is not an image encoder: it only compares colours and layout.",
            inputs=[
                io.Combo.Input("file", options=_weight_files(), default=FALLBACK,
                               tooltip="The open_clip weights file (e.g. open_clip_pytorch_model.bin or "
                                       ".safetensors from the model's page), placed in ComfyUI's models/memv2v "
                                       "folder. The first entry is the colour-histogram fallback: no file, colours "
                                       "and layout only."),
                io.Combo.Input("architecture", options=architectures,
                               default=DEFAULT_ARCHITECTURE if DEFAULT_ARCHITECTURE in architectures else None,
                               tooltip="The open_clip architecture the file was trained with (its model page names "
                                       "it, e.g. ViT-B-32, ViT-L-14). Ignored for the fallback."),
                io.Int.Input("batch_size", default=DEFAULT_BATCH, min=1, max=256, optional=True,
                             tooltip="Frames embedded at once; lower it if the GPU runs out of memory."),
            ],
            outputs=[Embedder.Output(display_name="embedder",
                                     tooltip="The image embedder, for Segment Retrieve's embedder input.")],
        )

    @classmethod
    def validate_inputs(cls, file: str) -> bool | str:
        # Naming ``file`` here replaces ComfyUI's list check for it, so workflows saved with the fallback's old
        # name still validate.
        if not isinstance(file, str) or file in (FALLBACK, LEGACY_BUILTIN):
            return True
        path = folder_paths.get_full_path(MODELS_FOLDER, file) if file in _weight_files() else None
        if path is None or not os.path.isfile(path):
            return (f"file: '{file}' is not in {' or '.join(_models_dirs())}. Put the open_clip weights file there "
                    f"and refresh the node list (press R), or choose '{FALLBACK}'.")
        if not os.access(path, os.R_OK):
            return f"file: '{file}' ({path}) cannot be read; check the file's permissions."
        return True

    @classmethod
    def execute(cls, file: str, architecture: str, batch_size: int = DEFAULT_BATCH) -> io.NodeOutput:
        if file in (FALLBACK, LEGACY_BUILTIN):
            embedder = ColorHistogramEmbedder()
            return io.NodeOutput(embedder, ui={"text": [f"{embedder.name}: {embedder.dim} values per frame; a "
                                                        "fallback, not an image encoder (colours and layout only)"]})
        path = folder_paths.get_full_path(MODELS_FOLDER, file)
        if path is None or not os.path.isfile(path):
            raise ValueError(f"file: '{file}' was not found in {' or '.join(_models_dirs())}. Put the open_clip "
                             "weights file there and refresh the node list (press R).")
        import comfy.model_management as mm

        try:
            embedder = load_open_clip(architecture, path, device=mm.get_torch_device(),
                                      offload_device=mm.text_encoder_offload_device(), batch_size=batch_size)
        except ValueError as error:
            raise ValueError(f"architecture / file: {error}") from None
        return io.NodeOutput(embedder, ui={"text": [f"{embedder.name} ({architecture}, input "
                                                    f"{embedder.image_size[0]}x{embedder.image_size[1]})"]})


class SegmentRetrieve(io.ComfyNode):
    """Memory-V2V retrieval for long-video editing: the previous segment first, then the most similar earlier ones."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_SegmentRetrieve",
            display_name="Memory-V2V Segment Retrieve",
            category=CATEGORY,
            description="Describes the current source segment (mean of its frames' normalised image embeddings) and "
                        "ranks the earlier segments of the same video stored in the bank by cosine similarity. The "
                        "immediately previous segment always comes first, then the most similar, up to top_k. "
                        "Outputs the selection for Dynamic Tokenize and the descriptor for Bank Add, which records "
                        "the encoder's identity with it: segments described by another encoder are refused, even "
                        "when the sizes agree.",
            inputs=[
                Bank.Input("bank", tooltip="The memory bank holding this video's edited segments."),
                io.Image.Input("segment", tooltip="The current source segment (Split Segments' segment output), "
                                                  "unedited: retrieval compares source segments."),
                io.Int.Input("segment_index", default=0, min=0, max=100_000,
                             tooltip="The current segment's index: connect Split Segments' index output."),
                io.String.Input("source_id", default="",
                                tooltip="The source video's id: connect Split Segments' source_id output. Only this "
                                        "video's segments are retrieved."),
                io.Int.Input("top_k", default=DEFAULT_TOP_K, min=0, max=64,
                             tooltip="How many earlier segments to retrieve, the previous one included (4 by "
                                     "default). 0 = memory off: nothing is retrieved."),
                io.Boolean.Input("recent_first", default=True,
                                 tooltip="Always put the immediately previous segment first (as the paper does): it "
                                         "keeps the seam between segments coherent."),
                Embedder.Input("embedder", optional=True,
                               tooltip="An image embedder from Embedder Load (open_clip, or the colour-histogram "
                                       "fallback), instead of clip_vision. Connect exactly one of the two."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="The default: a ComfyUI Load CLIP Vision model, DINOv2 large or giant as "
                                            "in the paper (CLIP and SigLIP work too). Every later segment must use "
                                            "the same file: the bank records which encoder made each descriptor."),
                io.Int.Input("source_frames", default=0, min=0, max=10_000_000, optional=True,
                             tooltip="The whole source video's frame count: connect Split Segments' frames output. "
                                     "Recorded with the segment (through the descriptor), so a source trimmed or "
                                     "re-cut since earlier segments were stored is refused before sampling. "
                                     "0: not checked."),
            ],
            outputs=[
                Selection.Output(display_name="selection",
                                 tooltip="The retrieved segments, previous first, for Dynamic Tokenize."),
                Descriptor.Output(display_name="descriptor",
                                  tooltip="The current segment's descriptor, for Bank Add, so later segments can "
                                          "retrieve this one."),
                io.String.Output(display_name="scores",
                                 tooltip="Every earlier segment's cosine similarity and rank as a text table."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.dynprompt],
        )

    @classmethod
    def execute(cls, bank, segment, segment_index: int, source_id: str, top_k: int, recent_first: bool,
                embedder=None, clip_vision=None, source_frames: int = 0) -> io.NodeOutput:
        if source_frames > 0:  # before any work: a changed source would put this segment on the wrong frames
            bank.refresh()
            check_source_frames([e for e in (bank.entry(i) for i in bank.retrieval_ids()) if e.source_id == source_id],
                                source_frames, source_id)
        file = clip_vision_file(cls.hidden.dynprompt, cls.hidden.unique_id) if clip_vision is not None else ""
        embedder, source = segment_embedder(embedder, clip_vision, file)
        result, descriptor, table = retrieve_segment(bank, segment, segment_index, source_id, top_k, recent_first,
                                                     embedder, source)
        if source_frames > 0:
            descriptor = dataclasses.replace(descriptor, source_frames=source_frames)
        return io.NodeOutput(result.selection, descriptor, table, ui={"text": [table]})


def clip_vision_file(graph, node_id, input_name: str = "clip_vision") -> str:
    """The file the loader feeding ``input_name`` names (its clip_name), for the embedder's name: CLIP_VISION itself
    does not know its file. Shown and stored, never compared (the identity hashes the weights instead)."""
    if graph is None or node_id is None or not graph.has_node(node_id):
        return ""
    link = graph.get_node(node_id).get("inputs", {}).get(input_name)
    if not isinstance(link, list) or not link or not graph.has_node(link[0]):
        return ""
    name = graph.get_node(link[0]).get("inputs", {}).get("clip_name")
    return os.path.basename(name) if isinstance(name, str) else ""


def segment_embedder(embedder=None, clip_vision=None, clip_file: str = ""):
    """(the embedder, the input it came through), refusing both or neither connected."""
    if embedder is not None and clip_vision is not None:
        raise ValueError("embedder / clip_vision: both are connected; connect only the one the bank's segments "
                         "were described with")
    if embedder is None and clip_vision is None:
        raise ValueError("embedder / clip_vision: neither is connected. Connect ComfyUI's Load CLIP Vision with "
                         "a DINOv2 file (models/clip_vision) to clip_vision, or Memory-V2V Embedder Load to "
                         f"embedder (its '{FALLBACK}' entry needs no file).")
    if clip_vision is not None:
        return EncodeImageEmbedder(clip_vision, file=clip_file), "clip_vision"
    return embedder, "embedder"


def retrieve_segment(bank, segment, segment_index: int, source_id: str, top_k: int, recent_first: bool,
                     embedder, source: str = "embedder", candidates=None):
    """Segment Retrieve's work (also the long-edit loop's): (retrieval result, descriptor, score table);
    ``source`` names the input the embedder came through, for errors; ``candidates`` as in ``select_segments``."""
    try:
        descriptor = describe_segment(embedder, segment, segment_index, source_id or None)
    except ValueError as error:
        raise ValueError(f"segment: {error}") from None
    try:
        result = select_segments(bank, source_id, segment_index, descriptor, top_k, recent_first,
                                 candidates=candidates)
    except ValueError as error:  # the core names its "embedder"; say which input it came through
        message = str(error)
        raise ValueError(f"{source}:{message[len('embedder:'):]}" if message.startswith("embedder:")
                         else message) from None
    table = format_segment_scores(result)
    if top_k == 0:
        table = "top_k = 0: memory off (nothing retrieved)\n" + table
    table += (f"\nembedder: {descriptor.embedder}, {descriptor.dim} values "
              f"[{descriptor.embedder_id or 'no identity'}]")
    return result, descriptor, table


NODES = [EmbedderLoad, SegmentRetrieve]
