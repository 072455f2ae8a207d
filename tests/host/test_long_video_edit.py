"""Long text-guided video editing through the real server: the shipped workflow (converted from its UI file) edits a
real 150-frame video segment by segment with a tiny LucyEdit-shaped Wan 2.2 DiT (96 in = 48 noisy + 48 source,
48 out), the real Wan 2.2 VAE class (random weights) and a tiny DINOv2-layout clip vision model (ComfyUI's own
Dinov2Model and ClipVisionModel), one queue run per segment; plus the editing nodes' errors.

Test adaptations of the shipped graph: tiny models, demo conditioning instead of umt5, the demo clip vision loader
instead of Load CLIP Vision (which builds only full-size DINOv2), 32x32 pixels (a 2x2 latent,
so every memory kernel is 1x2x2), 33-frame segments with overlap 8, 2 steps; the index is set per run, as the
frontend's "increment" control does. The stitch branch runs on the first and last runs only (the Wan 2.2 VAE
decodes a 33-frame segment in ~10 s on CPU).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import av
import pytest
import torch

from host_prompts import one_node as _one, tiny_edit_graph
from memv2v_cli import graph
from memv2v_cli.demo import setup as demo_setup
from memv2v_cli.host import comfy_host
from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.segments import plan_segments

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = REPO_ROOT / "workflows" / "memv2v_long_video_edit.json"
VIDEO = "7.mp4"  # the shared ReCamMaster clip with 150 frames
FRAMES, LENGTH, OVERLAP, SIZE = 150, 33, 8, 32
BANK = "edit_test_long"
STITCH_BRANCH = ("MemV2V_StitchSegments",)


@pytest.fixture(scope="module")
def edit_models(host) -> dict[str, str]:
    """The tiny LucyEdit-shaped DiT, the random Wan 2.2 VAE and two tiny DINOv2 files of the same layout (other
    seeds), cached beside the other test assets."""
    cache = Path(host.assets["dit"]).parent
    assets = demo_setup.build_assets("demo.models", host.server.comfyui, cache, "--with", "lucy_dit",
                                     "--with", "wan22_vae")
    assets.update(demo_setup.build_assets("demo.clip_vision", host.server.comfyui, cache))
    host.server.add_model("diffusion_models", Path(assets["lucy_dit"]))
    host.server.add_model("vae", Path(assets["wan22_vae"]))
    for kind in ("dinov2", "dinov2_other"):
        host.server.add_model("clip_vision", Path(assets[kind]))
    return {"dit": Path(assets["lucy_dit"]).name, "vae": Path(assets["wan22_vae"]).name,
            "wan21_dit": Path(assets["dit"]).name, "dinov2": Path(assets["dinov2"]).name,
            "dinov2_other": Path(assets["dinov2_other"]).name}


def adapt_for_test(prompt: dict, models: dict[str, str], bank: str) -> dict:
    """The shipped edit graph with tiny models, demo conditioning, tiny pixels and short segments."""
    prompt = tiny_edit_graph(prompt, models, VIDEO)
    for class_type in ("MemV2V_SplitSegments", "MemV2V_StitchSegments"):
        prompt[_one(prompt, class_type)]["inputs"].update(segment_length=LENGTH, overlap=OVERLAP)
    prompt[_one(prompt, "MemV2V_SplitSegments")]["inputs"].update(width=SIZE, height=SIZE)
    prompt[_one(prompt, "MemV2V_DynamicTokenize")]["inputs"].update(fine_kernel="1x2x2", coarse_kernel="1x2x2")
    prompt[_one(prompt, "KSampler")]["inputs"]["steps"] = 2
    prompt[_one(prompt, "MemV2V_BankLoad")]["inputs"]["name"] = bank
    prompt[_one(prompt, "MemV2V_StitchSegments")]["inputs"].update(filename_prefix="memv2v/edit_test",
                                                                   file_format="mp4")
    return prompt


def without_stitch(prompt: dict) -> dict:
    return {k: v for k, v in prompt.items() if v["class_type"] not in STITCH_BRANCH}


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def edited(host, edit_models, shared_data):
    shutil.copy(shared_data / "recammaster" / "videos" / VIDEO, host.server.base_dir / "input" / VIDEO)
    ui = json.loads(WORKFLOW.read_text())
    prompt = adapt_for_test(graph.ui_to_api(ui, host.object_info), edit_models, BANK)
    split = _one(prompt, "MemV2V_SplitSegments")
    count = len(plan_segments(FRAMES, LENGTH, OVERLAP))
    runs, seconds = [], []
    for index in range(count):
        prompt[split]["inputs"]["index"] = index
        started = time.perf_counter()
        runs.append(host.run(prompt if index in (0, count - 1) else without_stitch(prompt), timeout=900))
        seconds.append(time.perf_counter() - started)
    print(f"\nlong video edit: {count} segments, seconds per queue run: {[round(s, 1) for s in seconds]}")
    return {"ui": ui, "runs": runs, "count": count, "seconds": seconds}


def test_shipped_workflow_saves_the_index_as_increment(edited):
    split = next(n for n in edited["ui"]["nodes"] if n["type"] == "MemV2V_SplitSegments")
    assert "increment" in split["widgets_values"]


def test_shipped_workflow_describes_segments_with_clip_vision(host, edited):
    """The default descriptor is ComfyUI's CLIP Vision (DINOv2), not the colour-histogram fallback."""
    prompt = graph.ui_to_api(edited["ui"], host.object_info)
    retrieve = prompt[_one(prompt, "MemV2V_SegmentRetrieve")]["inputs"]
    assert retrieve["clip_vision"][0] == _one(prompt, "CLIPVisionLoader") and "embedder" not in retrieve
    assert not graph.find_nodes(prompt, "MemV2V_EmbedderLoad")
    assert "dinov2" in prompt[_one(prompt, "CLIPVisionLoader")]["inputs"]["clip_name"]
    assert prompt[_one(prompt, "UNETLoader")]["inputs"]["unet_name"] == "lucy-edit-dev-cui-fp16.safetensors"


