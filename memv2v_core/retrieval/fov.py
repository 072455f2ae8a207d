"""VideoFOV (Memory-V2V retrieval for novel view synthesis): sphere-coverage masks of trajectories and their scores.

A trajectory's field of view is the set of points of a 180 x 360 latitude-longitude grid on a sphere (centred at
the origin of the frame the poses are given in) that some frame sees: in front of the camera and inside the image
of a fixed pinhole camera, no occlusion. Masks are bit-packed (64,800 bits = 8,100 uint8 bytes) so a bank can
store them with its entries and score thousands of them with a popcount.

Grid: row u has latitude (u + 0.5) - 90 degrees, column v longitude (v + 0.5) - 180 degrees. Longitude 0 is +z
(the first camera's view), positive longitude turns towards +x (right), positive latitude towards +y (down), so
the unpacked [180, 360] mask reads like an equirectangular image of the first camera's surroundings (row 0 = up).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..camera.trajectory import DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_WIDTH, Trajectory

GRID_ROWS = 180
GRID_COLS = 360
GRID_POINTS = GRID_ROWS * GRID_COLS  # 64,800, the paper's M
PACKED_BYTES = GRID_POINTS // 8  # 8,100
DEFAULT_LAMBDA = 0.5
DEFAULT_TOP_K = 6
MASK_NAME = "fov_mask"  # the bank slot of a mask made with the default settings
# Frames projected at once: the [4 * chunk, 64800] float temporary (4 MB) stays in cache; measured fastest.
_FRAME_CHUNK = 4


@dataclass(frozen=True)
class FOVParams:
    """Projection settings of a mask (*ours* where the paper is silent; see algorithms.md 1.2).

    ``width`` x ``height`` and ``hfov_deg`` define the fixed pinhole camera used for every trajectory (principal
    point at the centre); ``radius`` is the sample sphere's (paper: 1). ReCamMaster cameras translate up to ~2
    units, so with radius 1 a dolly leaves the sphere; a larger radius measures viewing-direction coverage instead.
    """

    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    hfov_deg: float = DEFAULT_HFOV_DEG
    radius: float = 1.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"FOV image size {self.width}x{self.height} must be positive; the default is 832x480")
        if not 0.0 < self.hfov_deg < 180.0:
            raise ValueError(f"FOV horizontal field of view {self.hfov_deg} must lie in (0, 180) degrees; "
                             f"the default is {DEFAULT_HFOV_DEG}")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"FOV sphere radius {self.radius} must be positive; the paper uses 1")

    @property
    def is_default(self) -> bool:
        return self == FOVParams()

    @property
    def half_extent(self) -> tuple[float, float]:
        """tan of the half field of view, horizontally and vertically (image-plane half size at depth 1)."""
        tan_x = math.tan(math.radians(self.hfov_deg) / 2.0)
        return tan_x, tan_x * self.height / self.width


def make_params(params: FOVParams | None = None, **overrides) -> FOVParams:
    """``params`` with keyword overrides (width, height, hfov_deg, radius) applied."""
    base = params or FOVParams()
    if not overrides:
        return base
    unknown = set(overrides) - {"width", "height", "hfov_deg", "radius"}
    if unknown:
        raise ValueError(f"unknown FOV setting(s) {sorted(unknown)}; use width, height, hfov_deg, radius")
    return FOVParams(**{**base.__dict__, **overrides})


def mask_key(params: FOVParams | None = None) -> str:
    """Bank cache slot for masks made with ``params``: ``fov_mask`` for the defaults, else a name spelling them out."""
    params = params or FOVParams()
    if params.is_default:
        return MASK_NAME
    text = f"{MASK_NAME}_{params.width}x{params.height}_hfov{params.hfov_deg:g}_r{params.radius:g}"
    return text.replace(".", "p").replace("-", "m").replace("+", "")


@functools.lru_cache(maxsize=1)
def sphere_directions() -> torch.Tensor:
    """Unit directions [64800, 3] of the grid's cell centres, row-major (latitude rows, longitude columns)."""
    latitude = torch.deg2rad(torch.arange(GRID_ROWS, dtype=torch.float64) + 0.5 - 90.0)
    longitude = torch.deg2rad(torch.arange(GRID_COLS, dtype=torch.float64) + 0.5 - 180.0)
    lat, lon = torch.meshgrid(latitude, longitude, indexing="ij")
    directions = torch.stack([lat.cos() * lon.sin(), lat.sin(), lat.cos() * lon.cos()], dim=-1)
    return directions.reshape(GRID_POINTS, 3).float().contiguous()


