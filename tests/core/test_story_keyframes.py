"""StoryMem keyframe extraction: real frames (a cut between two videos, a static clip), and the official loop's
semantics on controlled embeddings.

Embedder on real frames: the pack's ColorHistogramEmbedder (weight-free colour histogram + layout thumbnail), since
the official CLIP ViT-B/32 weights cannot be downloaded here. It separates the shared ReCamMaster videos clearly
(cross-video similarity <= 0.67, within a video >= 0.85 to the first frame).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from memv2v_core.retrieval.embedders import ColorHistogramEmbedder
from memv2v_core.story import select_keyframes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video_frames import decode  # noqa: E402

EMBEDDER = ColorHistogramEmbedder()


def video(shared_data: Path, name: str, frames: int = 20) -> torch.Tensor:
    return decode(str(shared_data / "recammaster" / "videos" / f"{name}.mp4"), 64, frames)


def test_a_clip_of_two_videos_has_keyframes_on_both_sides_of_the_change(shared_data):
    first, second = video(shared_data, "4"), video(shared_data, "10")
    clip = torch.cat([first, second])
    result = select_keyframes(clip, EMBEDDER)
    boundary = first.shape[0]
    assert any(i < boundary for i in result.indices) and any(i >= boundary for i in result.indices)
    assert result.indices[0] == 0 and boundary in result.indices  # the first frame after the cut is the new keyframe
    assert 1 <= len(result.indices) <= 3 and not result.gate_ran
    assert result.embeddings.shape == (len(result.indices), EMBEDDER.dim)


def test_a_static_clip_yields_one_keyframe(shared_data):
    clip = video(shared_data, "7", 1).repeat(30, 1, 1, 1)
    result = select_keyframes(clip, EMBEDDER)
    assert result.indices == (0,) and result.threshold == pytest.approx(0.9)


def test_keyframes_already_stored_are_skipped(shared_data):
    first, second = video(shared_data, "4"), video(shared_data, "10")
    stored = EMBEDDER.embed_frames(first[5:6])  # the bank holds a frame of the first video
    result = select_keyframes(torch.cat([first, second]), EMBEDDER, stored_embeddings=stored)
    assert result.candidates[0] == 0 and 0 not in result.indices
    assert result.indices == tuple(i for i in result.candidates if i >= first.shape[0])
    assert result.duplicates[0][:2] == (0, 0) and result.duplicates[0][2] > 0.9
    assert "skipped as stored" in result.summary()


def test_many_changes_lower_the_threshold_until_at_most_three_remain(shared_data):
    names = ["4", "7", "9", "10", "4", "7"]
    clip = torch.cat([video(shared_data, n, 6) for n in names])
    result = select_keyframes(clip, EMBEDDER)
    assert len(result.indices) <= 3 and result.threshold < 0.9
    # the threshold stopped at the first value that leaves at most three: one step higher leaves more
    higher = select_keyframes(clip, EMBEDDER, threshold=result.threshold + 0.01, max_keyframes=len(clip))
    assert len(higher.indices) > 3 and higher.threshold == result.threshold + 0.01


# --- the official loop, on controlled embeddings -------------------------------------------------------------------

def official_keyframes(embeddings, low_quality, threshold=0.9, stored=()):
    """StoryMem's ``save_keyframes`` / ``extract_keyframe_indices`` control flow with cosine similarity of the given
    embeddings as ``frame_sim_func`` and ``low_quality`` as ``is_low_quality``; written from extract_keyframes.py."""
    def sim(a, b):
        return float(F.cosine_similarity(a, b, dim=0))

    def extract(threshold):
        first = 0
        while low_quality[first]:
            first += 1
            if first >= len(embeddings):
                return []
        indices, last = [first], embeddings[first]
        for i in range(2, len(embeddings)):
            if sim(last, embeddings[i]) < threshold and not low_quality[i]:
                indices.append(i)
                last = embeddings[i]
        return indices

    while True:
        indices = extract(threshold)
        if len(indices) > 3:
            threshold -= 0.01
        else:
            break
    kept = [i for i in indices if not any(sim(embeddings[i], m) > 0.9 for m in stored)]
    return kept, indices, threshold


def walk(seed: int, frames: int = 40, dim: int = 6, step: float = 0.35) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.cumsum(torch.randn(frames, dim, generator=generator) * step, 0) + torch.randn(dim, generator=generator)


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_official_loop_on_random_walks(seed):
    embeddings = walk(seed)
    frames = torch.zeros(len(embeddings), 2, 2, 3)
    generator = torch.Generator().manual_seed(100 + seed)
    scores = torch.rand(len(embeddings), generator=generator) * 4 + 1.5 if seed % 2 else None  # gate on odd seeds
    stored = walk(1000 + seed, frames=3) if seed % 3 == 0 else torch.zeros(0, 6)
    stored = torch.cat([stored, embeddings[::17]]) if seed % 4 == 0 else stored
    low = [False] * len(embeddings) if scores is None else [float(s) < 3.0 for s in scores]

    result = select_keyframes(frames, lambda f: embeddings, stored_embeddings=stored,
                              quality_gate=None if scores is None else (lambda f: scores))
    kept, indices, threshold = official_keyframes(embeddings, low, stored=list(stored))
    assert result.indices == tuple(kept) and result.candidates == tuple(indices)
    assert result.threshold == threshold  # the same repeated subtraction, bit for bit
    assert result.gate_ran == (scores is not None)


def angles(*degrees) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def test_frame_one_is_never_a_candidate_and_the_reference_moves_with_each_keyframe():
    embeddings = angles(0, 90, 10, 20, 30, 40)  # sims to the last keyframe: frame 2 0.985, 3 0.94, 4 0.866
    result = select_keyframes(torch.zeros(6, 2, 2, 3), lambda f: embeddings)
    assert result.indices == (0, 4)  # frame 1 (orthogonal) is skipped by the official range(2, T); 5 is near 4


def test_the_threshold_drops_by_one_hundredth_until_three_remain():
    embeddings = angles(0, 0, 30, 60, 90, 120)  # 30 degrees apart: cos 0.866
    result = select_keyframes(torch.zeros(6, 2, 2, 3), lambda f: embeddings)
    assert result.candidates == (0, 3, 5)
    assert result.threshold == pytest.approx(0.86) and result.threshold < math.cos(math.radians(30))


def test_the_quality_gate_picks_the_first_good_frame_and_can_reject_everything():
    embeddings = angles(0, 50, 100, 150, 200)
    frames = torch.zeros(5, 2, 2, 3)
    calls = []

    def gate(batch):
        calls.append(batch.shape[0])
        return [1.0, 2.0, 5.0, 2.9, 4.0]

    result = select_keyframes(frames, lambda f: embeddings, quality_gate=gate)
    assert result.indices == (2, 4) and result.gate_ran and result.quality == (1.0, 2.0, 5.0, 2.9, 4.0)
    assert calls == [5]  # one batched call
    none = select_keyframes(frames, lambda f: embeddings, quality_gate=lambda f: torch.zeros(5))
    assert none.indices == () and none.gate_ran and "below the quality threshold" in none.summary()


def test_an_embedder_object_with_embed_frames_works_too():
    frames = torch.rand(4, 8, 8, 3)
    assert select_keyframes(frames, EMBEDDER).indices == select_keyframes(frames, EMBEDDER.embed_frames).indices


@pytest.mark.parametrize("kwargs, words", [
    (dict(frames=torch.zeros(4, 8, 8)), ["frames", "[frames, height, width, 3]"]),
    (dict(max_keyframes=0), ["max_keyframes (0)", ">= 1"]),
    (dict(step=0.0), ["step (0.0)", "> 0"]),
    (dict(embedder=lambda f: torch.zeros(3, 5)), ["returned [3, 5] for 4 frames", "one embedding per frame"]),
    (dict(embedder="clip"), ["embedder is a str", "embed_frames"]),
    (dict(stored_embeddings=torch.zeros(2, 7)), ["stored_embeddings is [2, 7]", "[stored keyframes, 5]"]),
    (dict(quality_gate=lambda f: [1.0, 2.0]), ["quality_gate returned 2 scores for 4 frames"]),
])
def test_bad_inputs_are_refused_by_name(kwargs, words):
    arguments = dict(frames=torch.zeros(4, 8, 8, 3), embedder=lambda f: torch.randn(f.shape[0], 5)) | kwargs
    frames, embedder = arguments.pop("frames"), arguments.pop("embedder")
    with pytest.raises(ValueError) as error:
        select_keyframes(frames, embedder, **arguments)
    for word in words:
        assert word in str(error.value)