def test_the_bank_records_the_clip_vision_encoders_identity(host, edited, edit_models):
    bank = MemoryBank.open(host.output_path(f"memory_banks/{BANK}"))
    extras = [bank.entry(i).extra for i in bank.ids()]
    assert {e["embedder"] for e in extras} == {f"clip_vision:Dinov2Model:{edit_models['dinov2']}"}  # with the file
    identities = {e["embedder_id"] for e in extras}
    assert len(identities) == 1  # one encoder for the whole video
    identity = identities.pop()
    assert identity.startswith("clip_vision|Dinov2Model(518px)|layout=") and "|weights=" in identity
    assert identity.endswith("|dim=32")  # the tiny model's width
    retrieve = _one(graph.ui_to_api(edited["ui"], host.object_info), "MemV2V_SegmentRetrieve")
    assert identity in _ui_text(edited["runs"][-1], retrieve)


def test_another_clip_vision_model_of_the_same_size_is_refused(host, edited, edit_models):
    """Segment 1 of the edited video again, described by the other tiny DINOv2 file (same layout, other weights)."""
    bank = MemoryBank.open(host.output_path(f"memory_banks/{BANK}"))
    source_id = bank.entry(bank.ids()[0]).source_id
    other = {"class_type": "MemV2VDemo_CLIPVisionLoader", "inputs": {"clip_name": edit_models["dinov2_other"]}}
    prompt = _scores_only(_retrieve_prompt(BANK, source_id, 1, other))
    message = _error_of(host, prompt)
    for part in ("clip_vision: clip_vision:Dinov2Model", "the same architecture with other weights",
                 "even of the same size", "Connect the embedder the earlier segments were described with"):
        assert part in message, message
    prompt["enc"]["inputs"]["clip_name"] = edit_models["dinov2"]  # the file the bank was made with: accepted
    host.run(prompt)


def test_every_queue_run_edits_one_segment_into_the_bank(host, edited):
    bank = MemoryBank.open(host.output_path(f"memory_banks/{BANK}"))
    entries = [bank.entry(i) for i in bank.ids()]
    assert [e.segment_index for e in entries] == list(range(edited["count"]))
    assert len({e.source_id for e in entries}) == 1 and entries[0].source_id.startswith("src-")
    for entry in entries:
        assert entry.latent_format == "wan22"
        assert entry.extra["source_frames"] == FRAMES  # through Split's frames output and the descriptor
        assert entry.has("descriptor") and bank.load_tensor(entry.entry_id, "descriptor").numel() > 0
        assert list(bank.load_latent(entry.entry_id).shape[-4:]) == [48, 9, 2, 2]  # 33 frames at 32 px
    for previous, entry in zip(entries, entries[1:]):
        assert entry.parents[0] == previous.entry_id  # the previous segment is always the first memory


