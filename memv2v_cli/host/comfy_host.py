"""A ComfyUI installation driven from outside: find it, start it on 127.0.0.1 in a private base directory, queue prompts, stop it.

Used by the headless runner and by the host tests. Only the standard library and aiohttp (a ComfyUI requirement) are needed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

PACK_ROOT = Path(__file__).resolve().parents[2]
CPU_TORCHVISION_SHIM = Path(__file__).resolve().parent / "cpu_torchvision"
PACK_NAME = "memory-v2v"


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir() and (path / "nodes.py").is_file()


def enclosing_comfyui(pack_root: Path = PACK_ROOT) -> Path | None:
    """The ComfyUI whose ``custom_nodes`` holds the pack (as the pack's folder is named there, links not followed)."""
    roots = [Path(os.path.abspath(pack_root)), pack_root.resolve()]
    logical = Path(os.environ.get("PWD") or ".")  # a linked pack: the shell's path keeps the link's name
    for folder in (logical, *logical.parents) if logical.is_absolute() else ():
        if folder.resolve() == pack_root.resolve():
            roots.append(folder)
            break
    for root in dict.fromkeys(roots):
        if root.parent.name == "custom_nodes" and _is_comfyui(root.parent.parent):
            return root.parent.parent
    return None


def find_comfyui(explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """Locate ComfyUI: ``explicit``, else the ComfyUI whose ``custom_nodes`` holds this pack, else ``$COMFYUI_PATH``,
    else ``~/comfy/ComfyUI``.

    Returns the path (or None) and a sentence saying where it was looked for.
    """
    tried: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if explicit:
        candidates.append(("--comfyui", Path(explicit).expanduser()))
    enclosing = enclosing_comfyui()
    if enclosing is not None:
        candidates.append(("the ComfyUI holding this pack", enclosing))
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(("COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"]).expanduser()))
    candidates.append(("default", Path("~/comfy/ComfyUI").expanduser()))
    for label, path in candidates:
        if _is_comfyui(path):
            return path.resolve(), f"ComfyUI found at {path} ({label})"
        tried.append(f"{label}: {path}")
        if label == "--comfyui":  # an explicit choice that is no ComfyUI is an error, not a hint to look elsewhere
            break
    return None, ("no ComfyUI found (looked at " + "; ".join(tried) + "). Put the pack in a ComfyUI's "
                  "custom_nodes, set COMFYUI_PATH to a ComfyUI checkout, or put it at ~/comfy/ComfyUI.")


