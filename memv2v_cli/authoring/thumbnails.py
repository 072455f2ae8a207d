"""Template browser thumbnails: one small picture per shipped workflow of what it does, written beside its JSON.

The novel-view workflows show the pack's own Camera Preview (the same code as the node, on a scratch bank of three
earlier turns): the new camera in yellow, the remembered turns and their fields of view. The others are diagrams
drawn with Pillow. ``python -m memv2v_cli.authoring.thumbnails`` rewrites ``workflows/<name>.jpg`` (each < 60 KB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

SIZE = (512, 384)  # the template card shows 4:3
BACKGROUND = (24, 26, 30)
INK = (230, 230, 230)
DIM = (130, 135, 145)
ACCENT = (255, 216, 51)
MEMORY = (64, 190, 255)
QUALITY = 82


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _canvas(title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((16, 12), title, fill=INK, font=_font(26))
    return image, draw


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], color, width: int = 3):
    draw.line([start, end], fill=color, width=width)
    (x0, y0), (x1, y1) = start, end
    length = max(((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5, 1e-6)
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    left = (x1 - 12 * ux - 6 * uy, y1 - 12 * uy + 6 * ux)
    right = (x1 - 12 * ux + 6 * uy, y1 - 12 * uy - 6 * ux)
    draw.polygon([(x1, y1), left, right], fill=color)


def _clip(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], color, label: str = "",
          frames: int = 4) -> None:
    """A clip as a filmstrip of ``frames`` tinted frames."""
    x0, y0, x1, y1 = box
    step = (x1 - x0) / frames
    for i in range(frames):
        shade = tuple(int(c * (0.65 + 0.35 * i / max(frames - 1, 1))) for c in color)
        draw.rectangle([x0 + i * step + 1, y0, x0 + (i + 1) * step - 1, y1], fill=shade)
    if label:
        draw.text((x0, y1 + 4), label, fill=DIM, font=_font(15))


def camera_thumbnail(with_memory: bool) -> Image.Image:
    """The Camera Preview of a new camera (arc right) against three remembered turns (or alone, without memory)."""
    from memv2v_core.bank.memory_bank import MemoryBank
    from memv2v_core.camera.presets import preset_trajectory
    from memv2v_core.retrieval.fov_retrieval import rank_bank_by_fov
    from memv2v_core.retrieval.preview import preview_tracks_from_bank, render_camera_preview

    target = preset_trajectory("arc_right", frames=21)
    tracks, mask = [], None
    if with_memory:
        with tempfile.TemporaryDirectory() as scratch:
            bank = MemoryBank.open(Path(scratch) / "thumbnail", create=True)
            generator = torch.Generator().manual_seed(0)
            for turn, preset in enumerate(("pan_right", "pan_left", "tilt_up"), start=1):
                path = preset_trajectory(preset, frames=21)
                bank.add(torch.randn(1, 16, 2, 4, 4, generator=generator), latent_format="wan21", camera=path.c2w,
                         intrinsics=path.intrinsics, prompt=f"turn {turn}: {preset.replace('_', ' ')}")
            ranking = rank_bank_by_fov(bank, target, top_k=3)
            tracks = preview_tracks_from_bank(bank, target, ranking.rows, ranking.masks)
            mask = ranking.target_mask
    picture = render_camera_preview(target, tracks, mask, width=1024)[0]
    preview = Image.fromarray((picture.clamp(0, 1) * 255).to(torch.uint8).numpy())
    image, draw = _canvas("New camera + remembered turns" if with_memory else "Source video, new camera")
    scale = min(SIZE[0] / preview.width, (SIZE[1] - 52) / preview.height)
    preview = preview.resize((int(preview.width * scale), int(preview.height * scale)), Image.LANCZOS)
    image.paste(preview, ((SIZE[0] - preview.width) // 2, 48))
    return image


def bank_turns_thumbnail() -> Image.Image:
    image, draw = _canvas("Every clip goes into the bank")
    colors = [(200, 120, 70), (90, 160, 110), (110, 120, 200)]
    for turn, color in enumerate(colors):
        y = 70 + turn * 95
        draw.text((16, y + 18), f"turn {turn + 1}", fill=INK, font=_font(18))
        _clip(draw, (100, y, 300, y + 60), color, frames=5)
        _arrow(draw, (310, y + 30), (370, y + 30), MEMORY)
    draw.rounded_rectangle([380, 60, 496, 350], radius=12, outline=MEMORY, width=3)
    draw.text((392, 70), "memory\nbank", fill=MEMORY, font=_font(18))
    for turn, color in enumerate(colors):
        draw.rectangle([395, 140 + turn * 60, 481, 180 + turn * 60], fill=color)
    return image


def long_edit_thumbnail() -> Image.Image:
    image, draw = _canvas("Long edit, segment by segment")
    count, x0, width = 5, 20, 92
    draw.text((20, 58), "source", fill=DIM, font=_font(16))
    draw.text((20, 208), "edited (remembered)", fill=DIM, font=_font(16))
    for i in range(count):
        x = x0 + i * (width + 6)
        _clip(draw, (x, 82, x + width, 150), (120, 125, 135), frames=3)
        if i < 3:
            _clip(draw, (x, 232, x + width, 300), (230, 120, 40), frames=3)
        elif i == 3:
            draw.rectangle([x, 232, x + width, 300], outline=ACCENT, width=3)
            draw.text((x + 8, 252), "now", fill=ACCENT, font=_font(18))
            _arrow(draw, (x + width / 2, 152), (x + width / 2, 228), DIM)
    for i in range(3):
        start = (x0 + i * (width + 6) + width / 2, 304)
        end = (x0 + 3 * (width + 6) + 20 + i * 12, 306)
        draw.arc([start[0], 270, end[0], 350], 0, 180, fill=MEMORY, width=3)
    draw.text((20, 350), "earlier edited segments are the memory", fill=MEMORY, font=_font(16))
    return image


def long_edit_all_thumbnail() -> Image.Image:
    """Every segment edited in one run: source segments in, each edit streamed into one output file."""
    image, draw = _canvas("Whole video, one run, one file")
    count, x0, width = 5, 20, 92
    draw.text((20, 58), "source, read a segment at a time", fill=DIM, font=_font(16))
    for i in range(count):
        x = x0 + i * (width + 6)
        _clip(draw, (x, 82, x + width, 140), (120, 125, 135), frames=3)
        _clip(draw, (x, 186, x + width, 244), (230, 120, 40), frames=3)
        _arrow(draw, (x + width / 2, 142), (x + width / 2, 182), DIM, width=2)
        draw.text((x + 6, 190), f"{i + 1}/{count}", fill=INK, font=_font(15))
        if i:  # the earlier edits are this segment's memory
            draw.arc([x - width / 2 - 6, 232, x + width / 2 - 6, 272], 0, 180, fill=MEMORY, width=2)
    draw.rounded_rectangle([20, 290, 20 + count * (width + 6) - 6, 340], radius=8, outline=ACCENT, width=3)
    draw.text((34, 304), "output/memv2v/long_edit_all.mp4", fill=ACCENT, font=_font(18))
    draw.text((20, 352), "stopped? queue again: resumes at the first missing", fill=MEMORY, font=_font(16))
    return image


def story_thumbnail() -> Image.Image:
    image, draw = _canvas("A story, one shot per run")
    colors = [(90, 140, 200), (200, 140, 80), (120, 180, 110), (180, 100, 160)]
    for shot, color in enumerate(colors):
        x = 20 + shot * 122
        if shot < 3:
            _clip(draw, (x, 80, x + 108, 150), color, label=f"shot {shot + 1}", frames=3)
            for k in range(2):
                draw.rectangle([x + 8 + k * 50, 250, x + 50 + k * 50, 285], fill=color)
            _arrow(draw, (x + 54, 172), (x + 54, 244), DIM, width=2)
        else:
            draw.rectangle([x, 80, x + 108, 150], outline=ACCENT, width=3)
            draw.text((x + 8, 100), "next\nshot", fill=ACCENT, font=_font(18))
    draw.rounded_rectangle([12, 240, 380, 300], radius=10, outline=MEMORY, width=3)
    draw.text((20, 312), "keyframes of earlier shots = story memory", fill=MEMORY, font=_font(16))
    _arrow(draw, (384, 270), (420, 156), MEMORY)
    return image


DRAWERS = {
    "memv2v_multiturn_nvs": lambda: camera_thumbnail(with_memory=True),
    "memv2v_recammaster_no_memory": lambda: camera_thumbnail(with_memory=False),
    "memv2v_t2v_bank_turns": bank_turns_thumbnail,
    "memv2v_long_video_edit": long_edit_thumbnail,
    "memv2v_long_video_edit_all": long_edit_all_thumbnail,
    "memv2v_story_storymem": story_thumbnail,
}


def thumbnail(name: str) -> Image.Image:
    """The picture for workflow ``name``; a workflow without its own drawer gets the closest kind (by its name)."""
    if name in DRAWERS:
        return DRAWERS[name]()
    kind = ("memv2v_long_video_edit" if "edit" in name else "memv2v_story_storymem" if "story" in name
            else "memv2v_multiturn_nvs" if "nvs" in name or "recammaster" in name else "memv2v_t2v_bank_turns")
    return DRAWERS[kind]()


def write_thumbnails(names: list[str], out_dir: Path) -> list[Path]:
    written = []
    for name in names:
        path = out_dir / f"{name}.jpg"
        thumbnail(name).save(path, "JPEG", quality=QUALITY, optimize=True)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    from .catalog import SPECS

    parser = argparse.ArgumentParser(description="Rewrite workflows/<name>.jpg, the template browser's thumbnails.")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "workflows"))
    args = parser.parse_args(argv)
    for path in write_thumbnails([spec.name for spec in SPECS], Path(args.out)):
        print(path, f"{path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
