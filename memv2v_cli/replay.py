"""Replay a stored turn: queue the exact API prompt Bank Add kept with a bank entry again and compare the new latent
with the stored one.

Retrieval must see the bank as the turn saw it, so the replay runs on a scratch copy holding only the entries the
turn's retrieval could see (Bank Add keeps their ids with the run), in the same banks folder as the bank, and the
prompt's Bank Load is pointed at the copy: the bank itself is never written. The scratch copy is removed afterwards
unless ``--keep-copy`` is given. The exit status is 0 only when the new latent is bit for bit the stored one.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch

from . import graph, runner
from .host import comfy_host
from memv2v_core.bank.memory_bank import MemoryBank, validate_bank_name, validate_entry_id
from memv2v_core.bank.provenance import is_link

BANK_LOAD, BANK_ADD = "MemV2V_BankLoad", "MemV2V_BankAdd"
BANK_WRITERS = (BANK_ADD, "MemV2V_BankSave")


class ReplayError(RuntimeError):
    """The entry cannot be replayed; the message says why and what to do."""


@dataclass
class ReplayReport:
    entry_id: str
    new_entry_id: str
    identical: bool
    max_abs_diff: float | None  # None when shapes or dtypes differ
    stored: tuple[str, tuple[int, ...]]  # dtype, shape
    new: tuple[str, tuple[int, ...]]
    seconds: float
    record_differences: list[str] = field(default_factory=list)
    scratch: Path | None = None  # the scratch bank, when kept

    def summary(self) -> str:
        if self.identical:
            verdict = "bit for bit identical to the stored latent"
        elif self.max_abs_diff is not None:
            verdict = f"DIFFERS from the stored latent: max |difference| {self.max_abs_diff:.6g}"
        else:
            verdict = f"DIFFERS from the stored latent: {self.new[0]} {list(self.new[1])} vs stored " \
                      f"{self.stored[0]} {list(self.stored[1])}"
        return f"replayed {self.entry_id} as {self.new_entry_id} in {self.seconds:.1f} s: {verdict}"


def _bank_load_of(prompt: dict, node_id: str) -> str | None:
    """The Bank Load node feeding ``node_id``'s ``bank`` input (through other bank nodes' ``bank`` inputs)."""
    seen = set()
    while node_id in prompt and node_id not in seen:
        seen.add(node_id)
        node = prompt[node_id]
        if node.get("class_type") == BANK_LOAD:
            return node_id
        link = node.get("inputs", {}).get("bank")
        if not is_link(link):
            return None
        node_id = link[0]
    return None


def _name_slot(prompt: dict, node_id: str) -> tuple[dict, str]:
    """Where a Bank Load's name is written: its own ``name`` widget, or the primitive it is linked to."""
    holder, key = prompt[node_id]["inputs"], "name"
    for _ in range(32):
        value = holder.get(key)
        if not is_link(value):
            return holder, key
        source = prompt.get(value[0])
        if source is None or "value" not in source.get("inputs", {}):
            raise ReplayError(f"the stored prompt's Bank Load (node {node_id}) takes its name from node {value[0]}, "
                              "which computes it at run time; replay cannot point it at a scratch copy")
        holder, key = source["inputs"], "value"
    raise ReplayError(f"the stored prompt's Bank Load (node {node_id}) name follows a loop of links")


def redirect_banks(prompt: dict, add_node: str, scratch: str) -> tuple[dict, str]:
    """A copy of ``prompt`` whose Bank Load nodes for the bank ``add_node`` adds to read ``scratch`` instead;
    returns it and the bank name the prompt used."""
    prompt = json.loads(json.dumps(prompt))
    if add_node not in prompt or prompt[add_node].get("class_type") != BANK_ADD:
        raise ReplayError(f"the stored prompt has no Bank Add node {add_node}; it cannot be replayed")
    load = _bank_load_of(prompt, add_node)
    if load is None:
        raise ReplayError(f"no Bank Load feeds the stored prompt's Bank Add (node {add_node}); it cannot be replayed")
    holder, key = _name_slot(prompt, load)
    original = holder[key]
    for node_id, node in prompt.items():
        if node.get("class_type") == BANK_LOAD:
            holder_, key_ = _name_slot(prompt, node_id)
            if holder_[key_] == original:
                holder_[key_] = scratch
    # A replay must never write to a real bank: every Bank Add has to reach the scratch copy, and a Bank Save (a new
    # bank folder) is not run at all.
    for node_id, node in prompt.items():
        if node.get("class_type") in BANK_WRITERS:
            writer_load = _bank_load_of(prompt, node_id)
            name_holder, name_key = _name_slot(prompt, writer_load) if writer_load else ({}, "")
            if node["class_type"] != BANK_ADD or name_holder.get(name_key) != scratch:
                raise ReplayError(f"the stored prompt's {node['class_type']} (node {node_id}) would write a bank "
                                  f"other than the scratch copy of '{original}', so it is not replayed (a replay "
                                  "never changes a real bank). Replay a copy of the workflow without that node.")
    return prompt, original


