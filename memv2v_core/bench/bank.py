"""Bank benchmark: cost of ``add`` against a bare safetensors save, opening a large bank, and lazy latent loads.

Run ``python -m memv2v_core.bench bank [--reps N] [--entries N] [--dir PATH]``. Figures are measured side by side
in one run (add and the bare save interleaved) and printed as a table; the exit status is 1 if a limit is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..bank.memory_bank import MemoryBank

LATENT_SHAPE = (1, 16, 21, 60, 104)  # 81 frames at 480x832 in Wan 2.1's VAE
ADD_RATIO_LIMIT = 1.5
OPEN_LIMIT_MS = 100.0


def _bare_save(tensor: torch.Tensor, path: Path) -> None:
    """The reference: one safetensors file written and fsynced, nothing else."""
    save_file({"latent": tensor}, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def bench_add(root: Path, reps: int) -> tuple[float, float]:
    """Median ms of bank.add and of a bare save+fsync of the same tensor, interleaved (order alternates)."""
    bank = MemoryBank.open(root / "add_bank", create=True)
    bare_dir = root / "bare"
    bare_dir.mkdir()
    latent = torch.randn(LATENT_SHAPE)
    camera = torch.eye(4).repeat(81, 1, 1)
    add_times, bare_times = [], []
    for rep in range(reps + 1):
        latent[0, 0, 0, 0, 0] = float(rep)  # new content each time, or add would recognise a duplicate

        def run_add() -> float:
            start = time.perf_counter()
            bank.add(latent, latent_format="wan21", camera=camera, prompt=f"rep {rep}", seed=rep,
                     sampler={"steps": 30, "cfg": 6.0})
            return time.perf_counter() - start

        def run_bare() -> float:
            start = time.perf_counter()
            _bare_save(latent, bare_dir / f"{rep}.safetensors")
            return time.perf_counter() - start

        first, second = (run_add, run_bare) if rep % 2 else (run_bare, run_add)
        a, b = first(), second()
        if rep == 0:
            continue  # warm-up: first file creation in fresh folders
        add_t, bare_t = (a, b) if first is run_add else (b, a)
        add_times.append(add_t)
        bare_times.append(bare_t)
    return _median_ms(add_times), _median_ms(bare_times)


def count_fsyncs(action) -> int:
    """How many fsync calls ``action()`` makes (each one is a journal commit the disk must finish)."""
    calls = [0]
    real = os.fsync

    def counting(fd: int) -> None:
        calls[0] += 1
        real(fd)

    os.fsync = counting
    try:
        action()
    finally:
        os.fsync = real
    return calls[0]


def build_large_bank(path: Path, entries: int) -> MemoryBank:
    """A bank of ``entries`` small entries with realistic metadata (open cost does not depend on latent size)."""
    bank = MemoryBank.open(path, create=True)
    camera = torch.eye(4).repeat(81, 1, 1)
    parent = None
    for i in range(entries):
        latent = torch.full((1, 16, 2, 4, 4), float(i))
        parent = bank.add(latent, latent_format="wan21", camera=camera, fov_mask=torch.zeros(8100, dtype=torch.uint8),
                          prompt=f"turn {i}: a slow orbit around the statue", parents=[parent] if parent else [],
                          seed=1000 + i, sampler={"sampler": "uni_pc", "scheduler": "simple", "steps": 30},
                          model="WAN21_T2V(dim=1536,layers=30)")
    return bank


def bench_open(path: Path, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        MemoryBank.open(path)
        times.append(time.perf_counter() - start)
    return _median_ms(times)


def bench_add_large(bank: MemoryBank, reps: int) -> float:
    times = []
    latent = torch.zeros(1, 16, 2, 4, 4)
    for rep in range(reps):
        latent[0, 0, 0, 0, 0] = -1.0 - rep
        start = time.perf_counter()
        bank.add(latent, latent_format="wan21", prompt="appended to a large bank")
        times.append(time.perf_counter() - start)
    return _median_ms(times)


def _read_chars() -> int | None:
    """Bytes this process has read through read() calls (Linux /proc/self/io), or None elsewhere."""
    try:
        with open("/proc/self/io") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("rchar:"))
    except (OSError, StopIteration, ValueError):
        return None


class FileWatch:
    """Records the files under one folder that Python opens, through an audit hook (hooks cannot be removed, so
    one hook serves every measurement)."""

    def __init__(self):
        self.root: str | None = None
        self.opened: list[str] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.root is None or event != "open" or not isinstance(args[0], (str, os.PathLike)):
            return
        path = os.fspath(args[0])
        if isinstance(path, str) and path.startswith(self.root):
            self.opened.append(os.path.relpath(path, self.root))

    def measure(self, root: Path, action) -> tuple[list[str], int | None, float]:
        """Files opened under ``root``, bytes read (None off Linux) and milliseconds taken by ``action()``."""
        self.root, self.opened = str(root), []
        before = _read_chars()
        start = time.perf_counter()
        action()
        elapsed = time.perf_counter() - start
        after = _read_chars()
        self.root = None
        read = after - before if before is not None and after is not None else None
        return self.opened, read, elapsed * 1000.0


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _print_table(rows: list[tuple]) -> None:
    header = ("measure", "value", "reference", "target")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  ok")
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths)) + ("  yes" if row[4] else "  NO"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m memv2v_core.bench bank", description=__doc__)
    parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions of add vs bare save")
    parser.add_argument("--entries", type=int, default=1000, help="entries in the bank used for the open benchmark")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="memv2v-bench-bank-", dir=args.dir))
    torch.set_num_threads(1)
    watch = FileWatch()
    try:
        add_ms, bare_ms = bench_add(root, args.reps)
        probe = torch.randn(LATENT_SHAPE)
        add_fsyncs = count_fsyncs(lambda: MemoryBank.open(root / "add_bank").add(probe, latent_format="wan21"))
        bare_fsyncs = count_fsyncs(lambda: _bare_save(probe, root / "bare" / "probe.safetensors"))
        build_start = time.perf_counter()
        large = build_large_bank(root / "large_bank", args.entries)
        build_s, count = time.perf_counter() - build_start, len(large)
        open_ms = bench_open(large.path, 11)
        open_files, open_read, _ = watch.measure(large.path, lambda: MemoryBank.open(large.path))
        manifest_bytes = (large.path / "manifest.json").stat().st_size
        _, _, verify_ms = watch.measure(large.path, large.verify)
        add_large_ms = bench_add_large(large, 5)
        full = MemoryBank.open(root / "add_bank")
        load_files, load_read, load_ms = watch.measure(full.path, lambda: full.load_latent(full.ids()[len(full) // 2]))
        latent_bytes = torch.Size(LATENT_SHAPE).numel() * 4
        ratio = add_ms / bare_ms

        def megabytes(value: int | None) -> str:
            return "n/a" if value is None else f"{value / 1e6:.2f} MB"

        rows = [
            ("add: [1,16,21,60,104] f32 latent + camera", f"{add_ms:.1f} ms", f"bare save+fsync {bare_ms:.1f} ms",
             f"ratio {ratio:.2f} (limit {ADD_RATIO_LIMIT})", ratio <= ADD_RATIO_LIMIT),
            ("  fsync calls per add", f"{add_fsyncs}", f"bare save: {bare_fsyncs}", "(information)", True),
            (f"open a bank of {count} entries", f"{open_ms:.1f} ms", "manifest read + stat of each entry file",
             f"< {OPEN_LIMIT_MS:.0f} ms", open_ms < OPEN_LIMIT_MS),
            ("  files opened / bytes read by open", f"{len(open_files)} / {megabytes(open_read)}",
             f"{', '.join(open_files)} is {megabytes(manifest_bytes)}", "manifest only",
             open_files == ["manifest.json"]),
            (f"verify(): check all {count} entry headers", f"{verify_ms:.1f} ms", "what Bank Inspect adds",
             "(information)", True),
            (f"add to the {count}-entry bank", f"{add_large_ms:.1f} ms", "small latent", "(information)", True),
            (f"load_latent: 1 of {len(full)} full-size entries", f"{load_ms:.1f} ms",
             f"files opened: {', '.join(load_files)}", "that entry only", len(load_files) == 1),
            ("  bytes read by that load", megabytes(load_read),
             f"latent {megabytes(latent_bytes)}; bank {megabytes(_folder_bytes(full.path))}", "latent + header",
             load_read is None or load_read <= latent_bytes + 65536),
        ]
        print(f"memory bank benchmark: {args.reps} interleaved repetitions, medians; {count}-entry bank built in "
              f"{build_s:.1f} s under {root}")
        _print_table(rows)
        return 0 if all(row[4] for row in rows) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
