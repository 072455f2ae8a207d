"""Camera and FOV retrieval nodes in the real ComfyUI: retrieval over a bank of stored trajectories, and the preview."""


import torch
from PIL import Image

from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.camera.presets import preset_trajectory
from memv2v_core.retrieval.fov import FOVParams
from memv2v_core.retrieval.fov_retrieval import select_by_fov

STORED = ["pan_left", "tilt_up", "zoom_in", "arc_left", "pan_right"]


def make_bank(host, name: str) -> MemoryBank:
    bank = MemoryBank.open(host.server.output_dir / "memory_banks" / name, create=True)
    for index, preset in enumerate(STORED):
        latent = torch.full((1, 16, 2, 4, 4), float(index))
        bank.add(latent, latent_format="wan21", camera=preset_trajectory(preset, frames=21).c2w, prompt=preset)
    return bank


def test_fov_retrieve_returns_entries_in_score_order_and_preview_draws(host):
    bank = make_bank(host, "fov_host_test")
    prompt = {
        "1": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "fov_host_test"}},
        "2": {"class_type": "MemV2V_CameraPreset", "inputs": {"preset": "pan_right", "frames": 21, "strength": 1.0,
                                                              "subject_distance": 4.0}},
        "3": {"class_type": "MemV2V_FOVRetrieve", "inputs": {"bank": ["1", 0], "camera": ["2", 0], "top_k": 3,
                                                             "lam": 0.5, "sphere_radius": 1.0}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
        "5": {"class_type": "MemV2V_CameraPreview", "inputs": {"camera": ["2", 0], "bank": ["1", 0], "top_k": 3,
                                                               "lam": 0.5, "sphere_radius": 1.0}},
    }
    result = host.run(prompt)
    table = result.outputs["3"]["text"][0]

    # The same ranking the core computes on the same bank, best first; the node shows it in that order.
    expected, rows = select_by_fov(MemoryBank.open(bank.path), preset_trajectory("pan_right", frames=21), 3, 0.5,
                                   FOVParams(radius=1.0))
    order = [item.entry_id for item in expected.items]
    assert [bank.entry(i).prompt for i in order][0] == "pan_right"  # the identical trajectory scores 1.0
    assert expected.items[0].score > 0.999
    scores = [item.score for item in expected.items]
    assert scores == sorted(scores, reverse=True) and len(order) == 3
    positions = [table.index(entry_id) for entry_id in order]
    assert positions == sorted(positions), table
    assert result.outputs["4"]["text"][0] == table  # the STRING output carries the same table

    images = result.outputs["5"]["images"]
    assert len(images) == 1
    path = host.server.base_dir / images[0]["type"] / images[0].get("subfolder", "") / images[0]["filename"]
    with Image.open(path) as image:
        assert image.width == 1024 and image.height > 500
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or ()) > 8  # drawn, not blank


def test_fov_retrieve_on_an_empty_bank_selects_nothing(host):
    MemoryBank.open(host.server.output_dir / "memory_banks" / "fov_empty", create=True)
    prompt = {
        "1": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "fov_empty"}},
        "2": {"class_type": "MemV2V_CameraPreset", "inputs": {"preset": "tilt_up", "frames": 21, "strength": 1.0,
                                                              "subject_distance": 4.0}},
        "3": {"class_type": "MemV2V_FOVRetrieve", "inputs": {"bank": ["1", 0], "camera": ["2", 0], "top_k": 6,
                                                             "lam": 0.5, "sphere_radius": 1.0}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    }
    result = host.run(prompt)
    assert result.status == "execution_success"
    assert result.outputs["3"]["text"][0] == "memory bank is empty: nothing to retrieve"
