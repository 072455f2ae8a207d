"""The one-run long edit's resume keys (memv2v_core.long_edit): a key changes with everything that decides a
segment's edit and with nothing else, and a run resumes at the first segment not stored under its key."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from memv2v_core.long_edit import (LONG_EDIT_KEY, graph_digest, resume_point, segment_extra, segment_key,
                                   stored_segments, value_digest)

WINDOW = (0, 33)


def _conditioning(scale: float = 1.0) -> list:
    torch.manual_seed(0)
    return [[torch.randn(1, 4, 8) * scale, {"pooled_output": None, "extra": torch.ones(2)}]]


def _settings() -> dict:
    """Shaped like Long Video Edit's settings (nodes/long_edit_nodes.py _key_settings)."""
    return {
        "source_id": "src-aaaaaaaaaaaa", "shape": [150, 32, 32, 3], "stride": 4, "segment_length": 33, "overlap": 8,
        "sampler": {"seed": 42, "steps": 2, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple",
                    "denoise": 1.0},
        "retrieval": {"top_k": 4, "recent_first": True, "embedder": "clip_vision|Dinov2Model(518px)|weights=ab"},
        "tokenize": {"fine_ranks": 3, "fine_kernel": "1x2x2", "coarse_kernel": "1x2x2", "reverse_memory": True},
        "merge": {"blocks": "auto", "ratio": 0.5, "mode": "merge"},
        "conditioning": value_digest([_conditioning(), _conditioning(0.0)]),
        "model": "wan22|layout=abc|weights=def", "sigmas": value_digest(torch.linspace(1, 0, 10)),
        "graph": "g" * 64,
    }


def _changed(path: tuple, value) -> dict:
    settings = copy.deepcopy(_settings())
    target = settings
    for name in path[:-1]:
        target = target[name]
    assert path[-1] in target, path  # the setting exists: a typo must not make the test pass
    assert target[path[-1]] != value, path
    target[path[-1]] = value
    return settings


@pytest.mark.parametrize("path, value", [
    (("source_id",), "src-bbbbbbbbbbbb"), (("shape",), [151, 32, 32, 3]), (("shape",), [150, 48, 32, 3]),
    (("stride",), 8), (("segment_length",), 17), (("overlap",), 4),
    (("sampler", "seed"), 43), (("sampler", "steps"), 3), (("sampler", "cfg"), 5.5),
    (("sampler", "sampler_name"), "euler"), (("sampler", "scheduler"), "karras"), (("sampler", "denoise"), 0.9),
    (("retrieval", "top_k"), 3), (("retrieval", "recent_first"), False),
    (("retrieval", "embedder"), "clip_vision|Dinov2Model(518px)|weights=cd"),
    (("tokenize", "fine_ranks"), 2), (("tokenize", "fine_kernel"), "1x4x4"), (("tokenize", "coarse_kernel"), "1x4x4"),
    (("tokenize", "reverse_memory"), False), (("merge", "blocks"), "all"), (("merge", "ratio"), 0.25),
    (("merge", "mode"), "replace"), (("conditioning",), value_digest([_conditioning(2.0), _conditioning(0.0)])),
    (("model",), "wan22|layout=abc|weights=xyz"), (("sigmas",), value_digest(torch.linspace(1, 0, 11))),
    (("graph",), "h" * 64),
])
def test_the_key_changes_with_every_setting(path, value):
    assert segment_key(_changed(path, value), WINDOW) != segment_key(_settings(), WINDOW)


def test_the_key_changes_with_the_window_and_is_stable_otherwise():
    assert segment_key(_settings(), WINDOW) == segment_key(_settings(), WINDOW)
    assert segment_key(_settings(), (25, 58)) != segment_key(_settings(), WINDOW)
    reordered = dict(reversed(list(_settings().items())))  # the order settings are listed in does not count
    assert segment_key(reordered, WINDOW) == segment_key(_settings(), WINDOW)


