"""VideoFOV benchmark: mask projection and scoring speed on one CPU core, and the ten-trajectory score matrix.

Run ``python -m memv2v_core.bench fov [--reps N] [--candidates N] [--matrix] [--radius R] [--data DIR]``.
Limits (issue 4): the mask of an 81-frame trajectory over the 64,800-point grid in under 50 ms, and scoring a
target against 1,000 stored masks in under 20 ms, both with ``torch.set_num_threads(1)``. The variants of each are
timed side by side in one run; the exit status is 1 if a limit is missed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from ..camera.files import load_recammaster
from ..camera.presets import RECAMMASTER_CAM_INDEX, preset_trajectory
from ..retrieval.fov import (GRID_POINTS, PACKED_BYTES, FOVParams, fov_mask, fov_overlap, pack_mask, popcount_table,
                   sphere_directions, unpack_mask, visible_points)

MASK_LIMIT_MS = 50.0
SCORE_LIMIT_MS = 20.0
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _median_ms(function: Callable[[], object], reps: int) -> float:
    function()  # warm-up (allocations, lazily built grid)
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000.0


def _visible_abs_all_frames(c2w: torch.Tensor, params: FOVParams) -> torch.Tensor:
    """Reference: x_c = R^T (p - C) for all frames at once, then |x| < z tan_x and |y| < z tan_y."""
    tan_x, tan_y = params.half_extent
    points = sphere_directions() * params.radius
    camera = torch.einsum("fji,fnj->fni", c2w[:, :3, :3], points[None] - c2w[:, None, :3, 3])
    inside = (camera[..., 0].abs() < camera[..., 2] * tan_x) & (camera[..., 1].abs() < camera[..., 2] * tan_y)
    return inside.any(0)


def _overlap_table(target: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    intersection = popcount_table(candidates & target).double()
    union = popcount_table(candidates | target).double()
    return intersection / union.clamp(min=1), intersection / max(float(popcount_table(target)), 1.0)


def _overlap_unpacked(target_bits: torch.Tensor, candidate_bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    intersection = (candidate_bits & target_bits).sum(1).double()
    union = (candidate_bits | target_bits).sum(1).double()
    return intersection / union.clamp(min=1), intersection / max(float(target_bits.sum()), 1.0)


def speed_tables(reps: int, candidates: int) -> bool:
    """Print the two timing tables; True when both limits hold."""
    params = FOVParams()
    trajectory = preset_trajectory("arc_right", 81)
    used = visible_points(trajectory.c2w, params)
    assert torch.equal(_visible_abs_all_frames(trajectory.c2w, params), used), "mask variants disagree"
    mask_rows = [
        ("plane tests, 4-frame chunks (fov_mask, used)", _median_ms(lambda: fov_mask(trajectory, params), reps)),
        ("|x|<z*tan, all 81 frames at once (reference)",
         _median_ms(lambda: _visible_abs_all_frames(trajectory.c2w, params), reps)),
    ]
    print(f"\nFOV mask of one 81-frame trajectory ({GRID_POINTS} grid points, 1 thread, median of {reps})")
    _print_rows(mask_rows, MASK_LIMIT_MS)

    generator = torch.Generator().manual_seed(0)
    stored = pack_mask(torch.rand(candidates, GRID_POINTS, generator=generator) < 0.3)
    target = fov_mask(preset_trajectory("pan_left"), params)
    target_bits, stored_bits = unpack_mask(target), unpack_mask(stored)
    reference = _overlap_table(target, stored)
    assert all(torch.allclose(a, b) for a, b in zip(fov_overlap(target, stored), reference)), "score variants disagree"
    score_rows = [
        ("numpy bitwise_count, 32-bit words (fov_overlap, used)",
         _median_ms(lambda: fov_overlap(target, stored), reps)),
        ("256-entry popcount table (torch.take)",
         _median_ms(lambda: _overlap_table(target, stored), max(3, reps // 4))),
        ("unpacked bool masks, & | and sum", _median_ms(lambda: _overlap_unpacked(target_bits, stored_bits), 3)),
    ]
    print(f"\nScore one target against {candidates} stored masks ({PACKED_BYTES} bytes each; IoU and containment, "
          f"1 thread)")
    _print_rows(score_rows, SCORE_LIMIT_MS)
    return mask_rows[0][1] < MASK_LIMIT_MS and score_rows[0][1] < SCORE_LIMIT_MS


def _print_rows(rows: list[tuple[str, float]], limit_ms: float) -> None:
    used = rows[0][1]
    print(f"  {'variant':<56} {'ms':>9} {'vs used':>8}")
    for name, milliseconds in rows:
        print(f"  {name:<56} {milliseconds:9.2f} {milliseconds / used:7.1f}x")
    print(f"  limit {limit_ms:.0f} ms: {'met' if used < limit_ms else 'MISSED'} ({used:.2f} ms)")


def _print_matrix(title: str, names: list[str], values: torch.Tensor) -> None:
    print(f"\n{title}")
    print(" " * 15 + "".join(f"{name.replace('translate', 'trans'):>11}" for name in names))
    for name, row in zip(names, values.tolist()):
        print(f"{name:>15}" + "".join(f"{value:11.3f}" for value in row))


def _rotation_error_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    r = (a.T @ b).double()
    sine = torch.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]).norm() / 2
    return math.degrees(math.atan2(float(sine), float((torch.trace(r) - 1) / 2)))


def matrix_tables(data: Path, radius: float) -> None:
    """Print preset-vs-file agreement and the 10x10 IoU, containment and score matrices (rows: target)."""
    path = data / "recammaster" / "camera_extrinsics.json"
    names = list(RECAMMASTER_CAM_INDEX)
    if path.is_file():
        trajectories = [load_recammaster(path, index) for index in RECAMMASTER_CAM_INDEX.values()]
        source = f"parsed from {path}"
        print(f"\nParametric presets (81 frames, strength 1) against {path.name}, last frame")
        print(f"  {'preset':<15} {'cam':>3} {'rotation err deg':>17} {'translation err':>16} {'mask IoU':>9}")
        for name, parsed in zip(names, trajectories):
            preset = preset_trajectory(name, 81)
            iou, _ = fov_overlap(fov_mask(parsed, radius=radius), fov_mask(preset, radius=radius)[None])
            print(f"  {name:<15} {RECAMMASTER_CAM_INDEX[name]:>3} "
                  f"{_rotation_error_deg(parsed.rotations[-1], preset.rotations[-1]):17.5f} "
                  f"{float((parsed.centers[-1] - preset.centers[-1]).norm()):16.6f} {float(iou[0]):9.4f}")
    else:
        trajectories = [preset_trajectory(name, 81) for name in names]
        source = f"parametric presets ({path} not found)"
    masks = torch.stack([fov_mask(t, radius=radius) for t in trajectories])
    rows = [fov_overlap(masks[i], masks) for i in range(len(names))]
    iou = torch.stack([r[0] for r in rows])
    containment = torch.stack([r[1] for r in rows])
    print(f"\nTen ReCamMaster trajectories, {source}; sphere radius {radius:g}; row = target, column = candidate")
    _print_matrix("IoU (symmetric)", names, iou)
    _print_matrix("containment |Ft & Fj| / |Ft|", names, containment)
    _print_matrix("score = 0.5 IoU + 0.5 containment", names, 0.5 * iou + 0.5 * containment)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m memv2v_core.bench fov", description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per variant (median reported)")
    parser.add_argument("--candidates", type=int, default=1000, help="stored masks scored against one target")
    parser.add_argument("--matrix", action="store_true", help="also print the 10x10 ReCamMaster score matrices")
    parser.add_argument("--radius", type=float, default=1.0, help="sphere radius for --matrix (paper: 1)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="shared data folder with recammaster/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ok = speed_tables(args.reps, args.candidates)
    if args.matrix:
        matrix_tables(args.data, args.radius)
    return 0 if ok else 1
