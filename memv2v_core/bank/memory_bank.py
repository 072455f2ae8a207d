"""The memory bank: the only state that lives between turns, kept on disk so an artist's work is never lost.

A bank is a directory with one safetensors file per entry and a JSON manifest (docs/bank-format.md). Writers
serialise on a lock file and commit by atomically replacing the manifest; readers never lock and never see a
half-written entry. Entry ids derive from content, so adding the same generation twice stores it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from .inputs import (LATENT_CHANNELS, check_latent_format, latent_format_for_channels, normalize_latent_format,
                          prepare_entry, run_text, safe_bank_dir, tensor_input, validate_bank_name,
                          validate_branch_name, validate_entry_id)
from .records import (CACHE_DIR, CACHE_FORMAT, ENTRIES_DIR, FORMAT_NAME, LOCK_NAME, MANIFEST_NAME, RUN_KEY,
                           SCHEMA_VERSION, TENSOR_NAMES, TMP_DIR, BankFormatError, BankState, BankStateError,
                           DamagedEntryError,
                           MemoryEntry, NewerSchemaError, RecordError, UnknownEntryError, bank_state,
                           check_entry_file, check_entry_header, compare_file_to_record, content_hash, data_sha256,
                           entry_from_record, entry_metadata, manifest_bytes, now_iso, parse_manifest, record_line,
                           records_from_files)
from .storage import (DTYPE_NAMES, InBackground, LockTimeout, StorageError, WriterLock, fsync_dir, fsync_file,
                           read_tensors, remove_stale_temp_files, replace_file, save_tensors_atomic, stage_bytes,
                           stage_tensors, temp_path, write_bytes_atomic)

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 120.0  # how long a writer waits for another process's add before giving up with LockTimeout

__all__ = ["MemoryBank", "MemoryEntry", "BankFormatError", "NewerSchemaError", "DamagedEntryError",
           "UnknownEntryError", "BankStateError", "LockTimeout",
           "check_latent_format", "normalize_latent_format", "latent_format_for_channels", "safe_bank_dir",
           "validate_bank_name", "validate_entry_id", "validate_branch_name", "read_revision", "LATENT_CHANNELS",
           "TENSOR_NAMES", "SCHEMA_VERSION"]


def read_revision(path: str | os.PathLike) -> str:
    """A string that changes whenever the bank at ``path`` changes on disk (hash of its manifest); takes no lock."""
    try:
        data = (Path(path) / MANIFEST_NAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    return hashlib.sha256(data).hexdigest()[:20]


def _stat_key(st: os.stat_result) -> tuple:
    """Identity of a file version: changes when the file is replaced, truncated or rewritten."""
    return (st.st_size, st.st_mtime_ns, st.st_ino)


# ---------------------------------------------------------------------------------------------------------------
# The bank

class MemoryBank:
    """A memory bank on disk. Open with ``MemoryBank.open(path, create=True)``; see docs/bank-format.md."""

    def __init__(self, path: Path, _token: object = None):
        if _token is not _OPEN_TOKEN:
            raise TypeError("use MemoryBank.open(path, create=...) to open a bank")
        self.path = path
        self._root = str(path)
        self._state_lock = threading.RLock()
        self._digest: str | None = None
        self._meta: dict = {}
        self._records: list = []
        self._lines: list[str | None] = []         # cached manifest line of each record (records never change)
        self._parsed: list[MemoryEntry | str] = []  # MemoryEntry of each record, or why it is unusable
        self._entries: dict[str, MemoryEntry] = {}  # healthy entries in insertion order, hidden ones included
        self._state = BankState()                   # hidden entries and branches (manifest top-level keys)
        self._records_by_id: dict[str, dict] = {}
        self._damaged: dict[str, str] = {}          # entry id -> problem
        self._record_problems: list[str] = []       # records too malformed to have an id
        self._runtime_damage: dict[str, tuple[tuple | None, str]] = {}  # found while reading data
        self._reported: set[str] = set()

    # -- opening -------------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, create: bool = False) -> "MemoryBank":
        """Open the bank at ``path``; ``create=True`` makes a new empty bank when the folder or manifest is missing."""
        path = Path(path)
        if not path.exists():
            if not create:
                raise FileNotFoundError(f"no memory bank at {path}: the folder does not exist. Check the name, or "
                                        "pass create=True (MemV2V_BankLoad creates missing banks).")
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise NotADirectoryError(f"{path} is a file, not a memory bank folder; choose another bank name")
        if not (path / MANIFEST_NAME).exists():
            cls._initialise(path, create)
        bank = cls(path, _OPEN_TOKEN)
        bank.refresh()
        return bank

    @classmethod
    def _initialise(cls, path: Path, create: bool) -> None:
        entries_dir = path / ENTRIES_DIR
        if entries_dir.is_dir() and any(entries_dir.iterdir()):
            raise BankFormatError(f"{path / MANIFEST_NAME} is missing but {entries_dir} holds entry files. "
                                  "MemoryBank.recover(path) (or MemV2V_BankLoad with 'rebuild_manifest' on) rebuilds "
                                  "the manifest from them.")
        if not create:
            raise FileNotFoundError(f"{path} is not a memory bank (no {MANIFEST_NAME}); pass create=True to make one")
        for sub in (ENTRIES_DIR, CACHE_DIR, TMP_DIR):
            (path / sub).mkdir(exist_ok=True)
        with WriterLock(path / LOCK_NAME, LOCK_TIMEOUT_S):
            if not (path / MANIFEST_NAME).exists():  # another process may have created it meanwhile
                meta = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "bank_id": uuid.uuid4().hex,
                        "created": now_iso(), "revision": 0}
                write_bytes_atomic(path / MANIFEST_NAME, manifest_bytes(meta, []), path / TMP_DIR)
                logger.info("created memory bank %s", path)

    # -- reading -------------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def problems(self) -> list[str]:
        """Damaged entries found so far, each message naming the file and the problem."""
        with self._state_lock:
            state = [self._state.problem] if self._state.problem else []
            return state + list(self._record_problems) + list(self._damaged.values())

    @property
    def latent_format(self) -> str | None:
        """The latent format of this bank's entries (a bank holds one), or None while it is empty."""
        with self._state_lock:
            return next((e.latent_format for e in self._entries.values()), None)

    def ids(self, include_hidden: bool = False) -> list[str]:
        """Ids of the healthy entries in insertion order: the visible ones, or all with ``include_hidden``."""
        with self._state_lock:
            if include_hidden or not self._state.hidden:
                return list(self._entries)
            return [i for i in self._entries if i not in self._state.hidden]

    def entries(self, include_hidden: bool = False) -> list[MemoryEntry]:
        """The healthy entries' metadata in insertion order (visible ones unless ``include_hidden``)."""
        with self._state_lock:
            return [self._entries[i] for i in self.ids(include_hidden)]

    def __len__(self) -> int:
        """The number of visible healthy entries."""
        with self._state_lock:
            return len(self._entries) - sum(1 for i in self._state.hidden if i in self._entries)

    def __contains__(self, entry_id: object) -> bool:
        """Whether ``entry_id`` is a visible healthy entry."""
        return entry_id in self._entries and entry_id not in self._state.hidden

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def __repr__(self) -> str:
        return f"MemoryBank({self._root!r}, entries={len(self)}, problems={len(self.problems)})"

    # A bank is a handle on files: copies share it (model_options deep-copies must not duplicate it), and a
    # pickled bank reopens the same folder.
    def __copy__(self) -> "MemoryBank":
        return self

    def __deepcopy__(self, memo: dict) -> "MemoryBank":
        return self

    def __reduce__(self):
        return (MemoryBank.open, (self.path,))

    def is_hidden(self, entry_id: str) -> bool:
        """Whether the entry is hidden (UnknownEntryError when the bank has no such entry)."""
        with self._state_lock:
            if entry_id not in self._records_by_id:
                self.entry(entry_id)  # raises the unknown-entry error
            return entry_id in self._state.hidden

    def hidden_ids(self) -> list[str]:
        """Ids of the hidden healthy entries in insertion order."""
        with self._state_lock:
            return [i for i in self._entries if i in self._state.hidden]

    @property
    def active_branch(self) -> str | None:
        """The bank's active branch (retrieval sees only its entries; ``add`` records it), or None: the whole bank."""
        with self._state_lock:
            return self._state.active_branch

    def branches(self) -> dict[str, dict]:
        """Named branches: name -> {"from": entry id, "created": time}."""
        with self._state_lock:
            return {name: dict(info) for name, info in self._state.branches.items()}

    def lineage(self, entry_id: str) -> list[str]:
        """The entry and its ancestors by ``parents`` (the entry first, then breadth-first), hidden ones included;
        parents that are not healthy entries of this bank (other banks, damaged) are left out."""
        with self._state_lock:
            self.entry(entry_id)
            return self._ancestry([entry_id])

    def _ancestry(self, starts: list[str]) -> list[str]:
        """``starts`` (healthy ids) and all their ancestors, breadth-first, each once."""
        order, seen = list(dict.fromkeys(starts)), set(starts)
        for current in order:  # grows while it is walked
            for parent in self._entries[current].parents:
                if parent in self._entries and parent not in seen:
                    seen.add(parent)
                    order.append(parent)
        return order

    def branch_ids(self, name: str) -> list[str]:
        """Visible entries of a named branch in insertion order: the lineage of the entry it starts from, plus every
        entry added on it and their lineages."""
        with self._state_lock:
            info = self._state.branches.get(name)
            if info is None:
                raise ValueError(f"branch {name!r} does not exist in bank '{self.name}'; its branches: "
                                 f"{sorted(self._state.branches) or 'none'}")
            starts = [i for i in [info["from"]] + [i for i, e in self._entries.items() if e.branch == name]
                      if i in self._entries]
            members = set(self._ancestry(starts))
            return [i for i in self.ids() if i in members]

    def retrieval_ids(self, lineage_of: str | None = None) -> list[str]:
        """The entries retrieval may use, in insertion order: visible ones; with ``lineage_of`` only that entry and
        its ancestors; else, while the bank has an active branch, only that branch's entries."""
        with self._state_lock:
            if lineage_of is not None:
                self._refuse_hidden(lineage_of, "start retrieval from")
                members = set(self.lineage(lineage_of))
                return [i for i in self.ids() if i in members]
            if self._state.active_branch is not None:
                return self.branch_ids(self._state.active_branch)
            return self.ids()

    def retrieval_scope(self, lineage_of: str | None = None) -> str:
        """One line saying what keeps entries from retrieval (hidden ones, a lineage, the active branch), or ""."""
        with self._state_lock:
            parts = []
            hidden = len(self._entries) - len(self)
            if hidden:
                parts.append(f"{hidden} hidden {'entry' if hidden == 1 else 'entries'} left out")
            if lineage_of is not None:
                parts.append(f"only entry {lineage_of} and its ancestors")
            elif self._state.active_branch is not None:
                info = self._state.branches[self._state.active_branch]
                parts.append(f"branch '{self._state.active_branch}' (from {info['from']}) is active: "
                             f"{len(self.branch_ids(self._state.active_branch))} of {len(self)} visible entries")
            return "; ".join(parts)

    def _refuse_hidden(self, entry_id: str, action: str) -> None:
        self.entry(entry_id)  # unknown or damaged: its own error
        if entry_id in self._state.hidden:
            raise BankStateError(f"cannot {action} entry {entry_id} of bank '{self.name}': it is hidden (since "
                                 f"{self._state.hidden[entry_id]}). Restore it first (bank.restore), or pick a "
                                 "visible entry.")

    def entry(self, entry_id: str) -> MemoryEntry:
        """Metadata of one entry (no tensors read); hidden entries too."""
        with self._state_lock:
            found = self._entries.get(entry_id)
            if found is not None:
                return found
            if entry_id in self._damaged:
                raise DamagedEntryError(self._damaged[entry_id])
        raise UnknownEntryError(f"no entry {entry_id!r} in bank {self._root} ({len(self)} entries); ids come from "
                                "bank.ids() or a retrieval selection of this bank")

    def entry_file(self, entry_id: str) -> Path:
        """The safetensors file of a healthy entry."""
        self.entry(entry_id)
        return self.path / self._records_by_id[entry_id]["file"]

    def load_latent(self, entry_id: str) -> torch.Tensor:
        """The entry's latent as stored (CPU, stored dtype and shape); reads only that tensor's bytes."""
        return self.load_tensors(entry_id, ["latent"])["latent"]

    def load_tensor(self, entry_id: str, name: str) -> torch.Tensor | None:
        """A stored tensor ("camera", "intrinsics", "fov_mask", "descriptor", "keyframes") or cache; None if absent."""
        entry = self.entry(entry_id)
        if name in entry.tensors:
            return self.load_tensors(entry_id, [name])[name]
        return self._read_cache(entry_id, name)

    def load_tensors(self, entry_id: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several of the entry's own tensors in one file read; names the entry lacks are left out."""
        entry = self.entry(entry_id)
        wanted = [n for n in names if n in entry.tensors]
        with self._state_lock:
            record = self._records_by_id[entry_id]
        path = os.path.join(self._root, record["file"])
        try:
            header, tensors = read_tensors(path, wanted)
            problem = compare_file_to_record(check_entry_header(header), entry_id, record)
        except (OSError, StorageError) as error:
            problem = str(error)
        if problem:  # the header is checked on every read: it was parsed anyway, so this costs nothing
            problem = self._entry_problem(entry_id, path, problem)
            self._mark_damaged(entry_id, problem, path)
            raise DamagedEntryError(problem)
        return tensors

    def load_run(self, entry_id: str) -> dict | None:
        """What made the entry: ``{"prompt": <API prompt>, "workflow": <UI workflow or None>, ...}`` as Bank Add
        stored it in the entry file (hidden entries too), or None when none was stored. Reads only the header."""
        self.entry(entry_id)
        with self._state_lock:
            record = self._records_by_id[entry_id]
        path = os.path.join(self._root, record["file"])
        check = check_entry_file(path)
        problem = compare_file_to_record(check, entry_id, record)
        run = None
        if not problem and RUN_KEY in check.metadata:
            try:
                run = json.loads(check.metadata[RUN_KEY])
                if not isinstance(run, dict):
                    raise ValueError("not a JSON object")
            except ValueError as error:
                problem = f"its stored run ({RUN_KEY}) is unreadable ({error})"
        if problem:
            problem = self._entry_problem(entry_id, path, problem)
            self._mark_damaged(entry_id, problem, path)
            raise DamagedEntryError(problem)
        return run

    def revision(self) -> str:
        """Changes whenever the bank's content on disk changes (hash of the manifest; caches do not count)."""
        return read_revision(self.path)

    def refresh(self) -> None:
        """Re-read the manifest if another process changed it, and re-check that every entry file is present and
        of the recorded size (headers are checked when an entry is read, and all at once by ``verify``)."""
        self._reload(recheck_files=True)

    def _reload(self, recheck_files: bool) -> None:
        manifest_path = self.path / MANIFEST_NAME
        try:
            data = manifest_path.read_bytes()
        except FileNotFoundError:
            raise BankFormatError(f"{manifest_path} has disappeared; the bank folder was moved or deleted "
                                  "while open") from None
        with self._state_lock:
            digest = hashlib.sha256(data).hexdigest()
            if digest != self._digest:
                meta, records = parse_manifest(manifest_path, data)
                self._meta, self._records, self._digest = meta, records, digest
                self._state = bank_state(manifest_path, meta)
                self._lines = [None] * len(records)
                self._parsed = [_parse_record(r) for r in records]
                recheck_files = True
            if recheck_files:
                self._index()

    def _index(self) -> None:
        """Rebuild the healthy/damaged view from the parsed records; each entry file is stat-ed, not opened."""
        entries: dict[str, MemoryEntry] = {}
        by_id: dict[str, dict] = {}
        damaged: dict[str, str] = {}
        record_problems: list[str] = []
        for position, (record, entry) in enumerate(zip(self._records, self._parsed)):
            if isinstance(entry, str):
                record_problems.append(f"{self.path / MANIFEST_NAME}: entry #{position} is unusable ({entry}); "
                                       "skipped (nothing was changed)")
                continue
            if entry.entry_id in by_id:
                record_problems.append(f"{self.path / MANIFEST_NAME}: entry #{position} repeats id {entry.entry_id}; "
                                       "the later record is skipped")
                continue
            by_id[entry.entry_id] = record
            path = os.path.join(self._root, record["file"])
            problem = self._check_file(entry.entry_id, record, path)
            if problem:
                damaged[entry.entry_id] = self._entry_problem(entry.entry_id, path, problem)
            else:
                entries[entry.entry_id] = entry
        self._entries, self._records_by_id, self._damaged = entries, by_id, damaged
        self._record_problems = record_problems
        self._log_new_problems()

    def _check_file(self, entry_id: str, record: dict, path: str) -> str | None:
        """Why an entry's file cannot be used (missing, wrong size, damage found earlier), or None."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "file is missing"
        except OSError as error:
            return f"file cannot be read ({error})"
        if st.st_size != record["bytes"]:
            return (f"file is {st.st_size} bytes but the manifest says {record['bytes']} "
                    f"({'truncated' if st.st_size < record['bytes'] else 'replaced or appended to'})")
        runtime = self._runtime_damage.get(entry_id)
        if runtime is not None and runtime[0] == _stat_key(st):
            return runtime[1]  # found while reading the file; holds until the file changes
        return None

    def _entry_problem(self, entry_id: str, path: str, problem: str) -> str:
        return f"entry {entry_id} ({path}): {problem}; skipped (the file is left as it is)"

    def _mark_damaged(self, entry_id: str, problem: str, path: str) -> None:
        with self._state_lock:
            try:
                key = _stat_key(os.stat(path))
            except OSError:
                key = None
            self._runtime_damage[entry_id] = (key, problem)
            self._entries.pop(entry_id, None)
            self._damaged[entry_id] = problem
            self._log_new_problems()

    def _log_new_problems(self) -> None:
        for message in self.problems:
            if message not in self._reported:
                self._reported.add(message)
                logger.warning("memory bank: %s", message)

    # -- writing -------------------------------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the writer lock with an up-to-date view of the manifest; stale temp files of dead writers go."""
        with self._state_lock, WriterLock(self.path / LOCK_NAME, LOCK_TIMEOUT_S):
            (self.path / TMP_DIR).mkdir(exist_ok=True)
            remove_stale_temp_files(self.path / TMP_DIR)
            self._reload(recheck_files=False)  # commits only need the latest manifest
            yield

    def add(self, latent: torch.Tensor, *, latent_format: str, camera=None, intrinsics=None, fov_mask=None,
            descriptor=None, segment_index=None, source_id=None, keyframes=None, prompt="", turn=None,
            parents=(), seed=None, sampler=None, model=None, extra=None, branch: str | None = None,
            provenance: dict | None = None, run: dict | None = None) -> str:
        """Store one generation durably and return its id; identical content returns the existing id (also when
        that entry is hidden: it stays hidden). ``branch`` (default: the bank's active branch) is recorded.
        ``provenance`` (small JSON: model files, overrides) goes into the record; ``run`` (the API prompt and UI
        workflow that made the entry) only into the entry file, outside the identity, read by ``load_run``."""
        tensors, meta = prepare_entry(latent, latent_format, camera=camera, intrinsics=intrinsics,
                                      fov_mask=fov_mask, descriptor=descriptor, keyframes=keyframes,
                                      segment_index=segment_index, source_id=source_id, prompt=prompt, turn=turn,
                                      parents=parents, seed=seed, sampler=sampler, model=model, extra=extra,
                                      provenance=provenance)
        run = run_text(run)
        if branch is not None:
            validate_branch_name(branch)
        with self._writing():
            branch = branch if branch is not None else self._state.active_branch
            if branch is not None:  # part of the content's identity only when set, so main-line ids are unchanged
                if branch not in self._state.branches:
                    raise ValueError(f"branch {branch!r} does not exist in bank '{self.name}'; create it with "
                                     f"bank.branch(name, from_entry) (branches: {sorted(self._state.branches) or 'none'})")
                meta["branch"] = branch
            bank_format = self.latent_format
            if bank_format is not None and bank_format != meta["latent_format"]:
                raise ValueError(
                    f"latent_format '{meta['latent_format']}' does not match bank '{self.name}', which holds "
                    f"'{bank_format}' latents. A bank serves one VAE family: use another bank name for this model.")
            record = self._new_record(tensors, meta)
            staged, size, data_sha, full_hash = self._stage_entry(tensors, record, meta, run)
            try:
                entry_id = self._free_id(full_hash)
                if entry_id in self._entries:
                    logger.info("memory bank %s: identical content is already stored as %s%s", self.name, entry_id,
                                " (hidden: bank.restore shows it again)" if entry_id in self._state.hidden else "")
                    return entry_id
                unknown = [p for p in meta["parents"] if p not in self._records_by_id]
                if unknown:
                    logger.info("memory bank %s: parents %s are not in this bank (kept as provenance)",
                                self.name, unknown)
                record.update(id=entry_id, file=self._free_file(entry_id), bytes=size, content_hash=full_hash,
                              data_sha256=data_sha)
                entry_path = self.path / record["file"]
                replace_file(staged, entry_path)  # unreferenced until the manifest names it: no reader sees it
            finally:
                staged.unlink(missing_ok=True)  # a duplicate or a failure; after the rename there is nothing left
            self._commit_record(record, entry_path)
            return entry_id

    def _stage_entry(self, tensors: dict, record: dict, meta: dict, run: str | None = None
                     ) -> tuple[Path, int, str, str]:
        """Write the entry file to .tmp/ and flush it to disk while its checksum and id are computed (fsync and
        sha256 both release the GIL, so the hash costs no time on top of the flush)."""
        staged, size = stage_tensors(tensors, entry_metadata(record, meta, run), self.path / TMP_DIR,
                                     "entry.safetensors")
        try:
            flush = InBackground(fsync_file, staged)
            try:
                data_sha = data_sha256(tensors)
                full_hash = content_hash(data_sha, meta)
            finally:
                flush.wait()
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged, size, data_sha, full_hash

    def _free_id(self, full_hash: str) -> str:
        """The shortest id prefix of the content hash not taken by different content."""
        for length in (16, 24, 32, 64):
            candidate = full_hash[:length]
            existing = self._records_by_id.get(candidate)
            if existing is None or existing.get("content_hash") == full_hash:
                return candidate
        raise RuntimeError(f"content hash {full_hash} collides with a different entry at every id length")

    def _free_file(self, entry_id: str) -> str:
        """The entry's file name. A file some record names is never overwritten (a damaged entry's file keeps its
        name); one no record names was left by an add killed before its commit and may be replaced."""
        named = {r.get("file") for r in self._records if isinstance(r, dict)}
        file, suffix = f"{ENTRIES_DIR}/{entry_id}.safetensors", 0
        while file in named:
            suffix += 1
            file = f"{ENTRIES_DIR}/{entry_id}.{suffix}.safetensors"
        return file

    def _new_record(self, tensors: dict, meta: dict) -> dict:
        """The record of a new entry, except its id, file, size and checksums (known once the file is written)."""
        dicts = [r for r in self._records if isinstance(r, dict)]
        record = {"seq": 1 + max((r["seq"] for r in dicts if type(r.get("seq")) is int), default=-1),
                  "created": now_iso(), "latent_format": meta["latent_format"],
                  "tensors": {n: {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape)} for n, t in tensors.items()}}
        record.update({k: v for k, v in meta.items() if k != "latent_format"})
        if record.get("turn") is None:
            record["turn"] = 1 + max((r["turn"] for r in dicts if type(r.get("turn")) is int), default=0)
        return record

    def _commit_record(self, record: dict, entry_path: Path) -> None:
        """Atomically replace the manifest with the new entry's record added (or replacing a damaged entry's record
        of the same content); update the in-memory view. The entry file at ``entry_path`` is already flushed."""
        records, lines, parsed = list(self._records), list(self._lines), list(self._parsed)
        old = self._records_by_id.get(record["id"])
        position = next((i for i, r in enumerate(records) if r is old), None) if old is not None else None
        if position is None:
            position = len(records)
            records.append(None)
            lines.append(None)
            parsed.append(None)
        else:
            logger.warning("memory bank %s: entry %s was damaged (%s); stored again as %s, the old file is kept",
                           self.name, record["id"], old.get("file"), record["file"])
        records[position], lines[position], parsed[position] = record, record_line(record), entry_from_record(record)
        lines = [line if line is not None else record_line(r) for line, r in zip(lines, records)]
        meta = self._next_meta({})
        # The entry's data (flushed when staged) and its name are durable before the manifest names it.
        data = self._write_manifest(meta, lines, durable_dir=entry_path.parent)
        self._meta, self._records, self._lines, self._parsed = meta, records, lines, parsed
        self._digest = hashlib.sha256(data).hexdigest()
        if old is None:  # the common case: append without re-checking every file
            self._records_by_id[record["id"]] = record
            self._entries[record["id"]] = parsed[position]
        else:
            self._index()

    def _next_meta(self, changes: dict) -> dict:
        """The manifest's top-level keys for the next commit: ``changes`` applied (None or empty removes a key, so
        a bank without hidden entries or branches has the manifest of earlier versions), revision + 1."""
        meta = dict(self._meta, schema_version=SCHEMA_VERSION)
        for key, value in changes.items():
            if value is None or value == {}:
                meta.pop(key, None)
            else:
                meta[key] = value
        meta["revision"] = meta["revision"] + 1 if type(meta.get("revision")) is int else 1
        return meta

    def _write_manifest(self, meta: dict, lines: list[str], durable_dir: Path | None = None) -> bytes:
        """Stage, flush and rename the new manifest into place (the commit point), then flush the bank folder."""
        data = manifest_bytes(meta, lines)
        staged = stage_bytes(data, self.path / TMP_DIR, MANIFEST_NAME)
        try:
            fsync_file(staged)
            if durable_dir is not None:
                fsync_dir(durable_dir)
            replace_file(staged, self.path / MANIFEST_NAME)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        fsync_dir(self.path)
        return data

    def _commit_state(self, **changes) -> None:
        """Commit new bank-level state (hidden, branches, active_branch): only the manifest's first line changes;
        every entry record and file stays as it is."""
        lines = [line if line is not None else record_line(r) for line, r in zip(self._lines, self._records)]
        meta = self._next_meta(changes)
        data = self._write_manifest(meta, lines)
        self._meta, self._lines = meta, lines
        self._digest = hashlib.sha256(data).hexdigest()
        self._state = bank_state(self.path / MANIFEST_NAME, meta)

    @contextmanager
    def _changing_state(self) -> Iterator[BankState]:
        with self._writing():
            if self._state.problem:
                raise BankFormatError(self._state.problem)
            yield self._state

    # -- visibility and branches -----------------------------------------------------------------------------------
    def hide(self, entry_id: str) -> None:
        """Hide an entry from retrieval, tokenization and stitching; durable and atomic like ``add``. Nothing is
        deleted: ``restore`` shows it again. Its descendants stay visible."""
        validate_entry_id(entry_id)
        with self._changing_state() as state:
            if entry_id not in self._records_by_id:
                self.entry(entry_id)  # raises the unknown-entry error
            if entry_id in state.hidden:
                raise BankStateError(f"entry {entry_id} of bank '{self.name}' is already hidden (since "
                                     f"{state.hidden[entry_id]}); nothing changed. bank.restore shows it again.")
            self._commit_state(hidden={**state.hidden, entry_id: now_iso()})
        logger.info("memory bank %s: entry %s hidden", self.name, entry_id)

    def restore(self, entry_id: str) -> None:
        """Show a hidden entry again; durable and atomic like ``add``."""
        validate_entry_id(entry_id)
        with self._changing_state() as state:
            if entry_id not in self._records_by_id:
                self.entry(entry_id)
            if entry_id not in state.hidden:
                raise BankStateError(f"entry {entry_id} of bank '{self.name}' is not hidden, so there is nothing to "
                                     "restore; nothing changed.")
            self._commit_state(hidden={k: v for k, v in state.hidden.items() if k != entry_id})
        logger.info("memory bank %s: entry %s restored", self.name, entry_id)

    def branch(self, name: str, from_entry: str, activate: bool = True) -> dict:
        """Create the named branch starting at ``from_entry`` (a visible entry) and, with ``activate``, make it the
        bank's active branch: retrieval then sees only the branch and the next ``add`` records it. Creating an
        existing branch again from the same entry only activates it. Returns {"name", "from", "created"}."""
        validate_branch_name(name)
        validate_entry_id(from_entry, "from_entry")
        with self._changing_state() as state:
            self._refuse_hidden(from_entry, "branch from")
            existing = state.branches.get(name)
            if existing is not None and existing["from"] != from_entry:
                raise BankStateError(f"branch {name!r} of bank '{self.name}' already starts from entry "
                                     f"{existing['from']}, not {from_entry}; choose another name. Nothing changed.")
            info = existing or {"from": from_entry, "created": now_iso()}
            active = name if activate else state.active_branch
            if existing is None or active != state.active_branch:
                self._commit_state(branches={**state.branches, name: info}, active_branch=active)
        return {"name": name, **info}

    def switch_branch(self, name: str | None) -> None:
        """Make an existing branch the active one, or None: retrieval sees the whole bank again."""
        if name is not None:
            validate_branch_name(name)
        with self._changing_state() as state:
            if name is not None and name not in state.branches:
                raise ValueError(f"branch {name!r} does not exist in bank '{self.name}'; its branches: "
                                 f"{sorted(state.branches) or 'none'}")
            if name != state.active_branch:
                self._commit_state(active_branch=name)

    # -- caches --------------------------------------------------------------------------------------------------
    def _cache_path(self, entry_id: str, name: str) -> Path:
        return self.path / CACHE_DIR / entry_id / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".safetensors")

    def put_cache(self, entry_id: str, name: str, tensor: torch.Tensor) -> None:
        """Store a derived tensor for an entry (e.g. an FOV mask for other settings) without touching its data."""
        entry = self.entry(entry_id)
        if not isinstance(name, str) or not name or len(name) > 200 or "\0" in name:
            raise ValueError(f"cache name {name!r} must be a non-empty string of at most 200 characters")
        if name in entry.tensors:
            raise ValueError(f"entry {entry_id} already stores '{name}' as original data, which is never rewritten; "
                             "use another cache name (e.g. one naming the settings it was made with)")
        value = tensor_input(f"cache '{name}'", tensor, ndims=tuple(range(9)), kind="at most 8 dimensions")
        metadata = {"memv2v.format": CACHE_FORMAT, "memv2v.schema_version": str(SCHEMA_VERSION),
                    "memv2v.entry_id": entry_id, "memv2v.cache_name": name}
        path = self._cache_path(entry_id, name)
        with self._state_lock, WriterLock(self.path / LOCK_NAME, LOCK_TIMEOUT_S):
            path.parent.mkdir(parents=True, exist_ok=True)
            (self.path / TMP_DIR).mkdir(exist_ok=True)
            save_tensors_atomic(path, {"value": value}, metadata, self.path / TMP_DIR)

    def _read_cache(self, entry_id: str, name: str) -> torch.Tensor | None:
        path = self._cache_path(entry_id, name)
        if not path.exists():
            return None
        try:
            header, tensors = read_tensors(path, ["value"])
            if header.metadata.get("memv2v.cache_name") != name or "value" not in tensors:
                raise StorageError("the cache file does not hold this name")
        except (OSError, StorageError) as error:  # derived data: recompute rather than fail
            logger.warning("memory bank: cache %r of entry %s (%s) is unreadable (%s); treated as absent",
                           name, entry_id, path, error)
            return None
        return tensors["value"]

    # -- audit, copy, recovery -----------------------------------------------------------------------------------
    def verify(self, deep: bool = False) -> list[str]:
        """Check every entry file's header against the manifest (``deep``: also the tensor checksums); returns the
        problems, and damaged entries leave ``ids()``."""
        with self._state_lock:
            self.refresh()
            for entry_id in self.ids(include_hidden=True):
                record = self._records_by_id[entry_id]
                path = os.path.join(self._root, record["file"])
                problem = compare_file_to_record(check_entry_file(path), entry_id, record)
                if not problem and deep:
                    try:
                        tensors = self.load_tensors(entry_id, self.entry(entry_id).tensors)
                    except DamagedEntryError:
                        continue
                    if _checksum_mismatch(record, tensors):
                        problem = "tensor data does not match its checksum (bit rot or an edited file)"
                if problem:
                    self._mark_damaged(entry_id, self._entry_problem(entry_id, path, problem), path)
            return self.problems

    def unreferenced_files(self) -> list[Path]:
        """Entry files no manifest record names: left by adds interrupted before their commit (``recover`` adopts
        complete ones). They are never shown as entries and never deleted."""
        with self._state_lock:
            referenced = {self.path / r["file"] for r in self._records_by_id.values()}
        return [p for p in sorted((self.path / ENTRIES_DIR).glob("*.safetensors")) if p not in referenced]

    def export(self, dest: str | os.PathLike, include_cache: bool = True,
               ids: Iterable[str] | None = None) -> "MemoryBank":
        """Write a consistent copy of the healthy entries to a new bank folder ``dest`` (never overwrites).
        With ``ids``, only those entries (in the bank's order), all visible and without branches: the bank as a
        turn's retrieval saw it, which replay rebuilds."""
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise FileExistsError(f"{dest} already exists and is not empty; choose another name for the copy "
                                  "(nothing was overwritten)")
        with self._state_lock:
            self.refresh()
            wanted = None if ids is None else set(ids)
            snapshot = [self._records_by_id[i] for i in self.ids(include_hidden=True)
                        if wanted is None or i in wanted]
            if wanted is not None:
                unknown = sorted(wanted - {r["id"] for r in snapshot})
                if unknown:
                    raise UnknownEntryError(f"bank '{self.name}' has no healthy entries {unknown}; nothing was "
                                            "copied")
            source_meta = dict(self._meta)
            state = self._state
        for sub in (ENTRIES_DIR, CACHE_DIR, TMP_DIR):
            (dest / sub).mkdir(parents=True, exist_ok=True)
        with WriterLock(dest / LOCK_NAME, LOCK_TIMEOUT_S):
            for record in snapshot:  # committed entry files never change, so the snapshot needs no lock
                _copy_durable(self.path / record["file"], dest / record["file"], dest / TMP_DIR)
                cache_dir = self.path / CACHE_DIR / record["id"]
                if include_cache and cache_dir.is_dir():
                    (dest / CACHE_DIR / record["id"]).mkdir(exist_ok=True)
                    for cache_file in cache_dir.glob("*.safetensors"):
                        _copy_durable(cache_file, dest / CACHE_DIR / record["id"] / cache_file.name, dest / TMP_DIR)
            meta = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION, "bank_id": uuid.uuid4().hex,
                    "created": now_iso(), "revision": 1,
                    "copied_from": {"path": self._root, "bank_id": source_meta.get("bank_id"),
                                    "revision": source_meta.get("revision")}}
            copied = {r["id"] for r in snapshot}  # a full copy: hidden entries stay hidden, branches stay
            hidden = {k: v for k, v in state.hidden.items() if k in copied}
            if wanted is None:
                meta.update({k: v for k, v in (("hidden", hidden), ("branches", state.branches),
                                                ("active_branch", state.active_branch)) if v})
            write_bytes_atomic(dest / MANIFEST_NAME, manifest_bytes(meta, [record_line(r) for r in snapshot]),
                               dest / TMP_DIR)
        return MemoryBank.open(dest)

    @classmethod
    def recover(cls, path: str | os.PathLike) -> "MemoryBank":
        """Rebuild the manifest from the entry files' own headers; the old manifest, if any, is kept as
        manifest.damaged-<time>.json. A readable manifest keeps its records (damaged ones too) and gains the complete
        files no record names. Unreadable entry files are skipped, logged and left in place."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no memory bank folder at {path}")
        (path / TMP_DIR).mkdir(exist_ok=True)
        with WriterLock(path / LOCK_NAME, LOCK_TIMEOUT_S):
            remove_stale_temp_files(path / TMP_DIR)
            manifest_path = path / MANIFEST_NAME
            kept: list = []
            if manifest_path.exists():
                try:
                    kept = parse_manifest(manifest_path, manifest_path.read_bytes())[1]
                except NewerSchemaError:
                    raise  # a newer version's bank is not damaged; rebuilding it would downgrade it
                except BankFormatError:
                    kept = []
            named = {r.get("file") for r in kept if isinstance(r, dict)}
            known = {r.get("id") for r in kept if isinstance(r, dict)}
            files = sorted(str(p) for p in (path / ENTRIES_DIR).glob("*.safetensors")
                           if f"{ENTRIES_DIR}/{p.name}" not in named)
            found, skipped = records_from_files(files)
            for message in skipped:
                logger.warning("memory bank recovery: skipped %s; the file is left in place", message)
            records = kept + [r for r in found if r["id"] not in known]
            old_meta = _salvage_meta(manifest_path)
            if manifest_path.exists():
                backup = path / f"manifest.damaged-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.json"
                write_bytes_atomic(backup, manifest_path.read_bytes(), path / TMP_DIR)
                logger.warning("memory bank %s: previous manifest kept as %s", path, backup)
            meta = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION,
                    "bank_id": old_meta.get("bank_id") or uuid.uuid4().hex,
                    "created": old_meta.get("created") or now_iso(),
                    "revision": old_meta.get("revision", 0) + 1, "recovered": now_iso(),
                    **{k: old_meta[k] for k in ("hidden", "branches", "active_branch") if k in old_meta}}
            write_bytes_atomic(manifest_path, manifest_bytes(meta, [record_line(r) for r in records]), path / TMP_DIR)
            logger.warning("memory bank %s: manifest rebuilt: %d records kept, %d taken from entry files", path,
                           len(kept), len(records) - len(kept))
        return cls.open(path)


_OPEN_TOKEN = object()


def _parse_record(record: Any) -> MemoryEntry | str:
    try:
        return entry_from_record(record)
    except RecordError as error:
        return str(error)


def _checksum_mismatch(record: dict, tensors: dict[str, torch.Tensor]) -> bool:
    expected = record.get("data_sha256")
    return bool(expected) and data_sha256(tensors) != expected


def _salvage_meta(manifest_path: Path) -> dict:
    """bank_id, created and revision of a (possibly damaged) manifest, when they can still be read."""
    try:
        meta = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(meta, dict):
        return {}
    kinds = {"bank_id": str, "created": str, "revision": int}
    salvaged = {k: meta[k] for k, kind in kinds.items() if type(meta.get(k)) is kind}
    state = bank_state(manifest_path, meta)  # hidden entries and branches survive a rebuild when still readable
    salvaged.update({k: v for k, v in (("hidden", state.hidden), ("branches", state.branches),
                                       ("active_branch", state.active_branch)) if v})
    return salvaged


def _copy_durable(source: Path, dest: Path, tmp_dir: Path) -> None:
    tmp = temp_path(tmp_dir, dest.name)
    shutil.copyfile(source, tmp)
    fsync_file(tmp)
    replace_file(tmp, dest)
    fsync_dir(dest.parent)
