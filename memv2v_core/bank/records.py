"""What a memory bank stores: entry records, the manifest text, and the checks that keep bad data out.

The manifest is JSON with one entry record per line; each entry file also carries its own record in its
safetensors metadata, so a lost manifest can be rebuilt from the entry files (see docs/bank-format.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from .inputs import normalize_latent_format, validate_branch_name
from .storage import DTYPE_NAMES, TORCH_DTYPES, SafetensorsHeader, StorageError, read_header, read_tensors

FORMAT_NAME = "memv2v-bank"
ENTRY_FORMAT = "memv2v-bank-entry"
CACHE_FORMAT = "memv2v-bank-cache"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENTRIES_DIR, CACHE_DIR, TMP_DIR, LOCK_NAME = "entries", "cache", ".tmp", ".lock"
TENSOR_NAMES = ("latent", "camera", "intrinsics", "fov_mask", "descriptor", "keyframes")


class BankFormatError(ValueError):
    """The bank as a whole cannot be read (manifest unreadable, unknown format, schema from a newer version)."""


class NewerSchemaError(BankFormatError):
    """The bank was written by a newer version of the pack; it is left untouched (never "recovered")."""


class DamagedEntryError(ValueError):
    """One entry's file is damaged; the message names the file and the problem. The rest of the bank still works."""


class BankStateError(ValueError):
    """A request that contradicts the bank's state (hiding a hidden entry, restoring a visible one, branching from a
    hidden entry); nothing was changed."""


class UnknownEntryError(KeyError):
    """No entry with this id in the bank."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class RecordError(Exception):
    """A manifest record that cannot be used; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# Entries and their manifest records

@dataclass(frozen=True)
class MemoryEntry:
    """Metadata of one stored generation (no tensors): enough to audit or replay the turn that made it."""

    entry_id: str
    latent_format: str
    latent_shape: tuple[int, ...]
    tensors: tuple[str, ...]
    prompt: str
    turn: int
    parents: tuple[str, ...]
    seed: int | None
    sampler: dict
    model: str | None
    created: str
    segment_index: int | None
    source_id: str | None
    extra: dict
    latent_dtype: str = "F32"
    shapes: dict = field(default_factory=dict)  # tensor name -> shape tuple, for every stored tensor
    branch: str | None = None  # the named branch the entry was added on (None: the bank's main line)
    provenance: dict = field(default_factory=dict)  # what the graph used (models, overrides); {} when not recorded

    def has(self, name: str) -> bool:
        return name in self.tensors


_ID_RE = re.compile(r"[0-9a-f]{16,64}")
_FILE_RE = re.compile(r"entries/([0-9a-f]{16,64})(?:\.[0-9]{1,6})?\.safetensors")
_FILE_NAME_RE = re.compile(r"([0-9a-f]{16,64})(?:\.[0-9]{1,6})?\.safetensors")
_REQUIRED = {"id": str, "file": str, "bytes": int, "latent_format": str, "tensors": dict, "prompt": str, "turn": int,
             "parents": list, "sampler": dict, "created": str, "extra": dict}
_OPTIONAL = {"seed": int, "model": str, "segment_index": int, "source_id": str, "branch": str, "provenance": dict}


def entry_from_record(record: Any) -> MemoryEntry:
    """Check one manifest record's structure and build its MemoryEntry; RecordError says what is wrong."""
    if not isinstance(record, dict):
        raise RecordError("record is not a JSON object")
    for key, kind in _REQUIRED.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RecordError(f"field '{key}' is {value!r}, expected {kind.__name__}")
    for key, kind in _OPTIONAL.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise RecordError(f"field '{key}' is {value!r}, expected {kind.__name__} or null")
    entry_id, file = record["id"], record["file"]
    match = _FILE_RE.fullmatch(file)
    if not _ID_RE.fullmatch(entry_id) or not match or match.group(1) != entry_id:
        raise RecordError(f"id {entry_id!r} / file {file!r} do not have the form entries/<hex id>.safetensors")
    shapes = {}
    for name, info in record["tensors"].items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(shape, list) or info.get("dtype") not in TORCH_DTYPES
                or not all(type(d) is int and d >= 0 for d in shape)):
            raise RecordError(f"tensor '{name}' is described as {info!r}")
        shapes[name] = tuple(shape)
    if "latent" not in shapes:
        raise RecordError("no 'latent' tensor listed")
    if not all(isinstance(p, str) for p in record["parents"]):
        raise RecordError(f"field 'parents' is {record['parents']!r}, expected a list of ids")
    return MemoryEntry(
        entry_id=entry_id, latent_format=normalize_latent_format(record["latent_format"]),
        latent_shape=shapes["latent"], tensors=tuple(shapes), prompt=record["prompt"], turn=record["turn"],
        parents=tuple(record["parents"]), seed=record.get("seed"), sampler=record["sampler"], model=record.get("model"),
        created=record["created"], segment_index=record.get("segment_index"), source_id=record.get("source_id"),
        extra=record["extra"], latent_dtype=record["tensors"]["latent"]["dtype"], shapes=shapes,
        branch=record.get("branch"), provenance=record.get("provenance") or {})


