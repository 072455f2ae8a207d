"""Camera nodes: make a target trajectory (preset or file) and preview it against the memory bank."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..memv2v_core.camera.trajectory import Trajectory
from ..memv2v_core.camera.files import FORMATS, load_trajectory
from ..memv2v_core.camera.presets import PRESET_DESCRIPTIONS, PRESET_NAMES, SUBJECT_DISTANCE, preset_trajectory
from ..memv2v_core.retrieval.preview import PreviewTrack, preview_tracks_from_bank, render_camera_preview
from ..memv2v_core.retrieval.fov import DEFAULT_LAMBDA, DEFAULT_TOP_K, FOVParams, fov_mask, fov_overlap, combine_scores
from ..memv2v_core.retrieval.fov_retrieval import rank_bank_by_fov
from .socket_types import Bank, Camera

CATEGORY = "MemoryV2V/camera"
CAMERA_FILE_EXTENSIONS = (".json", ".txt")
CAMERA_TOOLTIP = ("Camera trajectory: per-frame camera-to-world poses (OpenCV axes: x right, y down, z forward) "
                  "with the lens and image size.")
RADIUS_TOOLTIP = ("Radius of the sphere whose points are tested for visibility (paper: 1). ReCamMaster cameras "
                  "move up to ~2 units, so with radius 1 a dolly leaves the sphere; use e.g. 10 to compare viewing "
                  "directions only.")


def camera_files() -> list[str]:
    """Trajectory files (.json, .txt) under ComfyUI's input folder, as paths relative to it."""
    root = folder_paths.get_input_directory()
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(CAMERA_FILE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


class CameraPreset(io.ComfyNode):
    """A ReCamMaster preset trajectory (or an orbit) of any length and strength."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        presets = "; ".join(f"{name}: {text}" for name, text in PRESET_DESCRIPTIONS.items())
        return io.Schema(
            node_id="MemV2V_CameraPreset",
            display_name="Memory-V2V Camera Preset",
            category=CATEGORY,
            description=("A target camera trajectory from ReCamMaster's ten presets (pan, tilt, zoom = dolly, "
                         "translate, arc) or an orbit around the subject. At strength 1 and 81 frames the ten match "
                         "ReCamMaster's camera_extrinsics.json. Every preset starts at the source video's camera."),
            inputs=[
                io.Combo.Input("preset", options=list(PRESET_NAMES), default="pan_right",
                               tooltip=f"The camera motion. {presets}."),
                io.Int.Input("frames", default=81, min=2, max=4097,
                             tooltip="Number of poses, one per video frame (81 = ReCamMaster's clip length)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Scales the motion: 1 = ReCamMaster's amount (e.g. pan 19.9 deg, zoom 1.99 "
                                       "units), 2 = twice as far, 0 = static camera."),
                io.Float.Input("subject_distance", default=SUBJECT_DISTANCE, min=0.1, max=1000.0, step=0.1,
                               tooltip="Distance to the subject that translate, arc and orbit presets keep facing "
                                       "(4 = ReCamMaster). The orbit circles the subject at this distance."),
            ],
            outputs=[Camera.Output(display_name="camera", tooltip=CAMERA_TOOLTIP)],
        )

    @classmethod
    def execute(cls, preset: str, frames: int, strength: float, subject_distance: float) -> io.NodeOutput:
        trajectory = preset_trajectory(preset, frames, strength, subject_distance)
        return io.NodeOutput(trajectory, ui=ui.PreviewText(trajectory.motion_summary()))


class CameraLoad(io.ComfyNode):
    """A trajectory read from a file in ComfyUI's input folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_CameraLoad",
            display_name="Memory-V2V Camera Load",
            category=CATEGORY,
            description=("Loads a camera trajectory from ComfyUI's input folder: ReCamMaster camera_extrinsics.json "
                         "(with ReCamMaster's own preprocessing, 21 poses), a RealEstate10K .txt, or a plain JSON "
                         "list of 4x4 camera-to-world matrices."),
            inputs=[
                io.Combo.Input("file", options=camera_files(),
                               tooltip="A .json or .txt trajectory file in ComfyUI's input folder (refresh the page "
                                       "after adding one)."),
                io.Combo.Input("format", options=list(FORMATS), default="auto",
                               tooltip="auto: .txt is RealEstate10K; JSON with frame0/frame1... keys is ReCamMaster; "
                                       "other JSON is a list of 4x4 matrices (or {\"c2w\": [...], \"intrinsics\", "
                                       "\"width\", \"height\", \"convention\": \"opencv\"|\"opengl\"})."),
                io.Int.Input("cam_index", default=1, min=1, max=100,
                             tooltip="Which camera of a ReCamMaster file (1-10: pan right, pan left, tilt up, tilt "
                                     "down, zoom in, zoom out, translate up, translate down, arc left, arc right). "
                                     "Ignored by the other formats."),
            ],
            outputs=[Camera.Output(display_name="camera", tooltip=CAMERA_TOOLTIP)],
        )

    @classmethod
    def fingerprint_inputs(cls, file: str, format: str, cam_index: int):
        path = folder_paths.get_annotated_filepath(file)
        return (os.path.getmtime(path), os.path.getsize(path)) if os.path.isfile(path) else float("nan")

    @classmethod
    def validate_inputs(cls, file: str):  # only the input it checks: ComfyUI repeats the message per named input
        if not folder_paths.exists_annotated_filepath(file):
            return (f"file '{file}' is not in ComfyUI's input folder ({folder_paths.get_input_directory()}); "
                    "copy the trajectory file there and refresh the page")
        return True

    @classmethod
    def execute(cls, file: str, format: str, cam_index: int) -> io.NodeOutput:
        trajectory = load_trajectory(folder_paths.get_annotated_filepath(file), format, cam_index=cam_index)
        return io.NodeOutput(trajectory, ui=ui.PreviewText(trajectory.motion_summary()))


