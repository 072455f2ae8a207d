"""Crash safety of hide and restore: SIGKILL at random moments and before every commit step never loses an entry and
leaves each entry hidden or visible as the last committed change says; a process hiding while another adds loses
nothing of either."""

from __future__ import annotations

import os
import random
import select
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crash_points import die_before_step
from memv2v_core.bank.memory_bank import MemoryBank

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked writers with SIGKILL (POSIX only)")

STARTING_ENTRIES = 12


def content(k: int) -> torch.Tensor:
    """Entry number k's latent, reproducible in any process."""
    return torch.from_numpy(np.random.default_rng(k).standard_normal((1, 16, 2, 8, 8), dtype=np.float32))


def add_entry(bank: MemoryBank, k: int) -> str:
    return bank.add(content(k), latent_format="wan21", prompt=f"entry {k}", seed=k, extra={"k": k})


def _hider(path: Path, report_fd: int, seed: int, kill_at_step: int | None, until_entries: int | None = None) -> None:
    """Forked child: hide or restore (whichever applies) random entries, reporting each before and after; never
    returns. With ``until_entries``: start once another process has begun adding, prefer the newest entries, and
    stop 20 changes after the bank holds that many entries."""
    try:
        if kill_at_step is not None:
            die_before_step(kill_at_step)
        bank = MemoryBank.open(path)
        rng = random.Random(seed)
        while until_entries is not None and len(bank.ids(include_hidden=True)) <= STARTING_ENTRIES:
            time.sleep(0.001)
            bank.refresh()
        after_last_add = changes = 0
        while after_last_add < 20 and changes < 3000:  # the cap ends the loop if adds get lost (then reported)
            changes += 1
            bank.refresh()  # another process may be adding
            ids = bank.ids(include_hidden=True)
            if until_entries is None:
                entry_id = rng.choice(ids)
            else:
                after_last_add += len(ids) >= until_entries
                entry_id = ids[-1] if rng.random() < 0.5 else rng.choice(ids)
            op = "restore" if bank.is_hidden(entry_id) else "hide"
            os.write(report_fd, f"BEGIN {op} {entry_id}\n".encode())
            getattr(bank, op)(entry_id)
            os.write(report_fd, f"DONE {op} {entry_id}\n".encode())
    except BaseException as error:  # noqa: BLE001 - report anything to the parent, then leave without cleanup
        os.write(report_fd, f"ERROR {error!r}\n".encode())
    finally:
        os._exit(0)


def _adder(path: Path, report_fd: int, first_k: int, count: int) -> None:
    try:
        bank = MemoryBank.open(path)
        for k in range(first_k, first_k + count):
            os.write(report_fd, f"ADD {add_entry(bank, k)} {k}\n".encode())
    except BaseException as error:  # noqa: BLE001
        os.write(report_fd, f"ERROR {error!r}\n".encode())
    finally:
        os._exit(0)


def fork(target, *args) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        target(*args[:1], write_fd, *args[1:])
    os.close(write_fd)
    return pid, read_fd


def collect(pid: int, read_fd: int, kill_after: float | None = None, wait_for_first_done: bool = False,
            timeout: float = 120) -> tuple[list[list[str]], bool]:
    """The child's report lines (split) and whether SIGKILL ended it."""
    chunks = []
    if wait_for_first_done:  # kill inside the loop however fast or slow this machine is today
        while b"DONE" not in b"".join(chunks):
            ready, _, _ = select.select([read_fd], [], [], 60)
            assert ready, "the forked writer reported nothing within 60 s"
            chunk = os.read(read_fd, 65536)
            assert chunk, f"the forked writer ended before its first change: {b''.join(chunks)!r}"
            chunks.append(chunk)
    if kill_after is not None:
        time.sleep(kill_after)
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
        ready, _, _ = select.select([read_fd], [], [], 0.01)  # drain, so a chatty child never blocks on the pipe
        if ready:
            chunks.append(os.read(read_fd, 65536))
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked writer did not finish within {timeout} s")
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    lines = [line.split() for line in b"".join(chunks).decode().splitlines()]
    errors = [" ".join(line) for line in lines if line[0] == "ERROR"]
    assert not errors, errors
    return lines, os.WIFSIGNALED(waited[1]) and os.WTERMSIG(waited[1]) == signal.SIGKILL


def apply_log(expected: dict[str, bool], lines: list[list[str]]) -> str | None:
    """Apply the reported changes to ``expected`` (id -> hidden); returns the id of a change begun but not reported
    done (killed inside it), whose outcome may be either state."""
    in_flight = None
    for kind, op, entry_id in (line[:3] for line in lines if line[0] in ("BEGIN", "DONE")):
        if kind == "BEGIN":
            assert expected[entry_id] == (op == "restore"), f"{op} of {entry_id} began from the wrong state"
            in_flight = entry_id
        else:
            assert in_flight == entry_id
            expected[entry_id] = op == "hide"
            in_flight = None
    return in_flight


