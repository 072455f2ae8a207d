"""``python -m memv2v_cli story SCRIPT.json``: a whole StoryMem story, shot by shot, through the shipped story workflow.

Each shot is one queue run of ``workflows/memv2v_story_storymem.json`` with the shot's prompt, mode, index and seed
set on the workflow's titled nodes; its keyframes go into the story's bank, where the next shot's memory comes from.
Every shot's video is copied into the output folder as ``shot_NNN.mp4``, and the shots are joined into ``story.mp4``.
A story run again resumes: a shot whose entry is in the bank and whose video is in the output folder is skipped.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

from memv2v_core.story import StoryScriptError, parse_story_script

from . import graph, runner
from .authoring.specs_story import TITLES
from .host import comfy_host

WORKFLOW = "memv2v_story_storymem"


@dataclass
class ShotRun:
    index: int
    mode: str
    skipped: bool
    seconds: float = 0.0
    video: Path | None = None


def story_id_for(name: str | None, script_path: Path) -> str:
    """A story id from the script's ``story_name`` (or its file name): lower case, words joined by ``_``."""
    text = (name or script_path.stem).strip().lower()
    slug = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    return slug or "story"


def stored_shots(client: comfy_host.ComfyClient, bank: str, story_id: str) -> set[int]:
    """Shot indices of ``story_id`` that the bank holds visibly (through the pack's bank route; a hidden shot is made
    again; an unknown bank holds none)."""
    try:
        entries = client.get_json(f"/memv2v/banks/{urllib.parse.quote(bank, safe='')}/entries")
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return set()
        raise
    return {e["story"]["shot_index"] for e in entries
            if e.get("story") and e["story"]["story_id"] == story_id and not e.get("hidden")}


def shot_prompt(prompt: dict, *, story_id: str, bank: str, index: int, mode: str, text: str, seed: int) -> dict:
    """The workflow's API prompt for one shot: the per-shot values on their titled nodes."""
    prompt = json.loads(json.dumps(prompt))
    values = {TITLES["story_id"]: ("value", story_id), TITLES["shot_index"]: ("value", index),
              TITLES["prompt"]: ("value", text), TITLES["seed"]: ("value", seed), TITLES["mode"]: ("mode", mode),
              TITLES["bank"]: ("name", bank)}
    for title, (name, value) in values.items():
        ids = graph.find_nodes(prompt, title=title)
        if len(ids) != 1:
            raise runner.UserError(f"the story workflow needs exactly one node titled {title!r} (found {len(ids)}); "
                             f"use the shipped {WORKFLOW}.json or keep its titles")
        graph.set_input(prompt, ids[0], name, value)
    return prompt


def download(client: comfy_host.ComfyClient, relative: str, target: Path) -> Path:
    """Copy an output file of the server (``subfolder/name``) to ``target`` through ComfyUI's ``/view`` route."""
    subfolder, _, name = relative.replace("\\", "/").rpartition("/")
    query = urllib.parse.urlencode({"filename": name, "subfolder": subfolder, "type": "output"})
    with urllib.request.urlopen(f"{client.url}/view?{query}", timeout=600) as response:
        data = response.read()
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def join_videos(parts: list[Path], target: Path) -> int:
    """Decode ``parts`` one after another and encode them into ``target`` (one frame in memory at a time); returns
    the frame count. Frame rate and size are the first part's."""
    import av

    tmp = target.with_name(target.name + ".part.mp4")
    frames = 0
    with av.open(str(parts[0])) as first:
        stream0 = first.streams.video[0]
        rate = stream0.average_rate or Fraction(16)
        width, height = stream0.codec_context.width, stream0.codec_context.height
    with av.open(str(tmp), mode="w", format="mp4") as output:
        stream = output.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for part in parts:
            with av.open(str(part)) as source:
                for frame in source.decode(video=0):
                    frame = frame.reformat(width=width, height=height, format="yuv420p")
                    frame.pts, frame.time_base = frames, 1 / Fraction(rate)  # one clock across the parts
                    for packet in stream.encode(frame):
                        output.mux(packet)
                    frames += 1
        for packet in stream.encode():
            output.mux(packet)
    tmp.replace(target)
    return frames


def run_story(args, out: Callable[[str], None] = print) -> int:
    """The ``story`` command (see ``python -m memv2v_cli story --help``)."""
    script_path = Path(args.script)
    try:
        script = parse_story_script(script_path, continuation=args.continuation)
    except StoryScriptError as error:
        raise runner.UserError(f"{script_path}: {error}") from None
    for warning in script.warnings:
        out(f"warning: {warning}")
    story_id = args.story_id or story_id_for(script.name, script_path)
    out_dir = Path(args.out or f"memv2v_story_{story_id}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.base_dir is None and not args.url:
        args.base_dir = str(out_dir / "demo-comfyui")  # a demo story resumes too: its bank lives here
    workflow = runner.resolve_workflow(WORKFLOW)
    out(f"story {story_id!r}: {len(script)} shots from {script_path} (continuation {args.continuation}); "
        f"bank {args.bank!r}; videos in {out_dir}")
    runs: list[ShotRun] = []
    with runner.open_session(workflow, args, out) as session:
        done = stored_shots(session.client, args.bank, story_id)
        for shot in script.shots:
            video = out_dir / f"shot_{shot.index:03d}.mp4"
            label = (f"shot {shot.index + 1}/{len(script)} (scene {shot.scene_num}, shot {shot.shot_index + 1}, "
                     f"{shot.mode})")
            if shot.index in done and video.is_file():
                out(f"=== {label}: already in the bank, skipped")
                runs.append(ShotRun(shot.index, shot.mode, True, video=video))
                continue
            out(f"=== {label}: {shot.prompt[:100]}")
            prompt = shot_prompt(session.prompt, story_id=story_id, bank=args.bank, index=shot.index,
                                 mode=shot.mode, text=shot.prompt, seed=args.seed + shot.index)
            result = session.client.run(prompt, timeout=args.timeout,
                                        on_message=runner.progress_printer(prompt, out))
            for node_id, ui in result.outputs.items():
                for text in (t for t in ui.get("text", []) if isinstance(t, str)):
                    out(f"  {runner.node_title(prompt, node_id)}: " + text.replace("\n", "\n    "))
            videos = [f for f in result.output_files() if f.lower().endswith((".mp4", ".webm", ".mov"))]
            if len(videos) != 1:
                raise SystemExit(f"shot {shot.index}: expected one saved video from the workflow, got {videos}")
            download(session.client, videos[0], video)
            out(f"  shot {shot.index + 1} done in {result.seconds:.1f} s: {video}")
            runs.append(ShotRun(shot.index, shot.mode, False, result.seconds, video))
    story_video = out_dir / "story.mp4"
    frames = join_videos([r.video for r in runs], story_video)
    made = [r for r in runs if not r.skipped]
    out(f"story {story_id!r}: {len(made)} shot(s) made, {len(runs) - len(made)} resumed from the bank; "
        f"{frames} frames in {story_video}")
    if session.demo:
        out(runner.BANNER)
    return 0