def _ui_text(run, node_id: str) -> str:
    texts = [data["output"].get("text", [""])[0] for kind, data in run.messages
             if kind == "executed" and data.get("node") == node_id and data.get("output")]
    assert texts, f"node {node_id} reported nothing"
    return texts[-1]


def test_apply_memory_reports_the_earlier_segments_as_memory_streams(host, edited):
    """Memories are 48-channel edited latents on a 96-channel patch embedding (source half zero-padded)."""
    prompt = graph.ui_to_api(edited["ui"], host.object_info)
    apply_memory = _one(prompt, "MemV2V_ApplyMemory")
    assert _ui_text(edited["runs"][0], apply_memory).startswith("memory: 0 streams")
    assert _ui_text(edited["runs"][1], apply_memory).startswith("memory: 1 streams")
    assert _ui_text(edited["runs"][-1], apply_memory).startswith("memory: 4 streams")  # top_k 4 of 5 earlier


def test_memory_of_earlier_segments_changes_the_edit(host, edited, edit_models):
    """Segments 0 and 1 again, same seed, each into a new bank: segment 0 (no memory either way) must come out
    bit-identical, segment 1 (no memory now, segment 0 as memory before) must differ."""
    with_memory = MemoryBank.open(host.output_path(f"memory_banks/{BANK}"))
    by_index = {with_memory.entry(i).segment_index: with_memory.load_latent(i) for i in with_memory.ids()}
    for index in (0, 1):  # each into its own new bank, so neither finds an earlier segment
        name = f"{BANK}_alone_{index}"
        prompt = without_stitch(adapt_for_test(graph.ui_to_api(edited["ui"], host.object_info), edit_models, name))
        prompt[_one(prompt, "MemV2V_SplitSegments")]["inputs"]["index"] = index
        host.run(prompt, timeout=900)
        alone = MemoryBank.open(host.output_path(f"memory_banks/{name}"))
        latent = alone.load_latent(alone.ids()[0])
        if index == 0:
            assert torch.equal(latent, by_index[0])  # the control: no memory either way, same edit
        else:
            assert (latent - by_index[1]).abs().max() > 0  # segment 0 as memory changed segment 1's edit


def test_stitched_video_has_the_source_frame_count(host, edited):
    first, last = edited["runs"][0], edited["runs"][-1]
    for run in (first, last):
        videos = [f for f in run.output_files(host.server.base_dir) if f.endswith(".mp4")]
        assert len(videos) == 1
        assert _frames(Path(videos[0])) == FRAMES


# --- bad input: each error names the input, the value and the fix --------------------------------------------------
def _error_of(host, prompt: dict) -> str:
    with pytest.raises((comfy_host.PromptFailed, comfy_host.PromptRejected)) as caught:
        host.run(prompt, timeout=600)
    error = caught.value
    if isinstance(error, comfy_host.PromptRejected):
        return json.dumps(error.details)
    return str(error)


def _split_prompt(frames: int, length: int, overlap: int, size: int = SIZE) -> dict:
    return {
        "img": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": frames,
                                                       "color": 0x336699}},
        "split": {"class_type": "MemV2V_SplitSegments", "inputs": {"image": ["img", 0], "segment_length": length,
                                                                   "overlap": overlap, "index": 0}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["split", 0]}},
    }


@pytest.mark.parametrize("frames, length, overlap, expected", [
    (40, 32, 4, ["segment_length=32", "4k+1", "Use 29 or 33"]),
    (40, 33, 33, ["overlap=33", "segment_length=33", "use e.g. 8"]),
    (20, 33, 8, ["20 frames", "segment_length=33", "segment_length=17 or less"]),
])
def test_segment_errors(host, frames, length, overlap, expected):
    message = _error_of(host, _split_prompt(frames, length, overlap))
    for part in expected:
        assert part in message, message


FALLBACK = {"class_type": "MemV2V_EmbedderLoad", "inputs": {
    "file": "(fallback) colour histogram - no weights, not an image encoder", "architecture": "ViT-B-32"}}


