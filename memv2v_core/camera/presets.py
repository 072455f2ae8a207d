"""Parametric camera presets: ReCamMaster's ten trajectories (any length and strength) plus an orbit.

At strength 1 and 81 frames each ReCamMaster preset reproduces the matching camera of ReCamMaster's
``camera_extrinsics.json`` after its preprocessing (checked against the real file in the tests). Every preset starts
at the identity (the source video's camera) and moves linearly in time, as ReCamMaster's do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

from .trajectory import DEFAULT_HEIGHT, DEFAULT_HFOV_DEG, DEFAULT_WIDTH, Trajectory, intrinsics_from_fov

# Motion from frame 0 to frame 80 of ReCamMaster's camera_extrinsics.json, measured after its preprocessing.
PAN_DEG = 19.8758
TILT_DEG = 9.9379
DOLLY = 1.9876
LIFT = 0.99379
ARC_SIDE = 1.9876
ARC_FORWARD = 0.5326
# ReCamMaster's translate and arc cameras keep facing a point 4 units in front of the first camera.
SUBJECT_DISTANCE = 4.0
ORBIT_DEG = 90.0  # ours: a quarter turn around the subject at strength 1

# ReCamMaster's --cam_type for each of its presets (identified from the file's motions and its README).
RECAMMASTER_CAM_INDEX: dict[str, int] = {
    "pan_right": 1, "pan_left": 2, "tilt_up": 3, "tilt_down": 4, "zoom_in": 5,
    "zoom_out": 6, "translate_up": 7, "translate_down": 8, "arc_left": 9, "arc_right": 10,
}
PRESET_NAMES: tuple[str, ...] = (*RECAMMASTER_CAM_INDEX, "orbit_left", "orbit_right")
PRESET_DESCRIPTIONS: dict[str, str] = {
    "pan_right": "turn the view right in place (ReCamMaster 1)",
    "pan_left": "turn the view left in place (ReCamMaster 2)",
    "tilt_up": "turn the view up in place (ReCamMaster 3)",
    "tilt_down": "turn the view down in place (ReCamMaster 4)",
    "zoom_in": "move the camera forward along its axis; a dolly, not a focal change (ReCamMaster 5)",
    "zoom_out": "move the camera backward along its axis (ReCamMaster 6)",
    "translate_up": "rise while tilting down to keep the subject framed (ReCamMaster 7)",
    "translate_down": "sink while tilting up to keep the subject framed (ReCamMaster 8)",
    "arc_left": "move left and forward while turning right towards the subject (ReCamMaster 9)",
    "arc_right": "move right and forward while turning left towards the subject (ReCamMaster 10)",
    "orbit_left": "circle left around the subject at subject_distance, always facing it",
    "orbit_right": "circle right around the subject at subject_distance, always facing it",
}


def look_at(positions: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Camera-to-world poses [F, 4, 4] at ``positions`` [F, 3] looking at ``target`` [3], image x kept level.

    Level means the camera x axis stays perpendicular to the world y (down) axis, so there is no roll.
    """
    forward = target[None, :] - positions
    distance = forward.norm(dim=1)
    if (distance < 1e-6).any():
        raise ValueError("the camera path passes through the subject it looks at; increase subject_distance")
    forward = forward / distance[:, None]
    down = torch.tensor([0.0, 1.0, 0.0]).expand_as(forward)
    right = torch.linalg.cross(down, forward)
    if (right.norm(dim=1) < 1e-6).any():
        raise ValueError("the camera would look straight up or down at the subject; lower the strength")
    right = right / right.norm(dim=1, keepdim=True)
    c2w = torch.eye(4).repeat(positions.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = torch.linalg.cross(forward, right)
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = positions
    return c2w


def _rotation_only(axis: tuple[float, float, float], degrees: torch.Tensor) -> torch.Tensor:
    axis_angle = torch.tensor(axis)[None, :] * torch.deg2rad(degrees)[:, None]
    c2w = torch.eye(4).repeat(degrees.shape[0], 1, 1)
    c2w[:, :3, :3] = axis_angle_to_rotation_matrix(axis_angle)
    return c2w


def _translation_only(direction: tuple[float, float, float], amount: torch.Tensor) -> torch.Tensor:
    c2w = torch.eye(4).repeat(amount.shape[0], 1, 1)
    c2w[:, :3, 3] = torch.tensor(direction)[None, :] * amount[:, None]
    return c2w


def _subject(distance: float) -> torch.Tensor:
    return torch.tensor([0.0, 0.0, distance])


# Each builder maps progress p [F] (0 -> 1 at strength 1) and the subject distance to c2w [F, 4, 4].
# Pan right turns about +y (down): the view direction gains +x. Tilt up turns about +x: it gains -y (up).
_BUILDERS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "pan_right": lambda p, d: _rotation_only((0.0, 1.0, 0.0), PAN_DEG * p),
    "pan_left": lambda p, d: _rotation_only((0.0, -1.0, 0.0), PAN_DEG * p),
    "tilt_up": lambda p, d: _rotation_only((1.0, 0.0, 0.0), TILT_DEG * p),
    "tilt_down": lambda p, d: _rotation_only((-1.0, 0.0, 0.0), TILT_DEG * p),
    "zoom_in": lambda p, d: _translation_only((0.0, 0.0, 1.0), DOLLY * p),
    "zoom_out": lambda p, d: _translation_only((0.0, 0.0, -1.0), DOLLY * p),
    "translate_up": lambda p, d: look_at(torch.stack([0 * p, -LIFT * p, 0 * p], 1), _subject(d)),
    "translate_down": lambda p, d: look_at(torch.stack([0 * p, LIFT * p, 0 * p], 1), _subject(d)),
    "arc_left": lambda p, d: look_at(torch.stack([-ARC_SIDE * p, 0 * p, ARC_FORWARD * p], 1), _subject(d)),
    "arc_right": lambda p, d: look_at(torch.stack([ARC_SIDE * p, 0 * p, ARC_FORWARD * p], 1), _subject(d)),
    "orbit_left": lambda p, d: _orbit(-1.0, p, d),
    "orbit_right": lambda p, d: _orbit(1.0, p, d),
}


