"""StoryMem's PEFT LoRAs converted to ComfyUI's key format: key mapping, the alpha that reproduces rsLoRA's scale,
reading .pth (weights_only) and .safetensors, and one clear error per malformed file.

The scale is checked against PEFT's own definition (``LoraConfig(use_rslora=True)``: alpha / sqrt(r); else alpha / r)
combined with ComfyUI's rule (``weight_adapter/lora.py``: alpha_tensor / rank), both written out here.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from memv2v_core.checkpoints import CheckpointError
from memv2v_core.checkpoints.lora import (TARGET_MODULES, comfy_alpha, convert_storymem_file, convert_storymem_lora,
                                          load_storymem_lora, lora_scale, save_comfy_lora)

DIM, FFN = 16, 24


def peft_state(blocks: int = 2, rank: int = 4, default: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA laid out like StoryMem's backbone_*_noise.pth (PEFT get_peft_model_state_dict keys)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {m: (DIM, DIM) for m in TARGET_MODULES}
    shapes["ffn.0"], shapes["ffn.2"] = (FFN, DIM), (DIM, FFN)
    state = {}
    tag = ".default" if default else ""
    for block in range(blocks):
        for module, (out_dim, in_dim) in shapes.items():
            base = f"base_model.model.blocks.{block}.{module}"
            state[f"{base}.lora_A{tag}.weight"] = torch.randn(rank, in_dim, generator=g)
            state[f"{base}.lora_B{tag}.weight"] = torch.randn(out_dim, rank, generator=g)
    return state


def comfy_update(converted: dict[str, torch.Tensor], module: str, strength: float = 1.0) -> torch.Tensor:
    """ComfyUI's LoRA update for ``diffusion_model.<module>`` (weight_adapter/lora.py calculate_weight, written out)."""
    up = converted[f"diffusion_model.{module}.lora_B.weight"].double()
    down = converted[f"diffusion_model.{module}.lora_A.weight"].double()
    alpha = converted[f"diffusion_model.{module}.alpha"].item() / down.shape[0]
    return strength * alpha * (up @ down)


def test_keys_are_renamed_for_every_layer_and_alpha_gives_rslora_scale():
    state = peft_state(rank=4)
    lora = convert_storymem_lora(state, rank=4, alpha=4)
    assert len(lora.modules) == 20 and lora.blocks == (0, 1) and lora.width == DIM
    assert len(lora.tensors) == 60  # A, B and alpha per layer
    for block in range(2):
        for module in TARGET_MODULES:
            name = f"blocks.{block}.{module}"
            a, b = state[f"base_model.model.{name}.lora_A.weight"], state[f"base_model.model.{name}.lora_B.weight"]
            assert lora.tensors[f"diffusion_model.{name}.lora_A.weight"] is a  # shared, not copied
            assert lora.tensors[f"diffusion_model.{name}.lora_B.weight"] is b
            # PEFT rsLoRA: W += lora_alpha / sqrt(r) * B @ A = 4 / 2 * B @ A
            expected = 4 / math.sqrt(4) * (b.double() @ a.double())
            torch.testing.assert_close(comfy_update(lora.tensors, name), expected, rtol=1e-6, atol=0)
    assert lora.scale == pytest.approx(2.0)
    assert lora.targets()["diffusion_model.blocks.1.ffn.0.weight"] == (FFN, DIM)


def test_storymem_defaults_are_r_128_alpha_128_rslora_scale_11_31():
    assert lora_scale(128, 128.0) == pytest.approx(11.313708498984761)
    assert comfy_alpha(128, 128.0) / 128 == pytest.approx(128 / math.sqrt(128), rel=1e-15)
    assert comfy_alpha(128, 128.0) == pytest.approx(1448.1546878695, rel=1e-12)
    lora = convert_storymem_lora(peft_state(blocks=1, rank=128))
    assert (lora.rank, lora.alpha, lora.rs_lora) == (128, 128.0, True)
    alpha = lora.tensors["diffusion_model.blocks.0.self_attn.q.alpha"]
    assert alpha.dtype == torch.float32 and alpha.ndim == 0
    assert alpha.item() / 128 == pytest.approx(math.sqrt(128), rel=1e-7)  # float32 alpha: 1e-8 relative
    assert "11.3137" in lora.summary() and "10 layers in 1 blocks" in lora.summary()