def _retrieve_prompt(bank: str, source_id: str, index: int, encoder: dict | None = FALLBACK) -> dict:
    """Segment Retrieve on a flat segment; ``encoder``: an Embedder Load or a CLIP Vision loader node (or None)."""
    prompt = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 9, "color": 7}},
        "bank": {"class_type": "MemV2V_BankLoad", "inputs": {"name": bank}},
        "ret": {"class_type": "MemV2V_SegmentRetrieve", "inputs": {
            "bank": ["bank", 0], "segment": ["img", 0], "segment_index": index, "source_id": source_id, "top_k": 4,
            "recent_first": True}},
        "tok": {"class_type": "MemV2V_DynamicTokenize", "inputs": {
            "selection": ["ret", 0], "mode": "edit", "fine_ranks": 3, "user_kernel": "1x2x2", "fine_kernel": "1x2x2",
            "coarse_kernel": "1x2x2", "reverse_memory": True, "story_gap": 5.0, "target_frames": 3}},
        "show": {"class_type": "PreviewAny", "inputs": {"source": ["tok", 1]}},
    }
    if encoder is not None:
        prompt["enc"] = copy.deepcopy(encoder)
        socket = "embedder" if encoder["class_type"] == "MemV2V_EmbedderLoad" else "clip_vision"
        prompt["ret"]["inputs"][socket] = ["enc", 0]
    return prompt


def _scores_only(prompt: dict) -> dict:
    """Retrieval alone: its score table is the output (no tokenization)."""
    prompt = {k: v for k, v in prompt.items() if k != "tok"}
    prompt["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["ret", 2]}}
    return prompt


def _bank_with_segment(host, name: str, source_id: str, descriptor_size: int) -> None:
    bank = MemoryBank.open(host.output_path(f"memory_banks/{name}"), create=True)
    bank.add(torch.randn(1, 48, 3, 2, 2), latent_format="wan22", segment_index=0, source_id=source_id,
             descriptor=torch.rand(descriptor_size))


def test_bank_of_another_source_video_is_refused(host):
    _bank_with_segment(host, "edit_test_other_video", "clip-b", 64)
    message = _error_of(host, _retrieve_prompt("edit_test_other_video", "clip-a", 1))
    for part in ("source_id 'clip-a'", "clip-b", "Use the source_id the earlier segments were added with"):
        assert part in message, message


def test_a_source_whose_frame_count_changed_is_refused_and_the_bank_kept(host):
    """Segments stored from a 150-frame video; the source now has 140 (trimmed): Segment Retrieve refuses it before
    sampling, and Bank Add refuses to store an edit described from it; nothing is added."""
    name, source_id = "edit_test_trimmed", "clip-t"
    bank = MemoryBank.open(host.output_path(f"memory_banks/{name}"), create=True)
    bank.add(torch.randn(1, 16, 2, 4, 4), latent_format="wan21", segment_index=0, source_id=source_id,
             descriptor=torch.rand(704), extra={"source_frames": 150})  # 704: the colour histogram's size
    parts = ("source: the video now has 140 frames", f"segments [0] of source_id '{source_id}'",
             "stored from a video of 150 frames", "Load the original video", "the stored segments are kept")
    prompt = _scores_only(_retrieve_prompt(name, source_id, 1))
    prompt["ret"]["inputs"]["source_frames"] = 140
    message = _error_of(host, prompt)
    for part in parts:
        assert part in message, message
    prompt["ret"]["inputs"]["source_frames"] = 150  # the control: the original length is accepted
    host.run(prompt)
    # Bank Add: a descriptor from another (empty) bank's retrieval, stored into this one.
    prompt = _retrieve_prompt(f"{name}_fresh", source_id, 1)
    del prompt["tok"], prompt["show"]
    prompt["ret"]["inputs"]["source_frames"] = 140
    prompt.update({
        "into": {"class_type": "MemV2V_BankLoad", "inputs": {"name": name}},
        "lat": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                    "batch_size": 1}},
        "add": {"class_type": "MemV2V_BankAdd", "inputs": {"bank": ["into", 0], "samples": ["lat", 0],
                                                           "descriptor": ["ret", 1]}},
    })
    message = _error_of(host, prompt)
    assert "(MemV2V_BankAdd)" in message, message  # the empty bank's retrieval found nothing to refuse
    for part in parts:
        assert part in message, message
    assert len(MemoryBank.open(host.output_path(f"memory_banks/{name}"))) == 1


