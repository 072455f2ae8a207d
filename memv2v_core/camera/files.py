"""Trajectory file parsers: ReCamMaster ``camera_extrinsics.json``, RealEstate10K text, plain JSON of 4x4 matrices.

Every error names the file and, where it applies, the frame, and says how to fix it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from kornia.geometry.linalg import inverse_transformation

from .trajectory import DEFAULT_HEIGHT, DEFAULT_WIDTH, RIGID_TOLERANCE, Trajectory, check_c2w

logger = logging.getLogger(__name__)

FORMATS = ("auto", "recammaster", "realestate10k", "matrices")
RECAMMASTER_FRAMES = 81  # ReCamMaster reads frames 0, 4, ..., 80 of an 81-frame clip
RECAMMASTER_STRIDE = 4
_ROW = re.compile(r"\[([^\[\]]*)\]")
# OpenGL / Blender camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward).
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


class CameraFileError(ValueError):
    """A trajectory file that cannot be read; the message names the file, the frame and the fix."""


def detect_format(path: str | os.PathLike) -> str:
    """Guess a file's format: ``.txt`` is RealEstate10K; JSON with ``frame0`` keys is ReCamMaster, else matrices."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return "realestate10k"
    data = _read_json(path)
    if isinstance(data, dict) and any(re.fullmatch(r"frame\d+", str(k)) for k in data):
        return "recammaster"
    return "matrices"


def load_trajectory(path: str | os.PathLike, file_format: str = "auto", cam_index: int = 1) -> Trajectory:
    """Load any supported trajectory file; ``cam_index`` (1-based) picks the camera in a ReCamMaster file."""
    if file_format not in FORMATS:
        raise CameraFileError(f"camera file format {file_format!r} is unknown; choose one of {', '.join(FORMATS)}")
    if not Path(path).is_file():
        raise CameraFileError(f"camera file '{path}' does not exist; put it in ComfyUI's input folder")
    if file_format == "auto":
        file_format = detect_format(path)
    if file_format == "recammaster":
        return load_recammaster(path, cam_index)
    if file_format == "realestate10k":
        return load_realestate10k(path)
    return load_matrices_json(path)


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CameraFileError(f"camera file '{path}' is not readable JSON ({error}); check the file") from error


def _parse_recammaster_matrix(text: str, where: str) -> list[list[float]]:
    rows = _ROW.findall(str(text))
    try:
        matrix = [[float(value) for value in row.split()] for row in rows]
    except ValueError as error:
        raise CameraFileError(f"{where}: {error}; each matrix must be '[a b c d] [..] [..] [x y z 1]'") from error
    if len(matrix) != 4 or any(len(row) != 4 for row in matrix):
        raise CameraFileError(f"{where}: expected 4 bracketed rows of 4 numbers, got {[len(r) for r in matrix]}")
    return matrix


