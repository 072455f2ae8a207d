"""Segments: window planning, splitting, and stitching back (bit-exact for unedited segments on real videos)."""

import pytest
import torch

from video_frames import decode

from memv2v_core.segments import (BLENDS, blend_weights, check_segment_length, check_source_frames, missing_segments,
                                  plan_segments, source_fingerprint, source_fingerprint_of, split_segment, stitch,
                                  stitch_stream)

VIDEOS = (4, 7, 9, 10)  # ReCamMaster test videos: 102, 150, 93 and 100 frames
SETTINGS = [(33, 0), (33, 8), (33, 24), (49, 16), (81, 8), (81, 24)]  # (segment length, overlap)


@pytest.fixture(scope="module")
def videos(shared_data):
    return {number: decode(str(shared_data / "recammaster" / "videos" / f"{number}.mp4")) for number in VIDEOS}


# -- planning -----------------------------------------------------------------------------------------------------

def test_plan_of_a_93_frame_video_shifts_the_last_window_back():
    assert plan_segments(93, 33, 8) == [(0, 33), (25, 58), (50, 83), (60, 93)]
    assert plan_segments(93, 81, 8) == [(0, 81), (12, 93)]
    assert plan_segments(99, 33, 0) == [(0, 33), (33, 66), (66, 99)]  # tiles exactly: nothing shifted
    assert plan_segments(81, 81, 8) == [(0, 81)]                         # exactly one segment


@pytest.mark.parametrize("num_frames, length, overlap",
                         [(n, length, overlap) for n in (33, 34, 81, 93, 100, 102, 150, 401)
                          for length, overlap in SETTINGS if n >= length])
def test_plan_covers_every_frame_with_vae_valid_windows(num_frames, length, overlap):
    plan = plan_segments(num_frames, length, overlap)
    assert plan[0][0] == 0 and plan[-1][1] == num_frames
    assert all(end - start == length and (end - start - 1) % 4 == 0 for start, end in plan)
    for (start_a, end_a), (start_b, end_b) in zip(plan, plan[1:]):
        assert start_a < start_b <= end_a < end_b          # in order, no gap
        assert end_a - start_b >= overlap                  # at least the asked overlap (the last may have more)
    assert all(end_a - start_b == overlap for (_, end_a), (start_b, _) in zip(plan[:-2], plan[1:-1]))


def test_any_length_is_valid_with_temporal_stride_1():
    assert plan_segments(10, 4, 1, temporal_stride=1) == [(0, 4), (3, 7), (6, 10)]


@pytest.mark.parametrize("length, words", [(80, ["segment_length=80", "4k+1", "77", "81"]),
                                           (32, ["segment_length=32", "29", "33"])])
def test_a_length_the_vae_cannot_take_is_refused_with_the_nearest_valid_ones(length, words):
    with pytest.raises(ValueError) as error:
        check_segment_length(length)
    assert all(word in str(error.value) for word in words)
    with pytest.raises(ValueError, match="4k\\+1"):
        plan_segments(200, length, 8)


def test_an_overlap_as_long_as_the_segment_is_refused():
    with pytest.raises(ValueError, match=r"overlap=33 must be .* less than segment_length=33"):
        plan_segments(100, 33, 33)
    with pytest.raises(ValueError, match="overlap=-1"):
        plan_segments(100, 33, -1)


def test_a_video_shorter_than_one_segment_is_refused_with_a_length_that_fits():
    with pytest.raises(ValueError) as error:
        plan_segments(60, 81, 8)
    message = str(error.value)
    assert "60 frames" in message and "segment_length=81" in message and "segment_length=57" in message


