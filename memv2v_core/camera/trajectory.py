"""Camera trajectories in one convention, and the ReCamMaster camera-embedding input made from them.

Convention (used everywhere in the pack): ``c2w`` maps camera coordinates to world coordinates and the camera
axes are OpenCV's, x right, y down, z forward (the viewing direction). A camera at the identity looks along +z
with +y pointing down in its image. Rotation R = c2w[:3, :3] (its columns are the camera axes in the world),
centre C = c2w[:3, 3]. Translation units are ReCamMaster's (its UE centimetres / 100): its presets move about 2 units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from kornia.geometry.linalg import inverse_transformation
from kornia.geometry.quaternion import Quaternion

DEFAULT_WIDTH = 832
DEFAULT_HEIGHT = 480
# 24 mm lens on a 36 mm-wide sensor: 2 * atan(18 / 24) = 73.74 degrees (MultiCamVideo's 24 mm rig).
DEFAULT_HFOV_DEG = 73.74
# Largest |R^T R - I| entry and |det R - 1| accepted as a rigid rotation (files carry ~6 significant digits).
RIGID_TOLERANCE = 1e-3
# ReCamMaster's VAE stride in time: latent frame i covers video frame 4 i (81 frames -> 21 latent frames).
TEMPORAL_STRIDE = 4


def intrinsics_from_fov(width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                        hfov_deg: float = DEFAULT_HFOV_DEG) -> torch.Tensor:
    """Pinhole K [3, 3] in pixels: square pixels, principal point at the image centre, given horizontal FOV."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive; use e.g. 832x480")
    if not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"horizontal field of view {hfov_deg} degrees must lie in (0, 180); "
                         f"the default is {DEFAULT_HFOV_DEG}")
    focal = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32)


