"""ReCamMaster / Memory-V2V checkpoint reading: identification by name and shape, lazy reads, safe pickles, errors."""

from __future__ import annotations

import argparse
import json
import os
import struct

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from memv2v_cli.demo.checkpoints import camera_module_tensors, memory_module_tensors, tokenizer_module
from memv2v_core.checkpoints import files as checkpoint_files
from memv2v_core.checkpoints import (
    CameraWeights, CheckpointError, ConvMergeOperator, convert_to_safetensors, identify_modules, inspect_checkpoint,
    load_modules, read_state_dict_keys,
)

DIM, DEPTH, IN_DIM = 16, 3, 4


def wan_state(dim: int = DIM, depth: int = DEPTH, in_dim: int = IN_DIM, seed: int = 0) -> dict[str, torch.Tensor]:
    """A miniature Wan 2.1 T2V DiT state dict with ComfyUI / DiffSynth key names."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, 8), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, 8), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (in_dim * 4, dim), "head.head.bias": (in_dim * 4,), "head.modulation": (1, 2, dim),
    }
    for block in range(depth):
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"blocks.{block}.{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"blocks.{block}.{attn}.{proj}.bias"] = (dim,)
            shapes[f"blocks.{block}.{attn}.norm_q.weight"] = (dim,)
            shapes[f"blocks.{block}.{attn}.norm_k.weight"] = (dim,)
        shapes[f"blocks.{block}.norm3.weight"] = (dim,)
        shapes[f"blocks.{block}.norm3.bias"] = (dim,)
        shapes[f"blocks.{block}.ffn.0.weight"] = (2 * dim, dim)
        shapes[f"blocks.{block}.ffn.0.bias"] = (2 * dim,)
        shapes[f"blocks.{block}.ffn.2.weight"] = (dim, 2 * dim)
        shapes[f"blocks.{block}.ffn.2.bias"] = (dim,)
        shapes[f"blocks.{block}.modulation"] = (1, 6, dim)
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def recammaster_state(**kwargs) -> dict[str, torch.Tensor]:
    state = wan_state(**kwargs)
    state.update(camera_module_tensors(state["head.modulation"].shape[-1], DEPTH, std=0.1, seed=3))
    return state


def memoryv2v_state() -> dict[str, torch.Tensor]:
    state = recammaster_state()
    state.update(memory_module_tensors(state["patch_embedding.weight"], state["patch_embedding.bias"], std=0.01))
    return state


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """The key/shape/dtype view identify_modules works on (what read_state_dict_keys returns)."""
    return {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items()}


# --- identification on key/shape dicts -----------------------------------------------------------------------------
def test_recammaster_layout_is_identified():
    report = identify_modules(shapes_of(recammaster_state()))
    assert report.kind == "ReCamMaster"
    assert (report.has_dit, report.dim, report.depth, report.in_dim, report.patch_size) == (True, DIM, DEPTH, IN_DIM,
                                                                                              (1, 2, 2))
    assert report.camera_blocks == (0, 1, 2)
    assert report.tokenizers == {} and report.mergers == {}
    assert report.missing == () and report.mismatched == () and report.unknown == ()
    assert report.complete
    report.require()  # a complete file passes the strict check


def test_memoryv2v_layout_is_identified():
    report = identify_modules(shapes_of(memoryv2v_state()))
    assert report.kind == "Memory-V2V"
    assert set(report.tokenizers) == {(1, 4, 4), (1, 8, 8)}
    fine = report.tokenizers[(1, 4, 4)]
    assert (fine.module, fine.in_channels, fine.has_bias) == (tokenizer_module((1, 4, 4)), IN_DIM, True)
    assert list(report.mergers) == ["token_merger"]
    assert report.mergers["token_merger"].params == {"weight": (DIM, DIM, 2, 2), "bias": (DIM,)}
    assert report.mergers["token_merger"].operator_kernel == 2
    assert report.complete and report.unknown == ()


def test_plausible_unpublished_names_are_accepted():
    state = recammaster_state()
    state["patch_embedding_4.weight"] = torch.zeros(DIM, IN_DIM, 1, 4, 4)
    state["memory_tokenizer_8x8.weight"] = torch.zeros(DIM, IN_DIM, 8, 8)  # a Conv2d embedder: kernel (1, 8, 8)
    state["memory_tokenizer_8x8.bias"] = torch.zeros(DIM)
    state["cond_patch_embed.1x2x2.weight"] = torch.zeros(DIM, IN_DIM, 1, 2, 2)
    state["token_downsampler.0.weight"] = torch.zeros(DIM, DIM, 1, 2, 2)  # Conv3d with a temporal size of 1
    state["blocks.2.token_merge.proj.weight"] = torch.zeros(DIM, 4 * DIM)  # a layout we cannot use as operator
    report = identify_modules(shapes_of(state))
    assert {k: t.module for k, t in report.tokenizers.items()} == {
        (1, 4, 4): "patch_embedding_4", (1, 8, 8): "memory_tokenizer_8x8", (1, 2, 2): "cond_patch_embed.1x2x2"}
    assert report.tokenizers[(1, 4, 4)].has_bias is False
    assert report.mergers["token_downsampler.0"].operator_kernel == 2
    assert report.mergers["blocks.2.token_merge.proj"].operator_kernel is None
    assert report.complete


def test_several_conv_mergers_use_the_first_as_operator(tmp_path):
    state = memoryv2v_state()
    state["blocks.20.token_merger.weight"] = torch.zeros(DIM, DIM, 4, 4)
    state["blocks.10.token_merger.weight"] = torch.zeros(DIM, DIM, 2, 2)
    report = identify_modules(shapes_of(state))
    assert list(report.mergers) == ["blocks.10.token_merger", "blocks.20.token_merger", "token_merger"]
    assert [m.operator_kernel for m in report.mergers.values()] == [2, 4, 2]
    assert any("uses blocks.10.token_merger at every merge block" in note for note in report.notes)
    save_file(state, str(tmp_path / "m.safetensors"))
    modules = load_modules(tmp_path / "m.safetensors")
    assert modules.merger_name == "blocks.10.token_merger" and modules.merger.kernel == 2
    assert set(modules.mergers) == set(report.mergers)


def test_unknown_extra_keys_are_reported_by_name_and_shape():
    state = recammaster_state()
    state["blocks.1.cam_norm.weight"] = torch.zeros(DIM)
    state["mystery"] = torch.zeros(3, 5)
    state["memory_proj.0.weight"] = torch.zeros(DIM, IN_DIM, 1, 4, 4)  # a conv under a name we do not guess
    report = identify_modules(shapes_of(state))
    assert report.tokenizers == {}
    assert any("shaped like patch embedders" in note and f"memory_proj.0.weight [{DIM}, {IN_DIM}, 1, 4, 4]" in note
               for note in report.notes)
    assert ("blocks.1.cam_norm.weight", (DIM,), "float32") in report.unknown
    assert ("mystery", (3, 5), "float32") in report.unknown
    text = report.summary()
    assert "Unknown extra tensors (3)" in text and "mystery [3, 5] float32" in text


@pytest.mark.parametrize("prefix", ["model.", "dit.", "module.", "model.diffusion_model.", "pipe.dit."])
def test_key_prefixes_are_stripped(prefix):
    plain = identify_modules(shapes_of(memoryv2v_state()))
    report = identify_modules({prefix + name: value for name, value in shapes_of(memoryv2v_state()).items()})
    assert report.prefix == prefix
    assert (report.dim, report.depth, report.camera_blocks, set(report.tokenizers), list(report.mergers)) == (
        plain.dim, plain.depth, plain.camera_blocks, set(plain.tokenizers), list(plain.mergers))
    assert report.key_map["blocks.0.cam_encoder.weight"] == prefix + "blocks.0.cam_encoder.weight"
    assert report.complete


def test_partial_camera_modules_are_listed_as_missing():
    state = recammaster_state()
    del state["blocks.1.cam_encoder.weight"], state["blocks.1.cam_encoder.bias"], state["blocks.2.projector.bias"]
    del state["blocks.1.projector.weight"], state["blocks.2.projector.weight"]
    report = identify_modules(shapes_of(state))
    assert report.camera_blocks == (0,)
    assert any(line.startswith("blocks.{1-2}.projector.weight: not in the file") for line in report.missing)
    assert any(line.startswith("blocks.1.cam_encoder.weight: not in the file") for line in report.missing)
    assert any(line.startswith("blocks.2.projector.bias: not in the file") for line in report.missing)
    with pytest.raises(CheckpointError) as err:
        report.require()
    message = str(err.value)
    assert "missing: blocks.1.cam_encoder.weight" in message and "allow_partial" in message
    report.require(allow_partial=True)  # block 0 is complete, so a partial load is possible


def test_wrong_shapes_are_mismatched():
    state = recammaster_state()
    state["blocks.1.cam_encoder.weight"] = torch.zeros(DIM, 16)  # a 4x4 pose instead of 3x4
    state["blocks.2.projector.weight"] = torch.zeros(DIM, DIM + 1)
    state[f"{tokenizer_module((1, 4, 4))}.weight"] = torch.zeros(DIM * 2, IN_DIM, 1, 4, 4)  # wrong model width
    state["blocks.7.cam_encoder.weight"] = torch.zeros(DIM, 12)  # a block the DiT does not have
    report = identify_modules(shapes_of(state))
    assert report.camera_blocks == (0,)
    assert any(line.startswith("blocks.1.cam_encoder.weight: [16, 16] float32, expected [16, 12]")
               for line in report.mismatched)
    assert any(line.startswith("blocks.2.projector.weight: [16, 17]") for line in report.mismatched)
    assert any("produces 32-wide tokens, the model's width is 16" in line for line in report.mismatched)
    assert any("blocks.7: camera modules for blocks the DiT does not have" in line for line in report.mismatched)
    with pytest.raises(CheckpointError, match="mismatched: blocks.1.cam_encoder.weight"):
        report.require()


def test_two_tokenizers_with_one_kernel_are_a_conflict():
    state = memoryv2v_state()
    state["patch_embedding_4x4.weight"] = torch.zeros(DIM, IN_DIM, 1, 4, 4)
    report = identify_modules(shapes_of(state))
    assert report.tokenizers[(1, 4, 4)].module == tokenizer_module((1, 4, 4))  # the first in natural order wins
    assert any("kernel 1x4x4 already comes from cond_patch_embedding_1x4x4" in line for line in report.mismatched)


def test_plain_wan_dit_is_not_a_recammaster_checkpoint():
    report = identify_modules(shapes_of(wan_state()))
    assert report.has_dit and not report.usable and report.kind == "none"
    with pytest.raises(CheckpointError) as err:
        report.require(allow_partial=True)
    message = str(err.value)
    assert "not a ReCamMaster/Memory-V2V checkpoint" in message
    assert "blocks.N.cam_encoder.weight [dim, 12]" in message  # what was expected
    assert f"a Wan DiT (dim {DIM}, {DEPTH} blocks, in_dim {IN_DIM}, patch 1x2x2)" in message  # what was found
    assert "step20000.ckpt" in message  # the fix


def test_random_safetensors_is_refused_with_what_it_holds(tmp_path):
    path = tmp_path / "random.safetensors"
    save_file({"encoder.layer.weight": torch.zeros(2, 3), "scale": torch.ones(1)}, str(path))
    with pytest.raises(CheckpointError) as err:
        load_modules(path)
    message = str(err.value)
    assert "checkpoint 'random.safetensors': not a ReCamMaster/Memory-V2V checkpoint" in message
    assert "2 tensor(s) and no Wan DiT" in message and "encoder.layer.weight [2, 3]" in message


def test_tokenizers_without_camera_modules_need_allow_partial():
    state = wan_state()
    state.update(memory_module_tensors(state["patch_embedding.weight"], None))
    report = identify_modules(shapes_of(state))
    assert report.kind == "Memory-V2V" and report.camera_blocks == ()
    assert any("no camera modules at all" in line for line in report.missing)
    with pytest.raises(CheckpointError):
        report.require()
    report.require(allow_partial=True)


# --- files ---------------------------------------------------------------------------------------------------------
def test_safetensors_and_ckpt_give_the_same_modules(tmp_path):
    state = memoryv2v_state()
    save_file(state, str(tmp_path / "m.safetensors"))
    torch.save(state, tmp_path / "m.ckpt")
    for name in ("m.safetensors", "m.ckpt"):
        keys = read_state_dict_keys(tmp_path / name)
        assert keys["blocks.0.projector.weight"] == ((DIM, DIM), "float32")
        assert len(keys) == len(state)
        modules = load_modules(tmp_path / name)
        assert modules.kind == "Memory-V2V" and modules.dim == DIM
        assert sorted(modules.camera) == [0, 1, 2]
        block = modules.camera[1]
        assert isinstance(block, CameraWeights)
        assert torch.equal(block.enc_w, state["blocks.1.cam_encoder.weight"])
        assert torch.equal(block.proj_b, state["blocks.1.projector.bias"])
        weight, bias = modules.tokenizers[(1, 8, 8)]
        assert weight.shape == (DIM, IN_DIM, 1, 8, 8)
        assert torch.equal(weight, state[f"{tokenizer_module((1, 8, 8))}.weight"])
        assert torch.equal(bias, state[f"{tokenizer_module((1, 8, 8))}.bias"])
        assert set(modules.mergers) == {"token_merger"}
        assert isinstance(modules.merger, ConvMergeOperator)


def test_merge_operator_is_the_strided_conv_of_the_file():
    state = memoryv2v_state()  # the demo merger is initialised as 2x2 average pooling
    operator = ConvMergeOperator(state["token_merger.weight"], state["token_merger.bias"])
    grid = torch.randn(2, DIM, 6, 10)
    assert torch.allclose(operator(grid), F.avg_pool2d(grid, 2), atol=1e-6)
    assert operator(grid.to(torch.bfloat16)).dtype == torch.bfloat16


def test_conv2d_tokenizer_is_loaded_as_a_conv3d_kernel(tmp_path):
    state = recammaster_state()
    state["cond_embedder.weight"] = torch.randn(DIM, IN_DIM, 4, 4)
    save_file(state, str(tmp_path / "c.safetensors"))
    weight, bias = load_modules(tmp_path / "c.safetensors").tokenizers[(1, 4, 4)]
    assert weight.shape == (DIM, IN_DIM, 1, 4, 4) and bias is None
    assert torch.equal(weight[:, :, 0], state["cond_embedder.weight"])


@pytest.mark.parametrize("wrapper", ["state_dict", "module"])
def test_wrapped_ckpt_is_unwrapped(tmp_path, wrapper):
    state = recammaster_state()
    path = tmp_path / "wrapped.ckpt"
    torch.save({wrapper: state, "global_step": 20000}, path)
    assert read_state_dict_keys(path) == {n: (tuple(t.shape), "float32") for n, t in state.items()}
    report = inspect_checkpoint(path)
    assert report.wrapper == (wrapper,) and report.file_format == "torch"
    assert any("global_step" in note for note in report.notes)
    modules = load_modules(path, report)
    assert torch.equal(modules.camera[2].proj_w, state["blocks.2.projector.weight"])


def test_prefixed_and_nested_ckpt_loads_by_raw_names(tmp_path):
    state = memoryv2v_state()
    path = tmp_path / "nested.ckpt"
    torch.save({"pipe": {"dit": state}, "optimizer": {"lr": 0.1}}, path)  # two dicts: flattened, prefix "pipe.dit."
    report = inspect_checkpoint(path)
    assert report.prefix == "pipe.dit." and report.nested
    modules = load_modules(path, report)
    assert torch.equal(modules.tokenizers[(1, 4, 4)][0], state[f"{tokenizer_module((1, 4, 4))}.weight"])


class _WritesWhenUnpickled:
    """Unpickling this object creates a directory: proof of whether a loader executed the pickle."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickle_with_objects_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "unsafe.ckpt"
    torch.save({"blocks.0.cam_encoder.weight": torch.zeros(DIM, 12), "hook": _WritesWhenUnpickled(str(marker))}, path)
    with pytest.raises(CheckpointError) as err:
        inspect_checkpoint(path)
    message = str(err.value)
    assert "torch.load(weights_only=True) refuses" in message and "mkdir" in message
    assert "never unpickles arbitrary code" in message
    assert not marker.exists()


