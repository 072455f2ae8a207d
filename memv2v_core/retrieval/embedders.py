"""Per-frame image embedders for segment retrieval: any ``encode_image`` encoder (ComfyUI's CLIP_VISION, which
includes DINOv2, the paper's choice), open_clip from a local file, and a colour-histogram fallback that needs no
weights.

All share one protocol, ``embed_frames(frames [N, H, W, 3] float 0..1) -> [N, D]``: frames are processed in
batches, resized to the model's input size, and returned as float32 on the CPU. Each embedder also states its
``identity`` (``EmbedderIdentity``): descriptors are comparable only when their embedders' identities agree, since
two encoders with the same output size still describe images in unrelated spaces.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_BATCH = 16
FINGERPRINT_SAMPLES = 64  # values per weight tensor that enter the weights fingerprint


@dataclass(frozen=True)
class EmbedderIdentity:
    """What an embedder is, so descriptors of different embedders are never compared.

    ``kind`` and ``architecture`` name the model family and its preprocessing; ``layout`` hashes the parameter
    names and shapes (and the preprocessing numbers), ``weights`` a fixed sample of the weights rounded to float16,
    so the same file gives the same identity on a CPU (float32) and a GPU (float16) but a fine-tune or another
    seed does not. ``file`` is the weights file where the loader knows it: shown, not compared (a renamed copy is
    the same embedder). Weight-free embedders leave ``layout`` and ``weights`` empty.
    """

    kind: str
    architecture: str
    layout: str = ""
    weights: str = ""
    file: str = ""

    @property
    def key(self) -> str:
        """The string stored with each descriptor; two descriptors are comparable only when their keys are equal."""
        parts = [self.kind, self.architecture]
        parts += [f"layout={self.layout}"] if self.layout else []
        parts += [f"weights={self.weights}"] if self.weights else []
        return "|".join(parts)


def weights_fingerprint(state: Mapping[str, Any], extra: str = "") -> tuple[str, str]:
    """(layout, weights): 12-hex-digit hashes of a state dict's names and shapes (plus ``extra``, e.g. the
    preprocessing), and of ``FINGERPRINT_SAMPLES`` evenly spaced values per tensor cast to float16.

    Casting to float16 is one rounding from float32 and exact from float16 or bfloat16 weights, so the hash does not
    depend on the precision ComfyUI loaded the file in (float16 on GPUs, float32 with --fp32-text-enc).
    """
    layout, weights = hashlib.sha256(extra.encode()), hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        layout.update(f"{name}|{list(tensor.shape)}\n".encode())
        flat = tensor.detach().reshape(-1)
        count = min(FINGERPRINT_SAMPLES, flat.numel())
        if count == 0 or flat.device.type == "meta":
            continue
        index = torch.arange(count, dtype=torch.int64) * (flat.numel() - 1) // max(count - 1, 1)  # exact integers
        sample = flat[index.to(flat.device)].to("cpu", torch.float16)
        weights.update(name.encode() + b"\n" + sample.numpy().tobytes())
    return layout.hexdigest()[:12], weights.hexdigest()[:12]


@runtime_checkable
class FrameEmbedder(Protocol):
    """What segment retrieval needs from an image encoder. Optional: ``identity`` (an ``EmbedderIdentity``);
    descriptors of an embedder without one are compared with stored ones by size only."""

    name: str

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """[N, H, W, 3] float images in 0..1 -> [N, D] float32 embeddings."""


def check_frames(frames: Any, name: str = "frames") -> torch.Tensor:
    """Accept an IMAGE batch [N, H, W, 3] (a single [H, W, 3] frame too); refuse anything else by name."""
    if isinstance(frames, torch.Tensor) and frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"{name} is {shape}; expected RGB images [frames, height, width, 3] with values in 0..1 "
                         "(a ComfyUI IMAGE with at least one frame)")
    return frames if frames.is_floating_point() else frames.float() / 255.0


def resize_and_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, h, w]: scale so the image covers ``size``, then centre-crop (CLIP preprocessing)."""
    target_h, target_w = size
    height, width = images.shape[-2:]
    scale = max(target_h / height, target_w / width)
    new_h, new_w = max(target_h, round(height * scale)), max(target_w, round(width * scale))
    if (new_h, new_w) != (height, width):
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - target_h) // 2, (new_w - target_w) // 2
    return images[..., top:top + target_h, left:left + target_w].clamp(0.0, 1.0)