def load_recammaster(path: str | os.PathLike, cam_index: int, num_frames: int = RECAMMASTER_FRAMES,
                     stride: int = RECAMMASTER_STRIDE) -> Trajectory:
    """Camera ``cam_index`` of a ReCamMaster ``camera_extrinsics.json``, preprocessed exactly as ReCamMaster does.

    Frames 0, stride, ..., num_frames - 1 (21 poses by default); each Unreal matrix (row-vector layout,
    translation in the last row) is transposed, its columns permuted [1, 2, 0, 3] (Unreal's forward/right/up ->
    right/down/forward), column 1 negated, translation divided by 100, and every pose made relative to the first.
    The result is in the OpenCV convention with frame 0 at the identity.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or "frame0" not in data:
        raise CameraFileError(f"camera file '{path}' is not a ReCamMaster camera_extrinsics.json "
                              "(no 'frame0' key); pick another format")
    cameras = sorted(data["frame0"]) if isinstance(data["frame0"], dict) else []
    camera_key = f"cam{int(cam_index):02d}"
    if camera_key not in cameras:
        raise CameraFileError(f"camera file '{path}': cam_index {cam_index} not found; it has {', '.join(cameras)} "
                              f"(cam_index 1..{len(cameras)})")
    frame_ids = list(range(0, num_frames, stride))
    missing = [i for i in frame_ids if f"frame{i}" not in data or camera_key not in data[f"frame{i}"]]
    if missing:
        raise CameraFileError(f"camera file '{path}': {camera_key} lacks frame{missing[0]}; ReCamMaster needs "
                              f"frames 0, {stride}, ..., {num_frames - 1} ({len(missing)} missing); "
                              f"give all {num_frames} frames")
    raw = torch.tensor([_parse_recammaster_matrix(data[f"frame{i}"][camera_key], f"camera file '{path}', frame{i} "
                                                                                     f"{camera_key}")
                        for i in frame_ids], dtype=torch.float64)
    _check_unreal(raw, path, camera_key, frame_ids)
    c2w = raw.transpose(1, 2)[:, :, [1, 2, 0, 3]].clone()
    c2w[:, :3, 1] *= -1.0
    c2w[:, :3, 3] /= 100.0
    relative = inverse_transformation(c2w[:1]) @ c2w
    source = f"camera file '{path}' {camera_key}"
    relative = check_c2w(relative.float(), source)
    return Trajectory(relative, name=f"{path.stem}:{camera_key}",
                      metadata={"source": str(path), "format": "recammaster", "cam_index": str(int(cam_index))})


def _check_unreal(raw: torch.Tensor, path: Path, camera_key: str, frame_ids: list[int]) -> None:
    """Unreal matrices: finite, last column (0, 0, 0, 1), rows an orthonormal right-handed-in-numbers basis."""
    for index, frame in enumerate(frame_ids):
        matrix = raw[index]
        where = f"camera file '{path}', frame{frame} {camera_key}"
        if not torch.isfinite(matrix).all():
            raise CameraFileError(f"{where}: contains NaN or infinite values; fix that frame")
        if (matrix[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=matrix.dtype)).abs().max() > RIGID_TOLERANCE:
            raise CameraFileError(f"{where}: last column is {matrix[:, 3].tolist()}, expected [0, 0, 0, 1] "
                                  "(Unreal row-vector layout with the translation in the last row)")
        rotation = matrix[:3, :3]
        error = float((rotation @ rotation.T - torch.eye(3, dtype=matrix.dtype)).abs().max())
        det = float(torch.linalg.det(rotation))
        if error > RIGID_TOLERANCE or abs(det - 1.0) > RIGID_TOLERANCE:
            raise CameraFileError(f"{where}: rotation is not rigid (|R R^T - I| = {error:.3g}, det = {det:.3g}); "
                                  "rows must be orthonormal with no scale or mirroring")


def load_realestate10k(path: str | os.PathLike, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> Trajectory:
    """A RealEstate10K camera file: an optional URL line, then per frame
    ``timestamp fx fy cx cy k1 k2`` and a row-major 3x4 world-to-camera matrix (OpenCV axes).

    Intrinsics are normalised by the image size; the first frame's are scaled to ``width`` x ``height``.
    Poses stay in the file's world frame (its scale is the SLAM reconstruction's).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise CameraFileError(f"camera file '{path}' is not readable text ({error})") from error
    rows: list[list[float]] = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) != 19):
            continue  # blank lines and the URL header
        if len(fields) != 19:
            raise CameraFileError(f"camera file '{path}', line {number} (frame {len(rows)}): {len(fields)} values, "
                                  "expected 19 (timestamp fx fy cx cy k1 k2 and 12 pose numbers)")
        try:
            rows.append([float(value) for value in fields])
        except ValueError as error:
            raise CameraFileError(f"camera file '{path}', line {number} (frame {len(rows)}): {error}") from error
    if not rows:
        raise CameraFileError(f"camera file '{path}' has no camera lines; expected RealEstate10K format "
                              "(timestamp fx fy cx cy 0 0 followed by a 3x4 world-to-camera matrix per line)")
    values = torch.tensor(rows, dtype=torch.float64)
    bad = (~torch.isfinite(values)).any(1)
    if bad.any():
        raise CameraFileError(f"camera file '{path}', frame {int(bad.nonzero()[0])}: NaN or infinite values; fix it")
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(rows), 1, 1)
    w2c[:, :3, :] = values[:, 7:].reshape(-1, 3, 4)
    check_c2w(w2c.float(), f"camera file '{path}'")  # rigidity of the world-to-camera rotation, named by frame
    c2w = inverse_transformation(w2c).float()
    fx, fy, cx, cy = values[0, 1:5].tolist()
    if min(fx, fy) <= 0:
        raise CameraFileError(f"camera file '{path}', frame 0: focal lengths fx={fx}, fy={fy} must be positive "
                              "(normalised by the image width and height)")
    intrinsics = torch.tensor([[fx * width, 0.0, cx * width], [0.0, fy * height, cy * height], [0.0, 0.0, 1.0]])
    return Trajectory(check_c2w(c2w, f"camera file '{path}'"), intrinsics, width, height, path.stem,
                      {"source": str(path), "format": "realestate10k"})