def test_split_returns_the_window_and_refuses_an_index_past_the_end():
    frames = torch.arange(93, dtype=torch.float32).view(93, 1, 1, 1).expand(93, 2, 2, 3)
    part = split_segment(frames, 3, 33, 8)
    assert (part.index, part.count, part.start, part.end) == (3, 4, 60, 93)
    assert torch.equal(part.frames[:, 0, 0, 0], torch.arange(60, 93, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"index=4 is out of range.*4 segments, numbered 0\.\.3"):
        split_segment(frames, 4, 33, 8)


# -- stitching ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, overlap", SETTINGS)
def test_unedited_segments_stitch_back_to_the_exact_source_frames(videos, length, overlap):
    for number, frames in videos.items():
        plan = plan_segments(frames.shape[0], length, overlap)
        segments = [split_segment(frames, i, length, overlap).frames.clone() for i in range(len(plan))]
        for blend in BLENDS:
            stitched = stitch(segments, plan, frames.shape[0], blend)
            assert stitched.shape == frames.shape, (number, blend)
            assert torch.equal(stitched, frames), f"video {number}, {length}/{overlap}, {blend}: not bit-exact"


def test_blend_weights():
    assert blend_weights(3, "linear").tolist() == [0.25, 0.5, 0.75]
    assert blend_weights(3, "ease").tolist() == [0.15625, 0.5, 0.84375]
    assert blend_weights(4, "cut").tolist() == [0.0, 0.0, 1.0, 1.0]
    assert blend_weights(3, "cut").tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="blend='fade' is not one of cut, linear, ease"):
        blend_weights(3, "fade")


@pytest.mark.parametrize("blend, expected", [("linear", [0.25, 0.5, 0.75]), ("ease", [0.15625, 0.5, 0.84375]),
                                             ("cut", [0.0, 1.0, 1.0])])
def test_the_later_segment_takes_over_across_the_overlap(blend, expected):
    plan = plan_segments(7, 5, 3)  # (0, 5), (2, 7): frames 2, 3, 4 are shared
    assert plan == [(0, 5), (2, 7)]
    zeros, ones = torch.zeros(5, 2, 2, 3), torch.ones(5, 2, 2, 3)
    out = stitch([zeros, ones], plan, 7, blend)
    assert out[:, 0, 0, 0].tolist() == [0.0, 0.0] + expected + [1.0, 1.0]


def test_cut_copies_each_side_of_the_overlap_exactly():
    generator = torch.Generator().manual_seed(0)
    plan = plan_segments(41, 33, 25)  # (0, 33), (8, 41): 25 shared frames, the cut after 12 of them
    first, second = torch.rand(33, 4, 4, 3, generator=generator), torch.rand(33, 4, 4, 3, generator=generator)
    out = stitch([first, second], plan, 41, "cut")
    assert torch.equal(out[:20], first[:20]) and torch.equal(out[20:], second[12:])


def test_frames_only_one_segment_covers_come_from_it_when_windows_overlap_threefold():
    generator = torch.Generator().manual_seed(1)
    plan = plan_segments(33, 9, 6)  # step 3: most frames lie in three windows
    segments = [torch.rand(9, 2, 2, 3, generator=generator) for _ in plan]
    for blend in BLENDS:
        out = stitch(segments, plan, 33, blend)
        assert torch.equal(out[:3], segments[0][:3]) and torch.equal(out[-3:], segments[-1][-3:])
        assert out.min() >= 0 and out.max() <= 1  # cross-fades stay within the segments' range


def test_missing_segments_are_listed_or_filled_from_the_source():
    source = torch.rand(93, 8, 8, 3, generator=torch.Generator().manual_seed(2))
    plan = plan_segments(93, 33, 8)
    segments = [source[s:e].clone() for s, e in plan]
    segments[1] = segments[3] = None
    assert missing_segments(segments) == [1, 3]
    with pytest.raises(ValueError, match=r"segments 1, 3 \(of 4, numbered from 0\) are missing"):
        stitch(segments, plan, 93)
    for blend in BLENDS:
        assert torch.equal(stitch(segments, plan, 93, blend, fill=source), source)


def test_a_source_of_another_resolution_is_resized_to_fill_missing_segments():
    edited = [torch.full((5, 4, 6, 3), 0.5), None]
    source = torch.rand(7, 8, 12, 3, generator=torch.Generator().manual_seed(3))
    out = stitch(edited, [(0, 5), (2, 7)], 7, "cut", fill=source)
    assert out.shape == (7, 4, 6, 3)
    assert torch.equal(out[:3], edited[0][:3])
    assert torch.allclose(out[5:], source[5:].view(2, 4, 2, 6, 2, 3).mean((2, 4)), atol=1e-6)  # 2x2 area average


