"""Which stored keyframes condition the next shot: StoryMem's sink + window (against the official slice), relevance
(OneStory-style, training-free) and the hybrid; refusals name the input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memv2v_core.story import relevance_scores, select_memories


def official_bank(bank: list, max_memory_size: int, fix: int) -> list:
    """pipeline.py L248-249."""
    if len(bank) > max_memory_size:
        bank = bank[:fix] + bank[-(max_memory_size - fix):]
    return bank


@pytest.mark.parametrize("count", [0, 1, 5, 8, 9, 12, 30])
@pytest.mark.parametrize("max_memories, sink", [(8, 3), (10, 3), (4, 1), (6, 0)])
def test_sink_window_is_the_official_slice(count, max_memories, sink):
    ids = [f"{i // 3:02d}_{i % 3:02d}_keyframe0.jpg" for i in range(count)]
    chosen = select_memories(ids, max_memories=max_memories, sink=sink)
    assert list(chosen.ids) == official_bank(ids, max_memories, sink)
    assert list(chosen.indices) == sorted(chosen.indices) and chosen.stored == count
    if count > max_memories:
        assert chosen.reasons == ("sink",) * sink + ("window",) * (max_memories - sink)
    else:
        assert set(chosen.reasons) <= {"all"}
    assert chosen.scores == (None,) * len(chosen) and chosen.all_scores is None


def test_a_sink_as_large_as_the_budget_leaves_no_window():
    # the official slice bank[-(8 - 8):] would be the whole bank; a window of 0 keyframes is meant
    chosen = select_memories(12, max_memories=3, sink=3)
    assert chosen.indices == (0, 1, 2) and chosen.reasons == ("sink",) * 3


def test_relevance_takes_the_best_scores_in_story_order():
    scores = [0.1, 0.9, 0.3, 0.8, 0.2, 0.7]
    chosen = select_memories(6, mode="relevance", max_memories=3, scores=torch.tensor(scores))
    assert chosen.indices == (1, 3, 5) and chosen.reasons == ("relevance",) * 3
    assert chosen.scores == pytest.approx((0.9, 0.8, 0.7)) and len(chosen.all_scores) == 6
    # equal scores: the more recent keyframe wins
    assert select_memories(4, mode="relevance", max_memories=1, scores=[0.5, 0.5, 0.5, 0.1]).indices == (2,)


def test_hybrid_keeps_the_sink_and_ranks_the_rest():
    scores = [0.0, 0.0, 0.9, 0.1, 0.8, 0.2, 0.95]
    chosen = select_memories(7, mode="hybrid", max_memories=4, sink=2, scores=scores)
    assert chosen.indices == (0, 1, 2, 6) and chosen.reasons == ("sink", "sink", "relevance", "relevance")
    table = chosen.table()
    assert "hybrid: 4 of 7 stored keyframes" in table and "0.950" in table and "keyframe 6" in table


def test_relevance_scores_add_text_and_image_similarity():
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(5, 16, generator=generator)
    caption = torch.randn(16, generator=generator)
    last = torch.randn(2, 16, generator=generator)
    scores = relevance_scores(keys, caption_embedding=caption, last_shot_embeddings=last, text_weight=0.7,
                              image_weight=2.0)
    expected = [0.7 * F.cosine_similarity(k, caption, dim=0)
                + 2.0 * (F.cosine_similarity(k, last[0], dim=0) + F.cosine_similarity(k, last[1], dim=0)) / 2
                for k in keys]
    assert torch.allclose(scores, torch.stack(expected), atol=1e-6)
    # a keyframe that is the caption's direction ranks first on text alone
    keys[3] = caption * 4
    assert int(relevance_scores(keys, caption_embedding=caption).argmax()) == 3
    assert relevance_scores(torch.zeros(0, 16), caption_embedding=caption).shape == (0,)


@pytest.mark.parametrize("kwargs, words", [
    (dict(mode="recent"), ["mode ('recent')", "sink_window"]),
    (dict(sink=9), ["sink (9)", "max_memories (8)"]),
    (dict(max_memories=-1), ["max_memories (-1)"]),
    (dict(mode="relevance"), ["pass scores", "relevance_scores"]),
    (dict(mode="hybrid", scores=[1.0, 2.0]), ["scores has 2 values for 10 stored keyframes"]),
    (dict(stored="abc"), ["stored ('abc')"]),
])
def test_bad_selection_inputs_are_refused_by_name(kwargs, words):
    arguments = dict(stored=10) | kwargs
    with pytest.raises(ValueError) as error:
        select_memories(arguments.pop("stored"), **arguments)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("kwargs, words", [
    (dict(), ["caption_embedding", "last_shot_embeddings", "at least one"]),
    (dict(caption_embedding=torch.zeros(8)), ["caption_embedding is [1, 8]", "[rows, 16]", "same CLIP model"]),
    (dict(caption_embedding=torch.zeros(2, 16)), ["caption_embedding has 2 rows"]),
    (dict(last_shot_embeddings=torch.zeros(3, 4)), ["last_shot_embeddings is [3, 4]"]),
])
def test_bad_relevance_inputs_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as error:
        relevance_scores(torch.randn(4, 16), **kwargs)
    for word in words:
        assert word in str(error.value)