def load_matrices_json(path: str | os.PathLike) -> Trajectory:
    """A plain JSON trajectory: a list of 4x4 (or 3x4) camera-to-world matrices, or an object with

    ``c2w`` (or ``w2c``) such a list, optional ``intrinsics`` (3x3 pixels), ``width``, ``height`` and
    ``convention`` ("opencv", the default: x right, y down, z forward; or "opengl": x right, y up, z backward).
    """
    path = Path(path)
    data = _read_json(path)
    options = data if isinstance(data, dict) else {"c2w": data}
    key = "c2w" if "c2w" in options else "w2c" if "w2c" in options else None
    if key is None:
        raise CameraFileError(f"camera file '{path}': expected a list of 4x4 matrices or an object with a 'c2w' "
                              f"(or 'w2c') list; found keys {sorted(options)}")
    matrices = options[key]
    if not isinstance(matrices, list) or not matrices:
        raise CameraFileError(f"camera file '{path}': '{key}' must be a non-empty list of 4x4 matrices")
    poses = []
    for frame, matrix in enumerate(matrices):
        try:
            pose = torch.tensor(matrix, dtype=torch.float64)
        except (TypeError, ValueError) as error:
            raise CameraFileError(f"camera file '{path}', frame {frame}: not a numeric matrix ({error})") from error
        if tuple(pose.shape) == (3, 4):
            pose = torch.cat([pose, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=pose.dtype)])
        if tuple(pose.shape) != (4, 4):
            raise CameraFileError(f"camera file '{path}', frame {frame}: shape {list(pose.shape)}, expected 4x4 or 3x4")
        poses.append(pose)
    c2w = check_c2w(torch.stack(poses).float(), f"camera file '{path}'")
    if key == "w2c":
        c2w = inverse_transformation(c2w)
    convention = str(options.get("convention", "opencv")).lower()
    if convention not in ("opencv", "opengl"):
        raise CameraFileError(f"camera file '{path}': convention {convention!r} is unknown; use 'opencv' or 'opengl'")
    if convention == "opengl":
        c2w = c2w @ _GL_TO_CV
    width = int(options.get("width", DEFAULT_WIDTH))
    height = int(options.get("height", DEFAULT_HEIGHT))
    intrinsics = options.get("intrinsics")
    try:
        return Trajectory(c2w, None if intrinsics is None else torch.tensor(intrinsics, dtype=torch.float32),
                          width, height, path.stem, {"source": str(path), "format": "matrices"})
    except (TypeError, ValueError) as error:
        raise CameraFileError(f"camera file '{path}': {error}") from error