def check_bank(path: Path, contents: dict[str, int], expected: dict[str, bool], in_flight: str | None) -> MemoryBank:
    """No entry lost or damaged; every entry hidden or visible exactly as the committed changes say."""
    bank = MemoryBank.open(path)
    assert bank.problems == [] and bank.verify(deep=True) == []
    assert set(bank.ids(include_hidden=True)) == set(contents), "an entry was lost or appeared"
    for entry_id, k in contents.items():
        assert torch.equal(bank.load_latent(entry_id), content(k))
    for entry_id, hidden in expected.items():
        if entry_id != in_flight:
            assert bank.is_hidden(entry_id) == hidden, f"{entry_id} should be {'hidden' if hidden else 'visible'}"
    assert set(bank.ids()) == {i for i in contents if not bank.is_hidden(i)}
    return bank


@pytest.fixture
def filled(tmp_path) -> tuple[Path, dict[str, int]]:
    bank = MemoryBank.open(tmp_path / "bank", create=True)
    return bank.path, {add_entry(bank, k): k for k in range(STARTING_ENTRIES)}


def test_sigkill_during_hide_and_restore_at_random_moments(filled):
    """40 hiders killed at random: 30 at a random moment of their loop, 10 at any moment from their start."""
    path, contents = filled
    expected = dict.fromkeys(contents, False)
    rng = random.Random(4321)
    changes = ambiguous = 0
    for iteration in range(40):
        in_loop = iteration % 4 != 3
        pid, read_fd = fork(_hider, path, iteration, None)
        lines, killed = collect(pid, read_fd, kill_after=rng.uniform(0.0, 0.03), wait_for_first_done=in_loop)
        assert killed
        in_flight = apply_log(expected, lines)
        changes += sum(line[0] == "DONE" for line in lines)
        bank = check_bank(path, contents, expected, in_flight)
        if in_flight is not None:  # whichever way it went, that is now the state
            expected[in_flight] = bank.is_hidden(in_flight)
            ambiguous += 1
    assert changes >= 30 and ambiguous >= 10  # the kills really landed inside changes, many times
    bank = MemoryBank.open(path)
    bank.hide(next(i for i in contents if not bank.is_hidden(i)))  # the next writer clears what dead ones left
    assert os.listdir(path / ".tmp") == []


@pytest.mark.parametrize("step", range(1, 5))
def test_sigkill_before_each_step_of_a_hide(filled, step):
    """Steps of one hide: fsync the staged manifest, rename it (the commit point), fsync the bank folder; step 4 is
    the first step of the next change."""
    path, contents = filled
    expected = dict.fromkeys(contents, False)
    before = (path / "manifest.json").read_bytes()
    pid, read_fd = fork(_hider, path, 7, step)
    lines, killed = collect(pid, read_fd)
    assert killed
    first = lines[0]
    assert first[:2] == ["BEGIN", "hide"]
    in_flight = apply_log(expected, lines)
    bank = check_bank(path, contents, expected, in_flight)
    committed = step > 2
    assert bank.is_hidden(first[2]) == committed
    assert ((path / "manifest.json").read_bytes() == before) == (not committed)
    assert [line[0] for line in lines] == (["BEGIN", "DONE", "BEGIN"] if step == 4 else ["BEGIN"])
    bank.restore(first[2]) if committed else bank.hide(first[2])
    assert MemoryBank.open(path).problems == [] and os.listdir(path / ".tmp") == []


def test_a_process_hiding_while_another_adds_loses_nothing(filled):
    path, contents = filled
    adder = fork(_adder, path, 1000, 60)
    hider = fork(_hider, path, 99, None, STARTING_ENTRIES + 60)
    added, _ = collect(*adder)
    changes, _ = collect(*hider)
    expected = dict.fromkeys(contents, False)
    for _, entry_id, k in added:
        contents[entry_id] = int(k)
        expected[entry_id] = False
    assert len(added) == 60 and apply_log(expected, changes) is None
    touched_new = {line[2] for line in changes if line[0] == "DONE"} & {line[1] for line in added}
    assert len(touched_new) >= 5, "the hider saw few entries the adder added while it ran: they did not overlap"
    bank = check_bank(path, contents, expected, None)
    assert len(bank.ids(include_hidden=True)) == STARTING_ENTRIES + 60
    assert bank.ids(include_hidden=True)[STARTING_ENTRIES:] == [line[1] for line in added]  # adds keep their order
