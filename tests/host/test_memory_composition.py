"""Apply Memory composes with ComfyUI's own sampling through the real server: KSampler, SamplerCustomAdvanced, a LoRA
loader before it, Wan context windows around it, and the Merged DiT Sampler; the memory comes from a real bank through
Bank Load -> FOV Retrieve -> Dynamic Tokenize.

One prompt runs every branch (tiny model, 64x64 px, 9 frames, 3 steps); each test checks one branch's saved latent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.camera.presets import preset_trajectory

BANK = "memtest_composition"
USER_LATENT = "memv2v_memtest_user.latent"
LORA = "memv2v_memtest_tiny_lora.safetensors"
SHAPE = [1, 16, 3, 8, 8]  # 9 frames at 64x64 in Wan 2.1's VAE
STEPS = 3
BANK_PRESETS = ("pan_right", "pan_left", "tilt_up", "arc_left", "orbit_left", "zoom_in")


def make_lora(path: Path, dim: int, blocks: int = 2, rank: int = 4) -> Path:
    """A LoRA for the tiny DiT in ComfyUI's generic key format (attention, FFN and the patch embedding)."""
    g = torch.Generator().manual_seed(3)
    tensors = {}
    shapes = {f"blocks.{i}.{name}": (dim, dim) for i in range(blocks)
              for name in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.o")}
    for key, (out_dim, in_dim) in shapes.items():
        tensors[f"diffusion_model.{key}.lora_up.weight"] = torch.randn(out_dim, rank, generator=g) * 0.3
        tensors[f"diffusion_model.{key}.lora_down.weight"] = torch.randn(rank, in_dim, generator=g) * 0.3
    tensors["diffusion_model.patch_embedding.lora_up.weight"] = torch.randn(dim, rank, 1, 1, 1, generator=g) * 0.3
    tensors["diffusion_model.patch_embedding.lora_down.weight"] = torch.randn(rank, 16, 1, 2, 2, generator=g) * 0.3
    save_file(tensors, str(path))
    return path


def build_prompt(dit: str) -> dict:
    nodes: dict[str, dict] = {}

    def add(node_id: str, class_type: str, **inputs) -> list:
        nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    def ksample(name: str, model: list) -> None:
        samples = add(f"{name}_ks", "KSampler", model=model, positive=pos, negative=neg, latent_image=empty, seed=7,
                      steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="simple", denoise=1.0)
        add(f"{name}_save", "SaveLatent", samples=samples, filename_prefix=f"memtest/{name}")

    def windows(model: list, name: str) -> list:
        return add(name, "ContextWindowsManual", model=model, context_length=2, context_overlap=1,
                   context_schedule="standard_static", context_stride=1, closed_loop=False, fuse_method="pyramid",
                   dim=2)

    def memory(model: list, name: str) -> list:
        return add(name, "MemV2V_ApplyMemory", model=model, context=context, merge_blocks="auto", merge_ratio=0.5,
                   merge_mode="merge")

    def merged_sampler(name: str, model: list) -> None:
        samples = add(f"{name}_mds", "MemV2V_MergedDiTSampler", model=model, positive=pos, negative=neg,
                      latent_image=empty, context=context, seed=7, steps=STEPS, cfg=5.0, sampler_name="euler",
                      scheduler="simple", denoise=1.0, merge_blocks="auto", merge_ratio=0.5, merge_mode="merge")
        add(f"{name}_save", "SaveLatent", samples=samples, filename_prefix=f"memtest/{name}")

    unet = add("unet", "UNETLoader", unet_name=dit, weight_dtype="default")
    pos = add("pos", "MemV2VDemo_TextConditioning", text="the same room, seen from the left", tokens=16)
    neg = add("neg", "MemV2VDemo_TextConditioning", text="", tokens=16)
    empty = add("empty", "EmptyHunyuanLatentVideo", width=64, height=64, length=9, batch_size=1)
    base = add("ms", "ModelSamplingSD3", model=unet, shift=8.0)
    bank = add("bank", "MemV2V_BankLoad", name=BANK)
    camera = add("cam", "MemV2V_CameraPreset", preset="pan_right", frames=9, strength=1.0, subject_distance=4.0)
    selection = add("fov", "MemV2V_FOVRetrieve", bank=bank, camera=camera, top_k=4, lam=0.5, sphere_radius=1.0)
    user = add("user", "LoadLatent", latent=USER_LATENT)
    context = add("tok", "MemV2V_DynamicTokenize", selection=selection, latent=user, mode="auto", fine_ranks=3,
                  user_kernel="1x2x2", fine_kernel="1x4x4", coarse_kernel="1x8x8", reverse_memory=True,
                  story_gap=5.0, target_frames=0)
    with_memory = memory(base, "mem")

    ksample("base", base)
    ksample("mem_ks", with_memory)
    merged_sampler("merged", base)

    noise = add("noise", "RandomNoise", noise_seed=7)
    select = add("select", "KSamplerSelect", sampler_name="euler")
    for name, model in (("sca_base", base), ("sca_mem", with_memory)):
        guider = add(f"{name}_guider", "CFGGuider", model=model, positive=pos, negative=neg, cfg=5.0)
        sigmas = add(f"{name}_sigmas", "BasicScheduler", model=model, scheduler="simple", steps=STEPS, denoise=1.0)
        samples = add(f"{name}_sca", "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=select,
                      sigmas=sigmas, latent_image=empty)
        add(f"{name}_save", "SaveLatent", samples=samples, filename_prefix=f"memtest/{name}")

    lora = add("lora", "LoraLoaderModelOnly", model=unet, lora_name=LORA, strength_model=1.0)
    lora_base = add("lora_ms", "ModelSamplingSD3", model=lora, shift=8.0)
    ksample("lora_base", lora_base)
    ksample("lora_mem", memory(lora_base, "lora_memory"))

    ksample("cw_base", windows(base, "cw_plain"))
    ksample("cw_mem", windows(with_memory, "cw_after_memory"))
    ksample("cw_mem_first", memory(windows(base, "cw_before"), "mem_after_cw"))
    merged_sampler("cw_merged", windows(base, "cw_for_sampler"))
    return nodes


@pytest.fixture(scope="module")
def composition(host):
    g = torch.Generator().manual_seed(11)
    bank = MemoryBank.open(host.output_path(f"memory_banks/{BANK}"), create=True)
    for i, preset in enumerate(BANK_PRESETS):
        bank.add(torch.randn(SHAPE, generator=g), latent_format="wan21", camera=preset_trajectory(preset, 9).c2w,
                 prompt=f"turn {i + 1}: {preset}", turn=i + 1)
    save_file({"latent_tensor": torch.randn(SHAPE, generator=g), "latent_format_version_0": torch.tensor([])},
              str(host.server.base_dir / "input" / USER_LATENT))
    lora = make_lora(host.server.base_dir / LORA, dim=128)
    host.server.add_model("loras", lora)
    result = host.run(build_prompt(Path(host.assets["dit"]).name))
    latents = {}
    for node_id, ui in result.outputs.items():
        if node_id.endswith("_save"):
            item = ui["latents"][0]
            path = host.server.output_dir / item.get("subfolder", "") / item["filename"]
            latents[node_id[: -len("_save")]] = load_file(str(path))["latent_tensor"]
    return result, latents


def differ(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_every_branch_saves_a_finite_latent_of_the_target_shape(composition):
    _, latents = composition
    expected = {"base", "mem_ks", "merged", "sca_base", "sca_mem", "lora_base", "lora_mem", "cw_base", "cw_mem",
                "cw_mem_first", "cw_merged"}
    assert set(latents) == expected
    for name, latent in latents.items():
        assert list(latent.shape) == SHAPE, name
        assert torch.isfinite(latent).all(), name


def test_memory_changes_the_ksampler_result(composition):
    _, latents = composition
    assert differ(latents["mem_ks"], latents["base"]) > 1e-3


def test_merged_dit_sampler_equals_apply_memory_plus_ksampler(composition):
    result, latents = composition
    assert torch.equal(latents["merged"], latents["mem_ks"])
    text = "\n".join(result.outputs["merged_mds"]["text"])
    assert f"{STEPS} model calls with memory" in text
    assert "block 1:" in text and "responsiveness" in text  # the merge block ranked frames from the model's q/k
    assert "merge 50% of memory frames" in text


def test_memory_works_under_sampler_custom_advanced(composition):
    _, latents = composition
    assert differ(latents["sca_mem"], latents["sca_base"]) > 1e-3
    # same noise, sampler and schedule: the custom sampling path gives KSampler's result exactly
    assert torch.equal(latents["sca_mem"], latents["mem_ks"])


def test_memory_chains_after_a_lora_loader(composition, host):
    _, latents = composition
    assert differ(latents["lora_base"], latents["base"]) > 1e-3, "the LoRA should change the model"
    assert differ(latents["lora_mem"], latents["lora_base"]) > 1e-3, "memory on top of the LoRA"
    assert differ(latents["lora_mem"], latents["mem_ks"]) > 1e-3, "the LoRA still acts with memory applied"
    assert "lora key not loaded" not in host.server.log_text()


def test_memory_works_inside_wan_context_windows(composition, host):
    result, latents = composition
    assert differ(latents["cw_mem"], latents["cw_base"]) > 1e-3
    assert differ(latents["cw_mem"], latents["mem_ks"]) > 1e-4, "windows change the computation"
    assert torch.equal(latents["cw_mem_first"], latents["cw_mem"]), "node order must not matter"
    assert "Using context windows 2 for 3 frames" in host.server.log_text()
    text = "\n".join(result.outputs["cw_merged_mds"]["text"])
    assert f"{2 * STEPS} model calls with memory" in text  # one call per window per step


def test_nodes_show_budget_and_settings(composition):
    result, _ = composition
    budget = "\n".join(result.outputs["tok"]["text"])
    assert "user: 1x2x2" in budget and "memory #1" in budget and "memory #4" in budget
    assert "1x4x4" in budget and "1x8x8" in budget and "with every stream at 1x2x2" in budget
    summary = "\n".join(result.outputs["mem"]["text"])
    assert summary.startswith("memory: 5 streams")