def test_the_conditioning_digest_covers_values_dtype_and_shape_and_ignores_object_identity():
    base = value_digest(_conditioning())
    assert value_digest(_conditioning()) == base
    changed = _conditioning()
    changed[0][0][0, 0, 0] += 1e-3
    assert value_digest(changed) != base
    as_half = _conditioning()
    as_half[0][0] = as_half[0][0].half()
    assert value_digest(as_half) != base
    reshaped = _conditioning()
    reshaped[0][0] = reshaped[0][0].reshape(1, 8, 4)
    assert value_digest(reshaped) != base
    assert value_digest({"a": 1, "b": 2}) == value_digest({"b": 2, "a": 1})
    assert value_digest([1, 2]) != value_digest([2, 1])
    # Other objects count by their type only (their identity is covered by the model / graph keys).
    assert value_digest([SimpleNamespace(x=1)]) == value_digest([SimpleNamespace(x=2)])
    assert value_digest([SimpleNamespace(x=1)]) != value_digest([object()])


def _prompt() -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "lucy.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "a.safetensors",
                                                              "strength_model": 1.0}},
        "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["2", 0], "shift": 5.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["9", 0], "text": "make the sky orange"}},
        "9": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5.safetensors", "type": "wan"}},
        "10": {"class_type": "MemV2V_LongVideoEdit", "inputs": {"model": ["3", 0], "positive": ["4", 0],
                                                                "seed": 42, "filename_prefix": "a"}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 1]}},
    }


INPUTS = ("model", "positive", "negative", "vae")


def test_the_graph_digest_covers_the_upstream_chain_only():
    base = graph_digest(_prompt(), "10", INPUTS)
    assert base is not None and graph_digest(_prompt(), "10", INPUTS) == base
    for node_id, name, value in [("2", "strength_model", 0.5), ("2", "lora_name", "b.safetensors"),
                                 ("3", "shift", 3.0), ("4", "text", "make the sky red"),
                                 ("1", "unet_name", "other.safetensors")]:
        prompt = _prompt()
        prompt[node_id]["inputs"][name] = value
        assert graph_digest(prompt, "10", INPUTS) != base, (node_id, name)
    prompt = _prompt()  # the node's own widgets and what it feeds are not upstream of its model and prompts
    prompt["10"]["inputs"].update(seed=7, filename_prefix="b")
    prompt["11"]["class_type"] = "SaveVideo"
    assert graph_digest(prompt, "10", INPUTS) == base
    renumbered = {f"n{k}": {**v, "inputs": {i: [f"n{x[0]}", x[1]] if isinstance(x, list) else x
                                            for i, x in v["inputs"].items()}} for k, v in _prompt().items()}
    assert graph_digest(renumbered, "n10", INPUTS) == base  # node ids do not count
    assert graph_digest(_prompt(), "missing", INPUTS) is None


def _entry(index: int, key: str | None, entry_id: str | None = None):
    extra = segment_extra(key, index, 4, (index * 25, index * 25 + 33), 108) if key else {}
    return SimpleNamespace(entry_id=entry_id or f"e{index}", segment_index=index, extra=extra)


def test_resume_starts_at_the_first_segment_not_stored_under_its_key():
    keys = [segment_key(_settings(), (i * 25, i * 25 + 33)) for i in range(4)]
    assert resume_point(stored_segments([], keys), 4) == 0
    entries = [_entry(0, keys[0]), _entry(1, keys[1]), _entry(3, keys[3])]  # segment 2 missing
    stored = stored_segments(entries, keys)
    assert sorted(stored) == [0, 1, 3] and resume_point(stored, 4) == 2
    assert resume_point(stored_segments(entries + [_entry(2, keys[2])], keys), 4) == 4  # all done


def test_entries_of_other_settings_other_indices_or_no_key_do_not_count():
    keys = [segment_key(_settings(), (i * 25, i * 25 + 33)) for i in range(3)]
    other = segment_key(_changed(("sampler", "seed"), 7), (0, 33))
    entries = [_entry(0, other), _entry(1, keys[1]), _entry(0, None)]
    assert resume_point(stored_segments(entries, keys), 3) == 0  # segment 0 edited with another seed, or by hand
    swapped = [SimpleNamespace(entry_id="x", segment_index=1, extra=segment_extra(keys[0], 0, 3, (0, 33), 83))]
    assert stored_segments(swapped, keys) == {}  # a key must sit on its own segment index
    newest = stored_segments([_entry(0, keys[0], "old"), _entry(0, keys[0], "new")], keys)
    assert newest[0].entry_id == "new"
    assert LONG_EDIT_KEY in _entry(0, keys[0]).extra
