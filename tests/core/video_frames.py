"""Decode the shared test videos at reduced size into ComfyUI IMAGE batches (cached per test session), and write
synthetic test videos with PyAV directly (independent of memv2v_core.video_io's writer)."""

from fractions import Fraction
from functools import lru_cache
from pathlib import Path

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


# x264 with B-frames in a pyramid and open GOPs every 12 frames: leading pictures after each keyframe
OPEN_GOP = {"g": "12", "bf": "3", "x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0:b-pyramid=normal"}


def pattern(index: int, height: int = 32, width: int = 48) -> np.ndarray:
    """A frame whose blocks spell its index, so a frame taken from the wrong place shows."""
    image = np.zeros((height, width, 3), np.uint8)
    for bit in range(12):
        row, col = divmod(bit, 6)
        image[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = 255 if index >> bit & 1 else 0
    image[16:, :, 1] = (index * 7) % 256
    image[16:, :, 2] = np.arange(width, dtype=np.uint8)[None, :] * 5
    return image


def encode(path, count, fps=Fraction(30), codec="libx264", options=None, pts=None, audio=False, size=(32, 48)):
    """A synthetic source video written with PyAV directly (not with the writer under test)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "bgr0"
        stream.options = options or {}
        if pts is not None:
            stream.time_base = Fraction(1, 1000)
        if audio:
            sound = container.add_stream("aac", rate=8000)
            sound.layout = "mono"
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(pattern(i, *size), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio:
            samples = int(count / fps * 8000)
            tone = (np.sin(np.arange(samples) * 0.05) * 0.3).astype(np.float32)[None, :]
            for offset in range(0, samples, 1024):
                chunk = av.AudioFrame.from_ndarray(tone[:, offset:offset + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 8000, offset
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return Path(path)
