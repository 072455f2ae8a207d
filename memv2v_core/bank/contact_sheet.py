"""A contact sheet of a memory bank: one row of thumbnails per entry plus a text table, cheap enough to run often.

Thumbnails come from stored keyframes when an entry has them, else from the latent through a linear latent->RGB
map (the factors ComfyUI's own Latent2RGB previews use, passed in by the node so this module stays host-free).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .memory_bank import DamagedEntryError, MemoryBank, MemoryEntry

logger = logging.getLogger(__name__)

BACKGROUND = 0.08
DAMAGED_COLOUR = (0.55, 0.08, 0.08)
PAD = 4


@dataclass(frozen=True)
class LatentPreview:
    """Linear latent->RGB decoding of one latent format: rgb = factors^T ((x - mean) * scale / std) + bias, in -1..1."""

    rgb_factors: torch.Tensor            # [C, 3]
    rgb_bias: torch.Tensor | None = None  # [3]
    mean: torch.Tensor | None = None      # [C]; the stored latent is in VAE space, the factors expect model space
    std: torch.Tensor | None = None       # [C]
    scale_factor: float = 1.0

    @classmethod
    def from_values(cls, factors, bias=None, mean=None, std=None, scale_factor: float = 1.0) -> "LatentPreview":
        """Build from lists or tensors of any shape holding C (mean/std) or C x 3 (factors) numbers."""
        def flat(value, width):
            return None if value is None else torch.as_tensor(value, dtype=torch.float32).reshape(-1, width).squeeze(-1)

        return cls(rgb_factors=flat(factors, 3), rgb_bias=flat(bias, 3).reshape(3) if bias is not None else None,
                   mean=flat(mean, 1), std=flat(std, 1), scale_factor=float(scale_factor))


@dataclass(frozen=True)
class ContactSheet:
    """The sheet as a ComfyUI IMAGE ([1, H, W, 3], 0..1) and a text table whose '#' column numbers the rows."""

    image: torch.Tensor
    table: str
    entry_ids: tuple[str, ...]


def latent_to_rgb(latent: torch.Tensor, preview: LatentPreview | None = None) -> torch.Tensor:
    """[B, C, T, H, W] or [C, T, H, W] latent -> [T, H, W, 3] images in 0..1 (first batch item)."""
    x = (latent[0] if latent.ndim == 5 else latent).float()
    channels = x.shape[0]
    if preview is not None and preview.rgb_factors.shape[0] == channels:
        if preview.mean is not None and preview.std is not None:
            x = (x - preview.mean.view(-1, 1, 1, 1)) * preview.scale_factor / preview.std.view(-1, 1, 1, 1)
        rgb = torch.einsum("cthw,cr->thwr", x, preview.rgb_factors)
        if preview.rgb_bias is not None:
            rgb = rgb + preview.rgb_bias
        return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)
    # No factors for this format: show the first three channels, each standardised, as a false-colour image.
    picked = x[[min(i, channels - 1) for i in range(3)]]
    mean = picked.mean(dim=(1, 2, 3), keepdim=True)
    std = picked.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((picked - mean) / (4.0 * std) + 0.5).clamp(0.0, 1.0).permute(1, 2, 3, 0)


def _resize(images: torch.Tensor, height: int) -> torch.Tensor:
    """[N, H, W, 3] -> [N, height, W * height / H, 3]."""
    width = max(1, round(images.shape[2] * height / images.shape[1]))
    nchw = images.permute(0, 3, 1, 2).float()
    shrinking = height < images.shape[1]
    out = F.interpolate(nchw, size=(height, width), mode="bilinear", align_corners=False, antialias=shrinking)
    return out.clamp(0.0, 1.0).permute(0, 2, 3, 1)


def _pick(count: int, wanted: int) -> list[int]:
    """Up to ``wanted`` indices spread evenly over ``count`` items, first and last included."""
    if count <= wanted:
        return list(range(count))
    return [round(i * (count - 1) / (wanted - 1)) for i in range(wanted)] if wanted > 1 else [0]


def entry_thumbnails(bank: MemoryBank, entry: MemoryEntry, previews: dict[str, LatentPreview], frames: int,
                     height: int) -> tuple[torch.Tensor, str]:
    """[N, height, w, 3] thumbnails of one entry and where they came from ("keyframes" or "latent")."""
    if entry.has("keyframes"):
        keyframes = bank.load_tensor(entry.entry_id, "keyframes")
        return _resize(keyframes[_pick(keyframes.shape[0], frames)], height), "keyframes"
    rgb = latent_to_rgb(bank.load_latent(entry.entry_id), previews.get(entry.latent_format))
    return _resize(rgb[_pick(rgb.shape[0], frames)], height), "latent"


# 3x5 digits for the row numbers, so the sheet needs no font library.
_DIGITS = {"0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
           "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
           "8": "111101111101111", "9": "111101111001111"}


def _draw_number(canvas: torch.Tensor, number: int, top: int, left: int, scale: int) -> None:
    for index, digit in enumerate(str(number)):
        glyph = torch.tensor([int(b) for b in _DIGITS[digit]], dtype=torch.bool).view(5, 3)
        block = glyph.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        x0 = left + index * 4 * scale
        region = canvas[top:top + block.shape[0], x0:x0 + block.shape[1]]
        region[block[:region.shape[0], :region.shape[1]]] = 0.92


def _label_width(count: int, scale: int) -> int:
    return len(str(count)) * 4 * scale + 2 * PAD


def _table(bank: MemoryBank, rows: Sequence[tuple[int, MemoryEntry, str]]) -> str:
    header = ("#", "id", "turn", "seg", "format", "latent", "camera", "thumbs", "parents", "seed", "created", "prompt")
    lines = [header]
    for number, entry, source in rows:
        camera = f"{entry.shapes['camera'][0]} fr" if entry.has("camera") else "-"
        prompt = entry.prompt.replace("\n", " ")
        lines.append((str(number), entry.entry_id, str(entry.turn),
                      "-" if entry.segment_index is None else str(entry.segment_index), entry.latent_format,
                      "x".join(map(str, entry.latent_shape)), camera, source,
                      ",".join(p[:8] for p in entry.parents) or "-", "-" if entry.seed is None else str(entry.seed),
                      entry.created[:19].replace("T", " "), prompt[:60] + ("..." if len(prompt) > 60 else "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    hidden = len(bank.hidden_ids())
    count = f"{len(bank)} entries" + (f" ({hidden} hidden, not shown)" if hidden else "")
    if rows:
        summary = (f"bank '{bank.name}': {count}, latent format {bank.latent_format or '-'}; "
                   f"rows {rows[0][0]}-{rows[-1][0]} shown")
    else:
        summary = f"bank '{bank.name}' has no visible entries ({hidden} hidden)" if hidden else \
            f"bank '{bank.name}' is empty"
    problems = bank.problems
    tail = ([f"{len(problems)} damaged entries (skipped, files left as they are):"] + [f"  {p}" for p in problems]
            if problems else [])
    return "\n".join([summary, *text, *tail]) if rows else "\n".join([summary, *tail])


def contact_sheet(bank: MemoryBank, previews: dict[str, LatentPreview] | None = None, max_entries: int = 12,
                  frames: int = 6, thumb_height: int = 64) -> ContactSheet:
    """The newest ``max_entries`` entries, oldest at the top, ``frames`` thumbnails each, numbered as in the table."""
    if max_entries < 1 or frames < 1 or thumb_height < 8:
        raise ValueError(f"max_entries ({max_entries}) and frames ({frames}) must be at least 1 and thumb_height "
                         f"({thumb_height}) at least 8")
    previews = previews or {}
    ids = bank.ids()
    numbered = list(enumerate(ids, start=1))[-max_entries:]
    scale = max(1, thumb_height // 24)
    gutter = _label_width(len(ids), scale)
    strips: list[tuple[int, torch.Tensor | None]] = []
    rows: list[tuple[int, MemoryEntry, str]] = []
    for number, entry_id in numbered:
        entry = bank.entry(entry_id)
        try:
            thumbs, source = entry_thumbnails(bank, entry, previews, frames, thumb_height)
        except DamagedEntryError as error:
            logger.warning("contact sheet: %s", error)
            strips.append((number, None))
            rows.append((number, entry, "damaged"))
            continue
        strip = torch.full((thumb_height, thumbs.shape[0] * (thumbs.shape[2] + PAD), 3), BACKGROUND)
        for index, thumb in enumerate(thumbs):
            x0 = index * (thumb.shape[1] + PAD)
            strip[:, x0:x0 + thumb.shape[1]] = thumb
        strips.append((number, strip))
        rows.append((number, entry, source))
    width = gutter + max([s.shape[1] for _, s in strips if s is not None] + [thumb_height * 2])
    height = PAD + max(1, len(strips)) * (thumb_height + PAD)
    canvas = torch.full((height, width, 3), BACKGROUND)
    for row, (number, strip) in enumerate(strips):
        top = PAD + row * (thumb_height + PAD)
        _draw_number(canvas, number, top + (thumb_height - 5 * scale) // 2, PAD, scale)
        if strip is None:
            canvas[top:top + thumb_height, gutter:] = torch.tensor(DAMAGED_COLOUR)
        else:
            canvas[top:top + thumb_height, gutter:gutter + strip.shape[1]] = strip
    return ContactSheet(image=canvas.unsqueeze(0), table=_table(bank, rows), entry_ids=tuple(i for _, i in numbered))
