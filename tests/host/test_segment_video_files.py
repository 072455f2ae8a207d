"""Split Segments and Stitch Segments on a VIDEO loaded from a file, through the real server: the segment decoded
from the file equals the one cut from the fully decoded IMAGE (same source_id), the index wraps after the last
segment, and Stitch writes the video to disk as it goes with the source's frame count, exact frame rate and audio.

The source is a synthetic 100-frame video with open GOPs and an AAC track, written into ComfyUI's input folder.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from memv2v_core.video_io import probe
from tests.core.video_frames import OPEN_GOP, encode

NAME, FRAMES, FPS = "segment_video_source.mp4", 100, Fraction(24000, 1001)
LENGTH, OVERLAP = 33, 8  # windows 0..33, 25..58, 50..83, 67..100


@pytest.fixture(scope="module")
def source(host) -> Path:
    return encode(host.server.base_dir / "input" / NAME, FRAMES, fps=FPS, options=OPEN_GOP, audio=True,
                  size=(48, 64))


def split(inputs: dict, index: int, **extra) -> dict:
    return {"class_type": "MemV2V_SplitSegments", "inputs": {**inputs, "segment_length": LENGTH, "overlap": OVERLAP,
                                                             "index": index, **extra}}


def texts(run, node: str) -> list[str]:
    return [t for kind, data in run.messages if kind == "executed" and data.get("node") == node
            for t in (data.get("output") or {}).get("text", [])]


def saved_frames(run, base_dir: Path, prefix: str) -> torch.Tensor:
    files = sorted(f for f in run.output_files(base_dir) if Path(f).name.startswith(prefix) and f.endswith(".png"))
    return torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files])


def full_decode(path: Path) -> torch.Tensor:
    with av.open(str(path)) as container:
        return torch.stack([torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)])


def test_a_segment_read_from_the_file_equals_the_one_cut_from_the_decoded_video(host, source):
    prompt = {
        "load": {"class_type": "LoadVideo", "inputs": {"file": NAME}},
        "parts": {"class_type": "GetVideoComponents", "inputs": {"video": ["load", 0]}},
        "from_file": split({"video": ["load", 0]}, 2),
        "from_image": split({"image": ["parts", 0]}, 2),
        "save_file": {"class_type": "SaveImage", "inputs": {"images": ["from_file", 0], "filename_prefix": "vf_file"}},
        "save_image": {"class_type": "SaveImage", "inputs": {"images": ["from_image", 0],
                                                              "filename_prefix": "vf_image"}},
    }
    run = host.run(prompt)
    base = host.server.base_dir
    from_file, from_image = saved_frames(run, base, "vf_file"), saved_frames(run, base, "vf_image")
    assert from_file.shape == (LENGTH, 48, 64, 3) and torch.equal(from_file, from_image)
    assert torch.equal(from_file, full_decode(source)[50:83])
    file_text, image_text = texts(run, "from_file")[0], texts(run, "from_image")[0]
    assert "segment 3 of 4 (index 2): frames 50..82 of 100" in file_text
    assert file_text.split("source_id ")[1] == image_text.split("source_id ")[1]  # the same video, the same id


def test_the_index_wraps_to_zero_after_the_last_segment_and_says_so(host, source):
    prompt = {"load": {"class_type": "LoadVideo", "inputs": {"file": NAME}},
              "cut": split({"video": ["load", 0]}, 4, width=32, height=32),
              "save": {"class_type": "SaveImage", "inputs": {"images": ["cut", 0], "filename_prefix": "vf_wrap"}}}
    run = host.run(prompt)
    text = texts(run, "cut")[0]
    assert "index 4 is past the last segment (3)" in text and "new pass at segment 0" in text, text
    assert "segment 1 of 4 (index 0): frames 0..32" in text
    assert saved_frames(run, host.server.base_dir, "vf_wrap").shape == (LENGTH, 32, 32, 3)  # resized (center crop)


def test_stitch_writes_the_video_to_disk_with_the_source_count_rate_and_audio(host, source):
    """Nothing edited yet, all segments filled from the source file, written losslessly: the file is the source."""
    prompt = {
        "load": {"class_type": "LoadVideo", "inputs": {"file": NAME}},
        "bank": {"class_type": "MemV2V_BankLoad", "inputs": {"name": "video_file_stitch"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": Path(host.assets["vae"]).name}},
        "stitch": {"class_type": "MemV2V_StitchSegments", "inputs": {
            "segment_length": LENGTH, "overlap": OVERLAP, "blend": "linear", "bank": ["bank", 0], "vae": ["vae", 0],
            "source_video": ["load", 0], "fill_missing": True, "filename_prefix": "memv2v/vf_stitch",
            "file_format": "mkv-lossless"}},
    }
    run = host.run(prompt)
    written = [Path(f) for f in run.output_files(host.server.base_dir) if f.endswith(".mkv")]
    assert len(written) == 1 and written[0].name.startswith("vf_stitch_")
    info = probe(written[0])
    assert (info.frames, info.frame_rate, info.has_audio) == (FRAMES, FPS, True)
    assert torch.equal(full_decode(written[0]), full_decode(source))
    assert "wrote" in texts(run, "stitch")[0] and "audio from the source" in texts(run, "stitch")[0]
    assert not [p for p in written[0].parent.iterdir() if "partial" in p.name]
