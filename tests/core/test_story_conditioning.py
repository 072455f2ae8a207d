"""StoryMem conditioning through ComfyUI's Wan I2V fields equals the official one (cut, MI2V, MM2V; M = 0, 1, 3).

The reference is written from the official formulas (StoryMem ``wan/memory2video.py`` L403-454, research notes
storymem.md item 1.4-1.7): a pixel-frame mask whose first M+1 entries are repeated 4x, folded into 4 channels per
latent frame, and y = cat([msk, cat([memory, u], time)], channels); temporal ids from the corrected
``model_memory.py``: cat(arange(-M*5, 0, 5), arange(0, f_total - M)). What ComfyUI's model receives is emulated from
ComfyUI 0.3.64's ``WAN21.concat_cond`` mask path (``comfy/model_base.py`` L1129-1148) and ``_apply_model``'s channel
concat (L170-171); ``tests/host/test_story_concat_host.py`` runs the real ComfyUI code. The latent normalisation
(``process_latent_in``, the same mean/std the official VAE encode applies) is left out here: it acts on the latent
channels only, identically in both.
"""

from __future__ import annotations

import pytest
import torch

from memv2v_core.story import given_latent_frames, story_temporal_ids, storymem_inputs

PIXEL_FRAMES = 81
LATENT_FRAMES = (PIXEL_FRAMES - 1) // 4 + 1
H, W = 4, 6
MODES = {"cut": 0, "mi2v": 1, "mm2v": 5}


