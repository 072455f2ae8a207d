"""The camera preview image: frusta from above and from the side, and FOV coverage on an equirectangular map.

Drawn with plain torch (no image library): the target in yellow, retrieved memories in rank colours, the rest grey.
On the map, each retrieved memory's FOV is tinted in its colour and brightened where it overlaps the target's
FOV (white outline); target area no memory covers is hatched red. So an artist sees why something was retrieved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..camera.trajectory import Trajectory
from .fov import GRID_COLS, GRID_ROWS, FOVParams, unpack_mask

TARGET_COLOR = (1.0, 0.85, 0.2)
OTHER_COLOR = (0.45, 0.45, 0.45)
RANK_COLORS = ((0.25, 0.75, 1.0), (0.35, 1.0, 0.45), (1.0, 0.45, 0.8), (0.75, 0.55, 1.0), (1.0, 0.6, 0.25),
               (0.4, 1.0, 0.95), (0.95, 0.95, 0.5), (0.6, 0.8, 0.4))
UNCOVERED_COLOR = (0.95, 0.2, 0.2)
BACKGROUND = 0.07
MAX_LEGEND_ROWS = 12


@dataclass(frozen=True)
class PreviewTrack:
    """One stored trajectory to draw beside the target: its label, poses (target frame), packed mask and scores."""

    label: str
    trajectory: Trajectory | None
    mask: torch.Tensor | None = None
    rank: int | None = None
    iou: float | None = None
    containment: float | None = None
    score: float | None = None

    @property
    def color(self) -> tuple[float, float, float]:
        return OTHER_COLOR if self.rank is None else RANK_COLORS[(self.rank - 1) % len(RANK_COLORS)]


# 5x7 glyphs, one byte per column, least significant bit at the top (a common public-domain LCD font layout).
_GLYPHS = {
    "0": (0x3E, 0x51, 0x49, 0x45, 0x3E), "1": (0x00, 0x42, 0x7F, 0x40, 0x00), "2": (0x42, 0x61, 0x51, 0x49, 0x46),
    "3": (0x21, 0x41, 0x45, 0x4B, 0x31), "4": (0x18, 0x14, 0x12, 0x7F, 0x10), "5": (0x27, 0x45, 0x45, 0x45, 0x39),
    "6": (0x3C, 0x4A, 0x49, 0x49, 0x30), "7": (0x01, 0x71, 0x09, 0x05, 0x03), "8": (0x36, 0x49, 0x49, 0x49, 0x36),
    "9": (0x06, 0x49, 0x49, 0x29, 0x1E), "A": (0x7E, 0x11, 0x11, 0x11, 0x7E), "B": (0x7F, 0x49, 0x49, 0x49, 0x36),
    "C": (0x3E, 0x41, 0x41, 0x41, 0x22), "D": (0x7F, 0x41, 0x41, 0x22, 0x1C), "E": (0x7F, 0x49, 0x49, 0x49, 0x41),
    "F": (0x7F, 0x09, 0x09, 0x09, 0x01), "G": (0x3E, 0x41, 0x49, 0x49, 0x7A), "H": (0x7F, 0x08, 0x08, 0x08, 0x7F),
    "I": (0x00, 0x41, 0x7F, 0x41, 0x00), "J": (0x20, 0x40, 0x41, 0x3F, 0x01), "K": (0x7F, 0x08, 0x14, 0x22, 0x41),
    "L": (0x7F, 0x40, 0x40, 0x40, 0x40), "M": (0x7F, 0x02, 0x0C, 0x02, 0x7F), "N": (0x7F, 0x04, 0x08, 0x10, 0x7F),
    "O": (0x3E, 0x41, 0x41, 0x41, 0x3E), "P": (0x7F, 0x09, 0x09, 0x09, 0x06), "Q": (0x3E, 0x41, 0x51, 0x21, 0x5E),
    "R": (0x7F, 0x09, 0x19, 0x29, 0x46), "S": (0x46, 0x49, 0x49, 0x49, 0x31), "T": (0x01, 0x01, 0x7F, 0x01, 0x01),
    "U": (0x3F, 0x40, 0x40, 0x40, 0x3F), "V": (0x1F, 0x20, 0x40, 0x20, 0x1F), "W": (0x3F, 0x40, 0x38, 0x40, 0x3F),
    "X": (0x63, 0x14, 0x08, 0x14, 0x63), "Y": (0x07, 0x08, 0x70, 0x08, 0x07), "Z": (0x61, 0x51, 0x49, 0x45, 0x43),
    ".": (0x00, 0x60, 0x60, 0x00, 0x00), "-": (0x08, 0x08, 0x08, 0x08, 0x08), ":": (0x00, 0x36, 0x36, 0x00, 0x00),
    "=": (0x14, 0x14, 0x14, 0x14, 0x14), "/": (0x20, 0x10, 0x08, 0x04, 0x02), "(": (0x00, 0x1C, 0x22, 0x41, 0x00),
    ")": (0x00, 0x41, 0x22, 0x1C, 0x00), "+": (0x08, 0x08, 0x3E, 0x08, 0x08), "#": (0x14, 0x7F, 0x14, 0x7F, 0x14),
    "_": (0x40, 0x40, 0x40, 0x40, 0x40), ",": (0x00, 0x50, 0x30, 0x00, 0x00), " ": (0, 0, 0, 0, 0),
}


def _glyph(char: str) -> torch.Tensor:
    columns = _GLYPHS.get(char.upper(), _GLYPHS["#"])
    return torch.tensor([[(column >> row) & 1 for column in columns] for row in range(7)], dtype=torch.bool)


def draw_text(canvas: torch.Tensor, x: int, y: int, text: str, color: Sequence[float], scale: int = 2) -> None:
    """Write ``text`` (upper-cased) with its top-left corner at pixel (x, y); glyphs are 6 x 8 cells times scale."""
    color_t = torch.tensor(color, dtype=canvas.dtype)[:, None, None]
    for index, char in enumerate(text):
        block = _glyph(char).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        left, top = x + index * 6 * scale, y
        h = min(block.shape[0], canvas.shape[1] - top)
        w = min(block.shape[1], canvas.shape[2] - left)
        if h <= 0 or w <= 0 or left < 0 or top < 0:
            continue
        region = canvas[:, top:top + h, left:left + w]
        canvas[:, top:top + h, left:left + w] = torch.where(block[:h, :w], color_t, region)


def draw_segments(canvas: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, color: Sequence[float],
                  thickness: int = 1) -> None:
    """Draw line segments between pixel positions starts/ends [N, 2] (x, y) by dense sampling."""
    if starts.numel() == 0:
        return
    steps = int(min(4096, max(2, float((ends - starts).norm(dim=1).max()) + 2)))
    t = torch.linspace(0.0, 1.0, steps)[None, :, None]
    points = (starts[:, None, :] + (ends - starts)[:, None, :] * t).reshape(-1, 2).round().long()
    lo = -(thickness // 2)
    offsets = torch.stack(torch.meshgrid(torch.arange(lo, lo + thickness), torch.arange(lo, lo + thickness),
                                         indexing="ij"), -1).reshape(-1, 2)
    points = (points[:, None, :] + offsets[None]).reshape(-1, 2)
    height, width = canvas.shape[1:]
    keep = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    points = points[keep]
    canvas[:, points[:, 1], points[:, 0]] = torch.tensor(color, dtype=canvas.dtype)[:, None]


@dataclass(frozen=True)
class _View:
    """An orthographic view: which world axes go right and down on screen, and the pixel rectangle it fills."""

    title: str
    u_axis: int
    v_axis: int
    v_sign: float  # +1: world v grows downwards on screen; -1: upwards
    rect: tuple[int, int, int, int]  # x, y, width, height


def _frustum_segments(trajectory: Trajectory, params: FOVParams, size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """3D segments of the view pyramids at the first, middle and last frames: [N, 3] starts and ends."""
    tan_x, tan_y = params.half_extent
    frames = sorted({0, trajectory.num_frames // 2, trajectory.num_frames - 1})
    corners_cam = torch.tensor([[-tan_x, -tan_y, 1.0], [tan_x, -tan_y, 1.0], [tan_x, tan_y, 1.0],
                                [-tan_x, tan_y, 1.0]]) * size
    starts, ends = [], []
    for frame in frames:
        rotation, center = trajectory.rotations[frame], trajectory.centers[frame]
        corners = corners_cam @ rotation.T + center
        starts += [center.expand(4, 3), corners]
        ends += [corners, corners.roll(-1, 0)]
    return torch.cat(starts), torch.cat(ends)


def _draw_view(canvas: torch.Tensor, view: _View, trajectories: list[tuple[Trajectory, tuple, int]],
               params: FOVParams) -> None:
    x0, y0, w, h = view.rect
    canvas[:, y0:y0 + h, x0:x0 + w] = BACKGROUND + 0.03
    centers = torch.cat([t.centers for t, _, _ in trajectories])
    extent = max(float((centers - centers.mean(0)).abs().max()) * 2.0, params.radius * 2.0, 1.0)
    frustum_size = 0.12 * extent
    points = [centers, torch.tensor([[params.radius] * 3, [-params.radius] * 3])]
    geometry = []
    for trajectory, color, thickness in trajectories:
        s, e = _frustum_segments(trajectory, params, frustum_size)
        geometry.append((trajectory, s, e, color, thickness))
        points += [s, e]
    everything = torch.cat(points)
    lo = everything[:, [view.u_axis, view.v_axis]].amin(0)
    hi = everything[:, [view.u_axis, view.v_axis]].amax(0)
    margin = 28
    span = (hi - lo).clamp(min=1e-6)
    scale = float(min((w - 2 * margin) / span[0], (h - 2 * margin - 16) / span[1]))
    middle = (lo + hi) / 2

    def to_pixels(p: torch.Tensor) -> torch.Tensor:
        u = (p[:, view.u_axis] - middle[0]) * scale + x0 + w / 2
        v = view.v_sign * (p[:, view.v_axis] - middle[1]) * scale + y0 + 16 + (h - 16) / 2
        return torch.stack([u, v], 1)

    # The FOV sample sphere (its radius matters: cameras outside it see it from outside).
    angle = torch.linspace(0, 2 * math.pi, 97)
    circle = torch.zeros(97, 3)
    circle[:, view.u_axis] = params.radius * angle.cos()
    circle[:, view.v_axis] = params.radius * angle.sin()
    ring = to_pixels(circle)
    draw_segments(canvas, ring[:-1], ring[1:], (0.25, 0.25, 0.3))
    origin = to_pixels(torch.zeros(2, 3))
    for trajectory, starts, ends, color, thickness in geometry:
        path = to_pixels(trajectory.centers)
        draw_segments(canvas, path[:-1], path[1:], color, thickness)
        draw_segments(canvas, to_pixels(starts), to_pixels(ends), color, 1)
        draw_segments(canvas, path[-1:] - 3, path[-1:] + 3, color, 3)
    draw_segments(canvas, origin[:1] - 4, origin[:1] + 4, (0.9, 0.9, 0.9), 1)
    bar = to_pixels(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    length = float((bar[1, 0] - bar[0, 0]).abs())
    ybar = y0 + h - 10
    draw_segments(canvas, torch.tensor([[x0 + 10.0, ybar]]), torch.tensor([[x0 + 10.0 + length, ybar]]),
                  (0.8, 0.8, 0.8), 2)
    draw_text(canvas, x0 + 14 + int(min(length, w - 80)), ybar - 6, "1 UNIT", (0.8, 0.8, 0.8), 1)
    draw_text(canvas, x0 + 8, y0 + 6, view.title, (0.9, 0.9, 0.9), 2)


def _erode(mask: torch.Tensor) -> torch.Tensor:
    return -F.max_pool2d(-mask.float()[None, None], 3, 1, 1)[0, 0] > 0.5


def _draw_fov_map(canvas: torch.Tensor, rect: tuple[int, int, int, int], target_mask: torch.Tensor,
                  tracks: Sequence[PreviewTrack]) -> None:
    x0, y0, w, h = rect
    size = (h, w)

    def grid(packed: torch.Tensor) -> torch.Tensor:
        bits = unpack_mask(packed).reshape(1, 1, GRID_ROWS, GRID_COLS).float()
        return F.interpolate(bits, size=size, mode="nearest")[0, 0] > 0.5

    image = torch.full((3, h, w), BACKGROUND)
    for degrees in range(-150, 180, 30):  # meridians and parallels every 30 degrees
        col = int((degrees + 180) / 360 * w)
        image[:, :, col] = 0.22 if degrees == 0 else 0.14
    for degrees in range(-60, 90, 30):
        row = int((degrees + 90) / 180 * h)
        image[:, row, :] = 0.22 if degrees == 0 else 0.14
    target = grid(target_mask)
    covered = torch.zeros(size, dtype=torch.bool)
    for track in tracks:
        if track.mask is not None and track.rank is None:
            image += 0.05 * grid(track.mask)  # other memories: faint, brighter where many overlap
    for track in sorted((t for t in tracks if t.mask is not None and t.rank is not None), key=lambda t: -t.rank):
        region = grid(track.mask)
        covered |= region
        color = torch.tensor(track.color)[:, None, None]
        image = torch.where(region, 0.6 * image + 0.4 * color, image)
    # Overlap with the target shown bright; target area that no retrieved memory covers hatched red.
    image = torch.where(target & covered, (image * 1.4 + 0.06).clamp(max=1.0), image)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    hatch = ((rows + cols) % 10 < 3) & target & ~covered
    image = torch.where(hatch, torch.tensor(UNCOVERED_COLOR)[:, None, None], image)
    outline = target & ~_erode(target)
    outline |= F.max_pool2d(outline.float()[None, None], 3, 1, 1)[0, 0] > 0.5
    image = torch.where(outline, torch.tensor(TARGET_COLOR)[:, None, None], image)
    canvas[:, y0:y0 + h, x0:x0 + w] = image.clamp(0.0, 1.0)
    draw_text(canvas, x0 + 8, y0 + 6, "FOV MAP  (LONGITUDE -180..180 DEG, RIGHT = +X, UP = -Y)", (0.9, 0.9, 0.9), 2)
    for degrees in (-90, 0, 90):
        col = int((degrees + 180) / 360 * w)
        draw_text(canvas, col + 3, y0 + h - 14, str(degrees), (0.6, 0.6, 0.6), 1)


def _legend_lines(target: Trajectory, tracks: Sequence[PreviewTrack]) -> list[tuple[str, tuple]]:
    lines = [(f"TARGET  {target.name or 'CAMERA'}  ({target.num_frames} FRAMES)", TARGET_COLOR)]
    ordered = sorted(tracks, key=lambda t: (t.score is None, t.rank is None, t.rank or 0, -(t.score or 0.0)))
    for track in ordered[:MAX_LEGEND_ROWS]:
        rank = "--" if track.rank is None else f"R{track.rank}"
        scores = ("NO CAMERA" if track.score is None else
                  f"IOU {track.iou:.2f}  CONTAIN {track.containment:.2f}  SCORE {track.score:.2f}")
        lines.append((f"{rank:<3} {track.label[:20]:<20}  {scores}", track.color))
    if len(ordered) > MAX_LEGEND_ROWS:
        lines.append((f"+{len(ordered) - MAX_LEGEND_ROWS} MORE (SEE THE SCORE TABLE)", OTHER_COLOR))
    return lines


def render_camera_preview(target: Trajectory, tracks: Sequence[PreviewTrack] = (),
                          target_mask: torch.Tensor | None = None, params: FOVParams | None = None,
                          width: int = 1024) -> torch.Tensor:
    """The preview as a ComfyUI IMAGE [1, H, W, 3] in 0..1.

    The tracks' trajectories must be in the target's first-camera frame, as retrieval scores them
    (``preview_tracks_from_bank`` does this); ``target_mask`` is the target's packed FOV (computed when None).
    """
    from .fov import fov_mask

    params = params or FOVParams()
    if target_mask is None:
        target_mask = fov_mask(target, params, reference=target)
    if not target.starts_at_identity():
        target = target.relative_to()
    half = width // 2
    map_height = width // 2
    lines = _legend_lines(target, tracks)
    legend_height = 16 + 20 * len(lines)
    canvas = torch.full((3, half + map_height + legend_height, width), BACKGROUND)
    drawn = [(t.trajectory, t.color, 1) for t in tracks if t.trajectory is not None and t.rank is None]
    drawn += [(t.trajectory, t.color, 2) for t in sorted(tracks, key=lambda t: -(t.rank or 0))
              if t.trajectory is not None and t.rank is not None]
    drawn.append((target, TARGET_COLOR, 3))
    _draw_view(canvas, _View("TOP  (X RIGHT, Z UP)", 0, 2, -1.0, (0, 0, half - 2, half - 2)), drawn, params)
    _draw_view(canvas, _View("SIDE  (Z RIGHT, Y DOWN)", 2, 1, 1.0, (half, 0, width - half, half - 2)), drawn, params)
    _draw_fov_map(canvas, (0, half, width, map_height), target_mask, tracks)
    for index, (text, color) in enumerate(lines):
        y = half + map_height + 10 + 20 * index
        canvas[:, y:y + 12, 10:22] = torch.tensor(color)[:, None, None]
        draw_text(canvas, 30, y - 1, text, color if color != OTHER_COLOR else (0.7, 0.7, 0.7), 2)
    return canvas.permute(1, 2, 0)[None].contiguous()


def preview_tracks_from_bank(bank, target: Trajectory, rows: Sequence[dict],
                             masks: dict[str, torch.Tensor]) -> list[PreviewTrack]:
    """Tracks for every bank entry of a retrieval (its rows and masks), cameras put in the target's frame.

    Labels are the entry's bank position and prompt (its id when it has none), as artists know their turns.
    """
    tracks = []
    for number, row in enumerate(rows, start=1):
        entry_id = row["entry_id"]
        trajectory = None
        if row["score"] is not None:
            camera = bank.load_tensor(entry_id, "camera")
            if camera is not None:
                trajectory = Trajectory(camera, name=entry_id)
                if not target.starts_at_identity():
                    trajectory = trajectory.relative_to(target)
        prompt = getattr(bank.entry(entry_id), "prompt", "") or entry_id
        tracks.append(PreviewTrack(f"#{number} {prompt}", trajectory, masks.get(entry_id), row["rank"],
                                   row["iou"], row["containment"], row["score"]))
    return tracks