def test_stitch_refuses_segments_that_do_not_fit_their_windows():
    plan = [(0, 5), (2, 7)]
    with pytest.raises(ValueError, match=r"segment 1 has shape \[4, 2, 2, 3\] but window 2\.\.7 needs \[5, 2, 2, 3\]"):
        stitch([torch.zeros(5, 2, 2, 3), torch.zeros(4, 2, 2, 3)], plan, 7)
    with pytest.raises(ValueError, match="segment 1 has shape"):
        stitch([torch.zeros(5, 2, 2, 3), torch.zeros(5, 3, 2, 3)], plan, 7)
    with pytest.raises(ValueError, match="got 1 segments for a plan of 2 windows"):
        stitch([torch.zeros(5, 2, 2, 3)], plan, 7)
    with pytest.raises(ValueError, match=r"not valid for a 8-frame video \(it spans 0\.\.7"):
        stitch([torch.zeros(5, 2, 2, 3)] * 2, plan, 8)
    with pytest.raises(ValueError, match=r"window 4\.\.9 does not follow 0\.\.3"):
        stitch([torch.zeros(3, 2, 2, 3), torch.zeros(5, 2, 2, 3)], [(0, 3), (4, 9)], 9)


def test_source_fingerprint_tells_videos_apart(videos):
    ids = {number: source_fingerprint(frames) for number, frames in videos.items()}
    assert len(set(ids.values())) == len(VIDEOS)
    assert source_fingerprint(videos[4].clone()) == ids[4]
    assert source_fingerprint(videos[4][:-1]) != ids[4]
    assert all(i.startswith("src-") and len(i) == 16 for i in ids.values())


def test_segments_given_as_callables_are_produced_once_in_order_and_stitch_the_same():
    video = torch.rand(40, 4, 6, 3)
    plan = plan_segments(40, 17, 4)
    calls = []

    def producer(index, start, end):
        def produce():
            calls.append(index)
            return video[start:end].clone()
        return produce

    lazy = [producer(i, start, end) for i, (start, end) in enumerate(plan)]
    lazy[1] = None  # a missing one, filled from the source
    eager = [video[start:end].clone() for start, end in plan]
    eager[1] = None
    for blend in BLENDS:
        calls.clear()
        assert torch.equal(stitch(lazy, plan, 40, blend, fill=video), stitch(eager, plan, 40, blend, fill=video))
        assert calls == [i for i in range(len(plan)) if i != 1]  # each produced once, in plan order


def test_the_fingerprint_of_a_video_read_frame_by_frame_is_the_one_of_its_tensor(videos):
    """Same id whether the frames are in memory or read one at a time from a file; and still the 0.x formula."""
    import hashlib

    import torch.nn.functional as F

    frames = videos[9]
    picks = torch.linspace(0, frames.shape[0] - 1, 16).round().long().unique()  # the formula banks were made with
    thumbs = F.adaptive_avg_pool2d(frames[picks].float().permute(0, 3, 1, 2), (8, 8))
    digest = hashlib.sha256(repr(tuple(frames.shape)).encode())
    digest.update((thumbs.clamp(0, 1) * 255).round().to(torch.uint8).contiguous().numpy().tobytes())
    reads = []
    by_frame = source_fingerprint_of(tuple(frames.shape), lambda i: reads.append(i) or frames[i:i + 1])
    assert source_fingerprint(frames) == by_frame == "src-" + digest.hexdigest()[:12]
    assert reads == picks.tolist()


STREAM_CASES = [(60, 33, 8), (150, 33, 8), (93, 33, 24), (40, 17, 0), (33, 33, 8), (81, 17, 16)]


