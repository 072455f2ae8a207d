"""The pack's HTTP routes on ComfyUI's server (``/memv2v/...``): banks and their entries for the bank browser.

Read-only listing and thumbnails, plus hide / restore / branch as POSTs. Every route checks the bank name exactly as
the nodes do (``safe_bank_dir`` under ``banks_root()``) and the entry id by its form before anything touches the
file system; it opens only existing banks (never creates one), so nothing outside the banks folder is read or
written. Bank work runs on a worker thread: a hide may wait for another process's writer lock.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from aiohttp import web

from ..memv2v_core.bank.contact_sheet import PAD, entry_thumbnails
from ..memv2v_core.bank.memory_bank import (BankFormatError, BankStateError, DamagedEntryError, LockTimeout,
                                            MemoryBank, UnknownEntryError, safe_bank_dir, validate_bank_name,
                                            validate_entry_id)
from ..memv2v_core.bank.records import MANIFEST_NAME
from ..memv2v_core.story.shots import shot_of
from .paths import banks_root
from .previews import latent_previews

logger = logging.getLogger(__name__)

PREFIX = "/memv2v/banks"
MAX_BODY_BYTES = 16 * 1024
THUMBNAIL_CACHE_SIZE = 256
# Keys of an entry's ``extra`` that may name its camera preset or trajectory, most specific first.
CAMERA_NAME_KEYS = ("camera_name", "trajectory_name", "camera_preset", "trajectory", "preset", "camera")


class RouteError(Exception):
    """An answer other than 200: the HTTP status and a message that says what was wrong and what to do."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


# ---------------------------------------------------------------------------------------------------------------
# Names and ids, checked before the file system is touched

def bank_path(root: str, name: str) -> Path:
    """The folder of an existing bank ``name`` under ``root``; RouteError 400 for a refused name, 404 if missing."""
    try:
        validate_bank_name(name)
    except ValueError as error:
        raise RouteError(400, f"bank name: {error}") from None
    try:
        path = safe_bank_dir(root, name)
    except ValueError:  # the folder is a link: say so without telling where it leads
        raise RouteError(400, f"bank name {name!r} is refused: its folder is a link leading outside the banks "
                              "folder") from None
    if not (path / MANIFEST_NAME).is_file():
        raise RouteError(404, f"there is no memory bank named {name!r} (banks live in ComfyUI's "
                              "output/memory_banks; Bank Load creates one)")
    return path


def open_bank(root: str, name: str) -> MemoryBank:
    path = bank_path(root, name)
    try:
        return MemoryBank.open(path, create=False)
    except (BankFormatError, FileNotFoundError, NotADirectoryError) as error:
        raise RouteError(409, f"bank {name!r} cannot be opened: {error}") from None


def entry_id_of(value) -> str:
    try:
        return validate_entry_id(value)
    except ValueError as error:
        raise RouteError(400, str(error)) from None


def call_bank(function, *args):
    """Run a bank call and turn its errors into HTTP answers (the bank is unchanged whenever one is raised)."""
    try:
        return function(*args)
    except UnknownEntryError as error:
        raise RouteError(404, str(error)) from None
    except DamagedEntryError as error:
        raise RouteError(409, str(error)) from None
    except BankStateError as error:
        raise RouteError(409, str(error)) from None
    except LockTimeout as error:
        raise RouteError(503, str(error)) from None
    except BankFormatError as error:
        raise RouteError(409, str(error)) from None
    except ValueError as error:
        raise RouteError(400, str(error)) from None


# ---------------------------------------------------------------------------------------------------------------
# What the routes answer