def test_classic_lora_scale_when_rslora_is_off():
    lora = convert_storymem_lora(peft_state(rank=8), rank=8, alpha=16, rs_lora=False)
    assert lora.scale == 2.0
    assert lora.tensors["diffusion_model.blocks.0.ffn.2.alpha"].item() == 16.0  # ComfyUI: 16 / 8 = 2


def test_peft_default_adapter_keys_are_accepted():
    lora = convert_storymem_lora(peft_state(rank=4, default=True), rank=4, alpha=4)
    assert "diffusion_model.blocks.0.cross_attn.k.lora_B.weight" in lora.tensors
    assert not any(".default" in k for k in lora.tensors)


def test_reads_pth_with_weights_only_and_safetensors(tmp_path: Path):
    state = peft_state(rank=4)
    pth = tmp_path / "backbone_high_noise.pth"
    torch.save(state, pth)
    sft = tmp_path / "backbone_low_noise.safetensors"
    save_file(state, str(sft))
    for path in (pth, sft):
        lora = load_storymem_lora(path, rank=4, alpha=4)
        assert len(lora.modules) == 20 and lora.source == str(path)
        key = "diffusion_model.blocks.1.ffn.0.lora_A.weight"
        assert torch.equal(lora.tensors[key], state["base_model.model.blocks.1.ffn.0.lora_A.weight"])


def test_a_pickle_with_code_is_refused_not_executed(tmp_path: Path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"base_model.model.blocks.0.self_attn.q.lora_A.weight": Payload()}, handle)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_storymem_lora(path)


def test_save_writes_a_comfy_lora_that_round_trips(tmp_path: Path):
    src = tmp_path / "backbone_high_noise.pth"
    torch.save(peft_state(rank=4), src)
    dst = tmp_path / "storymem_high_comfy.safetensors"
    lora = convert_storymem_file(src, dst, rank=4, alpha=4)
    written = load_file(str(dst))
    assert set(written) == set(lora.tensors)
    for key, value in lora.tensors.items():
        assert torch.equal(written[key], value)
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        save_comfy_lora(lora, tmp_path / "out.pth")


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update({"base_model.model.blocks.0.patch_embedding.lora_A.weight": torch.zeros(4, 4)}),
     r"not StoryMem's PEFT layout: 1 of 41 keys .*patch_embedding"),
    (lambda s: s.pop("base_model.model.blocks.1.ffn.2.lora_B.weight"), r"blocks\.1\.ffn\.2 has no lora_B"),
    (lambda s: s.update({"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(3, DIM)}),
     r"lora_A \(3, 16\) and lora_B \(16, 4\)"),
    (lambda s: s.update({"base_model.model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(8, DIM),
                         "base_model.model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(DIM, 8)}),
     r"mixes ranks 4 \(blocks\.0\.self_attn\.k\), 8 \(blocks\.0\.self_attn\.q\)"),
    (lambda s: s.update({"base_model.model.blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(4, DIM)}),
     r"holds blocks\.0\.self_attn\.q\.lora_A twice"),
])
def test_malformed_files_get_one_clear_error(mutate, message):
    state = peft_state(rank=4)
    mutate(state)
    with pytest.raises(CheckpointError, match=message) as caught:
        convert_storymem_lora(state, rank=4, alpha=4, source="models/loras/bad.pth")
    assert "models/loras/bad.pth" in str(caught.value)


def test_comfy_format_file_is_sent_to_comfys_own_loader():
    converted = convert_storymem_lora(peft_state(rank=4), rank=4, alpha=4).tensors
    with pytest.raises(CheckpointError, match="already in a ComfyUI LoRA key format.*LoraLoaderModelOnly"):
        convert_storymem_lora(converted, rank=4, alpha=4, source="x.safetensors")


def test_rank_must_match_the_file_and_config_is_checked():
    with pytest.raises(ValueError, match=r"rank \(128\) does not match .* whose rank is 4; set rank to 4"):
        convert_storymem_lora(peft_state(rank=4))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank"):
            convert_storymem_lora(peft_state(rank=4), rank=bad)
    for bad in (0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            convert_storymem_lora(peft_state(rank=4), rank=4, alpha=bad)


def test_missing_or_wrong_suffix_files_are_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match=r"does not exist; put StoryMem's .* models/loras"):
        load_storymem_lora(tmp_path / "nope.pth")
    other = tmp_path / "lora.pkl"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"lora\.pkl' is not a"):
        load_storymem_lora(other)
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with pytest.raises(CheckpointError, match="holds no tensors"):
        load_storymem_lora(empty)