def _orbit(side: float, progress: torch.Tensor, distance: float) -> torch.Tensor:
    """A circle of radius ``distance`` around the subject, which sits ``distance`` in front of the first camera."""
    angle = torch.deg2rad(ORBIT_DEG * progress)
    positions = torch.stack([side * distance * torch.sin(angle), 0 * angle, distance * (1 - torch.cos(angle))], 1)
    return look_at(positions, _subject(distance))


def preset_trajectory(name: str, frames: int = 81, strength: float = 1.0, subject_distance: float = SUBJECT_DISTANCE,
                      width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                      hfov_deg: float = DEFAULT_HFOV_DEG) -> Trajectory:
    """The named preset with ``frames`` poses; ``strength`` scales the motion (angle or distance) linearly.

    ``subject_distance`` is the distance to the point that translate, arc and orbit presets keep facing
    (4.0 reproduces ReCamMaster). Frame 0 is always the identity.
    """
    if name not in _BUILDERS:
        raise ValueError(f"camera preset {name!r} is unknown; choose one of {', '.join(PRESET_NAMES)}")
    if frames < 2:
        raise ValueError(f"camera preset {name}: frames={frames} must be at least 2 (81 matches ReCamMaster)")
    if not math.isfinite(strength):
        raise ValueError(f"camera preset {name}: strength={strength} must be a finite number (1.0 = ReCamMaster)")
    if not (math.isfinite(subject_distance) and subject_distance > 0):
        raise ValueError(f"camera preset {name}: subject_distance={subject_distance} must be positive "
                         "(4.0 = ReCamMaster)")
    progress = torch.linspace(0.0, 1.0, frames, dtype=torch.float64).float() * strength
    c2w = _BUILDERS[name](progress, subject_distance)
    c2w[0] = torch.eye(4)  # exact identity at the start, whatever the rounding
    return Trajectory(c2w, intrinsics_from_fov(width, height, hfov_deg), width, height, name,
                      {"preset": name, "strength": f"{strength:g}"})
