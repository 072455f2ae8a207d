"""Video benchmark: peak memory of the streaming long-video path for a short and a long video, side by side.

Run ``python -m memv2v_core.bench video [--frames 600 3000] [--width 832 --height 480] [--old-frames 600]``.
It writes synthetic 480p videos (H.264, a moving gradient) into a temporary folder, deleted afterwards, and runs
each case in its own subprocess, so every peak RSS (``ru_maxrss`` of that process) is its own:

- stream: ``probe`` -> per segment ``read_frames`` -> an edit -> ``stitch_stream`` -> ``VideoWriter`` (H.264) to
  disk. The edit is a fixed colour change (RGB -> BGR), NOT a model: it stands in for the sampler so that only the
  video path is measured.
- old: the whole video decoded into memory as ComfyUI's ``VideoFromFile.get_components`` does (a float tensor per
  frame, then stacked), for ``--old-frames`` frames only; when that would not fit in half the free memory it is
  measured on fewer frames and its peak at ``--old-frames`` is extrapolated (linear) and labelled an estimate.
- baseline: the same interpreter with torch and PyAV imported, nothing decoded.

It prints a table and one JSON line; the exit status is 1 when the long video's peak exceeds the short one's by
more than ``--limit`` (default 1.25x), i.e. when memory grows with the video's length.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

FPS = Fraction(30)
GOP = 48  # keyframe every 1.6 s, like a typical camera or screen recording


def make_video(path: Path, frames: int, width: int, height: int) -> None:
    """A synthetic source: a gradient sliding one pixel per frame, plus a mono AAC tone."""
    import av
    import numpy as np

    ramp = (np.arange(width + frames, dtype=np.int64) * 255 // max(width, 1)).astype(np.uint8)
    rows = (np.arange(height, dtype=np.int64) * 255 // max(height, 1)).astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(GOP), "crf": "23"}
        sound = container.add_stream("aac", rate=16000)
        sound.layout = "mono"
        image = np.empty((height, width, 3), np.uint8)
        for i in range(frames):
            image[..., 0] = ramp[i:i + width][None, :]
            image[..., 1] = rows[:, None]
            image[..., 2] = (i * 3) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        samples = int(frames / FPS * 16000)
        tone = (np.sin(np.arange(samples) * 0.06) * 0.2).astype(np.float32)[None, :]
        for offset in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(tone[:, offset:offset + 1024], format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, offset
            for packet in sound.encode(chunk):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child_stream(source: str, out: str, length: int, overlap: int) -> dict:
    """The streaming path: one segment decoded, edited and written at a time."""
    import torch

    from ..segments import plan_segments, stitch_stream
    from ..video_io import VideoWriter, probe, read_frames

    torch.set_num_threads(1)
    info = probe(source)
    plan = plan_segments(info.frames, length, overlap)

    def edited(start: int, end: int):
        def produce() -> torch.Tensor:
            return read_frames(source, start, end, info=info).flip(-1)  # the stand-in edit: RGB -> BGR
        return produce

    with VideoWriter(out, info.frame_rate, audio_from=source, options={"preset": "ultrafast"}) as writer:
        written = stitch_stream([edited(s, e) for s, e in plan], plan, info.frames, writer.write, "linear")
    result = probe(out)
    return {"segments": len(plan), "written": written, "out_frames": result.frames,
            "fps_kept": result.frame_rate == info.frame_rate, "audio_kept": result.has_audio}


def child_old(source: str) -> dict:
    """The old way: the whole video decoded into memory (ComfyUI's VideoFromFile.get_components)."""
    import av
    import torch

    frames = []
    with av.open(source) as container:
        for frame in container.decode(video=0):
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")) / 255.0)
    images = torch.stack(frames)
    return {"frames": int(images.shape[0])}


def child_baseline() -> dict:
    import av  # noqa: F401 - imported for its memory, like the other cases
    import torch  # noqa: F401

    from .. import segments, video_io  # noqa: F401
    return {}


def _child(args: argparse.Namespace) -> int:
    import av  # noqa: F401 - imports are not part of the timed work
    import torch  # noqa: F401

    started = time.perf_counter()
    if args.child == "stream":
        result = child_stream(args.source, args.out, args.length, args.overlap)
    elif args.child == "old":
        result = child_old(args.source)
    else:
        result = child_baseline()
    result.update(peak_mib=round(_peak_mib(), 1), seconds=round(time.perf_counter() - started, 2))
    print(json.dumps(result))
    return 0


def _available_mib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _old_frames_that_fit(frames: int, width: int, height: int, baseline_mib: float) -> tuple[int, str]:
    """The old way holds every frame about three times as float32 (per-frame tensors, the stacked copy); measure it on
    fewer frames when that would not fit in half the free memory, rather than push the machine into swapping or
    the OOM killer."""
    need = 3 * frames * width * height * 3 * 4 / 2**20 + baseline_mib  # measured: about 3 float copies at peak
    available = _available_mib()
    if available is None or need <= available / 2:
        return frames, ""
    fit = max(1, int((available / 2 - baseline_mib) / (3 * width * height * 3 * 4 / 2**20)))
    return min(frames, fit), (f"measured at {min(frames, fit)} frames: {frames} would need about {need:.0f} MiB and "
                              f"only {available:.0f} MiB are free here; the peak grows linearly with the frames")


def _run_child(kind: str, source: Path | None, out: Path | None, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "memv2v_core.bench", "video", "--child", kind, "--length", str(args.length),
               "--overlap", str(args.overlap)]
    if source is not None:
        command += ["--source", str(source)]
    if out is not None:
        command += ["--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if done.returncode != 0:
        raise RuntimeError(f"bench child '{kind}' failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m memv2v_core.bench video", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[600, 3000],
                        help="video lengths to compare (the first is the reference)")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--length", type=int, default=81, help="segment length (4k+1)")
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--old-frames", type=int, default=600,
                        help="frames for the old full-decode comparison (0: skip it)")
    parser.add_argument("--limit", type=float, default=1.25, help="allowed long/short peak RSS ratio")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, deleted)")
    parser.add_argument("--child", choices=["stream", "old", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    root = Path(tempfile.mkdtemp(prefix="memv2v-bench-video-", dir=args.dir))
    try:
        baseline = _run_child("baseline", None, None, args)
        rows = []
        for frames in args.frames:
            source = root / f"source_{frames}.mp4"
            started = time.perf_counter()
            make_video(source, frames, args.width, args.height)
            made = time.perf_counter() - started
            result = _run_child("stream", source, root / f"edited_{frames}.mp4", args)
            rows.append({"frames": frames, "make_seconds": round(made, 1), **result})
        old = None
        if args.old_frames:
            frames, note = _old_frames_that_fit(args.old_frames, args.width, args.height, baseline["peak_mib"])
            source = root / f"source_{frames}.mp4"
            if not source.exists():
                make_video(source, frames, args.width, args.height)
            old = {"frames": frames, "asked_frames": args.old_frames, "note": note,
                   **_run_child("old", source, None, args)}
            if frames != args.old_frames:  # linear in frames: the per-frame cost above the baseline
                per_frame = (old["peak_mib"] - baseline["peak_mib"]) / frames
                old["estimated_peak_mib_at_asked"] = round(baseline["peak_mib"] + per_frame * args.old_frames, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    short, long = rows[0], rows[-1]
    ratio = long["peak_mib"] / short["peak_mib"]
    print(f"video bench: {args.width}x{args.height}, segments of {args.length} (overlap {args.overlap}); edit = "
          "RGB->BGR colour swap (not a model); peak RSS per process")
    print(f"{'case':<28}{'frames':>8}{'segments':>10}{'peak MiB':>10}{'seconds':>9}")
    print(f"{'baseline (torch+av import)':<28}{'-':>8}{'-':>10}{baseline['peak_mib']:>10.0f}{'-':>9}")
    for row in rows:
        print(f"{'stream: read/edit/write':<28}{row['frames']:>8}{row['segments']:>10}{row['peak_mib']:>10.0f}"
              f"{row['seconds']:>9.1f}")
    if old is not None:
        print(f"{'old: full decode in memory':<28}{old['frames']:>8}{'-':>10}{old['peak_mib']:>10.0f}"
              f"{old['seconds']:>9.1f}")
        if "estimated_peak_mib_at_asked" in old:
            print(f"{'old: estimated (linear)':<28}{old['asked_frames']:>8}{'-':>10}"
                  f"{old['estimated_peak_mib_at_asked']:>10.0f}{'-':>9}   ({old['note']})")
    old_peak = old and old.get("estimated_peak_mib_at_asked", old["peak_mib"])
    print(f"peak ratio {long['frames']} / {short['frames']} frames: {ratio:.2f}x (limit {args.limit}x)"
          + (f"; old way at {old['asked_frames']} frames / stream at {short['frames']}: "
             f"{old_peak / short['peak_mib']:.1f}x" if old is not None else ""))
    exact = all(r["out_frames"] == r["frames"] == r["written"] and r["fps_kept"] and r["audio_kept"] for r in rows)
    print(f"output frame count, fps and audio kept: {exact}")
    summary = {"bench": "video", "width": args.width, "height": args.height, "segment_length": args.length,
               "overlap": args.overlap, "baseline_peak_mib": baseline["peak_mib"],
               "stream": [{k: r[k] for k in ("frames", "segments", "peak_mib", "seconds")} for r in rows],
               "peak_ratio": round(ratio, 3), "limit": args.limit, "old": old, "outputs_exact": exact}
    print(json.dumps(summary))
    return 0 if ratio <= args.limit and exact else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