def list_banks(root: str) -> list[str]:
    """Names of the banks under ``root`` (folders with a manifest whose name passes the nodes' check)."""
    try:
        children = sorted(os.scandir(root), key=lambda child: child.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = []
    for child in children:
        try:
            path = safe_bank_dir(root, child.name)
        except ValueError:  # a name the nodes would refuse, or a link leading out of the banks folder
            continue
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            names.append(child.name)
    return names


def camera_name(extra: dict) -> str | None:
    for key in CAMERA_NAME_KEYS:
        value = extra.get(key) if isinstance(extra, dict) else None
        if isinstance(value, str) and value:
            return value
    return None


def entry_json(bank: MemoryBank, entry) -> dict:
    """One entry as the bank browser shows it (no tensors read)."""
    return {"id": entry.entry_id, "turn": entry.turn, "prompt": entry.prompt, "seed": entry.seed,
            "parents": list(entry.parents), "hidden": bank.is_hidden(entry.entry_id), "created": entry.created,
            "segment_index": entry.segment_index, "source_id": entry.source_id, "branch": entry.branch,
            "camera": camera_name(entry.extra),
            "camera_frames": entry.shapes["camera"][0] if "camera" in entry.shapes else None,
            "latent_format": entry.latent_format, "latent_shape": list(entry.latent_shape),
            "keyframes": entry.has("keyframes"), "model": entry.model, "sampler": entry.sampler,
            "provenance": entry.provenance, "story": _story_fields(entry)}


def _story_fields(entry) -> dict | None:
    shot = shot_of(entry)
    return None if shot is None else {"story_id": shot[0], "shot_index": shot[1], "cut": shot[2]}


def bank_summary(bank: MemoryBank) -> dict:
    return {"name": bank.name, "entries": len(bank), "hidden": len(bank.hidden_ids()),
            "latent_format": bank.latent_format, "revision": bank.revision(), "active_branch": bank.active_branch,
            "branches": bank.branches(), "problems": bank.problems}


class ThumbnailCache:
    """PNG thumbnails by (bank folder, entry id, creation time, frames, height): an entry's data never changes after
    its add, so a cached thumbnail never goes stale. Least recently used ones go first."""

    def __init__(self, size: int = THUMBNAIL_CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


THUMBNAILS = ThumbnailCache()


def thumbnail_png(bank: MemoryBank, entry_id: str, frames: int, height: int) -> tuple[bytes, str]:
    """The entry's thumbnail strip as PNG bytes (from stored keyframes, else a latent preview) and its ETag."""
    from PIL import Image

    entry = bank.entry(entry_id)
    key = (str(bank.path), entry_id, entry.created, frames, height)
    etag = '"' + hashlib.sha256(repr(key).encode()).hexdigest()[:32] + '"'
    cached = THUMBNAILS.get(key)
    if cached is not None:
        return cached, etag
    thumbs, _ = entry_thumbnails(bank, entry, latent_previews(), frames, height)
    strip = torch.zeros(height, thumbs.shape[0] * (thumbs.shape[2] + PAD) - PAD, 3)
    for index, thumb in enumerate(thumbs):
        x0 = index * (thumb.shape[1] + PAD)
        strip[:, x0:x0 + thumb.shape[1]] = thumb
    pixels = (strip * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    THUMBNAILS.put(key, data)
    return data, etag


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise RouteError(400, f"query {name}={text[:20]!r} must be a whole number from {low} to {high}")
    return int(text)


async def _json_body(request: web.Request) -> dict:
    import json

    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RouteError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    raw = b""
    while len(raw) <= MAX_BODY_BYTES:  # read() may return one chunk of a longer body
        chunk = await request.content.read(MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > MAX_BODY_BYTES:
        raise RouteError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError) as error:
        raise RouteError(400, f"the request body is not JSON ({error})") from None
    if not isinstance(body, dict):
        raise RouteError(400, 'the request body must be a JSON object such as {"from": "<entry id>", "name": "alt"}')
    return body


# ---------------------------------------------------------------------------------------------------------------
# Handlers

def _handler(route):
    """Wrap ``route(request, banks root)`` as an aiohttp handler that answers every error as JSON."""
    @functools.wraps(route)
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            root = banks_root()  # on the event loop: folder registration is not thread-safe
            return await route(request, root)
        except RouteError as error:  # messages name banks by name: the server's folders stay private
            message = str(error)
            for prefix in {str(Path(root).resolve()), str(root)}:
                message = message.replace(prefix, "memory_banks")
            return _error(error.status, message)
        except Exception:  # noqa: BLE001 - an answer, not a dropped connection; details go to the log
            logger.exception("Memory-V2V route %s failed", request.path)
            return _error(500, "internal error in the Memory-V2V bank routes; see the ComfyUI log")
    return handle


async def get_banks(request: web.Request, root: str) -> web.Response:
    return web.json_response(await asyncio.to_thread(list_banks, root))


async def get_bank(request: web.Request, root: str) -> web.Response:
    name = request.match_info["name"]
    return web.json_response(await asyncio.to_thread(lambda: bank_summary(open_bank(root, name))))


async def get_entries(request: web.Request, root: str) -> web.Response:
    name = request.match_info["name"]

    def work():
        bank = open_bank(root, name)
        return [entry_json(bank, entry) for entry in bank.entries(include_hidden=True)]
    return web.json_response(await asyncio.to_thread(work))


async def get_thumbnail(request: web.Request, root: str) -> web.Response:
    name, entry_id = request.match_info["name"], entry_id_of(request.match_info["entry_id"])
    frames = _int_query(request, "frames", 1, 1, 8)
    height = _int_query(request, "height", 96, 16, 256)

    def work():
        bank = open_bank(root, name)
        return call_bank(thumbnail_png, bank, entry_id, frames, height)
    data, etag = await asyncio.to_thread(work)
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type="image/png", headers=headers)


def run_json(bank: MemoryBank, entry_id: str) -> dict:
    """The API prompt (and UI workflow, when the frontend sent one) that made the entry, as Bank Add stored it."""
    run = bank.load_run(entry_id)
    if run is None or not isinstance(run.get("prompt"), dict):
        raise RouteError(404, f"entry {entry_id} of bank '{bank.name}' has no stored prompt (it was added before "
                              "Bank Add recorded the run, or without a queued graph)")
    workflow = run.get("workflow")
    return {"prompt": run["prompt"], "workflow": workflow if isinstance(workflow, dict) else None}


async def get_prompt(request: web.Request, root: str) -> web.Response:
    name, entry_id = request.match_info["name"], entry_id_of(request.match_info["entry_id"])

    def work():
        bank = open_bank(root, name)
        return call_bank(run_json, bank, entry_id)
    return web.json_response(await asyncio.to_thread(work))


def _change(action: str):
    async def post_change(request: web.Request, root: str) -> web.Response:
        name, entry_id = request.match_info["name"], entry_id_of(request.match_info["entry_id"])

        def work():
            bank = open_bank(root, name)
            call_bank(getattr(bank, action), entry_id)
            return entry_json(bank, bank.entry(entry_id))
        return web.json_response(await asyncio.to_thread(work))
    post_change.__name__ = f"post_{action}"
    return post_change


async def post_branch(request: web.Request, root: str) -> web.Response:
    """{"from": id, "name": branch}: create the branch and make it active; {"name": branch}: switch to an existing
    one; {"name": null}: back to the whole bank."""
    name = request.match_info["name"]
    body = await _json_body(request)
    start, branch = body.get("from"), body.get("name")
    if start is not None:
        start = entry_id_of(start)
        if branch is None:
            raise RouteError(400, 'branch: "name" is missing; send {"from": "<entry id>", "name": "<branch name>"}')

    def work():
        bank = open_bank(root, name)
        if start is not None:
            call_bank(bank.branch, branch, start)
        else:
            call_bank(bank.switch_branch, branch)
        return {"active_branch": bank.active_branch, "branches": bank.branches()}
    return web.json_response(await asyncio.to_thread(work))


ROUTES = (
    ("GET", PREFIX, get_banks),
    ("GET", PREFIX + "/{name}", get_bank),
    ("GET", PREFIX + "/{name}/entries", get_entries),
    ("GET", PREFIX + "/{name}/entries/{entry_id}/thumbnail", get_thumbnail),
    ("GET", PREFIX + "/{name}/entries/{entry_id}/prompt", get_prompt),
    ("POST", PREFIX + "/{name}/entries/{entry_id}/hide", _change("hide")),
    ("POST", PREFIX + "/{name}/entries/{entry_id}/restore", _change("restore")),
    ("POST", PREFIX + "/{name}/branch", post_branch),
)

_registered: set[int] = set()


def register(routes: web.RouteTableDef) -> None:
    """Add the routes to ComfyUI's route table (``PromptServer.instance.routes``; it also serves them under /api)."""
    if id(routes) in _registered:
        return
    for method, path, route in ROUTES:
        routes.route(method, path)(_handler(route))
    _registered.add(id(routes))
