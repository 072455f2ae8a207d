"""``python -m memv2v_cli run ...``: the headless runner (``memv2v_cli/runner.py``); ``replay``: re-run a stored
turn (``memv2v_cli/replay.py``)."""

import argparse
import logging
import sys

from . import replay, runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memv2v_cli", description="Memory-V2V command-line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a shipped workflow for one or more turns",
                              description=runner.__doc__)
    run.add_argument("workflow", nargs="?", default=None,
                     help=f"a shipped workflow name (default {runner.DEFAULT_WORKFLOW}) or a path to a workflow .json")
    run.add_argument("--turns", type=int, default=1, help="how many times to queue the workflow (default 1)")
    run.add_argument("--set", action="append", default=[], metavar="NODE.input=v1,v2,...",
                     help="set a widget per turn (NODE: node id or title; values cycle over turns); repeatable")
    run.add_argument("--url", help="use a running ComfyUI (e.g. http://127.0.0.1:8188) instead of starting one")
    run.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_PATH, ~/comfy/ComfyUI, or the one holding the pack)")
    run.add_argument("--demo", action="store_true",
                     help="force demo mode: tiny random models on a private ComfyUI (outputs are noise)")
    run.add_argument("--base-dir", help="base directory for the demo ComfyUI (default: a new temporary folder)")
    run.add_argument("--fixed-seed", action="store_true", help="keep seeds as saved (default: seed + turn index)")
    again = commands.add_parser("replay", help="re-run a stored bank entry's exact prompt and compare the latents",
                                description=replay.__doc__)
    again.add_argument("bank", metavar="BANK", help="the bank's folder, or its name under ComfyUI's "
                                                    "output/memory_banks")
    again.add_argument("entry_id", metavar="ENTRY_ID", help="the entry to replay (an id from the bank browser, "
                                                            "Bank Inspect or Bank Add)")
    again.add_argument("--url", help="use a running ComfyUI (e.g. http://127.0.0.1:8188) on this machine; BANK must "
                                     "be in its output/memory_banks")
    again.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_PATH, ~/comfy/ComfyUI, or the one "
                                         "holding the pack)")
    again.add_argument("--demo", action="store_true",
                       help="replay a demo-mode turn on a private ComfyUI with the demo models (needs --base-dir)")
    again.add_argument("--base-dir", help="the base directory of the demo run that made the bank")
    again.add_argument("--set", action="append", default=[], metavar="NODE.input=value",
                       help="change a widget for this replay only (e.g. to see what another seed gives); repeatable")
    again.add_argument("--keep-copy", action="store_true",
                       help="keep the scratch bank the replay ran on (it is removed by default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "replay":
        return replay.main(args)
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    return runner.run(args)


if __name__ == "__main__":
    sys.exit(main())