class BatchedEmbedder:
    """Runs ``_embed_batch`` over the frames ``batch_size`` at a time; subclasses embed one batch."""

    name = "embedder"

    def __init__(self, batch_size: int = DEFAULT_BATCH):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be 1 or more")
        self.batch_size = batch_size

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        frames = check_frames(frames)
        outputs = []
        with torch.inference_mode():
            for begin in range(0, frames.shape[0], self.batch_size):
                batch = self._embed_batch(frames[begin:begin + self.batch_size])
                outputs.append(batch.detach().float().reshape(batch.shape[0], -1).cpu())
        return torch.cat(outputs)

    def _embed_batch(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ColorHistogramEmbedder(BatchedEmbedder):
    """The fallback: deterministic, weight-free frame features (a joint RGB histogram plus a thumbnail centred per
    channel), labelled as a fallback in its name and identity.

    Good enough to tell scenes apart by colour and layout (tests, and a zero-download fallback); it knows nothing
    about content, so use a DINOv2 (ComfyUI CLIP Vision) or open_clip model for real retrieval.
    """

    ALGORITHM = "v1"  # bump if the features change: old descriptors then no longer compare with new ones

    def __init__(self, bins: int = 8, thumbnail: int = 8, work_size: int = 64, batch_size: int = 64):
        super().__init__(batch_size)
        if bins < 2 or thumbnail < 1 or work_size < thumbnail:
            raise ValueError(f"bins={bins}, thumbnail={thumbnail}, work_size={work_size}: need bins >= 2 and "
                             "1 <= thumbnail <= work_size")
        self.bins, self.thumbnail, self.work_size = bins, thumbnail, work_size
        self.name = f"fallback:colour-histogram(bins={bins}, thumbnail={thumbnail})"
        self.identity = EmbedderIdentity("fallback-colour-histogram",
                                         f"{self.ALGORITHM}(bins={bins},thumbnail={thumbnail},work_size={work_size})")

    @property
    def dim(self) -> int:
        return self.bins ** 3 + 3 * self.thumbnail ** 2

    def _embed_batch(self, frames: torch.Tensor) -> torch.Tensor:
        chw = frames.float().permute(0, 3, 1, 2).clamp(0.0, 1.0)
        small = F.interpolate(chw, size=(self.work_size, self.work_size), mode="area")  # resolution-independent
        levels = (small * self.bins).long().clamp(max=self.bins - 1)
        codes = (levels[:, 0] * self.bins + levels[:, 1]) * self.bins + levels[:, 2]
        cells = self.bins ** 3
        offsets = torch.arange(codes.shape[0], device=codes.device).view(-1, 1) * cells  # one histogram per frame
        histogram = torch.bincount((codes.flatten(1) + offsets).flatten(), minlength=codes.shape[0] * cells)
        histogram = histogram.view(codes.shape[0], cells).float()
        thumb = F.adaptive_avg_pool2d(small, self.thumbnail)
        thumb = (thumb - thumb.mean((2, 3), keepdim=True)).flatten(1)  # layout only: the histogram has the colours
        halves = (F.normalize(histogram, dim=1), F.normalize(thumb, dim=1))
        return F.normalize(torch.cat(halves, dim=1), dim=1)  # equal halves; a flat frame has no layout half


class EncodeImageEmbedder(BatchedEmbedder):
    """Wraps an encoder with ``encode_image(images [B, H, W, 3]) -> {"image_embeds": [B, D]}`` (ComfyUI's
    CLIP_VISION: CLIP, SigLIP, DINOv2); the encoder does its own resizing and normalisation.

    Its identity comes from the encoder: the model class, the input size and normalisation, and the fingerprint of
    its weights (``encoder.get_sd()`` or ``encoder.model.state_dict()``); ``file`` names the weights file if known.
    """

    def __init__(self, encoder: Any, name: str | None = None, key: str = "image_embeds",
                 batch_size: int = DEFAULT_BATCH, file: str = ""):
        super().__init__(batch_size)
        if not callable(getattr(encoder, "encode_image", None)):
            raise ValueError(f"clip_vision: {type(encoder).__name__} has no encode_image(); connect a CLIP Vision "
                             "loader's output")
        self.encoder, self.key, self.file = encoder, key, file
        self.name = name or f"clip_vision:{_model_class(encoder)}" + (f":{file}" if file else "")
        self._identity: EmbedderIdentity | None = None

    @property
    def identity(self) -> EmbedderIdentity:
        if self._identity is None:  # computed once: it reads a sample of every weight tensor
            self._identity = encoder_identity(self.encoder, "clip_vision", self.file)
        return self._identity

    def _embed_batch(self, frames: torch.Tensor) -> torch.Tensor:
        output = self.encoder.encode_image(frames)
        embeds = output[self.key] if not isinstance(output, torch.Tensor) else output
        if embeds is None:
            raise ValueError(f"clip_vision: the encoder returned no '{self.key}'; use a CLIP, SigLIP or DINOv2 vision "
                             "model")
        return embeds


def _model_class(encoder: Any) -> str:
    model = getattr(encoder, "model", None)
    return type(model).__name__ if isinstance(model, torch.nn.Module) else type(encoder).__name__


def _state_of(encoder: Any) -> Mapping[str, Any] | None:
    for get in (getattr(encoder, "get_sd", None), getattr(getattr(encoder, "model", None), "state_dict", None),
                getattr(encoder, "state_dict", None)):
        if callable(get):
            return get()
    return None


def encoder_identity(encoder: Any, kind: str, file: str = "") -> EmbedderIdentity:
    """The identity of an ``encode_image`` encoder (see ``EncodeImageEmbedder``); without readable weights it is
    the class and preprocessing only, which cannot tell two encoders of one class apart."""
    size = getattr(encoder, "image_size", None)
    preprocess = f"size={size}|mean={getattr(encoder, 'image_mean', None)}|std={getattr(encoder, 'image_std', None)}"
    architecture = _model_class(encoder) + (f"({size}px)" if size else "")
    state = _state_of(encoder)
    if state is None:
        return EmbedderIdentity(kind, architecture, hashlib.sha256(preprocess.encode()).hexdigest()[:12], file=file)
    layout, weights = weights_fingerprint(state, preprocess)
    return EmbedderIdentity(kind, architecture, layout, weights, file)


class OpenClipEmbedder(BatchedEmbedder):
    """An open_clip image tower (the text tower is dropped). It is moved to ``device`` for each call and back to
    ``offload_device`` afterwards, so it never holds GPU memory the video model needs."""

    def __init__(self, visual: torch.nn.Module, image_size: tuple[int, int], mean=OPENAI_MEAN, std=OPENAI_STD,
                 name: str = "open_clip", device: str | torch.device = "cpu",
                 offload_device: str | torch.device | None = None, batch_size: int = DEFAULT_BATCH,
                 architecture: str = "open_clip", file: str = ""):
        super().__init__(batch_size)
        self.visual = visual.eval().requires_grad_(False)
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.name, self.device, self.offload_device = name, torch.device(device), offload_device
        self.architecture, self.file = architecture, file
        self._identity: EmbedderIdentity | None = None

    @property
    def identity(self) -> EmbedderIdentity:
        if self._identity is None:
            preprocess = f"size={self.image_size}|mean={self.mean.flatten().tolist()}|std={self.std.flatten().tolist()}"
            layout, weights = weights_fingerprint(self.visual.state_dict(), preprocess)
            self._identity = EmbedderIdentity("open_clip", f"{self.architecture}({self.image_size[0]}px)", layout,
                                              weights, self.file)
        return self._identity

    def embed_frames(self, frames: torch.Tensor) -> torch.Tensor:
        self.visual.to(self.device)
        try:
            return super().embed_frames(frames)
        finally:
            if self.offload_device is not None:
                self.visual.to(self.offload_device)

    def _embed_batch(self, frames: torch.Tensor) -> torch.Tensor:
        images = frames.to(self.device, torch.float32).permute(0, 3, 1, 2)
        images = resize_and_crop(images, self.image_size)
        images = (images - self.mean.to(self.device)) / self.std.to(self.device)
        dtype = next(self.visual.parameters()).dtype
        features = self.visual(images.to(dtype))
        return features[0] if isinstance(features, (tuple, list)) else features  # towers that also return tokens


def _open_clip():
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(f"open_clip cannot be imported ({error}); install open_clip_torch (listed in the pack's "
                          "requirements.txt)") from error
    return open_clip


@lru_cache(maxsize=1)
def _hub_text_architectures() -> frozenset[str]:
    """Architectures whose text tower is a Hugging Face model: building them fetches its config from the hub."""
    open_clip = _open_clip()
    return frozenset(name for name in open_clip.list_models()
                     if "hf_model_name" in (open_clip.get_model_config(name) or {}).get("text_cfg", {}))


def open_clip_architectures(local_only: bool = True) -> list[str]:
    """open_clip architecture names; ``local_only`` leaves out those that need files from the hub to build."""
    names = _open_clip().list_models()
    if local_only:
        hub = _hub_text_architectures()
        names = [n for n in names if n not in hub]
    return names


def load_open_clip(architecture: str, path: str | os.PathLike, device: str | torch.device = "cpu",
                   offload_device: str | torch.device | None = None,
                   batch_size: int = DEFAULT_BATCH) -> OpenClipEmbedder:
    """Build ``architecture`` with the weights in the local file ``path`` (never a hub name; nothing is
    downloaded) and keep its image tower as an embedder."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"open_clip weights file {path} does not exist; put the model's "
                                "open_clip_pytorch_model.bin / .safetensors there")
    open_clip = _open_clip()
    known = open_clip.list_models()
    if architecture not in known:
        close = difflib.get_close_matches(architecture, known, n=3)
        raise ValueError(f"architecture={architecture!r} is not an open_clip architecture"
                         + (f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"))
    if architecture in _hub_text_architectures():
        raise ValueError(f"architecture={architecture!r} needs Hugging Face files to build its text tower and would "
                         "download them; choose an architecture without a Hugging Face text model")
    try:
        model, _, _ = open_clip.create_model_and_transforms(architecture, pretrained=path, device="cpu")
    except ImportError as error:  # e.g. timm-based image towers
        raise ValueError(f"architecture '{architecture}' needs a package that is not installed ({error}); install it "
                         "or choose another architecture") from error
    except Exception as error:  # noqa: BLE001 - open_clip reports a mismatched file in many ways (asserts too)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{os.path.basename(path)} does not load as open_clip architecture '{architecture}' "
                         f"({first_line[:300]}). Choose the architecture the weights were trained with (the file's "
                         "model page names it, e.g. ViT-B-32).") from error
    visual = model.visual
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    size = cfg.get("size") or getattr(visual, "image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    logger.info("open_clip %s loaded from %s (input %dx%d)", architecture, path, size[0], size[1])
    return OpenClipEmbedder(visual, size, cfg.get("mean", OPENAI_MEAN), cfg.get("std", OPENAI_STD),
                            name=f"open_clip:{architecture}:{os.path.basename(path)}", device=device,
                            offload_device=offload_device, batch_size=batch_size, architecture=architecture,
                            file=os.path.basename(path))
