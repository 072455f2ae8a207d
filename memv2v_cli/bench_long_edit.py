"""Long Video Edit benchmark: peak memory of the ComfyUI server editing a short and a long video, side by side.

Run ``python -m memv2v_cli.bench_long_edit [--frames 600 3000] [--comfyui PATH]``. For each length it writes a
synthetic 480p source (832x480 H.264 with an AAC tone, the same moving gradient as ``python -m memv2v_core.bench
video``) into a temporary folder (deleted afterwards), starts a fresh private ComfyUI with this pack and the demo
assets, and queues ONE run of the shipped one-run workflow (``workflows/memv2v_long_video_edit_all.json``) that edits
the whole video with ``MemV2V_LongVideoEdit``: Load Video -> every segment read at 480p from the file and resized by
the node to the model's size -> retrieval (demo DINOv2) -> Wan 2.2 VAE encode -> sampling -> bank -> VAE decode ->
H.264 written to disk segment by segment.

The model is NOT a real editor: a tiny random LucyEdit-layout Wan 2.2 DiT and the real Wan 2.2 VAE class with random
weights, at a tiny model size (default 32x32 pixels, a 2x2 latent) and 1 step, so a few thousand frames finish on a
CPU. What is measured is the server process's memory: its resident size after start-up (baseline, before queueing)
and its peak (``VmHWM`` from ``/proc/<pid>/status`` right after the run), plus ``VmRSS`` sampled during the run.
The output is probed: it must have exactly the source's frame count and frame rate.

Slow on a CPU: the Wan 2.2 VAE class is full size even with random weights, and it encodes and decodes every frame
(about 1.5-2.5 s per source frame at 32x32 on 2 shared cores, so 600 + 3000 frames take hours there; minutes on a GPU).
The peak (``VmHWM``) is set while the 1.4 GB VAE file loads; the sampled RSS at half time and in the last tenth of
the run show whether memory grows from segment to segment.

Prints a table and one JSON line; the exit status is 1 when the longest video's peak exceeds the shortest one's by
more than ``--limit`` (default 1.25x), i.e. when memory grows with the video's length. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from memv2v_cli import graph
from memv2v_cli.demo import rewrite
from memv2v_cli.demo import setup as demo_setup
from memv2v_cli.host import comfy_host

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflows" / "memv2v_long_video_edit_all.json"
NODE = "MemV2V_LongVideoEdit"
WAN22_STRIDE = 4  # the Wan 2.2 VAE's temporal compression (segment windows are planned on it)
MIB = 1024 * 1024


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class RssSampler:
    """VmRSS of a process every ``interval`` seconds on a thread, as (seconds since start, bytes)."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid, self.interval, self.samples = pid, interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._start, proc_status(self.pid)["VmRSS"]))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def at_fraction(self, fraction: float) -> int | None:
        """The highest sample in the time slice ending at ``fraction`` of the run (a tenth of it wide)."""
        if not self.samples:
            return None
        end = self.samples[-1][0]
        low, high = end * max(fraction - 0.1, 0.0), end * fraction
        inside = [rss for t, rss in self.samples if low <= t <= high]
        return max(inside) if inside else None


def segment_count(frames: int, length: int, overlap: int) -> int:
    from memv2v_core.segments import plan_segments

    return len(plan_segments(frames, length, overlap, WAN22_STRIDE))


def edit_prompt(api: dict, assets: dict[str, str], video: str, args: argparse.Namespace, tag: str) -> dict:
    """The shipped one-run prompt in demo form (tiny models, demo conditioning), on ``video``, with the bench's sizes."""
    prompt = rewrite.to_demo(api, assets)
    for node_id in graph.find_nodes(prompt, "LoadVideo"):
        prompt[node_id]["inputs"]["file"] = video
    for node_id in graph.find_nodes(prompt, "MemV2V_BankLoad"):
        prompt[node_id]["inputs"]["name"] = f"bench_long_edit_{tag}"
    nodes = graph.find_nodes(prompt, NODE)
    if len(nodes) != 1:
        raise RuntimeError(f"expected one {NODE} in {WORKFLOW.name}, found {nodes}")
    prompt[nodes[0]]["inputs"].update(width=args.width, height=args.height, segment_length=args.segment_length,
                                      overlap=args.overlap, steps=args.steps,
                                      filename_prefix=f"bench_long_edit/{tag}", file_format="mp4")
    return prompt


