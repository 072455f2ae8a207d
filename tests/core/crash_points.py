"""Shared by the bank's crash tests: make a forked child die at an exact point of a commit."""

from __future__ import annotations

import os
import signal


def die_before_step(kill_at_step: int) -> None:
    """Make this process SIGKILL itself just before its n-th durability step (an fsync or a rename)."""
    steps = [0]

    def dying(real):
        def step(*args, **kwargs):
            steps[0] += 1
            if steps[0] == kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return step

    os.fsync, os.replace = dying(os.fsync), dying(os.replace)