def _frustum_planes(c2w: torch.Tensor, params: FOVParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The four side planes of every frame's view pyramid as world-space half-spaces n . p + d > 0.

    With camera coordinates x_c = R^T (p - C), a point is inside the image and in front of the camera iff
    z > |x| / tan_x and z > |y| / tan_y (which implies z > 0): four linear tests per frame.
    """
    tan_x, tan_y = params.half_extent
    camera_normals = torch.tensor([[-1.0 / tan_x, 0.0, 1.0], [1.0 / tan_x, 0.0, 1.0],
                                   [0.0, -1.0 / tan_y, 1.0], [0.0, 1.0 / tan_y, 1.0]])
    normals = camera_normals @ c2w[:, :3, :3].float().transpose(1, 2)  # [F, 4, 3]
    offsets = -(normals @ c2w[:, :3, 3].float()[:, :, None])  # [F, 4, 1]
    return normals.reshape(-1, 3), offsets.reshape(-1, 1)


def visible_points(c2w: torch.Tensor, params: FOVParams | None = None) -> torch.Tensor:
    """Bool [64800]: grid points seen by at least one of the poses c2w [F, 4, 4] (union of frame FOVs)."""
    params = params or FOVParams()
    points_t = (sphere_directions() * params.radius).T.contiguous()  # [3, N]
    normals, offsets = _frustum_planes(c2w, params)
    # A point is seen when, for some frame, its smallest plane margin is positive: max over frames of min over
    # planes. Chunks of a few frames keep the [4 * chunk, N] temporary inside the CPU cache (measured fastest).
    best = torch.full((GRID_POINTS,), -math.inf)
    rows = 4 * _FRAME_CHUNK
    for start in range(0, normals.shape[0], rows):
        margins = torch.addmm(offsets[start:start + rows], normals[start:start + rows], points_t)
        torch.maximum(best, margins.view(-1, 4, GRID_POINTS).amin(1).amax(0), out=best)
    return best > 0


def fov_mask(trajectory: Trajectory, params: FOVParams | None = None, *,
             reference: Trajectory | torch.Tensor | None = None, **overrides) -> torch.Tensor:
    """Bit-packed video FOV (uint8 [8100]) of ``trajectory``: the union over its frames.

    ``reference`` (a trajectory or a 4x4 pose): re-express the poses relative to its first camera first, which puts
    the sphere's centre there (the target's first camera, as in the paper). None uses the poses as given, i.e. the
    scene frame; presets and ReCamMaster files start at the identity, so both agree for them.
    Settings: ``params`` or keywords width (832), height (480), hfov_deg (73.74), radius (1.0).
    """
    params = make_params(params, **overrides)
    poses = trajectory if reference is None else trajectory.relative_to(reference)
    return pack_mask(visible_points(poses.c2w, params))


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_BIT_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)
# Set bits per byte value: popcount by table lookup.
POPCOUNT_TABLE = torch.tensor([bin(value).count("1") for value in range(256)], dtype=torch.uint8)


def pack_mask(bits: torch.Tensor) -> torch.Tensor:
    """Bool [..., 64800] -> uint8 [..., 8100], most significant bit first (numpy.packbits order)."""
    if bits.shape[-1] != GRID_POINTS:
        raise ValueError(f"a FOV mask has {GRID_POINTS} points, got a last dimension of {bits.shape[-1]}")
    grouped = bits.reshape(*bits.shape[:-1], PACKED_BYTES, 8).to(torch.uint8)
    return (grouped * _BIT_WEIGHTS).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 8100] -> bool [..., 64800]; view as [..., 180, 360] for the equirectangular map."""
    packed = as_packed_mask(packed)
    return ((packed[..., None] >> _BIT_SHIFTS) & 1).bool().reshape(*packed.shape[:-1], GRID_POINTS)


