"""Segment descriptors and segment retrieval: ranking rules, bank-level source handling, and a real video that
returns to an earlier scene."""

import logging
import math

import pytest
import torch

from video_frames import decode

from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.retrieval.descriptors import (SegmentDescriptor, describe_segment, format_segment_scores, rank_segments,
                                     score_segments, segment_descriptor, select_segments)
from memv2v_core.retrieval.embedders import ColorHistogramEmbedder, EncodeImageEmbedder
from memv2v_core.segments import plan_segments, split_segment

logger = logging.getLogger(__name__)


def unit(*values) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def add_segment(bank, index, descriptor=None, source_id="video-a", extra=None):
    latent = torch.full((1, 16, 2, 4, 4), float(index)) + torch.rand(1, 16, 2, 4, 4)  # distinct content
    return bank.add(latent, latent_format="wan21", descriptor=descriptor, segment_index=index, source_id=source_id,
                    extra=extra)


@pytest.fixture
def bank(tmp_path):
    return MemoryBank.open(tmp_path / "bank", create=True)


# -- descriptors --------------------------------------------------------------------------------------------------

def test_descriptor_is_the_mean_of_normalised_frame_embeddings():
    embeddings = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    assert torch.allclose(segment_descriptor(embeddings), torch.tensor([0.5, 0.5]))
    scaled = embeddings * torch.tensor([[10.0], [0.1]])  # a frame's scale does not weigh it more
    assert torch.allclose(segment_descriptor(scaled), segment_descriptor(embeddings))


@pytest.mark.parametrize("bad, words", [(torch.zeros(0, 4), "at least one frame"), (torch.zeros(4), "[frames, dim]"),
                                        (torch.tensor([[1.0, math.nan]]), "NaN")])
def test_descriptor_refuses_bad_embeddings(bad, words):
    with pytest.raises(ValueError) as error:
        segment_descriptor(bad)
    assert words in str(error.value)


# -- ranking ------------------------------------------------------------------------------------------------------

CANDIDATES = [("e0", 0, unit(1, 0, 0)), ("e1", 1, unit(0.6, 0.8, 0)), ("e2", 2, unit(0, 1, 0)),
              ("e3", 3, unit(0, 0, 1))]


def test_the_previous_segment_comes_first_then_the_most_similar():
    ranked = rank_segments(unit(1, 0.1, 0), CANDIDATES, current_index=4, top_k=4)
    assert [entry for entry, _ in ranked] == ["e3", "e0", "e1", "e2"]
    assert ranked[0][1] == pytest.approx(0.0, abs=1e-7)  # the previous segment leads despite the lowest score
    assert ranked[1][1] == pytest.approx(1 / math.sqrt(1.01))


def test_top_k_keeps_the_previous_segment_and_the_best_matches():
    assert [e for e, _ in rank_segments(unit(1, 0.1, 0), CANDIDATES, 4, top_k=2)] == ["e3", "e0"]
    assert rank_segments(unit(1, 0.1, 0), CANDIDATES, 4, top_k=0) == []
    with pytest.raises(ValueError, match="top_k=-1"):
        rank_segments(unit(1, 0, 0), CANDIDATES, 4, top_k=-1)


def test_without_recent_first_the_ranking_is_by_similarity_only():
    ranked = rank_segments(unit(1, 0.1, 0), CANDIDATES, 4, top_k=4, recent_first=False)
    assert [e for e, _ in ranked] == ["e0", "e1", "e2", "e3"]


def test_only_earlier_segments_count_and_the_newest_edit_of_a_segment_wins():
    candidates = CANDIDATES + [("e1-again", 1, unit(0.8, 0.6, 0)), ("later", 5, unit(1, 0, 0))]
    ranked = rank_segments(unit(1, 0, 0), candidates, current_index=3, top_k=10)
    assert [e for e, _ in ranked] == ["e2", "e0", "e1-again"]  # e3 and "later" are not before segment 3


def test_a_previous_segment_without_descriptor_still_leads_and_others_without_are_left_out():
    candidates = [("e0", 0, None), ("e1", 1, unit(1, 0)), ("e2", 2, None)]
    ranked = rank_segments(unit(1, 0), candidates, current_index=3, top_k=4)
    assert ranked[0][0] == "e2" and math.isnan(ranked[0][1])
    assert [e for e, _ in ranked] == ["e2", "e1"]
    scores = score_segments(unit(1, 0), candidates, 3, top_k=4)
    assert [(s.entry_id, s.rank, s.previous) for s in scores] == [("e2", 1, True), ("e1", 2, False),
                                                                  ("e0", None, False)]


