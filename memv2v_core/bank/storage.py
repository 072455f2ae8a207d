"""Low-level storage for the memory bank: atomic files, the writer lock and a byte-exact safetensors reader.

Everything here is about never leaving a half-written file where a reader could find it, on POSIX and Windows.
The reader reads a tensor's exact byte range (no mmap), so loading one latent touches one file and only its bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

# safetensors dtype names <-> torch dtypes (the subset torch provides on this install).
_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
TORCH_DTYPES: dict[str, torch.dtype] = {k: getattr(torch, v) for k, v in _DTYPE_NAMES.items() if hasattr(torch, v)}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}

MAX_HEADER_BYTES = 64 * 1024 * 1024  # a larger header is a damaged file, not a real one


class StorageError(ValueError):
    """A file on disk is not what it claims to be (truncated, not safetensors, inconsistent header)."""


class LockTimeout(TimeoutError):
    """Another process held the bank's writer lock for longer than the timeout."""


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes: temporary file in the same file system, fsync, rename, fsync of the directory.

def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable. Windows cannot open directories; its renames are journaled by NTFS."""
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to disk (Windows needs write access for that)."""
    fd = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(src: Path, dst: Path, attempts: int = 40) -> None:
    """``os.replace`` that retries briefly on Windows, where a reader holding ``dst`` open blocks the rename."""
    for attempt in range(attempts):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == attempts - 1:
                raise
            time.sleep(0.025)


def temp_path(tmp_dir: Path, final_name: str) -> Path:
    """A fresh temporary name, unique across processes, next to where the final file will go."""
    return tmp_dir / f"{final_name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def write_bytes_atomic(dest: Path, data: bytes, tmp_dir: Path) -> None:
    """Write ``data`` to ``dest`` so that readers see either the old file or the complete new one."""
    tmp = temp_path(tmp_dir, dest.name)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        replace_file(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def save_tensors_atomic(dest: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], tmp_dir: Path) -> int:
    """Write a safetensors file atomically and durably; returns its size in bytes."""
    tmp = temp_path(tmp_dir, dest.name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        fsync_file(tmp)
        size = tmp.stat().st_size
        replace_file(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)
    return size


def stage_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str], tmp_dir: Path,
                  final_name: str) -> tuple[Path, int]:
    """Write a safetensors file to a fresh temporary file (not yet fsynced); returns its path and size."""
    tmp = temp_path(tmp_dir, final_name)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        return tmp, tmp.stat().st_size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class InBackground:
    """Run one blocking call (an fsync) on a thread while the caller computes; ``wait`` re-raises its error.

    A plain thread per call rather than a pool: pools break in processes forked while they have idle threads."""

    def __init__(self, function, *args):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(function, args), name="memv2v-bank-io", daemon=True)
        self._thread.start()

    def _run(self, function, args) -> None:
        try:
            function(*args)
        except BaseException as error:  # handed to wait()
            self._error = error

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error


def stage_bytes(data: bytes, tmp_dir: Path, final_name: str) -> Path:
    """Write ``data`` to a fresh temporary file (not yet fsynced) and return its path."""
    tmp = temp_path(tmp_dir, final_name)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def remove_stale_temp_files(tmp_dir: Path) -> int:
    """Delete what writers that died left in ``tmp_dir`` (ours, and safetensors' own temporary files).

    Call only while holding the writer lock: every live writer holds it while it has files there."""
    removed = 0
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError as error:  # a stale file we cannot remove is harmless
                logger.warning("could not remove stale temporary file %s: %s", entry.path, error)
    return removed


# ---------------------------------------------------------------------------------------------------------------
# The writer lock: one lock file, flock on POSIX, msvcrt.locking on Windows. The OS drops it when a process dies.

class WriterLock:
    """Serialises writers of one bank across processes; readers never take it."""

    def __init__(self, path: Path, timeout: float = 120.0):
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while True:
            try:
                _try_lock(fd)
                self._fd = fd
                return self
            except OSError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LockTimeout(
                        f"{self.path}: another process has held this bank's writer lock for {self.timeout:.0f} s. "
                        "Wait for the other ComfyUI instance or script to finish adding entries, then try again.")
                time.sleep(delay)
                delay = min(delay * 2, 0.02)

    def __exit__(self, *exc) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                _unlock(fd)
            finally:
                os.close(fd)


if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------------
# Reading safetensors: header parsed and checked against the file size; tensors read by exact byte range.

@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of a safetensors file, validated against the file's real size."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    file_size: int


def read_header(path: str | Path, file_size: int | None = None) -> SafetensorsHeader:
    """Read and validate a safetensors header without touching tensor data; StorageError says what is wrong."""
    with open(path, "rb") as handle:
        return _read_header_from(handle, os.fstat(handle.fileno()).st_size if file_size is None else file_size)


_FIRST_READ = 16384  # one read usually covers the whole header


def _read_header_from(handle, file_size: int) -> SafetensorsHeader:
    chunk = handle.read(min(_FIRST_READ, file_size))
    if len(chunk) < 8:
        raise StorageError(f"file is {file_size} bytes, too short for a safetensors header (truncated)")
    (header_len,) = struct.unpack("<Q", chunk[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise StorageError(f"header claims {header_len} bytes but the file has {file_size} bytes (truncated or not "
                           "a safetensors file)")
    raw = chunk[8:8 + header_len]
    if len(raw) < header_len:
        raw += handle.read(header_len - len(raw))
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StorageError(f"safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise StorageError("safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise StorageError("safetensors __metadata__ is not a map of strings")
    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, info in header.items():
        tensors[name] = info_obj = _tensor_info(name, info, data_start)
        data_end = max(data_end, info_obj.end)
    data_end = max(data_end, data_start)
    if data_end != file_size:
        raise StorageError(f"tensor data should end at byte {data_end} but the file has {file_size} bytes "
                           f"({'truncated' if file_size < data_end else 'trailing bytes'})")
    return SafetensorsHeader(tensors=tensors, metadata=dict(metadata), file_size=file_size)


def _tensor_info(name: str, info, data_start: int) -> TensorInfo:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        ok = (dtype in TORCH_DTYPES and all(isinstance(d, int) and d >= 0 for d in shape)
              and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise StorageError(f"tensor '{name}' has a malformed header entry: {info!r}")
    expected = math.prod(shape) * TORCH_DTYPES[dtype].itemsize
    if end - begin != expected:
        raise StorageError(f"tensor '{name}' {dtype}{list(shape)} needs {expected} bytes but its header gives "
                           f"{end - begin}")
    return TensorInfo(dtype=dtype, shape=shape, begin=data_start + begin, end=data_start + end)


def read_tensors(path: Path, names: list[str]) -> tuple[SafetensorsHeader, dict[str, torch.Tensor]]:
    """Read the named tensors (and only their bytes) from one file; missing names are left out."""
    with open(path, "rb") as handle:
        header = _read_header_from(handle, os.fstat(handle.fileno()).st_size)
        out: dict[str, torch.Tensor] = {}
        for name in names:
            info = header.tensors.get(name)
            if info is None:
                continue
            buffer = bytearray(info.end - info.begin)
            handle.seek(info.begin)
            if handle.readinto(buffer) != len(buffer):
                raise StorageError(f"tensor '{name}' is cut short (file truncated while reading)")
            dtype = TORCH_DTYPES[info.dtype]
            if buffer:
                out[name] = torch.frombuffer(buffer, dtype=dtype).reshape(info.shape)
            else:
                out[name] = torch.empty(info.shape, dtype=dtype)
    return header, out