def record_tensors(record: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) as the record lists them."""
    return {name: (info["dtype"], tuple(info["shape"])) for name, info in record["tensors"].items()}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------------------------
# The manifest text: one record per line, so a commit joins cached lines instead of re-encoding the whole bank.

def record_line(record: Any) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def manifest_bytes(meta: dict, lines: list[str]) -> bytes:
    head = json.dumps({k: v for k, v in meta.items() if k != "entries"}, ensure_ascii=False)[:-1]
    body = ",\n".join(lines)
    return (head + ', "entries": [\n' + body + ("\n" if lines else "") + "]}\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Bank-level state in the manifest's top-level keys: which entries are hidden, the named branches, the active one.

@dataclass(frozen=True)
class BankState:
    """What the manifest says about visibility and branches; ``problem`` is set when a field is malformed."""

    hidden: dict[str, str] = field(default_factory=dict)     # entry id -> when it was hidden
    branches: dict[str, dict] = field(default_factory=dict)  # name -> {"from": entry id, "created": time}
    active_branch: str | None = None
    problem: str | None = None


def bank_state(path: os.PathLike, meta: dict) -> BankState:
    """Read ``hidden``, ``branches`` and ``active_branch`` from manifest metadata. A malformed field is reported
    and ignored as a whole (every entry shown, no branch active), never guessed at."""
    hidden, branches, active = meta.get("hidden", {}), meta.get("branches", {}), meta.get("active_branch")
    problems = []
    if not isinstance(hidden, dict) or not all(_ID_RE.fullmatch(k) and isinstance(v, str) for k, v in hidden.items()):
        problems.append("'hidden' is not a map of entry id -> time (ignored: every entry is shown)")
        hidden = {}
    try:
        if not isinstance(branches, dict):
            raise ValueError("not a map")
        for name, info in branches.items():
            validate_branch_name(name)
            if (not isinstance(info, dict) or not isinstance(info.get("from"), str)
                    or not _ID_RE.fullmatch(info["from"]) or not isinstance(info.get("created", ""), str)):
                raise ValueError(f"branch {name!r} is {info!r}")
    except ValueError as error:
        problems.append(f"'branches' is not a map of branch name -> {{from, created}} ({error}; ignored: no "
                        "branch is active)")
        branches = {}
    if active is not None and active not in branches:
        problems.append(f"'active_branch' {active!r} is not one of the branches (ignored: no branch is active)")
        active = None
    problem = None
    if problems:
        problem = (f"{path}: manifest field {'; '.join(problems)}. Entries are unaffected; hide, restore and "
                   "branch are refused until the field is fixed by hand")
    return BankState(dict(hidden), {k: dict(v) for k, v in branches.items()}, active, problem)


RECOVER_HINT = ("The entry files are untouched; MemoryBank.recover(path) (or MemV2V_BankLoad with 'rebuild_manifest' "
                "on) rebuilds the manifest from them and keeps this one as manifest.damaged-<time>.json.")


def parse_manifest(path: os.PathLike, data: bytes) -> tuple[dict, list]:
    """Parse and version-check manifest bytes; BankFormatError names the file, the problem and the fix."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BankFormatError(f"{path}: not valid JSON ({error}). {RECOVER_HINT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BankFormatError(f"{path}: not a Memory-V2V bank manifest (no \"format\": \"{FORMAT_NAME}\"). "
                              f"{RECOVER_HINT}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BankFormatError(f"{path}: schema_version {version!r} is not a version number. {RECOVER_HINT}")
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"{path}: written by a newer Memory-V2V (bank schema {version}; this version reads up to "
            f"{SCHEMA_VERSION}). Update the Memory-V2V node pack to use this bank; it was not changed.")
    entries = manifest.pop("entries", None)
    if not isinstance(entries, list):
        raise BankFormatError(f"{path}: \"entries\" is not a list. {RECOVER_HINT}")
    return manifest, entries


# ---------------------------------------------------------------------------------------------------------------
# Entry files

@dataclass(frozen=True)
class FileCheck:
    """Result of checking one entry file's header, valid while the file's stat key is unchanged."""

    stat_key: tuple
    tensors: dict[str, tuple[str, tuple[int, ...]]] | None  # name -> (dtype, shape); None when damaged
    commit: tuple[str, str] | None  # (seq, created) of the add that wrote the file: which entry it belongs to
    problem: str | None
    metadata: dict = field(default_factory=dict)


def check_entry_file(path: str, stat_key: tuple = ()) -> FileCheck:
    """Read an entry file's header (no tensor data) and check it is an entry of a schema this version reads."""
    try:
        header = read_header(path)
    except (OSError, StorageError) as error:
        return FileCheck(stat_key, None, None, str(error))
    return check_entry_header(header, stat_key)


def check_entry_header(header: SafetensorsHeader, stat_key: tuple = ()) -> FileCheck:
    """Check a parsed header is a Memory-V2V entry of a schema this version reads."""
    meta = header.metadata
    version = meta.get("memv2v.schema_version", "")
    if meta.get("memv2v.format") != ENTRY_FORMAT:
        return FileCheck(stat_key, None, None, f"not a Memory-V2V entry file (format {meta.get('memv2v.format')!r})")
    if not version.isdigit() or not 1 <= int(version) <= SCHEMA_VERSION:
        return FileCheck(stat_key, None, None,
                         f"entry schema {version!r} is not one this version reads (1..{SCHEMA_VERSION}); "
                         "update the node pack")
    tensors = {name: (info.dtype, info.shape) for name, info in header.tensors.items()}
    return FileCheck(stat_key, tensors, (meta.get("memv2v.seq", ""), meta.get("memv2v.created", "")), None, meta)


RUN_KEY = "memv2v.run"  # entry-file metadata: the API prompt and UI workflow that made the entry; not in the manifest


def entry_metadata(record: dict, identity: dict, run: str | None = None) -> dict[str, str]:
    """The safetensors metadata of a new entry file: its record (without the id, file and checksums, which are
    computed while the file is flushed to disk), the identity the id is derived from, and the run (JSON text)."""
    header_record = {k: v for k, v in record.items()
                     if k not in ("id", "file", "bytes", "content_hash", "data_sha256")}
    metadata = {"memv2v.format": ENTRY_FORMAT, "memv2v.schema_version": str(SCHEMA_VERSION),
                "memv2v.seq": str(record["seq"]), "memv2v.created": record["created"],
                "memv2v.record": record_line(header_record),
                "memv2v.identity": json.dumps(identity, sort_keys=True, separators=(",", ":"))}
    if run is not None:
        metadata[RUN_KEY] = run
    return metadata


def compare_file_to_record(check: FileCheck, entry_id: str, record: dict) -> str | None:
    """Why a checked file does not hold the entry the record describes, or None."""
    if check.problem:
        return check.problem
    if check.commit != (str(record.get("seq")), record.get("created")):
        return (f"the file was written by another add (#{check.commit[0]} at {check.commit[1]}) than entry "
                f"{entry_id} (#{record.get('seq')} at {record.get('created')})")
    stored = record_tensors(record)
    if check.tensors != stored:
        diffs = [f"{n}: file {check.tensors.get(n)} vs manifest {stored.get(n)}"
                 for n in sorted(set(check.tensors) | set(stored)) if check.tensors.get(n) != stored.get(n)]
        return "tensors disagree with the manifest (" + "; ".join(diffs) + ")"
    return None


def records_from_files(entry_files: list[str]) -> tuple[list[dict], list[str]]:
    """Manifest records rebuilt from the entry files (in commit order), and the files that were skipped.

    Every file is read in full: its checksum is recomputed and its name must match the id its content gives."""
    found: dict[str, dict] = {}
    skipped: list[str] = []
    for file in entry_files:
        try:
            check = check_entry_file(file)
            if check.problem:
                raise StorageError(check.problem)
            header, tensors = read_tensors(file, list(check.tensors))
            record = json.loads(check.metadata["memv2v.record"])
            data_sha = data_sha256(tensors)
            full_hash = content_hash(data_sha, json.loads(check.metadata["memv2v.identity"]))
            entry_id = _FILE_NAME_RE.fullmatch(os.path.basename(file)).group(1)
            if not full_hash.startswith(entry_id):
                raise StorageError(f"its content gives id {full_hash[:16]}, not the {entry_id} in its name")
            record.update(id=entry_id, file=f"{ENTRIES_DIR}/{os.path.basename(file)}", bytes=header.file_size,
                          content_hash=full_hash, data_sha256=data_sha)
            entry = entry_from_record(record)
            problem = compare_file_to_record(check, entry.entry_id, record)
            if problem:
                raise StorageError(problem)
        except (OSError, StorageError, KeyError, AttributeError, ValueError, RecordError) as error:
            skipped.append(f"{file}: {error}")
            continue
        found.setdefault(entry.entry_id, record)
    records = sorted(found.values(), key=lambda r: (r.get("seq", math.inf), r.get("created", "")))
    return records, skipped


def data_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Checksum of the tensor data (names, dtypes, shapes, bytes), recomputable from the entry file alone."""
    digest = hashlib.sha256(b"memv2v-tensors-v1\n")
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{DTYPE_NAMES[tensor.dtype]}|{list(tensor.shape)}\n".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def content_hash(data_sha: str, meta: dict) -> str:
    """The content identity behind entry ids: tensor checksum plus the caller's metadata (not the creation time)."""
    identity = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"memv2v-entry-v1\n{data_sha}\n{identity}".encode()).hexdigest()
