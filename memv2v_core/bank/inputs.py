"""What the memory bank accepts from its callers: bank names, latent formats, and the arguments of ``add``.

Everything is checked before anything is written, and every refusal names the argument, the value and the fix.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

import torch

from .storage import DTYPE_NAMES

MAX_BANK_NAME = 64
LATENT_CHANNELS = {"wan21": 16, "wan22": 48}  # known formats; any other name is accepted without a channel check


# ---------------------------------------------------------------------------------------------------------------
# Bank names and latent formats

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                     *(f"{p}{d}" for p in ("COM", "LPT") for d in "0123456789\u00b9\u00b2\u00b3")}
_NAME_HELP = (f"Use a plain name such as 'my_scene': letters, digits, spaces, '-', '_' and '.', "
              f"at most {MAX_BANK_NAME} characters.")


# Invisible or non-text code points: control, format (bidi overrides, zero-width), surrogate, private use, line breaks.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}


def validate_bank_name(name: Any) -> str:
    """Return ``name`` if it is safe as a single folder name on every OS; ValueError naming the problem otherwise.

    The name's NFKC form must pass too, so look-alikes (fullwidth '／', '．．', 'ＣＯＮ') are refused like the
    characters they imitate."""
    if not isinstance(name, str):
        raise ValueError(f"bank name must be a string, got {type(name).__name__}. {_NAME_HELP}")
    reason = _name_problem(name)
    folded = unicodedata.normalize("NFKC", name)
    if reason is None and folded != name and (imitated := _name_problem(folded)) is not None:
        reason = f"it imitates {folded!r}, which is refused ({imitated})"
    if reason is not None:
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise ValueError(f"bank name {shown!r} is refused: {reason}. {_NAME_HELP}")
    return name


def _name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    if len(name) > MAX_BANK_NAME:
        return f"it is {len(name)} characters long"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character (NUL, newline, ...)"
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in name):
        return "it contains an invisible or non-text character (bidi override, zero-width, private use)"
    if "/" in name or "\\" in name:
        return "it contains a path separator, which would place the bank outside the banks folder"
    forbidden = sorted(set(name) & set('<>:"|?*'))
    if forbidden:
        return f"it contains {''.join(forbidden)!r}, which Windows does not allow in folder names"
    if name.startswith("."):
        return "it starts with '.' ('.' and '..' point outside the bank, and dot-folders are hidden)"
    if name != name.strip() or name.endswith("."):
        return "it starts or ends with a space or ends with '.', which Windows silently drops"
    if name.split(".")[0].strip().upper() in _WINDOWS_RESERVED:
        return "it is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    return None


def safe_bank_dir(root: str | os.PathLike, name: str) -> Path:
    """Validate a bank name and return ``root/name``; nothing is created. ValueError if it would leave ``root``."""
    validate_bank_name(name)
    root_path = Path(root).resolve()
    candidate = root_path / name
    if candidate.resolve().parent != root_path:  # a link planted at root/name that points elsewhere
        raise ValueError(f"bank name {name!r} is refused: {candidate} resolves to {candidate.resolve()}, outside the "
                         f"banks folder {root_path}. Remove that link or choose another name.")
    return candidate


_ENTRY_ID_RE = re.compile(r"[0-9a-f]{16,64}")


def validate_entry_id(entry_id: Any, input_name: str = "entry id") -> str:
    """Return ``entry_id`` if it has the form of an entry id (16 to 64 lower-case hex digits); ValueError otherwise.

    Checked before an id reaches the bank, so a path or other text never does."""
    if not isinstance(entry_id, str) or not _ENTRY_ID_RE.fullmatch(entry_id):
        shown = entry_id if not isinstance(entry_id, str) or len(entry_id) <= 80 else entry_id[:80] + "..."
        raise ValueError(f"{input_name} {shown!r} is not an entry id: ids are 16 to 64 lower-case hex digits, as "
                         "bank.ids() and the Bank Inspect table list them")
    return entry_id


MAX_BRANCH_NAME = 64
_BRANCH_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.\-]*")


def validate_branch_name(name: Any) -> str:
    """Return ``name`` if it is a branch name: ASCII letters, digits, spaces, '-', '_', '.', starting with a letter
    or digit, not ending with a space, at most 64 characters; ValueError naming the problem otherwise."""
    if (not isinstance(name, str) or not name or len(name) > MAX_BRANCH_NAME or not _BRANCH_RE.fullmatch(name)
            or name != name.rstrip()):
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:80] + "..."
        raise ValueError(f"branch name {shown!r} is refused: use 1 to {MAX_BRANCH_NAME} ASCII letters, digits, "
                         "spaces, '-', '_' or '.', starting with a letter or digit (e.g. 'from turn 1')")
    return name


def check_latent_format(actual: Any, expected: Any, where: str) -> None:
    """Refuse memory whose latent format differs from the model's, naming both; ``actual`` may be a MemoryEntry."""
    label = ""
    if not isinstance(actual, str) and hasattr(actual, "entry_id") and hasattr(actual, "latent_format"):
        label, actual = f" (bank entry {actual.entry_id})", actual.latent_format
    have, want = normalize_latent_format(actual), normalize_latent_format(expected)
    if have != want:
        raise ValueError(
            f"{where}: the memory latent{label} is in latent format '{have}' but the model expects '{want}'. "
            f"Memory must come from the same VAE family as the model: use a bank filled by a '{want}' model, "
            f"or load a '{have}' model to use this bank.")