def _scratch_name(entry_id: str, root: Path) -> str:
    stem = f"replay-{entry_id[:16]}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    name, n = stem, 1
    while (root / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return validate_bank_name(name)


def _new_entry(scratch: MemoryBank, copied: set[str], add_node: str, texts: list[str]) -> str:
    """The entry the replayed Bank Add stored (or found already stored) in the scratch bank."""
    added = [e for e in scratch.entries(include_hidden=True) if e.entry_id not in copied]
    mine = [e.entry_id for e in added if e.provenance.get("node") == add_node]
    if len(mine) == 1:
        return mine[0]
    for text in texts:  # "already in '<bank>' as <id>": the same content was one of the copied entries
        found = re.search(r"\b(?:added|as) ([0-9a-f]{16,64})\b", text)
        if found and found.group(1) in scratch.ids(include_hidden=True):
            return found.group(1)
    raise ReplayError(f"the replayed prompt stored no entry from Bank Add node {add_node} in the scratch bank "
                      f"'{scratch.name}' (new entries: {[e.entry_id for e in added]})")


def _record_differences(stored, new) -> list[str]:
    differences = []
    for name in ("seed", "prompt", "sampler", "parents", "model", "latent_format"):
        a, b = getattr(stored, name), getattr(new, name)
        if a != b:
            differences.append(f"{name}: stored {a!r}, replay {b!r}")
    return differences


def replay_entry(client: comfy_host.ComfyClient, bank_path: Path, entry_id: str, banks_root: Path | None = None, *,
                 settings: list[str] = (), keep: bool = False, out: Callable[[str], None] = print,
                 timeout: float = 3600) -> ReplayReport:
    """Replay entry ``entry_id`` of the bank at ``bank_path`` on the ComfyUI behind ``client``, whose banks folder
    is ``banks_root`` (default: the bank's own folder's parent); ``settings`` as ``run --set`` (one value each)."""
    validate_entry_id(entry_id)
    bank = MemoryBank.open(bank_path)
    entry = bank.entry(entry_id)
    run = bank.load_run(entry_id)
    if run is None or not isinstance(run.get("prompt"), dict):
        raise ReplayError(f"entry {entry_id} of bank '{bank.name}' has no stored prompt (added before Bank Add "
                          "recorded the run, or without a queued graph); it cannot be replayed")
    add_node = str(run.get("node") or entry.provenance.get("node") or "")
    view = [i for i in run.get("retrieval_ids") or [] if isinstance(i, str)]
    healthy = set(bank.ids(include_hidden=True))
    lost = [i for i in view if i not in healthy]
    if lost:
        out(f"warning: {len(lost)} entries the turn's retrieval could see are no longer healthy in the bank "
            f"({', '.join(lost)}); the replay may differ")
    view = [i for i in view if i in healthy]
    root = Path(banks_root) if banks_root is not None else Path(bank_path).parent
    scratch_name = _scratch_name(entry_id, root)
    prompt, used_name = redirect_banks(run["prompt"], add_node, scratch_name)
    for node_id, name, values in runner.parse_settings(list(settings), prompt):
        graph.set_input(prompt, node_id, name, values[0])
        out(f"changed for this replay: {runner.node_title(prompt, node_id)}.{name}={values[0]}")
    object_info = client.object_info()
    unknown = sorted({n["class_type"] for n in prompt.values() if n.get("class_type") not in object_info})
    if unknown:
        raise ReplayError(f"the server lacks the node types {', '.join(unknown)} the stored prompt uses; install "
                          "the node packs that made the turn")
    missing = runner.missing_models(prompt, object_info)
    if missing:
        raise ReplayError(f"the server lacks the models the turn was made with: {', '.join(missing)}. Replay needs "
                          "the same model files (put them in ComfyUI's models folders)")
    out(f"entry {entry_id} (turn {entry.turn}, seed {entry.seed}) of bank '{bank.name}': replaying its stored "
        f"prompt with Bank Load '{used_name}' pointed at a scratch copy '{scratch_name}' of the {len(view)} "
        f"entries its retrieval could see")
    scratch_path = root / scratch_name
    scratch = bank.export(scratch_path, ids=view)
    try:
        if client.get_json(f"/memv2v/banks/{scratch_name}", timeout=30).get("name") != scratch_name:
            raise ReplayError("the server answered for another bank")
    except (OSError, ValueError, ReplayError) as error:  # urllib's HTTPError is an OSError
        shutil.rmtree(scratch_path, ignore_errors=True)
        raise ReplayError(f"the server does not see the scratch bank {scratch_path} ({error}); give the bank's "
                          "folder inside that server's output/memory_banks") from None
    started = time.monotonic()
    try:
        result = client.run(prompt, timeout=timeout, on_message=runner.progress_printer(prompt, out))
        texts = [t for t in result.outputs.get(add_node, {}).get("text", []) if isinstance(t, str)]
        scratch.refresh()
        new_id = _new_entry(scratch, set(view), add_node, texts)
        stored, new = bank.load_latent(entry_id), scratch.load_latent(new_id)
        same_layout = stored.dtype == new.dtype and stored.shape == new.shape
        report = ReplayReport(
            entry_id, new_id, same_layout and torch.equal(stored, new),
            float((stored.float() - new.float()).abs().max()) if same_layout and stored.numel() else None,
            (str(stored.dtype), tuple(stored.shape)), (str(new.dtype), tuple(new.shape)),
            time.monotonic() - started, _record_differences(entry, scratch.entry(new_id)),
            scratch_path if keep else None)
    finally:
        if not keep:
            shutil.rmtree(scratch_path, ignore_errors=True)
    out(report.summary())
    for line in report.record_differences:
        out(f"  record {line}")
    if keep:
        out(f"scratch bank kept: {scratch_path}")
    return report


# ---------------------------------------------------------------------------------------------------------------
# The command

def _bank_folder(bank: str, roots: list[Path]) -> Path:
    """BANK as a bank folder path, or a bank name under one of ``roots`` (banks folders)."""
    path = Path(bank).expanduser()
    if (path / "manifest.json").is_file():
        return path.resolve()
    try:
        validate_bank_name(bank)
    except ValueError as error:
        raise ReplayError(f"BANK {bank!r} is neither a bank folder (no manifest.json there) nor a bank name: "
                          f"{error}") from None
    for root in roots:
        if (root / bank / "manifest.json").is_file():
            return (root / bank).resolve()
    raise ReplayError(f"no bank named {bank!r} in {', '.join(map(str, roots)) or 'any known banks folder'}; give "
                      "the bank folder's path (e.g. ComfyUI/output/memory_banks/<name>)")


def _demo_base_dir(bank: str) -> Path:
    """The demo folder that holds ``bank``: the folder above a bank path's ``output/memory_banks``, else the one demo
    folder of ``runner.demo_home()`` with a bank of that name."""
    path = Path(bank).expanduser()
    if path.is_dir() and path.parent.name == "memory_banks" and path.parent.parent.name == "output":
        return path.resolve().parents[2]
    found = sorted(p.parents[2] for p in runner.demo_home().glob(f"*/output/memory_banks/{bank}") if p.is_dir())
    if len(found) != 1:
        where = ", ".join(map(str, found)) if found else f"none under {runner.demo_home()}"
        raise ReplayError(f"bank {bank!r}: {len(found)} demo folders hold it ({where}); give --base-dir of the demo "
                          "run that made it")
    return found[0]


def main(args, out: Callable[[str], None] = print) -> int:
    """The ``replay`` command (see ``python -m memv2v_cli replay --help``)."""
    try:
        return _main(args, out)
    except (ReplayError, KeyError, ValueError, FileNotFoundError) as error:
        raise runner.UserError(str(error).strip(chr(39))) from None


def _main(args, out) -> int:
    base_dir = Path(args.base_dir).resolve() if args.base_dir else None
    if args.url:
        if args.demo:
            raise ReplayError("--demo starts its own private ComfyUI; it cannot be combined with --url")
        roots = [base_dir / "output" / "memory_banks"] if base_dir else []
        comfyui, _ = comfy_host.find_comfyui(args.comfyui)
        if comfyui is not None:
            roots.append(comfyui / "output" / "memory_banks")
        bank_path = _bank_folder(args.bank, roots)
        report = replay_entry(comfy_host.ComfyClient(args.url), bank_path, args.entry_id, settings=args.set,
                              keep=args.keep_copy, out=out)
        return 0 if report.identical else 1

    comfyui, where = comfy_host.find_comfyui(args.comfyui)
    if comfyui is None:
        raise ReplayError(where)
    out(where)
    if not args.demo and base_dir is None and runner.pack_installed(comfyui):
        bank_path = _bank_folder(args.bank, [comfyui / "output" / "memory_banks"])
        server = comfy_host.ComfyServer(comfyui, comfyui,
                                        log_path=Path(tempfile.mkdtemp(prefix="memv2v-replay-")) / "comfyui.log")
        out(f"starting ComfyUI on {server.url} (log: {server.log_path})")
    else:
        if base_dir is None:
            base_dir = _demo_base_dir(args.bank)
        bank_path = _bank_folder(args.bank, [base_dir / "output" / "memory_banks"])
        server, _ = runner.prepare_demo_server(comfyui, base_dir, out)
        out(runner.BANNER)
        out(f"starting a private ComfyUI on {server.url} (base directory {server.base_dir})")
    with server:
        report = replay_entry(server.client(), bank_path, args.entry_id, server.output_dir / "memory_banks",
                              settings=args.set, keep=args.keep_copy, out=out)
    return 0 if report.identical else 1