def test_pickled_config_object_is_named_in_the_refusal(tmp_path):
    path = tmp_path / "config.ckpt"
    torch.save({"state_dict": recammaster_state(), "hparams": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        load_modules(path)


def test_unreadable_files_get_clear_errors(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_state_dict_keys(tmp_path / "garbage.ckpt")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_state_dict_keys(tmp_path / "garbage.safetensors")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="is not a .safetensors"):
        read_state_dict_keys(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict_keys(tmp_path / "absent.ckpt")


def test_ckpt_is_read_with_weights_only_and_mmap(tmp_path, monkeypatch):
    torch.save(recammaster_state(), tmp_path / "r.ckpt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_modules(tmp_path / "r.ckpt")
    assert calls and all(c["weights_only"] is True and c["mmap"] is True and c["map_location"] == "cpu"
                         for c in calls)


def _write_sparse_safetensors(path, small: dict[str, torch.Tensor], huge_name: str, huge_shape: tuple[int, ...]):
    """A safetensors file whose last tensor (float32, ``huge_shape``) is a hole: in the header, never written."""
    header, blobs, offset = {}, [], 0
    for name, tensor in small.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    huge_bytes = 4 * int(torch.tensor(huge_shape).prod())
    header[huge_name] = {"dtype": "F32", "shape": list(huge_shape), "data_offsets": [offset, offset + huge_bytes]}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
        handle.truncate(8 + len(text) + offset + huge_bytes)  # sparse: the 1 GiB tail takes no disk and no RAM


def test_safetensors_reads_only_the_module_tensors(tmp_path, monkeypatch):
    state = memoryv2v_state()
    path = tmp_path / "lazy.safetensors"
    _write_sparse_safetensors(path, state, "blocks.0.huge_buffer", (16384, 16384))  # 1 GiB float32
    requested: list[str] = []
    real_open = checkpoint_files.safe_open

    class SpyHandle:
        def __init__(self, handle):
            self._handle = handle

        def __enter__(self):
            self._handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

        def get_tensor(self, name):
            requested.append(name)
            return self._handle.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self._handle, name)

    monkeypatch.setattr(checkpoint_files, "safe_open", lambda *a, **k: SpyHandle(real_open(*a, **k)))
    report = inspect_checkpoint(path)
    assert requested == []  # the index comes from the header alone
    assert ("blocks.0.huge_buffer", (16384, 16384), "float32") in report.unknown
    modules = load_modules(path, report)
    assert "blocks.0.huge_buffer" not in requested
    assert sorted(requested) == sorted(report.key_map.values())  # the modules' tensors and nothing else
    assert not any(name.startswith(("blocks.0.self_attn", "patch_embedding", "head.")) for name in requested)
    assert torch.equal(modules.camera[0].enc_w, state["blocks.0.cam_encoder.weight"])


def test_convert_to_safetensors_gives_bare_keys(tmp_path):
    state = recammaster_state()
    torch.save({"module": {"dit." + k: v for k, v in state.items()}}, tmp_path / "prefixed.ckpt")
    renamed = convert_to_safetensors(tmp_path / "prefixed.ckpt", tmp_path / "bare.safetensors")
    assert renamed["head.modulation"] == "dit.head.modulation"
    converted = load_file(str(tmp_path / "bare.safetensors"))
    assert set(converted) == set(state)
    assert torch.equal(converted["blocks.2.cam_encoder.bias"], state["blocks.2.cam_encoder.bias"])
    assert inspect_checkpoint(tmp_path / "bare.safetensors").prefix == ""


def test_summary_names_what_was_found(tmp_path):
    save_file(memoryv2v_state(), str(tmp_path / "mv.safetensors"))
    text = load_modules(tmp_path / "mv.safetensors").summary()
    assert "Kind: Memory-V2V" in text
    assert f"Camera modules (cam_encoder Linear 12->{DIM}, projector Linear {DIM}->{DIM}): 0-2 (3 of 3 blocks)" in text
    assert "1x4x4 <- cond_patch_embedding_1x4x4 (4 ch, bias)" in text
    assert "token_merger (weight [16, 16, 2, 2], bias [16]) -> merge operator: 2x2 strided conv" in text
    assert "Missing: none" in text and "Mismatched: none" in text
    assert "Loaded: camera modules for 3 block(s), tokenizers 1x4x4, 1x8x8, merge operator from token_merger" in text
