"""Stitch Segments with fill_missing on an in-memory VIDEO (VideoFromFile over a BytesIO) with audio, inside
ComfyUI's Python: the writer's audio reader and the fill reader each need their own handle on the bytes.

The source is noise with an AAC track, large enough (about 2 MB) that neither reader holds it in one buffer.
Usage: python stitch_in_memory.py <tmp folder>; prints one JSON line (what was written, or the error)."""

from __future__ import annotations

import io
import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "memory_scripts"))
from _pack import bootstrap, pack  # noqa: E402

bootstrap()
import folder_paths  # noqa: E402
from comfy_api.latest import InputImpl  # noqa: E402

FRAMES, FPS = 100, Fraction(25)


def noisy_video(path: Path) -> bytes:
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width, stream.pix_fmt = 96, 128, "yuv420p"
        sound = container.add_stream("aac", rate=8000)
        sound.layout = "mono"
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            tone = (np.sin(np.arange(i * 320, (i + 1) * 320) * 0.05) * 0.3).astype(np.float32)[None, :]
            chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 8000, i * 320
            for packet in sound.encode(chunk):
                container.mux(packet)
        for encoder in (stream, sound):
            for packet in encoder.encode():
                container.mux(packet)
    return path.read_bytes()


def decoded(path: Path) -> tuple[list, int]:
    """The video frames and the audio packet count of a file."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        return frames, sum(1 for p in container.demux(audio=0) if p.size)


tmp = Path(sys.argv[1])
source = tmp / "noise.mp4"
data = noisy_video(source)
folder_paths.set_output_directory(str(tmp / "output"))
segment_nodes = pack("nodes.segment_nodes")
video_io = pack("memv2v_core.video_io")
bank = pack("memv2v_core.bank.memory_bank").MemoryBank.open(tmp / "bank", create=True)  # empty: every segment filled
video = InputImpl.VideoFromFile(io.BytesIO(data))
out = {"error": None, "source_bytes": len(data)}
try:
    result = segment_nodes.StitchSegments.execute(
        segment_length=[33], overlap=[8], blend=["cut"], bank=[bank], vae=[object()], source_video=[video],
        fill_missing=[True], filename_prefix=["memv2v/bytesio"], file_format=["mkv-lossless"])
    written = Path(result.args[2].get_stream_source())
    info = video_io.probe(written)
    stitched, audio_packets = decoded(written)
    original, source_packets = decoded(source)
    out.update(frames=info.frames, has_audio=info.has_audio, audio_packets=audio_packets,
               source_audio_packets=source_packets, frames_equal=len(stitched) == len(original) and all(
                   np.array_equal(a, b) for a, b in zip(stitched, original)))
except Exception as error:  # noqa: BLE001 - reported to the test
    out["error"] = f"{type(error).__name__}: {error}"
print(json.dumps(out))