def as_packed_mask(mask: torch.Tensor, what: str = "FOV mask") -> torch.Tensor:
    """Check that ``mask`` is a packed mask (uint8, last dimension 8100) and return it on the CPU."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.uint8 or mask.shape[-1:] != (PACKED_BYTES,):
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        dtype = mask.dtype if isinstance(mask, torch.Tensor) else None
        raise ValueError(f"{what} must be a bit-packed uint8 tensor [..., {PACKED_BYTES}] from fov_mask, "
                         f"got {shape} {dtype}")
    return mask.cpu()


def popcount_table(packed: torch.Tensor) -> torch.Tensor:
    """Set bits along the last dimension of a uint8 tensor (int64), via the 256-entry table (portable fallback)."""
    return torch.take(POPCOUNT_TABLE, packed.long()).sum(-1, dtype=torch.int64)


def popcount(packed: torch.Tensor) -> torch.Tensor:
    """Set bits along the last dimension of a uint8 tensor (int64).

    Uses numpy's SIMD ``bitwise_count`` on 32-bit words (numpy >= 2; ~15x faster than the table, measured in
    ``python -m memv2v_core.bench fov``), else the 256-entry table.
    """
    if not _HAS_BITWISE_COUNT:
        return popcount_table(packed)
    array = packed.contiguous().numpy()
    if array.shape[-1] % 4 == 0:
        array = array.view(np.uint32)
    return torch.as_tensor(np.bitwise_count(array).sum(-1, dtype=np.int64))


def _intersection_union(target: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|Ft ∩ Fj| and |Ft ∪ Fj| (float64 [K]), on 32-bit numpy words when available (fastest measured)."""
    if not _HAS_BITWISE_COUNT:
        return popcount_table(candidates & target).double(), popcount_table(candidates | target).double()
    words = candidates.contiguous().numpy().view(np.uint32)
    target_words = target.contiguous().numpy().view(np.uint32)
    intersection = np.bitwise_count(words & target_words).sum(-1, dtype=np.int64)
    union = np.bitwise_count(words | target_words).sum(-1, dtype=np.int64)
    return torch.from_numpy(intersection).double(), torch.from_numpy(union).double()


def fov_overlap(target: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and containment (|Ft ∩ Fj| / |Ft|) of a packed target mask against packed candidates [K, 8100].

    Both are float64 [K]; an empty target or an empty union scores 0.
    """
    target = as_packed_mask(target, "target FOV mask").reshape(PACKED_BYTES)
    candidates = as_packed_mask(candidates, "candidate FOV masks").reshape(-1, PACKED_BYTES)
    intersection, union = _intersection_union(target, candidates)
    target_size = float(popcount(target))
    iou = intersection / union.clamp(min=1.0)
    containment = intersection / max(target_size, 1.0)
    return iou, containment


def _masks_for(target: Trajectory | torch.Tensor, candidates: Sequence[Trajectory | torch.Tensor] | torch.Tensor,
               params: FOVParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed masks of a target and its candidates; trajectories are put in the target's first-camera frame."""
    reference = target if isinstance(target, Trajectory) else None
    target_mask = fov_mask(target, params, reference=target) if isinstance(target, Trajectory) else target
    if isinstance(candidates, torch.Tensor):
        return target_mask, candidates.reshape(-1, PACKED_BYTES)
    masks = [fov_mask(c, params, reference=reference) if isinstance(c, Trajectory) else as_packed_mask(c)
             for c in candidates]
    stacked = torch.stack(masks) if masks else torch.zeros(0, PACKED_BYTES, dtype=torch.uint8)
    return target_mask, stacked


def combine_scores(iou: torch.Tensor, containment: torch.Tensor, lam: float = DEFAULT_LAMBDA) -> torch.Tensor:
    """Memory-V2V's score lam * IoU + (1 - lam) * containment."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda={lam} must lie in [0, 1] (0.5 in the paper: half IoU, half containment)")
    return lam * iou + (1.0 - lam) * containment


def fov_scores(target: Trajectory | torch.Tensor, candidates: Sequence[Trajectory | torch.Tensor] | torch.Tensor,
               lam: float = DEFAULT_LAMBDA, params: FOVParams | None = None, **overrides) -> list[float]:
    """One score per candidate, in order: lam * IoU + (1 - lam) * containment of the target's FOV.

    Target and candidates are trajectories (projected relative to the target's first camera) or packed masks.
    """
    target_mask, candidate_masks = _masks_for(target, candidates, make_params(params, **overrides))
    iou, containment = fov_overlap(target_mask, candidate_masks)
    return combine_scores(iou, containment, lam).tolist()


def rank_scores(scores: Sequence[float], k: int) -> list[tuple[int, float]]:
    """Indices of the ``k`` best scores, best first; ties keep the input order."""
    if k < 0:
        raise ValueError(f"top_k={k} must not be negative")
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [(i, float(scores[i])) for i in order[:k]]


def retrieve(target: Trajectory | torch.Tensor, candidates: Sequence[Trajectory | torch.Tensor] | torch.Tensor,
             k: int = DEFAULT_TOP_K, lam: float = DEFAULT_LAMBDA, params: FOVParams | None = None,
             **overrides) -> list[tuple[int, float]]:
    """The ``k`` candidates that best cover the target's FOV as (index, score), best first (fewer if fewer exist)."""
    return rank_scores(fov_scores(target, candidates, lam, params, **overrides), k)
