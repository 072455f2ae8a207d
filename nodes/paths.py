"""Where the pack's files live in a ComfyUI installation, all found through ``folder_paths``."""

import os

import folder_paths

BANKS_FOLDER = "memory_banks"
MODELS_FOLDER = "memv2v"


def banks_root() -> str:
    """The directory that holds every memory bank: ``<output>/memory_banks`` unless registered elsewhere."""
    if BANKS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(BANKS_FOLDER, os.path.join(folder_paths.get_output_directory(), BANKS_FOLDER),
                                           is_default=True)
    return folder_paths.get_folder_paths(BANKS_FOLDER)[0]


def register_model_folders() -> None:
    """Register ``models/memv2v`` (checkpoints, tokenizers, embedders) beside ComfyUI's own model folders."""
    if MODELS_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[MODELS_FOLDER] = (
            [os.path.join(folder_paths.models_dir, MODELS_FOLDER)], folder_paths.supported_pt_extensions)


register_model_folders()