def official_y(memory: torch.Tensor, u: torch.Tensor, mode: str) -> torch.Tensor:
    """memory [16, M, h, w], u [16, 21, h, w] -> y [20, M+21, h, w] (official L403-415, L453-454; no fix_mem)."""
    m, (lat_h, lat_w) = memory.shape[1], memory.shape[-2:]
    msk = torch.ones(1, PIXEL_FRAMES + m, lat_h, lat_w)
    msk[:, m:] = 0
    if mode == "mi2v":
        msk[:, m] = 1
    elif mode == "mm2v":
        msk[:, m:m + 5] = 1
    msk = torch.concat([torch.repeat_interleave(msk[:, 0:m + 1], repeats=4, dim=1), msk[:, m + 1:]], dim=1)
    msk = msk.view(1, msk.shape[1] // 4, 4, lat_h, lat_w)
    msk = msk.transpose(1, 2)[0]
    y = torch.concat([memory, u], dim=1)
    return torch.concat([msk, y])


def official_temporal_ids(memory_size: int, total_frames: int) -> torch.Tensor:
    """Corrected ``model_memory.py`` (MEMORY_ROPE_SHIFT = 5): memories at -5M .. -5, the shot at 0 .. f-M-1."""
    return torch.cat([torch.arange(-memory_size * 5, 0, 5), torch.arange(0, total_frames - memory_size)]).float()


def comfy_model_input(noise: torch.Tensor, concat_latent_image: torch.Tensor, concat_mask: torch.Tensor):
    """What ComfyUI 0.3.64 hands the Wan DiT for a 36-channel model (concat_cond's mask path, then _apply_model)."""
    extra_channels = 36 - noise.shape[1]
    image = concat_latent_image  # common_upscale to noise H x W is the identity here (asserted below)
    assert image.shape[-2:] == noise.shape[-2:]
    assert extra_channels == image.shape[1] + 4  # so concat_cond takes the mask path
    mask = concat_mask
    if mask.shape[1] != 4:
        mask = torch.mean(mask, dim=1, keepdim=True)
    mask = 1.0 - mask
    assert mask.shape[-2:] == noise.shape[-2:]
    if mask.shape[-3] < noise.shape[-3]:
        mask = torch.nn.functional.pad(mask, (0, 0, 0, 0, 0, noise.shape[-3] - mask.shape[-3]), value=0)
    if mask.shape[1] == 1:
        mask = mask.repeat(1, 4, 1, 1, 1)
    mask = mask.expand(noise.shape[0], -1, -1, -1, -1)  # resize_to_batch_size from batch 1
    c_concat = torch.cat((mask, image), dim=1)
    return torch.cat([noise, c_concat], dim=1)


@pytest.mark.parametrize("memory_size", [0, 1, 3])
@pytest.mark.parametrize("mode", list(MODES))
def test_what_the_model_receives_equals_the_official_conditioning(memory_size, mode):
    generator = torch.Generator().manual_seed(10 * memory_size + MODES[mode])
    memory = torch.randn(16, memory_size, H, W, generator=generator)
    u = torch.randn(16, LATENT_FRAMES, H, W, generator=generator)
    latent, mask = storymem_inputs(memory[None], u[None], MODES[mode])
    assert latent.shape == (1, 16, memory_size + LATENT_FRAMES, H, W)
    assert mask.shape == (1, 1, memory_size + LATENT_FRAMES, H, W)

    noise = torch.randn(1, 16, memory_size + LATENT_FRAMES, H, W, generator=generator)
    received = comfy_model_input(noise, latent, mask)
    y = official_y(memory, u, mode)
    assert torch.equal(received[0, 16:], y)
    assert torch.equal(received[0, :16], noise[0])

    ids = story_temporal_ids(memory_size, LATENT_FRAMES)
    assert torch.equal(ids, official_temporal_ids(memory_size, memory_size + LATENT_FRAMES))
    assert ids.dtype == torch.float32


def test_the_reference_tells_the_modes_apart():
    """The equality above has teeth: the official masks of the three modes differ, and only in the shot's first
    two latent frames."""
    memory, u = torch.zeros(16, 2, H, W), torch.zeros(16, LATENT_FRAMES, H, W)
    masks = {mode: official_y(memory, u, mode)[:4, :, 0, 0] for mode in MODES}
    assert masks["cut"][:, :2].eq(1).all() and masks["cut"][:, 2:].eq(0).all()
    assert masks["mi2v"][:, :3].eq(1).all() and masks["mi2v"][:, 3:].eq(0).all()
    assert masks["mm2v"][:, :4].eq(1).all() and masks["mm2v"][:, 4:].eq(0).all()
    # the pack's mask for another mode would not pass
    latent, wrong = storymem_inputs(memory[None], u[None], 1)
    received = comfy_model_input(torch.zeros(1, 16, 2 + LATENT_FRAMES, H, W), latent, wrong)
    assert not torch.equal(received[0, 16:20], official_y(memory, u, "mm2v")[:4])


def test_given_latent_frames_per_mode():
    assert [given_latent_frames(n) for n in (0, 1, 5)] == [0, 1, 2]


def test_no_memory_accepts_none_and_an_empty_latent():
    u = torch.randn(1, 16, 3, H, W)
    a = storymem_inputs(None, u, 1)
    b = storymem_inputs(torch.zeros(1, 16, 0, H, W), u, 1)
    assert torch.equal(a[0], u) and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[1][0, 0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]


def test_temporal_ids_with_another_gap():
    assert story_temporal_ids(2, 3, gap=2.5).tolist() == [-5.0, -2.5, 0.0, 1.0, 2.0]


@pytest.mark.parametrize("memory, shot, frames, words", [
    (torch.zeros(1, 16, 2, H, W), torch.zeros(1, 16, 21, H, W), 2, ["condition_pixel_frames (2)", "0", "1", "5"]),
    (torch.zeros(1, 16, 2, H, W), torch.zeros(1, 16, 21, H, W), True, ["condition_pixel_frames (True)"]),
    (torch.zeros(1, 16, 2, H, W + 2), torch.zeros(1, 16, 21, H, W), 1, ["memory_latents", "4x8", "resize"]),
    (torch.zeros(1, 48, 2, H, W), torch.zeros(1, 16, 21, H, W), 1, ["channels", "same VAE"]),
    (torch.zeros(2, 16, 1, H, W), torch.zeros(1, 16, 21, H, W), 1, ["batch 2", "frame axis"]),
    (torch.zeros(16, 2, H, W), torch.zeros(1, 16, 21, H, W), 1, ["memory_latents", "[batch, channels, frames"]),
    (None, torch.zeros(1, 16, 1, H, W), 5, ["1 latent frame", "condition_pixel_frames=5", "whole shot"]),
    (None, torch.zeros(1, 16, 21, H, W, dtype=torch.int64), 0, ["shot_latent", "float video latent"]),
    (None, "latent", 0, ["shot_latent is str"]),
])
def test_bad_inputs_are_refused_by_name(memory, shot, frames, words):
    with pytest.raises(ValueError) as error:
        storymem_inputs(memory, shot, frames)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("args, words", [
    ((-1, 21), ["memory_frames (-1)"]), ((2, 0), ["shot_frames (0)"]), ((2, 21, 0), ["gap", "> 0"]),
    ((1.5, 21), ["memory_frames (1.5)"]),
])
def test_bad_temporal_id_arguments_are_refused(args, words):
    with pytest.raises(ValueError) as error:
        story_temporal_ids(*args)
    for word in words:
        assert word in str(error.value)