# ---------------------------------------------------------------------------------------------------------------
# Latent formats

def normalize_latent_format(name: Any) -> str:
    """"Wan21" (ComfyUI's class name), "wan21" or a latent-format object -> "wan21"."""
    if not isinstance(name, str):
        name = type(name).__name__
    value = name.strip().lower()
    if not value or not re.fullmatch(r"[a-z0-9_.\-]+", value):
        raise ValueError(f"latent_format {name!r} is not a format name; use e.g. 'wan21' (16 channels) or 'wan22' "
                         "(48 channels), as ComfyUI's model.latent_format class name")
    return value


def latent_format_for_channels(channels: int) -> str | None:
    """The known latent format with this channel count (16 -> wan21, 48 -> wan22), else None."""
    matches = [fmt for fmt, count in LATENT_CHANNELS.items() if count == channels]
    return matches[0] if len(matches) == 1 else None


# ---------------------------------------------------------------------------------------------------------------
# What ``add`` accepts

def tensor_input(name: str, value: Any, *, ndims: tuple[int, ...], kind: str) -> torch.Tensor:
    """Validate a tensor to store and return a compact CPU copy of it (no copy when it already is one)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim not in ndims:
        raise ValueError(f"{name} has shape {list(value.shape)}; expected {kind}")
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {list(value.shape)}); pass None to leave it out")
    if value.dtype not in DTYPE_NAMES:
        raise ValueError(f"{name} has dtype {value.dtype}, which safetensors cannot store")
    value = value.detach().to("cpu").contiguous()
    if value.untyped_storage().nbytes() != value.numel() * value.element_size():
        value = value.clone()  # a view into a larger tensor: store only the viewed elements
    return value


def _all_finite(tensor: torch.Tensor) -> bool:
    # A finite sum proves there is no NaN/inf (and costs a tenth of isfinite); overflow falls back to the exact test.
    return math.isfinite(float(tensor.sum())) or bool(torch.isfinite(tensor).all())


def _float_tensor(name: str, value: Any, ndims: tuple[int, ...], kind: str) -> torch.Tensor:
    tensor = tensor_input(name, value, ndims=ndims, kind=kind)
    if not tensor.is_floating_point():
        raise ValueError(f"{name} has dtype {tensor.dtype}; expected a float tensor {kind}")
    if not _all_finite(tensor):
        raise ValueError(f"{name} contains NaN or infinity; it was not stored")
    return tensor


def _typed(name: str, value: Any, kind: type, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{name} is {value!r} ({type(value).__name__}); expected {kind.__name__}"
                         + (" or None" if optional else ""))
    return value


def _json_dict(name: str, value: Any) -> dict:
    """Round-trip a json-able dict (tuples become lists); ValueError naming the field otherwise."""
    try:
        result = json.loads(json.dumps(value or {}, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold JSON-serialisable values (numbers, strings, lists, dicts; no NaN): "
                         f"{error}") from None
    if not isinstance(result, dict):
        raise ValueError(f"{name} must be a dict of settings, got {type(value).__name__}")
    return result


def prepare_entry(latent: Any, latent_format: Any, *, camera=None, intrinsics=None, fov_mask=None, descriptor=None,
                  keyframes=None, segment_index=None, source_id=None, prompt="", turn=None, parents=(), seed=None,
                  sampler=None, model=None, extra=None, provenance=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Validate ``add``'s arguments: the CPU tensors to store and the json metadata that identifies the content."""
    fmt = normalize_latent_format(latent_format)
    lat = _float_tensor("latent", latent, (4, 5), "[B, C, T, H, W] or [C, T, H, W] (LATENT['samples'])")
    if fmt in LATENT_CHANNELS and lat.shape[-4] != LATENT_CHANNELS[fmt]:
        raise ValueError(f"latent has {lat.shape[-4]} channels (shape {list(lat.shape)}) but latent_format '{fmt}' "
                         f"has {LATENT_CHANNELS[fmt]}; pass the format of the VAE that made this latent")
    tensors = {"latent": lat}
    if camera is not None:
        tensors["camera"] = cam = _float_tensor("camera", camera, (3,), "[F, 4, 4] camera-to-world matrices")
        if tuple(cam.shape[1:]) != (4, 4):
            raise ValueError(f"camera has shape {list(cam.shape)}; expected [F, 4, 4] camera-to-world matrices")
    if intrinsics is not None:
        tensors["intrinsics"] = k = _float_tensor("intrinsics", intrinsics, (2, 3), "[3, 3] or [F, 3, 3]")
        if tuple(k.shape[-2:]) != (3, 3) or ("camera" in tensors and k.ndim == 3
                                             and k.shape[0] != tensors["camera"].shape[0]):
            raise ValueError(f"intrinsics has shape {list(k.shape)}; expected [3, 3] or [F, 3, 3] with F matching "
                             "the camera's frame count")
    if fov_mask is not None:
        tensors["fov_mask"] = mask = tensor_input("fov_mask", fov_mask, ndims=(1, 2), kind="a bit-packed uint8 mask")
        if mask.dtype != torch.uint8:
            raise ValueError(f"fov_mask has dtype {mask.dtype}; expected bit-packed uint8")
    if descriptor is not None:
        tensors["descriptor"] = _float_tensor("descriptor", descriptor, (1,), "[D] (one embedding vector)")
    if keyframes is not None:
        tensors["keyframes"] = kf = _float_tensor("keyframes", keyframes, (4,), "[K, H, W, 3] images in 0..1")
        if kf.shape[-1] != 3 or float(kf.min()) < 0.0 or float(kf.max()) > 1.0:
            raise ValueError(f"keyframes have shape {list(kf.shape)} and range {float(kf.min()):.3g}.."
                             f"{float(kf.max()):.3g}; expected [K, H, W, 3] images in 0..1 (ComfyUI IMAGE)")
    if isinstance(parents, str) or not isinstance(parents, (list, tuple)):
        raise ValueError(f"parents is {parents!r}; expected a list of entry ids")
    meta = {"latent_format": fmt, "prompt": _typed("prompt", prompt, str),
            "parents": [_typed("parents[]", p, str) for p in parents],
            "seed": _typed("seed", seed, int, optional=True), "sampler": _json_dict("sampler", sampler),
            "model": _typed("model", model, str, optional=True),
            "segment_index": _typed("segment_index", segment_index, int, optional=True),
            "source_id": _typed("source_id", source_id, str, optional=True), "extra": _json_dict("extra", extra)}
    if turn is not None:  # only an explicit turn is part of the content's identity
        meta["turn"] = _typed("turn", turn, int)
    if provenance is not None:  # likewise only when given, so entries added without it keep their ids
        meta["provenance"] = _json_dict("provenance", provenance)
    for key in ("turn", "segment_index"):
        if meta.get(key) is not None and meta[key] < 0:
            raise ValueError(f"{key} is {meta[key]}; it must be 0 or more")
    return tensors, meta


MAX_RUN_BYTES = 16 * 1024 * 1024  # the run is kept in the entry file's header, which readers cap at 64 MiB


def run_text(run: Any) -> str | None:
    """``add``'s ``run`` (the API prompt and UI workflow that made the entry) as compact JSON, or None."""
    if run is None:
        return None
    if not isinstance(run, dict):
        raise ValueError(f"run must be a dict such as {{'prompt': <API prompt>, 'workflow': ...}}, got "
                         f"{type(run).__name__}")
    try:
        text = json.dumps(run, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"run must hold JSON-serialisable values (no NaN): {error}") from None
    size = len(text.encode("utf-8"))
    if size > MAX_RUN_BYTES:
        raise ValueError(f"run is {size} bytes of JSON; at most {MAX_RUN_BYTES} are stored (leave the UI workflow "
                         "out, or store the entry without its run)")
    return text