@pytest.mark.parametrize("num_frames, length, overlap", STREAM_CASES)
@pytest.mark.parametrize("blend", BLENDS)
def test_streaming_stitch_emits_exactly_what_stitch_returns_holding_two_segments(num_frames, length, overlap, blend):
    torch.manual_seed(num_frames + length)
    plan = plan_segments(num_frames, length, overlap)
    source = torch.rand(num_frames, 3, 5, 3)
    edited = [torch.rand(end - start, 3, 5, 3) for start, end in plan]
    edited[len(plan) // 2] = None  # one missing, taken from the source
    chunks, held = [], []

    def emit(frames):
        chunks.append(frames.clone())
        held.append(frames.untyped_storage().nbytes())

    expected = stitch(edited, plan, num_frames, blend, fill=source)
    reader = lambda start, end, height, width: source[start:end].clone()  # noqa: E731 - as a file reader gives
    assert stitch_stream(edited, plan, num_frames, emit, blend, fill=reader) == num_frames
    assert torch.equal(torch.cat(chunks), expected)
    one_segment = length * 3 * 5 * 3 * 4
    assert max(held) <= 2 * one_segment  # a chunk never views more than two segments' worth of frames


def test_streaming_stitch_fills_from_a_reader_at_the_segments_size_and_refuses_misfits():
    plan = plan_segments(50, 17, 4)
    calls = []

    def reader(start, end, height, width):
        calls.append((start, end, height, width))
        return torch.full((end - start, height, width, 3), 0.5)

    pieces = [None] + [torch.zeros(end - start, 2, 4, 3) for start, end in plan[1:]]
    out = []
    stitch_stream(pieces, plan, 50, out.append, "cut", fill=reader)
    assert calls == [(0, 17, 2, 4)] and torch.cat(out).shape == (50, 2, 4, 3)
    with pytest.raises(ValueError, match=r"segments 0 \(of 4"):
        stitch_stream(pieces, plan, 50, out.append)
    pieces[2] = torch.zeros(17, 3, 4, 3)
    with pytest.raises(ValueError, match="segment 2 has shape"):
        stitch_stream(pieces, plan, 50, out.append, fill=reader)


def test_a_source_whose_frame_count_changed_is_refused():
    class Entry:
        def __init__(self, index, frames):
            self.segment_index, self.extra = index, {"source_frames": frames} if frames else {}

    check_source_frames([Entry(0, 150), Entry(1, None)], 150, "src-a")  # same count, and an older entry: fine
    with pytest.raises(ValueError, match=r"now has 140 frames, but segments \[0, 1\] of source_id 'src-a' were "
                                         r"stored from a video of 150 frames.*Load the original video"):
        check_source_frames([Entry(0, 150), Entry(1, 150)], 140, "src-a")


def test_a_descriptor_records_the_source_frame_count_and_a_changed_source_is_refused_by_it(tmp_path):
    """The per-segment path: Segment Retrieve's descriptor carries source_frames into the entry Bank Add stores."""
    from memv2v_core.bank.memory_bank import MemoryBank
    from memv2v_core.retrieval.descriptors import SegmentDescriptor

    plain = SegmentDescriptor(torch.ones(4), "hist", 0, "src-a")
    assert "source_frames" not in plain.bank_extra()  # not given: nothing recorded, nothing checked
    bank = MemoryBank.open(tmp_path / "bank", create=True)
    for index in range(2):
        descriptor = SegmentDescriptor(torch.ones(4), "hist", index, "src-a", source_frames=150)
        bank.add(torch.zeros(1, 16, 2, 2, 2), latent_format="wan21", segment_index=index, source_id="src-a",
                 descriptor=descriptor.vector, extra=descriptor.bank_extra())
    entries = [bank.entry(i) for i in bank.ids()]
    assert [e.extra["source_frames"] for e in entries] == [150, 150]
    check_source_frames(entries, 150, "src-a")
    with pytest.raises(ValueError) as caught:
        check_source_frames(entries, 149, "src-a")
    assert str(caught.value).count("\n") == 0 and "now has 149 frames" in str(caught.value)
    assert "segments [0, 1]" in str(caught.value) and "the stored segments are kept" in str(caught.value)
    assert len(MemoryBank.open(tmp_path / "bank")) == 2
