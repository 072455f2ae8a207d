"""Cost of an NVS turn: measured on CPU with the tiny demo model (time, server peak RSS) with and without memory, and
the projected token budget per turn at ReCamMaster's 480x832x81 for turns 1-10 (turn i retrieves min(i-1, 6)).

Run from the repository root in the pack's environment: ``python tests/host/nvs_scripts/turn_cost.py``.
Prints two tables. Peak RSS is the server process's VmHWM (a fresh server per configuration).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from memv2v_cli import runner  # noqa: E402
from memv2v_cli.host import comfy_host  # noqa: E402
from memv2v_core.memory.context import build_context, token_budget  # noqa: E402
from memv2v_core.memory.flops import dit_flops  # noqa: E402

LATENT = (1, 16, 21, 60, 104)  # 81 frames at 480x832 in Wan 2.1's VAE
PRESETS = ("pan_left", "pan_right", "arc_right")


def budget_table() -> list[str]:
    lines = [f"{'turn':>4} {'memories':>8} {'target':>7} {'user':>7} {'memory':>7} {'total':>8} {'all 1x2x2':>10} "
             f"{'saving':>7} {'DiT TFLOPs':>10} {'naive TFLOPs':>12}"]
    user = torch.zeros(LATENT)
    for turn in range(1, 11):
        count = min(turn - 1, 6)
        memories = [(f"m{i}", user, 1.0 - 0.1 * i, None) for i in range(count)]
        budget = token_budget(build_context(user, memories, "nvs"))
        tokens = budget.target + budget.per_stream[0] + sum(budget.per_stream[1:])
        naive_memory = budget.naive_total
        flops = dit_flops([budget.total] * 30).total / 1e12
        naive = dit_flops([naive_memory] * 30).total / 1e12
        lines.append(f"{turn:>4} {count:>8} {budget.target:>7,} {budget.per_stream[0]:>7,} "
                     f"{sum(budget.per_stream[1:]):>7,} {tokens:>8,} {budget.naive_total:>10,} "
                     f"{budget.saving:>7.1%} {flops:>10.1f} {naive:>12.1f}")
    return lines


def peak_rss_kib(server: comfy_host.ComfyServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def measure(workflow: str, turns: int, settings: list[str]) -> tuple[float, int]:
    """Seconds of the last turn and the server's peak RSS (KiB) after it, on a fresh demo server."""
    comfyui, _ = comfy_host.find_comfyui()
    server, assets = runner.prepare_demo_server(comfyui, Path(tempfile.mkdtemp(prefix="nvs-cost-")), lambda _: None)
    with server:
        client = server.client()
        prompt = runner.to_demo(runner.load_api_prompt(runner.resolve_workflow(workflow), client.object_info()),
                                assets)
        reports = runner.run_turns(client, prompt, turns, runner.parse_settings(settings, prompt),
                                   out=lambda _: None)
        return reports[-1].seconds, peak_rss_kib(server)


def main() -> int:
    print("Projected token budget per turn at 480x832x81 (Wan2.1-1.3B, 30 blocks; DiT TFLOPs per model call "
          "without merging)")
    print("\n".join(budget_table()))
    print()
    print("Measured on CPU, tiny demo model (5 frames, 32x32 px, 3 steps, cfg on): last turn of a fresh server")
    rows = [("no memory (ReCamMaster graph), turn 2", "memv2v_recammaster_no_memory", 2,
             ["Camera Preset.preset=pan_left,arc_right"]),
            ("memory, turn 3 (2 memories)", "memv2v_multiturn_nvs", 3, [f"Camera Preset.preset={','.join(PRESETS)}"])]
    print(f"{'configuration':<40} {'turn s':>7} {'peak RSS MiB':>13}")
    for label, workflow, turns, settings in rows:
        seconds, rss = measure(workflow, turns, settings)
        print(f"{label:<40} {seconds:>7.2f} {rss / 1024:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
