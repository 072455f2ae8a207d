"""Crash safety and concurrent writers: SIGKILL at random moments and at every commit step never costs an entry
whose ``add`` returned, never shows a partial one; two processes adding at once lose nothing."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crash_points import die_before_step
from memv2v_core.bank import memory_bank as bank_module
from memv2v_core.bank.memory_bank import LockTimeout, MemoryBank
from memv2v_core.bank.storage import WriterLock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked writers with SIGKILL (POSIX only)")

REPO = Path(__file__).resolve().parents[2]


def content(k: int) -> torch.Tensor:
    """Entry number k's latent, reproducible in any process (numpy, so forked children never start torch threads)."""
    return torch.from_numpy(np.random.default_rng(k).standard_normal((1, 16, 3, 16, 16), dtype=np.float32))


def add_entry(bank: MemoryBank, k: int) -> str:
    camera = torch.from_numpy(np.tile(np.eye(4, dtype=np.float32), (9, 1, 1)))
    return bank.add(content(k), latent_format="wan21", camera=camera, prompt=f"entry {k}", seed=k, extra={"k": k})


def _child(path: Path, first_k: int, report_fd: int, kill_at_step: int | None) -> None:
    """Forked writer: adds entries first_k, first_k+1, ... and reports each returned id; never returns."""
    try:
        if kill_at_step is not None:  # die just before the n-th durability step (fsync or rename) of this process
            die_before_step(kill_at_step)
        bank = MemoryBank.open(path, create=True)
        k = first_k
        while True:
            entry_id = add_entry(bank, k)
            os.write(report_fd, f"{entry_id} {k}\n".encode())
            k += 1
    except BaseException as error:  # noqa: BLE001 - report anything to the parent, then leave without cleanup
        os.write(report_fd, f"ERROR {error!r}\n".encode())
    finally:
        os._exit(0)


def run_writer(path: Path, first_k: int, kill_after: float | None = None, kill_at_step: int | None = None,
               wait_for_first_add: bool = False) -> tuple[list[tuple[str, int]], bool]:
    """Fork a writer and SIGKILL it ``kill_after`` seconds after it starts (or after its first reported add), or
    let it kill itself at a commit step; returns the adds it reported and whether SIGKILL ended it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(path, first_k, write_fd, kill_at_step)
    os.close(write_fd)
    chunks = []
    if wait_for_first_add:  # kill inside the add loop however fast or slow this machine is today
        while b"\n" not in b"".join(chunks):
            ready, _, _ = select.select([read_fd], [], [], 60)
            assert ready, "the forked writer reported nothing within 60 s"
            chunk = os.read(read_fd, 65536)
            assert chunk, "the forked writer ended before its first add"
            chunks.append(chunk)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # a writer that neither finishes nor dies is a failure, not a hang
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked writer did not die within 60 s")
        time.sleep(0.002)
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    lines = b"".join(chunks).decode().splitlines()
    errors = [line for line in lines if line.startswith("ERROR")]
    assert not errors, errors
    reported = [(line.split()[0], int(line.split()[1])) for line in lines]
    return reported, os.WIFSIGNALED(waited[1]) and os.WTERMSIG(waited[1]) == signal.SIGKILL


def check_bank(path: Path, reported: list[tuple[str, int]]) -> MemoryBank:
    """Every reported add is present and bit-exact; every visible entry is complete and holds what it was given."""
    bank = MemoryBank.open(path)
    assert bank.problems == []
    assert bank.verify(deep=True) == []
    for entry_id, k in reported:
        assert entry_id in bank, f"entry {k} ({entry_id}) was reported as added but is missing after the kill"
        assert torch.equal(bank.load_latent(entry_id), content(k))
    for entry_id in bank.ids():
        entry = bank.entry(entry_id)
        assert torch.equal(bank.load_latent(entry_id), content(entry.extra["k"]))
        assert entry.prompt == f"entry {entry.extra['k']}"
    return bank


def next_k(bank: MemoryBank) -> int:
    return 1 + max((bank.entry(i).extra["k"] for i in bank.ids()), default=-1)


def test_sigkill_at_random_moments_never_loses_or_tears_an_entry(tmp_path):
    """40 writers killed at random: 30 at a random moment of their add loop, 10 at any moment from their start."""
    path = tmp_path / "bank"
    rng = random.Random(1234)
    reported_all: list[tuple[str, int]] = []
    for iteration in range(40):
        first = next_k(MemoryBank.open(path)) if path.exists() else 0
        in_loop = iteration % 4 != 3
        reported, killed = run_writer(path, first, kill_after=rng.uniform(0.0, 0.03), wait_for_first_add=in_loop)
        assert killed and (reported or not in_loop)
        reported_all += reported
        check_bank(path, reported_all)
    bank = check_bank(path, reported_all)
    add_entry(bank, next_k(bank))  # the next writer clears what dead writers left in .tmp
    assert os.listdir(path / ".tmp") == []


@pytest.mark.parametrize("step", range(1, 8))
def test_sigkill_before_each_commit_step(tmp_path, step):
    """Steps of one add: fsync the staged entry, rename it into entries/, fsync the new manifest, fsync entries/,
    rename the manifest (the commit point), fsync the bank folder; step 7 is the first step of the next add."""
    path = tmp_path / "bank"
    bank = MemoryBank.open(path, create=True)
    before = [add_entry(bank, k) for k in range(2)]
    reported, killed = run_writer(path, 2, kill_at_step=step)
    assert killed
    after = check_bank(path, list(zip(before, range(2))) + reported)
    committed = step > 5  # the manifest rename (step 5) is the commit point
    assert (len(after) == 3) == committed and reported == ([(after.ids()[2], 2)] if step == 7 else [])
    assert after.ids()[:2] == before
    add_entry(after, 3)
    assert MemoryBank.open(path).problems == [] and os.listdir(path / ".tmp") == []


WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from tests_bank_writer import writer_main
    writer_main(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
""")