def check_c2w(c2w: torch.Tensor, source: str = "trajectory", min_frames: int = 1) -> torch.Tensor:
    """Validate camera-to-world poses [F, 4, 4] and return them as float32; errors name the source and the frame."""
    if not isinstance(c2w, torch.Tensor):
        c2w = torch.as_tensor(c2w)
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"{source}: camera poses must have shape [frames, 4, 4], got {list(c2w.shape)}; "
                         "give one 4x4 camera-to-world matrix per frame")
    if c2w.shape[0] < min_frames:
        raise ValueError(f"{source}: {c2w.shape[0]} frame(s), but at least {min_frames} are needed; "
                         "use a longer trajectory")
    c2w = c2w.to(torch.float32)
    bad = (~torch.isfinite(c2w)).flatten(1).any(1)
    if bad.any():
        raise ValueError(f"{source}: frame {int(bad.nonzero()[0])} contains NaN or infinite values; "
                         "fix or drop that frame")
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0])
    bad = ((c2w[:, 3] - bottom).abs() > RIGID_TOLERANCE).any(1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"{source}: frame {i} has bottom row {c2w[i, 3].tolist()}, expected [0, 0, 0, 1]; "
                         "give rigid camera-to-world matrices")
    rotation = c2w[:, :3, :3].double()
    error = (rotation.transpose(1, 2) @ rotation - torch.eye(3, dtype=torch.float64)).abs().flatten(1).amax(1)
    det = torch.linalg.det(rotation)
    bad = (error > RIGID_TOLERANCE) | ((det - 1.0).abs() > RIGID_TOLERANCE)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"{source}: frame {i} is not a rigid rotation (|R^T R - I| = {float(error[i]):.3g}, "
                         f"det R = {float(det[i]):.3g}); the rotation part must be orthonormal with determinant +1 "
                         "(no scale, shear or mirroring)")
    return c2w.contiguous()


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Per-frame camera-to-world poses ``c2w`` [frames, 4, 4] (OpenCV axes) with pinhole intrinsics for an image size.

    ``intrinsics`` is K [3, 3] in pixels for ``width`` x ``height`` (None: the default 73.74 degree lens).
    Poses are validated on construction; the tensors are float32 on the CPU.
    """

    c2w: torch.Tensor
    intrinsics: torch.Tensor | None = None
    width: int = DEFAULT_WIDTH
    height: int = DEFAULT_HEIGHT
    name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = f"trajectory '{self.name}'" if self.name else "trajectory"
        object.__setattr__(self, "c2w", check_c2w(self.c2w.detach().cpu() if isinstance(self.c2w, torch.Tensor)
                                                  else self.c2w, source))
        if self.intrinsics is None:
            object.__setattr__(self, "intrinsics", intrinsics_from_fov(self.width, self.height))
        else:
            k = torch.as_tensor(self.intrinsics, dtype=torch.float32).detach().cpu()
            if tuple(k.shape) != (3, 3) or not torch.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
                raise ValueError(f"{source}: intrinsics must be a finite 3x3 pinhole matrix with positive focal "
                                 f"lengths, got {k.tolist()}")
            object.__setattr__(self, "intrinsics", k)

    def __repr__(self) -> str:
        return (f"Trajectory(name={self.name!r}, frames={self.num_frames}, {self.width}x{self.height}, "
                f"hfov={self.hfov_deg:.2f} deg)")

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def rotations(self) -> torch.Tensor:
        """Camera-to-world rotations [F, 3, 3]; column 2 is the viewing direction."""
        return self.c2w[:, :3, :3]

    @property
    def centers(self) -> torch.Tensor:
        """Camera centres in the world [F, 3]."""
        return self.c2w[:, :3, 3]

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan((self.width / 2.0) / float(self.intrinsics[0, 0])))

    @classmethod
    def identity(cls, frames: int = 1, **kwargs) -> Trajectory:
        """A static camera at the world origin, looking along +z."""
        return cls(torch.eye(4).expand(frames, 4, 4).clone(), **kwargs)

    def with_poses(self, c2w: torch.Tensor, name: str | None = None) -> Trajectory:
        """The same camera (intrinsics, size) on other poses."""
        return Trajectory(c2w, self.intrinsics, self.width, self.height, self.name if name is None else name,
                          dict(self.metadata))

    def starts_at_identity(self, atol: float = 1e-4) -> bool:
        """True when frame 0 is the world origin looking along +z (presets and ReCamMaster files do)."""
        return bool(torch.allclose(self.c2w[0], torch.eye(4), atol=atol))

    def motion_summary(self) -> str:
        """One line for artists: frames, total turn and travel from the first to the last frame."""
        last = self.relative_to().c2w[-1]
        cos_angle = ((torch.trace(last[:3, :3]) - 1.0) / 2.0).clamp(-1.0, 1.0)
        turn = math.degrees(math.acos(float(cos_angle)))
        travel = float(last[:3, 3].norm())
        label = f"{self.name}: " if self.name else ""
        return (f"{label}{self.num_frames} frames, turns {turn:.1f} deg, travels {travel:.2f} units, "
                f"{self.width}x{self.height} at {self.hfov_deg:.1f} deg FOV")

    def relative_to(self, reference: Trajectory | torch.Tensor | None = None) -> Trajectory:
        """Re-express every pose in the frame of ``reference``'s first camera (default: this trajectory's own).

        R' = R_ref^T R and C' = R_ref^T (C - C_ref), i.e. c2w' = inverse(c2w_ref) @ c2w.
        """
        ref = _first_pose(self if reference is None else reference)
        return self.with_poses(inverse_transformation(ref[None])[0] @ self.c2w)

    def resample(self, frames: int) -> Trajectory:
        """``frames`` poses evenly spaced in time over the same path (centres lerped, rotations slerped).

        Resampling an 81-frame trajectory to 21 picks exactly frames 0, 4, ..., 80.
        """
        if frames < 1:
            raise ValueError(f"resample: frames={frames} must be at least 1")
        if frames == self.num_frames:
            return self
        if self.num_frames == 1:
            return self.with_poses(self.c2w.expand(frames, 4, 4).clone())
        position = torch.linspace(0.0, self.num_frames - 1, frames, dtype=torch.float64)
        lower = position.floor().long().clamp(max=self.num_frames - 2)
        weight = (position - lower).to(torch.float32)
        upper = lower + 1
        centers = torch.lerp(self.centers[lower], self.centers[upper], weight[:, None])
        q0 = Quaternion.from_matrix(self.rotations[lower])
        q1 = Quaternion.from_matrix(self.rotations[upper])
        rotations = q0.slerp(q1, weight).matrix()
        # Frames that land exactly on an input frame (weight 0 or 1) keep it bit for bit: a slerp at weight 1 is
        # not exact on every CPU.
        exact = (weight == 0) | (weight == 1)
        source = torch.where(weight == 1, upper, lower)[exact]
        rotations[exact] = self.rotations[source]
        centers[exact] = self.centers[source]
        c2w = torch.eye(4).repeat(frames, 1, 1)
        c2w[:, :3, :3] = rotations
        c2w[:, :3, 3] = centers
        return self.with_poses(c2w)


def _first_pose(reference: Trajectory | torch.Tensor) -> torch.Tensor:
    if isinstance(reference, Trajectory):
        return reference.c2w[0]
    pose = torch.as_tensor(reference, dtype=torch.float32)
    if pose.ndim == 3:
        pose = pose[0]
    if tuple(pose.shape) != (4, 4):
        raise ValueError(f"reference pose must be a 4x4 matrix or a trajectory, got shape {list(pose.shape)}")
    return pose


def latent_frame_count(video_frames: int, temporal_stride: int = TEMPORAL_STRIDE) -> int:
    """Wan latent frames for a video length: (frames - 1) / 4 + 1 (81 -> 21)."""
    if video_frames < 1:
        raise ValueError(f"video_frames={video_frames} must be at least 1")
    return (video_frames - 1) // temporal_stride + 1


def recammaster_embedding(trajectory: Trajectory, latent_frames: int,
                          reference: Trajectory | torch.Tensor | None = None) -> torch.Tensor:
    """ReCamMaster's cam_encoder input [latent_frames, 12]: per latent frame the relative c2w's top 3x4, row-major.

    Poses are made relative to ``reference``'s first camera (default: the trajectory's own, so frame 0 is the
    identity, as ReCamMaster does) and resampled to one pose per latent frame: an 81-frame trajectory gives
    frames 0, 4, ..., 80 exactly like ReCamMaster's ``cam_idx = range(81)[::4]``.
    """
    relative = trajectory.relative_to(reference).resample(latent_frames)
    return relative.c2w[:, :3, :].reshape(latent_frames, 12).clone()