def test_an_embedder_of_another_size_is_refused():
    with pytest.raises(ValueError) as error:
        rank_segments(unit(1, 0), CANDIDATES, 4, top_k=4)
    message = str(error.value)
    assert "2-value descriptors" in message and "3-value" in message and "embedder" in message


# -- bank-level selection -----------------------------------------------------------------------------------------

def test_select_segments_reads_descriptors_from_the_bank(bank):
    ids = [add_segment(bank, i, d) for i, (_, _, d) in enumerate(CANDIDATES)]
    result = select_segments(bank, "video-a", 4, SegmentDescriptor(unit(1, 0.1, 0), "test"), top_k=3)
    assert result.selection.mode == "edit" and result.selection.bank is bank
    assert result.selection.entry_ids == [ids[3], ids[0], ids[1]]
    first = result.selection.items[0]
    assert first.details["previous"] == 1.0 and first.details["segment_index"] == 3.0
    table = format_segment_scores(result)
    assert "(previous, always first)" in table and ids[2] in table and "3 of 4 earlier segments selected" in table


def test_segments_of_other_source_videos_are_ignored_with_a_note(bank):
    mine = add_segment(bank, 0, unit(1, 0))
    add_segment(bank, 0, unit(1, 0), source_id="video-b")
    result = select_segments(bank, "video-a", 1, unit(1, 0), top_k=4)
    assert result.selection.entry_ids == [mine]
    assert any("other source videos ('video-b')" in note for note in result.notes)


def test_a_bank_holding_only_another_videos_segments_is_refused_past_segment_0(bank):
    add_segment(bank, 0, unit(1, 0), source_id="video-b")
    with pytest.raises(ValueError) as error:
        select_segments(bank, "video-a", 1, unit(1, 0))
    assert "'video-a'" in str(error.value) and "'video-b'" in str(error.value)
    assert len(select_segments(bank, "video-a", 0, unit(1, 0)).selection) == 0  # a new video starts here: fine


def test_an_empty_source_id_is_refused_when_the_bank_mixes_videos(bank):
    add_segment(bank, 0, unit(1, 0), source_id="video-a")
    add_segment(bank, 0, unit(0, 1), source_id="video-b")
    with pytest.raises(ValueError, match=r"source_id is empty .* \('video-a', 'video-b'\)"):
        select_segments(bank, "", 1, unit(1, 0))


def test_an_embedder_of_another_size_than_the_stored_descriptors_is_refused(bank):
    add_segment(bank, 0, torch.rand(768), extra={"embedder": "clip_vision:Dinov2Model"})
    with pytest.raises(ValueError) as error:
        select_segments(bank, "video-a", 1, SegmentDescriptor(torch.rand(512), "open_clip:ViT-B-32:x.bin"))
    message = str(error.value)
    assert message.startswith("embedder:") and "512" in message and "768" in message
    assert "open_clip:ViT-B-32:x.bin" in message and "clip_vision:Dinov2Model" in message


# -- embedder identity ---------------------------------------------------------------------------------------------

class Encoder:
    """Two encoders with the same output size (4) and different weights: their descriptors live in unrelated spaces."""

    def __init__(self, seed):
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(3, 4)
        self.image_size = 224

    def encode_image(self, image):
        return {"image_embeds": self.model(image.mean(dim=(1, 2)))}


def _clip(seed):
    return torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(seed))


def test_a_descriptor_records_its_embedders_identity_and_size():
    embedder = EncodeImageEmbedder(Encoder(0))
    descriptor = describe_segment(embedder, _clip(0), 0, "video-a")
    assert descriptor.embedder_id == f"{embedder.identity.key}|dim=4"
    assert descriptor.bank_extra() == {"embedder": "clip_vision:Linear", "embedder_id": descriptor.embedder_id}
    assert describe_segment(ColorHistogramEmbedder(), _clip(0)).embedder_id.startswith("fallback-colour-histogram|")


def test_another_embedder_of_the_same_size_is_refused(bank):
    first, other = EncodeImageEmbedder(Encoder(0)), EncodeImageEmbedder(Encoder(1))
    stored = describe_segment(first, _clip(0), 0, "video-a")
    entry = add_segment(bank, 0, stored.vector, extra=stored.bank_extra())
    query = describe_segment(other, _clip(1), 1, "video-a")
    assert query.dim == stored.dim and query.embedder == stored.embedder  # same size, same class name
    with pytest.raises(ValueError) as error:
        select_segments(bank, "video-a", 1, query)
    message = str(error.value)
    assert message.startswith("embedder:") and f"segment 0 (entry {entry})" in message
    assert query.embedder_id in message and stored.embedder_id in message
    assert "other weights" in message and "Connect the embedder the earlier segments were described with" in message
    # The same embedder is accepted, with no note about identities.
    result = select_segments(bank, "video-a", 1, describe_segment(first, _clip(1), 1, "video-a"))
    assert result.selection.entry_ids == [entry] and not any("identity" in note for note in result.notes)
    # score_segments applies the same rule to descriptors passed directly.
    with pytest.raises(ValueError, match="other weights"):
        score_segments(query, [("e0", 0, stored)], 1)