WRITER_MODULE = textwrap.dedent("""
    import os, time
    import numpy as np, torch
    from memv2v_core.bank.memory_bank import MemoryBank

    def writer_main(path, first_k, count):
        bank = MemoryBank.open(path, create=True)
        (path.parent / f"ready-{first_k}").touch()
        while not (path.parent / "go").exists():
            time.sleep(0.005)
        camera = torch.from_numpy(np.tile(np.eye(4, dtype=np.float32), (9, 1, 1)))
        for k in range(first_k, first_k + count):
            latent = torch.from_numpy(np.random.default_rng(k).standard_normal((1, 16, 3, 16, 16), dtype=np.float32))
            entry_id = bank.add(latent, latent_format="wan21", camera=camera, prompt=f"entry {k}", seed=k,
                                extra={"k": k})
            print(entry_id, k, flush=True)
""")


def test_two_processes_adding_100_entries_each_end_with_200(tmp_path):
    (tmp_path / "tests_bank_writer.py").write_text(WRITER_MODULE)
    path = tmp_path / "bank"
    MemoryBank.open(path, create=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]), OMP_NUM_THREADS="1")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path), str(path), str(first), "100"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
               for first in (0, 1000)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{first}").exists() for first in (0, 1000)):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers), \
            [w.stderr.read() for w in writers if w.poll() is not None]
        time.sleep(0.01)
    (tmp_path / "go").touch()  # both start adding at the same moment
    outputs = [w.communicate(timeout=120) for w in writers]
    assert all(w.returncode == 0 for w in writers), [err for _, err in outputs]
    reported = [(line.split()[0], int(line.split()[1])) for out, _ in outputs for line in out.splitlines()]
    assert len(reported) == 200
    bank = check_bank(path, reported)
    assert len(bank) == 200 and set(bank.ids()) == {entry_id for entry_id, _ in reported}
    # each writer's own entries keep their order
    for first in (0, 1000):
        mine = [i for i in bank.ids() if first <= bank.entry(i).extra["k"] < first + 100]
        assert [bank.entry(i).extra["k"] for i in mine] == list(range(first, first + 100))


def test_a_writer_waits_for_the_lock_and_gives_up_with_a_clear_message(tmp_path, monkeypatch):
    bank = MemoryBank.open(tmp_path / "bank", create=True)
    monkeypatch.setattr(bank_module, "LOCK_TIMEOUT_S", 0.2)
    with WriterLock(bank.path / ".lock"):  # another writer (a separate open file: flock conflicts even in-process)
        with pytest.raises(LockTimeout, match="another process has held this bank's writer lock"):
            add_entry(bank, 0)
    assert len(MemoryBank.open(bank.path)) == 0 and os.listdir(bank.path / "entries") == []
    add_entry(bank, 0)
    assert len(MemoryBank.open(bank.path)) == 1