def comfyui_version(comfyui: Path) -> str:
    text = (comfyui / "comfyui_version.py").read_text() if (comfyui / "comfyui_version.py").exists() else ""
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(extra_pythonpath: list[Path] = ()) -> dict[str, str]:
    """Environment for a ComfyUI-side process: the torchvision shim first on PYTHONPATH (it acts only where needed)."""
    env = dict(os.environ)
    parts = [str(CPU_TORCHVISION_SHIM), *map(str, extra_pythonpath)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def use_cpu() -> bool:
    """Run ComfyUI on the CPU unless ``MEMV2V_HOST_DEVICE=gpu`` (or ``auto`` on a machine with CUDA)."""
    choice = os.environ.get("MEMV2V_HOST_DEVICE", "cpu").lower()
    if choice == "auto":
        import torch

        return not torch.cuda.is_available()
    return choice != "gpu"


class PromptRejected(RuntimeError):
    """``POST /prompt`` refused the prompt (validation failed); ``details`` holds the server's answer."""

    def __init__(self, details: dict):
        self.details = details
        lines = [f"ComfyUI rejected the prompt: {details.get('error', {}).get('message', details)}"]
        for node_id, info in (details.get("node_errors") or {}).items():
            for err in info.get("errors", []):
                lines.append(f"  node {node_id} ({info.get('class_type')}): {err.get('message')}: {err.get('details')}")
        super().__init__("\n".join(lines))


class PromptFailed(RuntimeError):
    """The prompt ran and ended in an error or an interruption; ``result`` holds the collected messages."""

    def __init__(self, message: str, result: "PromptResult"):
        super().__init__(message)
        self.result = result


@dataclass
class PromptResult:
    prompt_id: str
    status: str
    outputs: dict[str, Any]
    messages: list[tuple[str, dict]] = field(default_factory=list)
    seconds: float = 0.0

    def output_files(self, base_dir: Path | None = None, only: str | None = None) -> list[str]:
        """Paths (relative to the output folder, or absolute when ``base_dir`` is given) of every file the prompt saved;
        ``only="output"`` leaves out previews in ComfyUI's temp folder."""
        files = []
        for ui in self.outputs.values():
            for key in ("images", "gifs", "videos", "latents", "audio"):
                for item in ui.get(key, []) or []:
                    if only is not None and isinstance(item, dict) and item.get("type", "output") != only:
                        continue
                    if isinstance(item, dict) and item.get("filename"):
                        rel = os.path.join(item.get("subfolder", ""), item["filename"])
                        folder = item.get("type", "output")
                        files.append(str(base_dir / folder / rel) if base_dir else rel)
        return files


class ComfyClient:
    """HTTP and websocket access to a running ComfyUI server."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    def get_json(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post_json(self, path: str, body: dict, timeout: float = 30) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return json.loads(raw) if raw else None

    def object_info(self) -> dict:
        return self.get_json("/object_info", timeout=120)

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def queue_prompt(self, prompt: dict, extra_data: dict | None = None) -> str:
        """Queue ``prompt``; ``extra_data`` as the frontend sends it (e.g. ``{"extra_pnginfo": {"workflow": ...}}``)."""
        body = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        try:
            answer = self.post_json("/prompt", body)
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                details = json.loads(body)
            except ValueError:
                details = {"error": {"message": body.decode(errors="replace")}}
            raise PromptRejected(details) from None
        return answer["prompt_id"]

    def validate(self, prompt: dict) -> dict | None:
        """Run ``/prompt``'s validation without queueing: None when the prompt is valid, else the server's error answer.

        Needs the demo node pack (``memv2v_cli/demo/nodes``), which adds the route; ComfyUI itself has no dry run.
        """
        answer = self.post_json("/memv2v_demo/validate", {"prompt": prompt}, timeout=120)
        return None if answer.get("valid") else answer

    def run(self, prompt: dict, timeout: float = 600, on_message: Callable[[str, dict], None] | None = None,
            extra_data: dict | None = None) -> PromptResult:
        """Queue ``prompt``, follow its websocket messages until it ends, and return its history entry."""
        return asyncio.run(self._run(prompt, timeout, on_message, extra_data))

    async def _run(self, prompt, timeout, on_message, extra_data=None) -> PromptResult:
        import aiohttp

        ws_url = self.url.replace("http", "ws", 1) + "/ws?clientId=" + self.client_id
        start = time.monotonic()
        messages: list[tuple[str, dict]] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url, heartbeat=30) as ws:
                prompt_id = await asyncio.to_thread(self.queue_prompt, prompt, extra_data)
                status = "unknown"
                while True:
                    remaining = timeout - (time.monotonic() - start)
                    if remaining <= 0:
                        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")
                    msg = await ws.receive(timeout=remaining)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                            raise ConnectionError("the ComfyUI websocket closed before the prompt finished")
                        continue
                    data = json.loads(msg.data)
                    kind, payload = data.get("type"), data.get("data") or {}
                    if payload.get("prompt_id") not in (None, prompt_id):
                        continue
                    messages.append((kind, payload))
                    if on_message:
                        on_message(kind, payload)
                    if kind in ("execution_success", "execution_error", "execution_interrupted"):
                        status = kind
                        break
        history = await asyncio.to_thread(self._final_history, prompt_id, start + timeout)
        result = PromptResult(prompt_id, status, history.get("outputs", {}), messages, time.monotonic() - start)
        if status != "execution_success":
            error = next((p for k, p in messages if k == "execution_error"), {})
            detail = (f"node {error.get('node_id')} ({error.get('node_type')}): {error.get('exception_message', '').strip()}"
                      if error else "interrupted")
            raise PromptFailed(f"prompt {prompt_id} ended with {status}: {detail}", result)
        return result


    def _final_history(self, prompt_id: str, deadline: float) -> dict:
        """The prompt's history entry; the server writes it just after the websocket's final message, so wait for it."""
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and (entry.get("status") or {}).get("completed") is not None:
                return entry
            if time.monotonic() > deadline:
                return entry or {}
            time.sleep(0.05)


class ComfyServer:
    """A ComfyUI server process with its own base directory (models, custom_nodes, input, output, user)."""

    def __init__(self, comfyui: Path, base_dir: Path, python: str = sys.executable, port: int | None = None,
                 extra_args: tuple[str, ...] = (), log_path: Path | None = None, env: dict[str, str] | None = None):
        self.comfyui = Path(comfyui)
        self.env = dict(env or {})
        self.base_dir = Path(base_dir)
        self.python = python
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.log_path = Path(log_path) if log_path else self.base_dir / "comfyui.log"
        for sub in ("custom_nodes", "input", "output", "user", "temp", "models/diffusion_models", "models/vae",
                    "models/text_encoders", "models/loras", "models/clip_vision", "models/memv2v"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def client(self) -> ComfyClient:
        return ComfyClient(self.url)

    def install_custom_node(self, source: Path, name: str) -> Path:
        """Make ``source`` a custom node folder named ``name`` (a symlink; a copy where links are not allowed)."""
        target = self.base_dir / "custom_nodes" / name
        if target.is_symlink() or target.exists():
            return target
        try:
            target.symlink_to(Path(source).resolve(), target_is_directory=True)
        except OSError:
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(".git", "__pycache__", "tests"))
        return target

    def add_model(self, folder: str, source: Path) -> Path:
        target = self.base_dir / "models" / folder / Path(source).name
        if not target.exists():
            try:
                target.symlink_to(Path(source).resolve())
            except OSError:
                shutil.copy2(source, target)
        return target

    def start(self, timeout: float = 180) -> None:
        device = ["--cpu"] if use_cpu() else []
        args = [self.python, str(self.comfyui / "main.py"), *device, "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base_dir), "--disable-api-nodes", "--disable-auto-launch",
                "--database-url", "sqlite:///:memory:", *self.extra_args]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(args, cwd=str(self.comfyui), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env={**subprocess_env(), **self.env})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} while starting; "
                                   f"last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                self.client().get_json("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
