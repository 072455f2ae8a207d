"""Source conditioning for Wan video-to-video editing models (LucyEdit and any channel-concatenating Wan V2V model).

LucyEdit is a Wan 2.2 TI2V-5B DiT whose patch embedding takes 96 channels: 48 of the noisy latent and 48 of the
VAE-encoded source video. ComfyUI loads such a file natively (UNETLoader: out_dim 48 -> WAN22_T2V -> model_base.WAN22)
and its ``WAN21.concat_cond`` already appends a conditioning latent given as ``concat_latent_image`` when the patch
embedding has more input channels than the noise, exactly as its own Wan image-to-video nodes do. This node only puts
the source latent there (on positive AND negative, so guidance contrasts the text alone) and makes the matching empty
latent, so no model function wrapper is needed and other packs' patches stay free. Memory segments enter separately,
as memory tokens (Dynamic Tokenize mode edit -> Apply Memory).
"""

from __future__ import annotations

import logging

import torch
import node_helpers
from comfy_api.latest import io

from ..memv2v_core.segments import check_segment_length

logger = logging.getLogger(__name__)

CATEGORY = "MemoryV2V/segments"


def concat_channels(model) -> tuple[int, int] | None:
    """(patch-embedding input channels, latent channels) of a Wan model, or None when it is not a Wan DiT."""
    base = getattr(model, "model", None)
    dm = getattr(base, "diffusion_model", None)
    patch = getattr(dm, "patch_embedding", None)
    latent_format = getattr(base, "latent_format", None)
    if patch is None or latent_format is None:
        return None
    return int(patch.weight.shape[1]), int(latent_format.latent_channels)


def check_model_takes_source(model, source_channels: int) -> None:
    """Refuse a model whose patch embedding has no room for a ``source_channels``-channel source latent."""
    channels = concat_channels(model)
    if channels is None:
        raise ValueError(f"model: a {type(getattr(model, 'model', model)).__name__} is not a Wan DiT; connect a Wan "
                         "video-to-video model such as LucyEdit (Load Diffusion Model), or leave 'model' open.")
    in_dim, latent_channels = channels
    extra = in_dim - latent_channels
    if extra != source_channels:
        kind = "takes no conditioning channels (a text/image-to-video model)" if extra == 0 else \
            f"takes {extra} conditioning channels"
        raise ValueError(f"model: its patch embedding has {in_dim} input channels for {latent_channels}-channel "
                         f"latents, so it {kind}, but the source latent has {source_channels}. Load a Wan V2V model "
                         f"with {latent_channels + source_channels} input channels (LucyEdit: 96 = 48 noisy + 48 "
                         "source) and encode the source with that model's VAE (Wan 2.2 VAE for LucyEdit).")


def encode_source(vae, frames: torch.Tensor) -> torch.Tensor:
    """VAE-encode a source segment [F, H, W, C] to [1, C_latent, T, h, w], refusing sizes the VAE cannot take."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[0] == 0:
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"source is {shape}; connect an IMAGE batch of video frames (Split Segments' segment).")
    stride = vae.temporal_compression_decode() or 1  # frames per latent frame (4 for Wan's VAEs)
    try:
        check_segment_length(int(frames.shape[0]), stride)
    except ValueError as error:
        raise ValueError(f"source: {frames.shape[0]} frames: {error}") from None
    spatial = vae.spacial_compression_encode()
    height, width = int(frames.shape[1]), int(frames.shape[2])
    if height % spatial or width % spatial:
        fit = lambda v: max(spatial, v // spatial * spatial)  # noqa: E731
        raise ValueError(f"source: {width}x{height} pixels is not a multiple of this VAE's {spatial}-pixel cells; "
                         f"resize the video to e.g. {fit(width)}x{fit(height)} before Split Segments.")
    latent = vae.encode(frames[..., :3])
    if latent.ndim != 5:
        raise ValueError(f"vae: encoded the source to shape {list(latent.shape)}, not a video latent; connect a "
                         "video VAE (the Wan 2.2 VAE for LucyEdit).")
    return latent


def source_conditioning(positive, negative, latent: torch.Tensor) -> tuple[list, list]:
    """Positive and negative with the source latent to concatenate (on both, so guidance contrasts the text alone)."""
    return (node_helpers.conditioning_set_values(positive, {"concat_latent_image": latent}),
            node_helpers.conditioning_set_values(negative, {"concat_latent_image": latent}))


class EditConditioning(io.ComfyNode):
    """LucyEdit / Wan V2V: the source segment enters by channel concatenation, the ComfyUI-native way."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_EditConditioning",
            display_name="Memory-V2V Edit Conditioning",
            category=CATEGORY,
            description="Conditions a channel-concatenating Wan video-to-video model (LucyEdit: 96 input channels = "
                        "48 noisy + 48 source) on the source segment: VAE-encodes it and sets it as the "
                        "concatenated latent of both positive and negative, as ComfyUI's own Wan nodes do. Outputs "
                        "the empty latent of the same size for the sampler. Earlier edited segments enter "
                        "separately as memory (Dynamic Tokenize mode edit -> Apply Memory).",
            inputs=[
                io.Conditioning.Input("positive", tooltip="The edit instruction's conditioning (CLIP Text Encode)."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning."),
                io.Vae.Input("vae", optional=True,
                             tooltip="The model's VAE (Wan 2.2 VAE for LucyEdit), to encode 'source'."),
                io.Image.Input("source", optional=True,
                               tooltip="The source segment to edit (Split Segments' segment): 4k+1 frames, sides a "
                                       "multiple of 16 pixels for the Wan 2.2 VAE. Connect this with 'vae', or "
                                       "connect 'source_latent'."),
                io.Latent.Input("source_latent", optional=True,
                                tooltip="The already encoded source segment, instead of 'source' + 'vae'."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: the editing model, only to check before sampling that its patch "
                                       "embedding takes the source's channels (a plain T2V/TI2V model would "
                                       "ignore them)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the source."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the source."),
                io.Latent.Output(display_name="latent",
                                 tooltip="An empty latent of the source's shape: the sampler's latent_image."),
                io.Latent.Output(display_name="source_latent", tooltip="The encoded source segment."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae=None, source=None, source_latent=None, model=None) -> io.NodeOutput:
        if source_latent is not None and source is not None:
            raise ValueError("source / source_latent: both are connected; connect only one of them.")
        if source_latent is not None:
            latent = source_latent.get("samples") if isinstance(source_latent, dict) else None
            if not isinstance(latent, torch.Tensor) or latent.ndim != 5:
                shape = list(latent.shape) if isinstance(latent, torch.Tensor) else None
                raise ValueError(f"source_latent has shape {shape}; connect a video latent [B, C, T, H, W] "
                                 "(VAE Encode of the source segment).")
        elif source is not None:
            if vae is None:
                raise ValueError("vae: 'source' is connected but 'vae' is not; connect the model's VAE (Wan 2.2 VAE "
                                 "for LucyEdit) to encode it.")
            latent = encode_source(vae, source)
        else:
            raise ValueError("source / source_latent: neither is connected; connect the source segment (with 'vae') "
                             "or its latent.")
        if model is not None:
            check_model_takes_source(model, int(latent.shape[1]))
        positive, negative = source_conditioning(positive, negative, latent)
        empty = {"samples": torch.zeros_like(latent)}
        text = f"source latent {'x'.join(map(str, latent.shape))} concatenated on channels"
        return io.NodeOutput(positive, negative, empty, {"samples": latent}, ui={"text": [text]})


NODES = [EditConditioning]
