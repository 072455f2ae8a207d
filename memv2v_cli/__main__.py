"""``python -m memv2v_cli run ...``: the headless runner (``memv2v_cli/runner.py``); ``replay``: re-run a stored
turn (``memv2v_cli/replay.py``)."""

import argparse
import logging
import sys

from . import replay, runner, story_runner
from .host import comfy_host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memv2v_cli", description="Memory-V2V command-line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a shipped workflow for one or more turns",
                              description=runner.__doc__)
    run.add_argument("workflow", nargs="?", default=None,
                     help=f"a shipped workflow name (default {runner.DEFAULT_WORKFLOW}) or a path to a workflow .json")
    run.add_argument("--turns", type=int, default=None,
                     help="how many times to queue the workflow (default 1; for a per-segment edit workflow, the "
                          "source's segment count, the index stepping one segment per turn)")
    run.add_argument("--set", action="append", default=[], metavar="NODE.input=v1,v2,...",
                     help="set a widget per turn (NODE: node id or title; values cycle over turns); repeatable")
    run.add_argument("--base-dir", help="base directory for the demo ComfyUI (default: a persistent folder per "
                                        "workflow, ~/.cache/memv2v/demo/<workflow> on Linux, so a later run "
                                        "continues the same bank)")
    run.add_argument("--fresh", action="store_true", help="demo mode: empty the demo folder's banks first")
    run.add_argument("--fixed-seed", action="store_true", help="keep seeds as saved (default: seed + turn index)")
    story = commands.add_parser("story", help="run a whole StoryMem story script, shot by shot",
                                description=story_runner.__doc__)
    story.add_argument("script", help="a story script in StoryMem's format (story_name, scenes[].video_prompts, "
                                      "scenes[].cut)")
    story.add_argument("--story-id", help="the story's id in the bank (default: from story_name or the file name)")
    story.add_argument("--bank", default="my_stories", help="the memory bank that holds the story (default my_stories)")
    story.add_argument("--continuation", choices=("MI2V", "MM2V", "none"), default="MI2V",
                       help="what a shot with cut=false becomes: MI2V (last frame), MM2V (last 5 frames; load the "
                            "MM2V LoRA in the workflow) or none (memory only); default MI2V")
    story.add_argument("--seed", type=int, default=42, help="seed of the first shot; shot i uses seed + i (default 42)")
    story.add_argument("--out", help="folder for shot_NNN.mp4 and story.mp4 (default ./memv2v_story_<story id>)")
    story.add_argument("--timeout", type=float, default=3600, help="seconds one shot may take (default 3600)")
    for sub in (run, story):
        sub.add_argument("--url", help="use a running ComfyUI (e.g. http://127.0.0.1:8188) instead of starting one")
        sub.add_argument("--comfyui",
                         help="the ComfyUI folder (default: the one holding the pack, $COMFYUI_PATH, ~/comfy/ComfyUI)")
        sub.add_argument("--demo", action="store_true",
                         help="force demo mode: tiny random models on a private ComfyUI (outputs are noise)")
    story.add_argument("--base-dir", help="base directory for the demo ComfyUI (default: <out>/demo-comfyui, so a "
                                          "demo story resumes too)")
    serve = commands.add_parser("demo-server", help="start a demo ComfyUI where every shipped template runs on tiny "
                                                     "models", description=runner.serve_demo.__doc__)
    serve.add_argument("--comfyui", help="the ComfyUI folder (default: the one holding the pack, $COMFYUI_PATH, "
                                         "~/comfy/ComfyUI)")
    serve.add_argument("--base-dir", help="its base directory (default ~/.cache/memv2v/demo/ui on Linux)")
    serve.add_argument("--port", type=int, help="the port (default: a free one)")
    serve.add_argument("--fresh", action="store_true", help="empty the demo folder's banks first")
    again = commands.add_parser("replay", help="re-run a stored bank entry's exact prompt and compare the latents",
                                description=replay.__doc__)
    again.add_argument("bank", metavar="BANK", help="the bank's folder, or its name under ComfyUI's "
                                                    "output/memory_banks")
    again.add_argument("entry_id", metavar="ENTRY_ID", help="the entry to replay (an id from the bank browser, "
                                                            "Bank Inspect or Bank Add)")
    again.add_argument("--url", help="use a running ComfyUI (e.g. http://127.0.0.1:8188) on this machine; BANK must "
                                     "be in its output/memory_banks")
    again.add_argument("--comfyui", help="the ComfyUI folder (default: the one holding the pack, $COMFYUI_PATH, "
                                         "~/comfy/ComfyUI)")
    again.add_argument("--demo", action="store_true",
                       help="replay a demo-mode turn on a private ComfyUI with the demo models")
    again.add_argument("--base-dir", help="the base directory of the demo run that made the bank (default: the demo "
                                          "folder that holds BANK)")
    again.add_argument("--set", action="append", default=[], metavar="NODE.input=value",
                       help="change a widget for this replay only (e.g. to see what another seed gives); repeatable")
    again.add_argument("--keep-copy", action="store_true",
                       help="keep the scratch bank the replay ran on (it is removed by default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "story":
            return story_runner.run_story(args)
        if args.command == "replay":
            return replay.main(args)
        if args.command == "demo-server":
            return runner.serve_demo(args)
        return runner.run(args)
    except runner.UserError as error:  # the user's mistake: the message, no traceback
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except comfy_host.PromptRejected as error:  # ComfyUI's validation: the values in the workflow need a fix
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except comfy_host.PromptFailed as error:
        print(f"{parser.prog} {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
