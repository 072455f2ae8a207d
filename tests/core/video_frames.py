"""Decode the shared test videos at reduced size into ComfyUI IMAGE batches (cached per test session)."""

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=None)
def decode(path: str, width: int = 64, max_frames: int | None = None) -> torch.Tensor:
    """The first ``max_frames`` (default: all) frames of a video, ``width`` pixels wide, as [F, H, W, 3] in 0..1."""
    import av

    frames = []
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            height = round(width * frame.height / frame.width / 2) * 2
            frames.append(frame.to_ndarray(width=width, height=height, format="rgb24"))
            if len(frames) == max_frames:
                break
    return torch.from_numpy(np.stack(frames)).float() / 255.0
