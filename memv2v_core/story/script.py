"""StoryMem story scripts (``story/*.json``): scenes of shot prompts with cut flags, flattened into shots.

Format (StoryMem's ST-Bench files)::

    {"story_name": "...", "story_overview": "...",
     "scenes": [{"scene_num": 1, "video_prompts": ["...", "..."], "first_frame_prompt": ["...", "..."],
                 "cut": [true, false]}, ...]}

Only ``video_prompts`` and ``cut`` drive the official pipeline: a shot with ``cut`` false continues the previous
shot (MI2V: its last frame, or MM2V: its last 5 frames, depending on the LoRA used), a shot with ``cut`` true is
memory only. The story's first shot has nothing to continue and is always a cut.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

CONTINUATIONS = {"MI2V": 1, "MM2V": 5, "none": 0}  # -> condition pixel frames of a continued shot
SHOT_MODES = ("cut", "MI2V", "MM2V")


class StoryScriptError(ValueError):
    """The story script is not in StoryMem's format; the message names the field and the fix."""


@dataclass(frozen=True)
class StoryShot:
    """One shot: ``scene_index``/``shot_index`` (0-based; ``scene_num`` as the file says), its T5 ``prompt``, the
    file's ``cut`` flag, the ``mode`` the pipeline uses ("cut", "MI2V" or "MM2V") and the matching
    ``condition_pixel_frames`` (0, 1, 5) for ``storymem_inputs``; ``index`` counts shots across the story."""

    index: int
    scene_index: int
    scene_num: Any
    shot_index: int
    prompt: str
    cut: bool
    mode: str
    condition_pixel_frames: int
    first_frame_prompt: str | None = None


@dataclass(frozen=True)
class StoryScript:
    name: str | None
    overview: str | None
    shots: tuple[StoryShot, ...]
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.shots)


def parse_story_script(source: Mapping | str | os.PathLike, continuation: str = "MI2V") -> StoryScript:
    """Validate a story script (a parsed dict, JSON text, or a path to a .json file) and flatten it into shots.

    ``continuation``: what a shot with ``cut`` false becomes, "MI2V" (last frame), "MM2V" (last 5 frames) or "none"
    (every shot memory only), as the official pipeline's ``--mi2v`` / ``--mm2v`` flags decide.
    """
    if continuation not in CONTINUATIONS:
        raise StoryScriptError(f"continuation ({continuation!r}) must be one of {tuple(CONTINUATIONS)}: the mode of "
                               "shots whose cut flag is false (use the LoRA trained for it).")
    data = _load(source)
    if not isinstance(data, Mapping):
        raise StoryScriptError(f"a story script is a JSON object, got {type(data).__name__}; write "
                               '{"story_name": ..., "scenes": [...]}.')
    name = _optional_text(data, "story_name")
    overview = _optional_text(data, "story_overview")
    scenes = data.get("scenes")
    if scenes is None:
        raise StoryScriptError('the story script has no "scenes": add "scenes": [{"video_prompts": ["shot 1", ...], '
                               '"cut": [true, ...]}, ...].')
    if not isinstance(scenes, list) or not scenes:
        raise StoryScriptError(f'"scenes" must be a non-empty list of scene objects, got {_describe(scenes)}.')

    shots, warnings = [], []
    for s, scene in enumerate(scenes):
        where = f"scenes[{s}]"
        if not isinstance(scene, Mapping):
            raise StoryScriptError(f"{where} must be an object with video_prompts and cut, got {_describe(scene)}.")
        prompts = scene.get("video_prompts")
        if prompts is None:
            raise StoryScriptError(f'{where} has no "video_prompts": add a list with one text prompt per shot.')
        if not isinstance(prompts, list) or not prompts:
            raise StoryScriptError(f"{where}.video_prompts must be a non-empty list of prompts, got "
                                   f"{_describe(prompts)}.")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise StoryScriptError(f"{where}.video_prompts[{i}] must be a non-empty text prompt, got "
                                       f"{_describe(prompt)}.")
        cuts = scene.get("cut")
        if cuts is None:
            raise StoryScriptError(
                f'{where} has no "cut": add "cut": [...] with {len(prompts)} booleans aligned with video_prompts '
                "(true = a new shot from memory only, false = continue from the previous shot).")
        if not isinstance(cuts, list) or len(cuts) != len(prompts):
            raise StoryScriptError(f"{where}.cut must be a list of {len(prompts)} booleans, one per video prompt, got "
                                   f"{_describe(cuts)}.")
        cuts = [_flag(value, f"{where}.cut[{i}]") for i, value in enumerate(cuts)]
        firsts = scene.get("first_frame_prompt")
        if firsts is not None and (not isinstance(firsts, list) or not all(isinstance(p, str) for p in firsts)):
            raise StoryScriptError(f"{where}.first_frame_prompt must be a list of texts, got {_describe(firsts)} "
                                   "(the pipeline does not use it; remove it or fix its type).")
        if firsts is not None and len(firsts) != len(prompts):
            warnings.append(f"{where}.first_frame_prompt has {len(firsts)} entries for {len(prompts)} shots "
                            "(unused by the pipeline).")
        for i, (prompt, cut) in enumerate(zip(prompts, cuts)):
            if not shots and not cut:
                warnings.append(f"{where}.cut[{i}] is false, but the story's first shot has no previous shot to "
                                "continue; it is generated as a cut.")
            mode = "cut" if (cut or not shots or continuation == "none") else continuation
            shots.append(StoryShot(len(shots), s, scene.get("scene_num", s + 1), i, prompt.strip(), cut, mode,
                                   CONTINUATIONS[continuation] if mode != "cut" else 0,
                                   firsts[i] if firsts is not None and i < len(firsts) else None))
    return StoryScript(name, overview, tuple(shots), tuple(warnings))


def _load(source: Mapping | str | os.PathLike) -> Any:
    if isinstance(source, Mapping):
        return source
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith(("{", "["))):
        path = Path(source)
        if not path.is_file():
            raise StoryScriptError(f"story script {str(source)[:200]!r} is neither JSON text nor an existing file; "
                                   "pass the script's text or the path of its .json file.")
        text, origin = path.read_text(encoding="utf-8"), path.name
    elif isinstance(source, str):
        text, origin = source, "the story script"
    else:
        raise StoryScriptError(f"a story script is a dict, JSON text or a file path, got {type(source).__name__}.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        try:  # the official pipeline reads scripts with json5 (comments, trailing commas); use it where installed
            import json5
        except ImportError:
            raise StoryScriptError(
                f"{origin} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); fix it there "
                "(comments and trailing commas need the json5 package).") from error
        try:
            return json5.loads(text)
        except ValueError as error5:
            raise StoryScriptError(f"{origin} is not valid JSON or JSON5 ({error5}); fix the syntax there.") from error5


def _optional_text(data: Mapping, key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise StoryScriptError(f'"{key}" must be a text, got {_describe(value)}.')
    return value


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # the README's prose spells them so
        return value.strip().lower() == "true"
    raise StoryScriptError(f"{where} must be true or false, got {_describe(value)}.")


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if value is not None else "null"
    return f"{type(value).__name__} {text[:60] + ('...' if len(text) > 60 else '')}"