class CameraPreview(io.ComfyNode):
    """Frusta from above and from the side, and FOV coverage against the bank, as an image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2V_CameraPreview",
            display_name="Memory-V2V Camera Preview",
            category=CATEGORY,
            description=("Draws the target camera (yellow) and the bank's stored trajectories from above and from "
                         "the side, and their fields of view on an equirectangular map: retrieved memories in rank "
                         "colours, their overlap with the target brightened, target area no memory covers hatched "
                         "red. Shows why FOV retrieval picks what it picks."),
            inputs=[
                Camera.Input("camera", tooltip="The target camera trajectory to preview."),
                Bank.Input("bank", optional=True,
                           tooltip="Optional memory bank: its stored trajectories are drawn and ranked as FOV "
                                   "retrieval would rank them."),
                Camera.Input("camera_2", optional=True,
                             tooltip="Optional second trajectory to compare with the target (drawn as rank 1)."),
                io.Int.Input("top_k", default=DEFAULT_TOP_K, min=0, max=64,
                             tooltip="How many bank entries count as retrieved (coloured); use the value of your "
                                     "FOV Retrieve node (0 = memory off: none)."),
                io.Float.Input("lam", display_name="lambda", default=DEFAULT_LAMBDA, min=0.0, max=1.0, step=0.05,
                               tooltip="Score = lambda * IoU + (1 - lambda) * containment of the target's view "
                                       "(0.5 in the paper)."),
                io.Float.Input("sphere_radius", default=1.0, min=0.01, max=1000.0, step=0.1, tooltip=RADIUS_TOOLTIP),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The preview image (1024 pixels wide).")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, camera: Trajectory, top_k: int, lam: float, sphere_radius: float, bank=None,
                camera_2: Trajectory | None = None) -> io.NodeOutput:
        params = FOVParams(radius=sphere_radius)
        tracks: list[PreviewTrack] = []
        target_mask = None
        if bank is not None:
            ranking = rank_bank_by_fov(bank, camera, top_k, lam, params)
            tracks = preview_tracks_from_bank(bank, camera, ranking.rows, ranking.masks)
            target_mask = ranking.target_mask
        if camera_2 is not None:
            target_mask = fov_mask(camera, params, reference=camera) if target_mask is None else target_mask
            mask = fov_mask(camera_2, params, reference=camera)
            iou, containment = fov_overlap(target_mask, mask[None])
            score = float(combine_scores(iou, containment, lam)[0])
            tracks.append(PreviewTrack(camera_2.name or "camera_2", camera_2.relative_to(camera), mask, 1,
                                       float(iou[0]), float(containment[0]), score))
        image = render_camera_preview(camera, tracks, target_mask, params)
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


NODES = [CameraPreset, CameraLoad, CameraPreview]
