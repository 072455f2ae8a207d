"""One queue run edits a whole video (Long Video Edit) through the real server: the shipped one-run workflow
(converted from its UI file) edits the real 150-frame 7.mp4 with a tiny LucyEdit-shaped Wan 2.2 DiT, the real Wan 2.2
VAE class (random weights) and a tiny DINOv2-layout clip vision model.

Must show: every segment is edited in one queue run, with progress per segment; a run interrupted through the real
``POST /interrupt`` after the second segment and queued again continues at the first missing segment, and its bank
latents and stitched frames equal an uninterrupted run's bit for bit (CPU); bad sources fail with one clear error and
leave the bank as it was.

Test adaptations of the shipped graph: tiny models, demo conditioning instead of umt5, the demo clip vision loader,
32x32 pixels (a 2x2 latent, so every memory kernel is 1x2x2), 49-frame segments with overlap 8 (4 segments), 2 steps,
lossless output (FFV1 .mkv) so the stitched frames compare exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import pytest
import torch

from host_prompts import one_node as _one, tiny_edit_graph
from memv2v_cli import graph
from memv2v_cli.demo import setup as demo_setup
from memv2v_cli.host import comfy_host
from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.long_edit import LONG_EDIT_KEY
from memv2v_core.segments import plan_segments

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = REPO_ROOT / "workflows" / "memv2v_long_video_edit_all.json"
VIDEO = "7.mp4"  # the shared ReCamMaster clip: 150 frames, 30 fps
FRAMES, LENGTH, OVERLAP, SIZE, STEPS = 150, 49, 8, 32, 2
NODE = "MemV2V_LongVideoEdit"


@pytest.fixture(scope="module")
def models(host) -> dict[str, str]:
    cache = Path(host.assets["dit"]).parent
    assets = demo_setup.build_assets("demo.models", host.server.comfyui, cache, "--with", "lucy_dit",
                                     "--with", "wan22_vae")
    assets.update(demo_setup.build_assets("demo.clip_vision", host.server.comfyui, cache))
    host.server.add_model("diffusion_models", Path(assets["lucy_dit"]))
    host.server.add_model("vae", Path(assets["wan22_vae"]))
    host.server.add_model("clip_vision", Path(assets["dinov2"]))
    return {"dit": Path(assets["lucy_dit"]).name, "vae": Path(assets["wan22_vae"]).name,
            "dinov2": Path(assets["dinov2"]).name}


def adapt(prompt: dict, models: dict[str, str], bank: str, prefix: str) -> dict:
    """The shipped one-run graph with tiny models, demo conditioning, tiny pixels and short segments."""
    prompt = tiny_edit_graph(prompt, models, VIDEO)
    prompt[_one(prompt, "MemV2V_BankLoad")]["inputs"]["name"] = bank
    prompt[_one(prompt, NODE)]["inputs"].update(width=SIZE, height=SIZE, segment_length=LENGTH, overlap=OVERLAP,
                                                steps=STEPS, fine_kernel="1x2x2", coarse_kernel="1x2x2",
                                                filename_prefix=prefix, file_format="mkv-lossless")
    return prompt


def _bank(host, name: str) -> MemoryBank:
    return MemoryBank.open(host.output_path(f"memory_banks/{name}"))


def _video_path(host, run) -> Path:
    videos = [Path(f) for f in run.output_files(host.server.base_dir) if f.endswith(".mkv")]
    assert len(videos) == 1, videos
    return videos[0]


def _decode_all(path: Path) -> tuple[torch.Tensor, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
        return torch.stack(frames), float(stream.average_rate)


def _text(run, node_id: str) -> str:
    texts = [data["output"]["text"][0] for kind, data in run.messages
             if kind == "executed" and data.get("node") == node_id and data.get("output", {}).get("text")]
    assert texts, f"node {node_id} reported nothing"
    return texts[-1]


def _progress(messages, node_id: str, total: int) -> list[int]:
    return [data["value"] for kind, data in messages
            if kind == "progress" and data.get("node") == node_id and data.get("max") == total]


@pytest.fixture(scope="module")
def runs(host, models, shared_data):
    shutil.copy(shared_data / "recammaster" / "videos" / VIDEO, host.server.base_dir / "input" / VIDEO)
    ui = json.loads(WORKFLOW.read_text())
    api = graph.ui_to_api(ui, host.object_info)
    count = len(plan_segments(FRAMES, LENGTH, OVERLAP))
    total = count * STEPS

    whole = adapt(api, models, "long_all_whole", "long_all/whole")
    node = _one(whole, NODE)
    uninterrupted = host.run(whole, timeout=1800)

    resumable = adapt(api, models, "long_all_resumed", "long_all/resumed")
    seen: list[tuple[str, dict]] = []
    sent = []

    def interrupt_after_second_segment(kind: str, data: dict) -> None:
        seen.append((kind, data))
        if (not sent and kind == "progress" and data.get("node") == node and data.get("max") == total
                and data.get("value", 0) >= 2 * STEPS):
            sent.append(data["value"])
            host.client.interrupt()  # the real route, as the frontend's cancel button

    with pytest.raises(comfy_host.PromptFailed) as caught:
        host.client.run(resumable, timeout=1800, on_message=interrupt_after_second_segment)
    interrupted = caught.value.result
    stored_after_interrupt = len(_bank(host, "long_all_resumed"))
    resumed = host.run(resumable, timeout=1800)
    return {"ui": ui, "api": api, "node": node, "count": count, "total": total, "whole": uninterrupted,
            "interrupted": interrupted, "interrupt_messages": seen, "stored_after_interrupt": stored_after_interrupt,
            "resumed": resumed}


def test_one_queue_run_edits_every_segment_with_progress_per_segment(host, runs):
    count, node = runs["count"], runs["node"]
    assert count == 4
    values = _progress(runs["whole"].messages, node, runs["total"])
    for index in range(1, count + 1):
        assert index * STEPS in values, (index, values)  # every segment's last step on the one overall bar
    assert values == sorted(values)
    text = _text(runs["whole"], node)
    assert text.startswith(f"segment {count}/{count} edited, 0 resumed from bank"), text
    for index in range(1, count + 1):
        assert f"segment {index}/{count} edited:" in text, text
    entries = [_bank(host, "long_all_whole").entry(i) for i in _bank(host, "long_all_whole").ids()]
    assert [e.segment_index for e in entries] == list(range(count))
    for previous, entry in zip(entries, entries[1:]):
        assert entry.parents[0] == previous.entry_id  # the previous segment is always the first memory
    assert list(_bank(host, "long_all_whole").load_latent(entries[0].entry_id).shape[-4:]) == [48, 13, 2, 2]


def test_entries_record_true_provenance(host, runs, models):
    bank = _bank(host, "long_all_whole")
    plan = plan_segments(FRAMES, LENGTH, OVERLAP)
    for index, entry_id in enumerate(bank.ids()):
        entry = bank.entry(entry_id)
        assert entry.seed == 42 and entry.latent_format == "wan22"
        stage = entry.sampler["stages"][0]
        assert stage["class_type"] == NODE and stage["steps"] == STEPS and stage["sampler_name"] == "uni_pc"
        assert entry.prompt.startswith("Change the sky")  # the instruction text, read from the graph
        files = {m["file"] for m in entry.provenance["models"]}
        assert {models["dit"], models["vae"], models["dinov2"]} <= files, files
        assert entry.extra[LONG_EDIT_KEY]["window"] == list(plan[index])
        assert entry.extra[LONG_EDIT_KEY]["frames"] == FRAMES
        assert entry.extra["embedder"].startswith("clip_vision:Dinov2Model")
        assert entry.has("descriptor") and entry.source_id.startswith("src-")
        assert bank.load_run(entry_id)["prompt"][runs["node"]]["class_type"] == NODE


def test_stitched_video_keeps_the_source_frames_and_rate(host, runs):
    frames, fps = _decode_all(_video_path(host, runs["whole"]))
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert fps == 30.0


def test_interrupted_run_resumes_at_the_first_missing_segment(host, runs):
    count, node = runs["count"], runs["node"]
    assert runs["interrupted"].status == "execution_interrupted"
    stored = runs["stored_after_interrupt"]
    assert 2 <= stored < count  # interrupted after the second segment, before the last
    partial = list(host.output_path("long_all").glob("*partial*"))
    assert not partial, partial  # the interrupted run left no half-written video
    text = _text(runs["resumed"], node)
    assert text.startswith(f"segment {count}/{count} edited, {stored} resumed from bank"), text
    for index in range(stored):
        assert f"segment {index + 1}/{count} resumed from bank" in text, text
    for index in range(stored, count):
        assert f"segment {index + 1}/{count} edited:" in text, text
    assert len(_bank(host, "long_all_resumed")) == count  # no segment stored twice, none partial


def test_resumed_result_equals_the_uninterrupted_run_bit_for_bit(host, runs):
    whole, resumed = _bank(host, "long_all_whole"), _bank(host, "long_all_resumed")
    assert whole.ids() == resumed.ids()  # same content, same ids
    for entry_id in whole.ids():
        assert torch.equal(whole.load_latent(entry_id), resumed.load_latent(entry_id))
    a, _ = _decode_all(_video_path(host, runs["whole"]))
    b, _ = _decode_all(_video_path(host, runs["resumed"]))
    assert a.shape == b.shape == (FRAMES, SIZE, SIZE, 3)
    differ = [(i, int((x.int() - y.int()).abs().max())) for i, (x, y) in enumerate(zip(a, b)) if not torch.equal(x, y)]
    assert not differ, f"frames that differ (index, max |difference|): {differ}"


def _error(host, prompt: dict) -> str:
    with pytest.raises((comfy_host.PromptFailed, comfy_host.PromptRejected)) as caught:
        host.run(prompt, timeout=600)
    error = caught.value
    return json.dumps(error.details) if isinstance(error, comfy_host.PromptRejected) else str(error)


def _bank_files(host, name: str) -> dict[str, bytes]:
    root = host.output_path(f"memory_banks/{name}")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".lock" not in p.name and ".tmp" not in p.parts}


def test_a_video_shorter_than_one_segment_is_refused_and_the_bank_kept(host, runs, models):
    before = _bank_files(host, "long_all_whole")
    prompt = adapt(runs["api"], models, "long_all_whole", "long_all/short")
    prompt[runs["node"]]["inputs"]["segment_length"] = 153
    message = _error(host, prompt)
    for part in ("segment_length", "150 frames", "fewer than one segment", "segment_length=149 or less"):
        assert part in message, message
    assert _bank_files(host, "long_all_whole") == before


def test_a_file_that_cannot_be_decoded_is_refused_and_the_bank_kept(host, runs, models):
    (host.server.base_dir / "input" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    before = _bank_files(host, "long_all_whole")
    prompt = adapt(runs["api"], models, "long_all_whole", "long_all/broken")
    del prompt[_one(prompt, "LoadVideo")]
    inputs = prompt[runs["node"]]["inputs"]
    del inputs["video"]
    inputs["file"] = "broken.mp4"
    message = _error(host, prompt)
    assert "file:" in message and "broken.mp4" in message and "ffmpeg -i" in message, message
    assert _bank_files(host, "long_all_whole") == before