def run_polled(client: comfy_host.ComfyClient, prompt: dict, timeout: float) -> comfy_host.PromptResult:
    """Queue ``prompt`` and poll its history until it ends. No websocket: a long CPU run can starve the server's
    pong past the client's heartbeat, which closes the socket although the prompt goes on."""
    start = time.monotonic()
    prompt_id = client.queue_prompt(prompt)
    while time.monotonic() - start < timeout:
        entry = client.get_json(f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status") or {}
        if status.get("completed") or status.get("status_str") == "error":
            result = comfy_host.PromptResult(prompt_id, status.get("status_str", "unknown"), entry.get("outputs", {}),
                                             [tuple(m) for m in status.get("messages", [])],
                                             time.monotonic() - start)
            if result.status != "success":
                raise RuntimeError(f"prompt {prompt_id} ended with {result.status}: {status.get('messages')}")
            return result
        time.sleep(2.0)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def run_case(comfyui: Path, assets: dict[str, str], source: Path, frames: int, folder: Path,
             args: argparse.Namespace) -> dict:
    """One fresh server, one queued run over the whole video: its memory, time and the output's frames and fps."""
    from memv2v_core.video_io import probe

    base = folder / f"comfy-{frames}"
    server = demo_setup.private_server(comfyui, base, assets, extra_args=("--use-pytorch-cross-attention",))
    for folder_name, kind in (("diffusion_models", "lucy_dit"), ("vae", "wan22_vae"), ("clip_vision", "dinov2")):
        server.add_model(folder_name, Path(assets[kind]))
    shutil.copy(source, base / "input" / source.name)
    server.start()
    try:
        pid = server.process.pid
        # the shipped UI workflow, converted with this server's object_info (asked before the baseline, every case)
        api = graph.ui_to_api(json.loads(WORKFLOW.read_text()), server.client().object_info())
        time.sleep(args.settle)  # let start-up finish (custom node imports, routes) before the baseline
        baseline = proc_status(pid)
        prompt = edit_prompt(api, assets, source.name, args, str(frames))
        started = time.monotonic()
        with RssSampler(pid) as sampler:
            result = run_polled(server.client(), prompt, args.timeout)
        wall = time.monotonic() - started
        after = proc_status(pid)
        videos = [Path(f) for f in result.output_files(base) if f.endswith(".mp4")]
        if len(videos) != 1:
            raise RuntimeError(f"expected one written .mp4, found {videos}")
        out, src = probe(videos[0]), probe(source)
        report = (result.outputs.get(graph.find_nodes(prompt, NODE)[0]) or {}).get("text") or []
        return {"frames": frames, "segments": segment_count(frames, args.segment_length, args.overlap),
                "baseline_rss": baseline["VmRSS"], "peak_rss": after["VmHWM"], "end_rss": after["VmRSS"],
                "rss_half": sampler.at_fraction(0.5), "rss_last_tenth": sampler.at_fraction(1.0),
                "wall_s": wall, "out_frames": out.frames, "out_fps": out.fps, "src_frames": src.frames,
                "src_fps": src.fps, "exact": out.frames == src.frames and out.frame_rate == src.frame_rate,
                "summary": report[-1].splitlines()[0] if report else ""}
    finally:
        server.stop()


def format_report(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """The table (one row per length), the ratio line and the JSON line."""
    mib = lambda value: "-" if value is None else f"{value / MIB:,.0f}"  # noqa: E731
    lines = [
        f"MemV2V_LongVideoEdit, one queue run per video, fresh ComfyUI server per video (--cpu). Source: synthetic "
        f"{args.source_width}x{args.source_height} H.264 + AAC, read at {args.source_width}x{args.source_height} and "
        f"resized by the node to {args.width}x{args.height}. Model: a TINY RANDOM LucyEdit-layout Wan 2.2 DiT and "
        f"the Wan 2.2 VAE class with random weights (it sees {args.width}x{args.height} pixels, a "
        f"{args.height // 16}x{args.width // 16} latent), {args.steps} step(s), segments of {args.segment_length} "
        f"frames, overlap {args.overlap}; output H.264 to disk.",
        f"{'frames':>7} | {'segments':>8} | {'baseline MiB':>12} | {'peak MiB':>9} | {'peak-base MiB':>13} | "
        f"{'RSS@50% MiB':>11} | {'RSS@end MiB':>11} | {'wall s':>7} | {'output frames / fps':>20}",
    ]
    for r in rows:
        lines.append(f"{r['frames']:>7} | {r['segments']:>8} | {mib(r['baseline_rss']):>12} | {mib(r['peak_rss']):>9} | "
                     f"{mib(r['peak_rss'] - r['baseline_rss']):>13} | {mib(r['rss_half']):>11} | "
                     f"{mib(r['rss_last_tenth']):>11} | {r['wall_s']:>7.1f} | "
                     f"{r['out_frames']:>7} / {r['out_fps']:.3f}{'' if r['exact'] else ' MISMATCH'}")
    short, long = rows[0], rows[-1]
    peak_ratio = long["peak_rss"] / short["peak_rss"]
    above = (long["peak_rss"] - long["baseline_rss"]) / max(short["peak_rss"] - short["baseline_rss"], 1)
    lines.append(f"ratio {long['frames']}/{short['frames']} frames ({long['frames'] / short['frames']:.1f}x longer): "
                 f"peak RSS {peak_ratio:.2f}x, peak above baseline {above:.2f}x, wall time "
                 f"{long['wall_s'] / short['wall_s']:.2f}x")
    lines.append(json.dumps({
        "model": f"tiny random LucyEdit-layout Wan 2.2 DiT + random Wan 2.2 VAE at {args.width}x{args.height}",
        "source": f"{args.source_width}x{args.source_height}", "steps": args.steps,
        "segment_length": args.segment_length, "overlap": args.overlap,
        "runs": [{k: v for k, v in r.items() if k != "summary"} for r in rows],
        "peak_ratio": peak_ratio, "peak_above_baseline_ratio": above}))
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=None, help="the ComfyUI folder (default: as the host tests find it)")
    parser.add_argument("--frames", type=int, nargs="+", default=[600, 3000], help="source lengths, short first")
    parser.add_argument("--source-width", type=int, default=832)
    parser.add_argument("--source-height", type=int, default=480)
    parser.add_argument("--width", type=int, default=32, help="the size the model sees (multiple of 16)")
    parser.add_argument("--height", type=int, default=32)
    parser.add_argument("--segment-length", type=int, default=81)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after start-up before the baseline")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    parser.add_argument("--limit", type=float, default=1.25,
                        help="exit 1 when the longest video's peak RSS exceeds the shortest one's by more than this")
    parser.add_argument("--assets", default=None, help="tiny asset cache (default: the host tests' cache)")
    args = parser.parse_args(argv)
    if len(args.frames) < 2 or args.frames != sorted(args.frames):
        parser.error(f"--frames {' '.join(map(str, args.frames))}: give at least two lengths, shortest first "
                     "(e.g. --frames 600 3000)")
    if args.width % 16 or args.height % 16 or args.width <= 0 or args.height <= 0:
        parser.error(f"--width {args.width} --height {args.height}: the Wan 2.2 VAE needs positive multiples of 16")
    return args


