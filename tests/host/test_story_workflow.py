"""The shipped StoryMem workflow (converted from its UI file) runs a 4-shot story through the real server: a cut, an
MI2V shot, an MM2V shot and another MI2V shot, one queue run each, on tiny Wan 2.2 I2V A14B-layout experts (36 input
channels) with a tiny LoRA in StoryMem's PEFT release layout.

Test adaptations of the shipped graph: tiny models, demo conditioning instead of umt5, the built-in colour histogram
instead of CLIP Vision (no small CLIP exists), 16x16 pixels (the VAE dominates the time), 17 frames, 3 steps split 1 + 2 between the experts, a
memory budget of 4 with a sink of 2 (so shot 4 needs the sink + window rule), and keyframe thresholds that keep
3 keyframes per shot on noise frames (1.0: every frame counts as different, none as a duplicate). Bad shots are
refused by Story Conditioning before sampling.

The last tests run the nodes' glue in ComfyUI's Python (story_scripts/story_nodes_check.py): Story Conditioning gives
exactly the official latents and mask from images for every mode, with and without memory, and refuses bad input;
Story Memory Select's relevance modes rank by the rule with stand-in CLIP models (no real CLIP pair is test-sized).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from memv2v_cli import graph
from memv2v_cli.authoring.specs_story import TITLES
from memv2v_cli.demo import setup as demo_setup
from memv2v_cli.host import comfy_host
from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.story import story_shots

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = REPO_ROOT / "workflows" / "memv2v_story_storymem.json"
SIZE, LENGTH, STEPS, SWITCH = 16, 17, 3, 1
BUDGET, SINK = 4, 2
BANK, STORY = "story_test", "lighthouse"
SHOTS = [("cut", "a lighthouse keeper climbs the stairs"), ("MI2V", "he reaches the lamp room"),
         ("MM2V", "he lights the lamp"), ("MI2V", "the beam sweeps over the sea")]
KEPT_FRAMES = {"cut": LENGTH, "MI2V": LENGTH - 1, "MM2V": LENGTH - 5}  # the official pipeline's video[:, 1:] / [:, 5:]


@pytest.fixture(scope="module")
def story_models(host) -> dict[str, str]:
    assets = demo_setup.build_assets("demo.models", host.server.comfyui, Path(host.assets["dit"]).parent,
                                     "--with", "i2v_high", "--with", "i2v_low", "--with", "storymem_lora")
    for kind in ("i2v_high", "i2v_low"):
        host.server.add_model("diffusion_models", Path(assets[kind]))
    host.server.add_model("loras", Path(assets["storymem_lora"]))
    return {kind: Path(assets[kind]).name for kind in ("i2v_high", "i2v_low", "storymem_lora")}


def _one(prompt: dict, class_type: str | None = None, title: str | None = None) -> str:
    found = graph.find_nodes(prompt, class_type, title=title) if title else graph.find_nodes(prompt, class_type)
    assert len(found) == 1, f"expected one {class_type or title} in the shipped workflow, found {found}"
    return found[0]


def adapt_for_test(prompt: dict, models: dict[str, str], vae: str) -> dict:
    prompt = copy.deepcopy(prompt)
    high, low = (_one(prompt, title=t) for t in ("Load High-Noise Expert", "Load Low-Noise Expert"))
    prompt[high]["inputs"]["unet_name"], prompt[low]["inputs"]["unet_name"] = models["i2v_high"], models["i2v_low"]
    for node_id in graph.find_nodes(prompt, "MemV2V_StoryMemLoraLoader"):
        prompt[node_id]["inputs"].update(lora_name=models["storymem_lora"], rank=4, alpha=4.0)
    prompt[_one(prompt, "VAELoader")]["inputs"]["vae_name"] = vae
    del prompt[_one(prompt, "CLIPLoader")]
    for node_id in graph.find_nodes(prompt, "CLIPTextEncode"):
        prompt[node_id] = {"class_type": "MemV2VDemo_TextConditioning", "_meta": prompt[node_id]["_meta"],
                           "inputs": {"text": prompt[node_id]["inputs"]["text"], "tokens": 16}}
    del prompt[_one(prompt, "CLIPVisionLoader")]
    prompt["histogram"] = {"class_type": "MemV2V_EmbedderLoad", "_meta": {"title": "Histogram"},
                           "inputs": {"file": "(built-in colour histogram, no weights)", "architecture": "ViT-B-32"}}
    for title in (TITLES["memory"], TITLES["keyframes"]):
        inputs = prompt[_one(prompt, title=title)]["inputs"]
        del inputs["clip_vision"]
        inputs["embedder"] = ["histogram", 0]
    prompt[_one(prompt, title=TITLES["memory"])]["inputs"].update(budget=BUDGET, sink=SINK)
    prompt[_one(prompt, title=TITLES["keyframes"])]["inputs"].update(threshold=1.0, duplicate_threshold=1.0)
    prompt[_one(prompt, title=TITLES["mode"])]["inputs"].update(width=SIZE, height=SIZE, length=LENGTH)
    prompt[_one(prompt, title=TITLES["steps"])]["inputs"]["value"] = STEPS
    prompt[_one(prompt, title=TITLES["switch"])]["inputs"]["value"] = SWITCH
    prompt[_one(prompt, title=TITLES["bank"])]["inputs"]["name"] = BANK
    prompt[_one(prompt, title=TITLES["story_id"])]["inputs"]["value"] = STORY
    prompt[_one(prompt, "SaveVideo")]["inputs"].update(filename_prefix="memv2v/story_test", format="mp4",
                                                       codec="h264")
    return prompt


def shot_prompt(prompt: dict, index: int, mode: str, text: str) -> dict:
    prompt = copy.deepcopy(prompt)
    prompt[_one(prompt, title=TITLES["shot_index"])]["inputs"]["value"] = index
    prompt[_one(prompt, title=TITLES["prompt"])]["inputs"]["value"] = text
    prompt[_one(prompt, title=TITLES["mode"])]["inputs"]["mode"] = mode
    prompt[_one(prompt, title=TITLES["seed"])]["inputs"]["value"] = 42 + index
    return prompt


@pytest.fixture(scope="module")
def story(host, story_models, checks_process):
    ui = json.loads(WORKFLOW.read_text())
    prompt = adapt_for_test(graph.ui_to_api(ui, host.object_info), story_models, Path(host.assets["vae"]).name)
    runs, seconds = [], []
    for index, (mode, text) in enumerate(SHOTS):
        started = time.perf_counter()
        runs.append(host.run(shot_prompt(prompt, index, mode, text), timeout=600))
        seconds.append(time.perf_counter() - started)
    print(f"\nstory workflow: {len(SHOTS)} shots, seconds per shot: {[round(s, 1) for s in seconds]}")
    return {"prompt": prompt, "runs": runs, "bank": MemoryBank.open(host.output_path(f"memory_banks/{BANK}"))}


def _text(run, prompt: dict, title: str) -> str:
    return "\n".join(run.outputs[_one(prompt, title=title)]["text"])


def _frames(path: Path) -> tuple[int, int, int]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return len(frames), frames[0].shape[0], frames[0].shape[1]


def test_every_shot_is_stored_with_its_story_fields_and_at_most_3_keyframes(story):
    bank = story["bank"]
    for index, run in enumerate(story["runs"]):
        assert f"story '{STORY}' shot {index} " in _text(run, story["prompt"], "Remember Shot")
    shots = story_shots(bank.entries(), STORY)
    assert [s.extra["shot_index"] for s in shots] == [0, 1, 2, 3]
    assert [s.extra["cut"] for s in shots] == [mode == "cut" for mode, _ in SHOTS]
    assert [s.prompt for s in shots] == [text for _, text in SHOTS]
    # what the two experts really used, read from the graph: the Seed primitive, high-noise expert first
    assert [s.seed for s in shots] == [42 + index for index in range(len(SHOTS))]
    assert all([(st["class_type"], st["seed"], st["add_noise"]) for st in s.sampler["stages"]] == [
        ("KSamplerAdvanced", s.seed, "enable"), ("KSamplerAdvanced", s.seed, "disable")] for s in shots)
    for entry in shots:
        assert list(entry.latent_shape) == [1, 16, (LENGTH - 1) // 4 + 1, SIZE // 8, SIZE // 8]  # memory trimmed
        assert entry.has("keyframes")
        count, height, width, channels = entry.shapes["keyframes"]
        assert 1 <= count <= 3 and (height, width, channels) == (SIZE, SIZE, 3)
    assert list(shots[3].parents)  # provenance: the shots its memory came from


def test_each_shot_video_has_the_official_frame_count(story, host):
    for run, (mode, _) in zip(story["runs"], SHOTS):
        videos = [f for f in run.output_files() if f.endswith(".mp4")]
        assert len(videos) == 1
        assert _frames(host.server.output_dir / videos[0]) == (KEPT_FRAMES[mode], SIZE, SIZE)


def test_memory_grows_and_shot_4_sees_the_sink_and_the_window(story):
    bank, prompt, runs = story["bank"], story["prompt"], story["runs"]
    counts = [entry.shapes["keyframes"][0] for entry in story_shots(bank.entries(), STORY)]
    stored = sum(counts[:3])
    assert stored > BUDGET, f"only {stored} keyframes before shot 4: the test needs more than the budget {BUDGET}"
    table = _text(runs[3], prompt, TITLES["memory"])
    rows = [line.split() for line in table.splitlines() if line.strip().startswith("#")]
    chosen = [int(row[0][1:]) for row in rows]
    expected = list(range(SINK)) + list(range(stored - (BUDGET - SINK), stored))  # pipeline.py L248-249
    assert chosen == expected, table
    assert [row[-2] for row in rows] == ["sink"] * SINK + ["window"] * (BUDGET - SINK), table
    assert _text(runs[3], prompt, TITLES["mode"]).startswith(f"MI2V: {BUDGET} memory keyframes")
    # earlier shots: everything stored fits the budget, so they see it all
    for shot in range(3):
        seen = sum(counts[:shot])
        assert _text(runs[shot], prompt, TITLES["mode"]).startswith(f"{SHOTS[shot][0]}: {min(seen, BUDGET)} memory"), \
            _text(runs[shot], prompt, TITLES["mode"])


def test_continued_shots_take_the_previous_shots_last_frames(story):
    prompt, runs = story["prompt"], story["runs"]
    assert _one(prompt, title="Previous Shot") not in runs[0].outputs  # lazy: a cut decodes no previous shot
    for shot in (1, 2, 3):
        assert f"of shot {shot - 1} " in _text(runs[shot], prompt, "Previous Shot")
    mode_text = _text(runs[2], prompt, TITLES["mode"])
    assert f"drop 5 decoded frames -> {LENGTH - 5} frames" in mode_text
    assert "no aesthetic gate ran" in _text(runs[0], prompt, TITLES["keyframes"])


def _refused(host, prompt: dict) -> str:
    with pytest.raises(comfy_host.PromptFailed) as failed:
        host.run(prompt, timeout=300)
    error = next(p for kind, p in failed.value.result.messages if kind == "execution_error")
    assert error["node_type"] == "MemV2V_StoryConditioning", error  # refused before any sampler ran
    return error["exception_message"]


def test_bad_shots_are_refused_before_sampling(host, story):
    before = len(story["bank"].ids())
    first = shot_prompt(story["prompt"], 0, "MI2V", "a new story cannot continue")
    first[_one(first, title=TITLES["story_id"])]["inputs"]["value"] = "another story"
    assert "this is the first shot of the story" in _refused(host, first)  # Previous Shot found nothing

    over = shot_prompt(story["prompt"], 3, "MI2V", "too many memories")
    over[_one(over, title=TITLES["mode"])]["inputs"]["max_memories"] = 2
    assert f"{BUDGET} keyframes but max_memories is 2" in _refused(host, over)

    t2v = shot_prompt(story["prompt"], 3, "MI2V", "a text-to-video expert")
    t2v[_one(t2v, title="Load High-Noise Expert")]["inputs"]["unet_name"] = Path(host.assets["dit"]).name
    assert "takes 16 channels for 16-channel latents, not 36" in _refused(host, t2v)
    story["bank"].refresh()
    assert len(story["bank"].ids()) == before


# --- the nodes' glue in ComfyUI's Python (story_scripts/story_nodes_check.py; one process for both parts) ---------
@pytest.fixture(scope="module")
def checks_process(host, tmp_path_factory):
    """Started before the story runs, so the two overlap where there are cores for both."""
    script = Path(__file__).resolve().parent / "story_scripts" / "story_nodes_check.py"
    process = subprocess.Popen([sys.executable, str(script), "--tmp", str(tmp_path_factory.mktemp("story-nodes")),
                                "--vae", host.assets["vae"]], cwd=host.server.comfyui, env=comfy_host.subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def checks(checks_process) -> dict:
    stdout, stderr = checks_process.communicate(timeout=600)
    assert checks_process.returncode == 0, f"story_nodes_check.py failed:\n{stdout[-4000:]}\n{stderr[-4000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def relevance(checks) -> dict:
    return checks["relevance"]


@pytest.fixture(scope="module")
def conditioning(checks) -> dict:
    return checks["conditioning"]


def _best(scores: list[float], count: int, start: int = 0) -> list[int]:
    return sorted(sorted(range(start, len(scores)), key=lambda i: -scores[i])[:count])


def test_relevance_ranks_by_caption_and_last_shot_similarity(relevance):
    reference, runs = relevance["reference"], relevance["runs"]
    assert runs["relevance"]["indices"] == _best(reference, 3)
    assert runs["relevance"]["scores"] == pytest.approx([reference[i] for i in runs["relevance"]["indices"]],
                                                        abs=1e-3)
    assert runs["hybrid"]["indices"] == [0, 1] + _best(reference, 2, start=2)
    assert runs["hybrid"]["reasons"] == ["sink", "sink", "relevance", "relevance"]
    assert runs["before_shot_2"]["indices"] == _best(relevance["reference_before_2"], 3)  # shots 0-1 only
    assert runs["image_only"]["indices"] == _best(relevance["image_only"], 3)
    assert "image similarity to the last shot's keyframes only (no clip connected)" in runs["image_only"]["table"]
    assert relevance["crops"] == [False]  # whole frames squashed, as StoryMem's CLIP preprocessing
    assert relevance["images_equal"]  # sink_window within budget: every stored keyframe, in story order


def test_relevance_refuses_text_and_images_from_different_models(relevance):
    errors = relevance["errors"]
    assert "caption embedding has 7 values but the image embeddings have 6" in errors["wrong_dim"]
    assert "no pooled CLIP embedding" in errors["no_pooled"]
    assert "connect clip_vision" in errors["no_embedder"]


def test_the_node_gives_the_official_latents_and_mask_for_every_mode(conditioning):
    cases = conditioning["cases"]
    assert sorted(cases) == sorted(f"{m}-{n}" for m in ("cut", "MI2V", "MM2V") for n in (0, 3))
    for name, case in cases.items():
        mode, memory = name.split("-")
        assert case["latent_max_diff"] == 0.0 and case["mask_equal"] and case["same_on_both"], (name, case)
        assert case["empty_shape"][2] == case["reference_frames"] == int(memory) + 3, (name, case)
        assert (case["trim"], case["drop"], case["cut"]) == (int(memory), KEPT_FRAMES["cut"] - KEPT_FRAMES[mode],
                                                             mode == "cut")
        assert case["patched_both"]  # both experts carry the RoPE shift
    assert conditioning["lazy"] == {"cut": [], "MI2V": ["previous_frames"], "MM2V": ["previous_frames"]}


def test_the_node_names_the_input_and_the_fix(conditioning):
    errors = conditioning["errors"]
    assert "4 colour channels" in errors["rgba"] and "Drop the alpha channel" in errors["rgba"]
    assert "3 keyframes but max_memories is 2" in errors["too_many"]
    assert "has 3 frame(s) but MM2V continues from the last 5" in errors["short_previous"]
    assert "first shot" in errors["first_shot"]
    assert "48-channel latents" in errors["wan22_vae"] and "wan_2.1_vae" in errors["wan22_vae"]