def test_another_kind_of_embedder_of_the_same_size_is_refused(bank):
    fallback = describe_segment(ColorHistogramEmbedder(), _clip(0), 0, "video-a")
    add_segment(bank, 0, fallback.vector, extra=fallback.bank_extra())
    same_size = SegmentDescriptor(torch.rand(fallback.dim), "clip_vision:Dinov2Model", 1, "video-a",
                                  embedder_id=f"clip_vision|Dinov2Model(518px)|dim={fallback.dim}")
    with pytest.raises(ValueError, match="another kind of model"):
        select_segments(bank, "video-a", 1, same_size)


def test_descriptors_stored_without_identity_are_compared_by_size_with_a_note(bank):
    """Banks written before identities were recorded stay usable: the extra holds only the embedder's name."""
    old = add_segment(bank, 0, unit(1, 0, 0, 0), extra={"embedder": "clip_vision:Linear"})
    query = describe_segment(EncodeImageEmbedder(Encoder(0)), _clip(0), 1, "video-a")
    result = select_segments(bank, "video-a", 1, query)
    assert result.selection.entry_ids == [old]
    assert any("1 stored descriptors carry no embedder identity" in note for note in result.notes)
    with pytest.raises(ValueError, match="4-value descriptors"):  # sizes are still checked
        select_segments(bank, "video-a", 1, describe_segment(ColorHistogramEmbedder(), _clip(0), 1, "video-a"))


def test_a_missing_previous_segment_is_noted(bank):
    add_segment(bank, 0, unit(1, 0))
    result = select_segments(bank, "video-a", 2, unit(1, 0))
    assert len(result.selection) == 1 and any("segment 1 (the previous one) is not in the bank" in n
                                              for n in result.notes)


# -- a real video that returns to an earlier scene ----------------------------------------------------------------

def test_the_segment_of_the_same_scene_ranks_right_after_the_previous_one(shared_data, bank):
    """Segments: video 4 (street), 9 (corridor), 10 (office), 7 (desert), then video 4 again."""
    folder = shared_data / "recammaster" / "videos"
    clip = {n: decode(str(folder / f"{n}.mp4"), 96, 93 if n == 4 else 33) for n in (4, 9, 10, 7)}
    video = torch.cat([clip[4][:33], clip[9][:33], clip[10][:33], clip[7][:33], clip[4][60:93]])
    plan = plan_segments(video.shape[0], 33, 0)
    assert len(plan) == 5
    embedder = ColorHistogramEmbedder()
    descriptors = [describe_segment(embedder, split_segment(video, i, 33, 0).frames, i, "returning")
                   for i in range(len(plan))]
    ids = [add_segment(bank, i, d.vector, source_id="returning", extra=d.bank_extra())
           for i, d in enumerate(descriptors[:4])]

    result = select_segments(bank, "returning", 4, descriptors[4], top_k=4)
    similarity = {s.segment_index: s.similarity for s in result.scores}
    logger.info("similarity of segment 4 (video 4 again) to segments 0-3: %s", similarity)
    print("\n" + format_segment_scores(result))
    assert result.selection.entry_ids[:2] == [ids[3], ids[0]]  # previous first, then the same scene
    assert similarity[0] > 0.9
    assert similarity[0] > max(similarity[1], similarity[2], similarity[3]) + 0.3


def test_candidates_restrict_the_selection_to_the_entries_a_run_used(bank):
    # Run A made segments 0 and 1; run B (other settings) then made newer edits of both. A resumed must remember
    # its own, not B's newer ones (the default, for Segment Retrieve, still takes the newest edit).
    a0, a1 = add_segment(bank, 0, unit(1, 0)), add_segment(bank, 1, unit(0, 1))
    b0, b1 = add_segment(bank, 0, unit(1, 0)), add_segment(bank, 1, unit(0, 1))
    assert select_segments(bank, "video-a", 2, unit(1, 0), top_k=4).selection.entry_ids == [b1, b0]
    own = select_segments(bank, "video-a", 2, unit(1, 0), top_k=4, candidates={0: a0, 1: a1})
    assert own.selection.entry_ids == [a1, a0]
    assert any("2 edits of earlier segments that this run did not use" in note for note in own.notes)
    assert select_segments(bank, "video-a", 2, unit(1, 0), top_k=4, candidates={0: a0}).selection.entry_ids == [a0]