def main(argv: list[str] | None = None) -> int:
    from memv2v_core.bench.video import make_video

    args = parse_args(argv)
    if not Path("/proc/self/status").exists():
        print("this benchmark reads /proc/<pid>/status (Linux only)", file=sys.stderr)
        return 2
    comfyui, where = comfy_host.find_comfyui(args.comfyui)
    if comfyui is None:
        print(f"no ComfyUI found: {where}", file=sys.stderr)
        return 2
    cache = Path(args.assets or os.environ.get("MEMV2V_TEST_CACHE", Path.home() / ".cache" / "memv2v" / "test-assets")
                 / comfy_host.comfyui_version(comfyui))
    assets = demo_setup.build_assets("demo.models", comfyui, cache, "--with", "lucy_dit", "--with", "wan22_vae")
    assets.update(demo_setup.build_assets("demo.clip_vision", comfyui, cache))
    rows = []
    with tempfile.TemporaryDirectory(prefix="memv2v-bench-long-edit-") as tmp:
        folder = Path(tmp)
        for frames in args.frames:
            source = folder / f"synthetic_{frames}.mp4"
            make_video(source, frames, args.source_width, args.source_height)
            rows.append(run_case(comfyui, assets, source, frames, folder, args))
            source.unlink()
            print(f"  {frames} frames: {rows[-1]['summary']}", flush=True)
    for line in format_report(rows, args):
        print(line)
    if not all(r["exact"] for r in rows):
        print("output frame count or frame rate differs from the source", file=sys.stderr)
        return 1
    return 1 if rows[-1]["peak_rss"] > args.limit * rows[0]["peak_rss"] else 0


if __name__ == "__main__":
    sys.exit(main())
