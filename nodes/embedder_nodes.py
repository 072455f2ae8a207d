"""Segment retrieval nodes: load an image embedder, and rank earlier source segments by similarity to the current one.

Glue only: ComfyUI types in, ``memv2v_core.retrieval.embedders`` / ``memv2v_core.retrieval.descriptors`` do the work.
"""

from __future__ import annotations

import functools
import logging
import os

import folder_paths
from comfy_api.latest import io

from ..memv2v_core.retrieval.descriptors import DEFAULT_TOP_K, describe_segment, format_segment_scores, select_segments
from ..memv2v_core.retrieval.embedders import (DEFAULT_BATCH, ColorHistogramEmbedder, EncodeImageEmbedder, load_open_clip,
                                     open_clip_architectures)
from . import socket_types
from .paths import MODELS_FOLDER
from .socket_types import Bank, Embedder, Selection

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/retrieval"
BUILTIN = "(built-in colour histogram, no weights)"
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
    return [BUILTIN] + list(folder_paths.get_filename_list(MODELS_FOLDER))


def _models_dirs() -> list[str]:
    return [os.path.abspath(p) for p in folder_paths.get_folder_paths(MODELS_FOLDER)]


class EmbedderLoad(io.ComfyNode):
    """Load an open_clip image encoder from a local weights file (never downloaded) for segment retrieval."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        architectures = list(_architectures())
        return io.Schema(
            node_id="MemV2V_EmbedderLoad",
            display_name="Memory-V2V Embedder Load",
            category=CATEGORY,
            description="Loads an open_clip image encoder from a weights file in models/memv2v (nothing is "
                        "downloaded) to describe video segments for Segment Retrieve. The built-in colour histogram "
                        "needs no file but only compares colours and layout. For DINOv2 (as in the paper), load it "
                        "with ComfyUI's Load CLIP Vision and connect it to Segment Retrieve's clip_vision input.",
            inputs=[
                io.Combo.Input("file", options=_weight_files(), default=BUILTIN,
                               tooltip="The open_clip weights file (e.g. open_clip_pytorch_model.bin or "
                                       ".safetensors from the model's page), placed in ComfyUI's models/memv2v "
                                       "folder. The first entry needs no file."),
                io.Combo.Input("architecture", options=architectures,
                               default=DEFAULT_ARCHITECTURE if DEFAULT_ARCHITECTURE in architectures else None,
                               tooltip="The open_clip architecture the file was trained with (its model page names "
                                       "it, e.g. ViT-B-32, ViT-L-14). Ignored for the built-in embedder."),
                io.Int.Input("batch_size", default=DEFAULT_BATCH, min=1, max=256, optional=True,
                             tooltip="Frames embedded at once; lower it if the GPU runs out of memory."),
            ],
            outputs=[Embedder.Output(display_name="embedder",
                                     tooltip="The image embedder, for Segment Retrieve's embedder input.")],
        )

    @classmethod
    def execute(cls, file: str, architecture: str, batch_size: int = DEFAULT_BATCH) -> io.NodeOutput:
        if file == BUILTIN:
            embedder = ColorHistogramEmbedder()
            return io.NodeOutput(embedder, ui={"text": [f"{embedder.name}: {embedder.dim} values per frame"]})
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
                        "Outputs the selection for Dynamic Tokenize and the descriptor for Bank Add.",
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
                                     "default)."),
                io.Boolean.Input("recent_first", default=True,
                                 tooltip="Always put the immediately previous segment first (as the paper does): it "
                                         "keeps the seam between segments coherent."),
                Embedder.Input("embedder", optional=True,
                               tooltip="An image embedder from Embedder Load. Leave open to use clip_vision, or "
                                       "neither for the built-in colour histogram."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="A ComfyUI CLIP Vision model (CLIP, SigLIP, or DINOv2 large / giant, as in "
                                            "the paper) instead of 'embedder'."),
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
        )

    @classmethod
    def execute(cls, bank, segment, segment_index: int, source_id: str, top_k: int, recent_first: bool,
                embedder=None, clip_vision=None) -> io.NodeOutput:
        if embedder is not None and clip_vision is not None:
            raise ValueError("embedder / clip_vision: both are connected; connect only the one the bank's segments "
                             "were described with")
        fallback = embedder is None and clip_vision is None
        if clip_vision is not None:
            embedder = EncodeImageEmbedder(clip_vision, name=f"clip_vision:{type(clip_vision.model).__name__}"
                                           if hasattr(clip_vision, "model") else "clip_vision")
        elif fallback:
            embedder = ColorHistogramEmbedder()
        try:
            descriptor = describe_segment(embedder, segment, segment_index, source_id or None)
        except ValueError as error:
            raise ValueError(f"segment: {error}") from None
        result = select_segments(bank, source_id, segment_index, descriptor, top_k, recent_first)
        table = format_segment_scores(result)
        if fallback:
            table += "\nnote: no embedder connected; using the built-in colour histogram (colours and layout only)"
        return io.NodeOutput(result.selection, descriptor, table, ui={"text": [table]})


NODES = [EmbedderLoad, SegmentRetrieve]