def test_embedder_of_another_size_is_refused(host):
    _bank_with_segment(host, "edit_test_other_embedder", "clip-a", 7)
    message = _error_of(host, _retrieve_prompt("edit_test_other_embedder", "clip-a", 1))
    for part in ("embedder:", "7-value", "Connect the embedder the earlier segments were described with"):
        assert part in message, message


def test_segment_retrieve_needs_an_encoder_and_the_fallback_is_explicit(host):
    """Neither input connected: refused (the histogram is never picked silently). The fallback, chosen by its
    current name or the name older workflows saved, says what it is."""
    message = _error_of(host, _retrieve_prompt("edit_test_no_encoder", "clip-a", 0, encoder=None))
    for part in ("embedder / clip_vision: neither is connected", "Load CLIP Vision", "(fallback) colour histogram"):
        assert part in message, message
    legacy = copy.deepcopy(FALLBACK)
    legacy["inputs"]["file"] = "(built-in colour histogram, no weights)"
    for encoder in (FALLBACK, legacy):
        run = host.run(_scores_only(_retrieve_prompt("edit_test_no_encoder", "clip-a", 0, encoder)))
        texts = [data["output"]["text"][0] for kind, data in run.messages
                 if kind == "executed" and data.get("node") == "enc" and data.get("output")]
        assert texts and texts[0].startswith("fallback:colour-histogram") and "not an image encoder" in texts[0]


def _conditioning_prompt(models: dict[str, str], frames: int, size: int, unet: str | None = None) -> dict:
    prompt = {
        "img": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": frames,
                                                       "color": 0x808080}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": models["vae"]}},
        "pos": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": "make it red", "tokens": 16}},
        "neg": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": "", "tokens": 16}},
        "cond": {"class_type": "MemV2V_EditConditioning", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["vae", 0], "source": ["img", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["cond", 3], "filename_prefix": "edit_test/src"}},
    }
    if unet is not None:
        prompt["unet"] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}}
        prompt["cond"]["inputs"]["model"] = ["unet", 0]
    return prompt


def test_edit_conditioning_refuses_bad_sources(host, edit_models):
    message = _error_of(host, _conditioning_prompt(edit_models, 8, SIZE))
    assert "source: 8 frames" in message and "Use 5 or 9" in message, message
    message = _error_of(host, _conditioning_prompt(edit_models, 5, 40))
    assert "40x40" in message and "16-pixel" in message and "32x32" in message, message


def test_edit_conditioning_refuses_a_model_without_source_channels(host, edit_models):
    message = _error_of(host, _conditioning_prompt(edit_models, 5, SIZE, unet=edit_models["wan21_dit"]))
    assert "model:" in message and "16 input channels" in message and "96" in message, message


def test_source_segment_reaches_the_model_by_channel_concat(host, edit_models):
    """Same seed and instruction, two different source segments: the edits differ, so the source enters the DiT."""
    prompt = {"unet": {"class_type": "UNETLoader", "inputs": {"unet_name": edit_models["dit"],
                                                              "weight_dtype": "default"}}}
    for name, color in (("grey", 0x808080), ("red", 0xFF2020)):
        branch = _conditioning_prompt(edit_models, 5, SIZE, unet=edit_models["dit"])
        branch["img"]["inputs"]["color"] = color
        branch["cond"]["inputs"]["model"] = ["unet", 0]
        del branch["unet"], branch["save"]
        branch = {f"{name}_{k}": {**v, "inputs": {i: ([f"{name}_{x[0]}", x[1]] if isinstance(x, list) and x[0] != "unet"
                                                      else x) for i, x in v["inputs"].items()}}
                  for k, v in branch.items()}
        prompt.update(branch)
        prompt[f"{name}_ks"] = {"class_type": "KSampler", "inputs": {
            "model": ["unet", 0], "positive": [f"{name}_cond", 0], "negative": [f"{name}_cond", 1],
            "latent_image": [f"{name}_cond", 2], "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}}
        prompt[f"{name}_save"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"{name}_ks", 0],
                                                                         "filename_prefix": f"edit_test/concat_{name}"}}
    run = host.run(prompt)
    from safetensors.torch import load_file

    latents = {Path(f).name.split("_")[1]: load_file(f)["latent_tensor"]
               for f in run.output_files(host.server.base_dir) if f.endswith(".latent")}
    assert set(latents) == {"grey", "red"} and latents["grey"].shape == (1, 48, 2, 2, 2)
    assert (latents["grey"] - latents["red"]).abs().max() > 1e-3
