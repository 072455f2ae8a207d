"""memv2v_core.video_io: header facts, frame-exact segment reads (against a full decode), the streaming writer."""

from __future__ import annotations

import errno
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from memv2v_core import video_io
from memv2v_core.video_io import VideoDecodeError, VideoWriteError, VideoWriter, probe, read_frames
from video_frames import OPEN_GOP, encode, pattern

VIDEOS = sorted(Path(__file__).resolve().parents[3].glob("shared/data/recammaster/videos/*.mp4")) or sorted(
    Path("/work/shared/data/recammaster/videos").glob("*.mp4"))


def full_decode(path, size=None) -> torch.Tensor:
    """The reference: every frame, decoded in order from the first, as ComfyUI's VideoFromFile does."""
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            if size is not None:
                frame = frame.reformat(width=size[1], height=size[0], format="rgb24", interpolation="BILINEAR")
            frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")) / 255.0)
    return torch.stack(frames)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return encode(tmp_path_factory.mktemp("video") / "long.mp4", 3000, options=OPEN_GOP)


def check_random_ranges(path, size=None, tries=40, seed=0):
    info = probe(path)
    reference = full_decode(path, size)
    assert reference.shape[0] == info.frames
    rng = random.Random(seed)
    ranges = [(info.frames - 1, info.frames), (0, 1), (0, info.frames)]
    for _ in range(tries):
        start = rng.randrange(info.frames)
        ranges.append((start, rng.randint(start + 1, min(info.frames, start + 90))))
    for start, end in ranges:
        got = read_frames(path, start, end, size, info=info)
        assert got.dtype == torch.float32 and got.shape[0] == end - start
        assert torch.equal(got, reference[start:end]), (path, start, end)


@pytest.mark.skipif(not VIDEOS, reason="the shared ReCamMaster videos are not here")
@pytest.mark.parametrize("name", ["7.mp4", "10.mp4"])
def test_real_videos_read_exactly_what_a_full_decode_gives(name):
    path = next(p for p in VIDEOS if p.name == name)
    info = probe(path)
    assert (info.frames, info.frame_rate, info.has_audio) == ({"7.mp4": 150, "10.mp4": 100}[name], 30, True)
    check_random_ranges(path, size=(36, 64), tries=8)


def test_a_long_open_gop_video_reads_exactly_what_a_full_decode_gives(long_video):
    info = probe(long_video)
    assert (info.frames, info.frame_rate, info.width, info.height) == (3000, Fraction(30), 48, 32)
    assert info.frames_from_header and not info.variable_frame_rate
    check_random_ranges(long_video, tries=40)
    check_random_ranges(long_video, size=(16, 24), tries=5, seed=1)


def test_seeking_reads_only_near_the_segment(long_video, monkeypatch):
    """A late segment decodes about one GOP before it, not the whole video before it."""
    decoded = []
    original = video_io._store

    def counting(out, i, frame, resize):
        decoded.append(i)
        original(out, i, frame, resize)

    frames_seen = 0
    real_decode = av.container.InputContainer.decode

    def decode(self, *args, **kwargs):
        nonlocal frames_seen
        for frame in real_decode(self, *args, **kwargs):
            frames_seen += 1
            yield frame

    monkeypatch.setattr(av.container.InputContainer, "decode", decode)
    monkeypatch.setattr(video_io, "_store", counting)
    info = probe(long_video)
    frames_seen = 0
    read_frames(long_video, 2900, 2981, info=info)
    assert len(decoded) == 81
    assert frames_seen < 81 + 40, frames_seen  # one 12-frame GOP (plus reordering) before the start, not 2900


def test_crop_takes_the_middle_of_a_covering_resize(long_video):
    """crop=True: scale to cover (keeping the aspect), then cut the middle, like ImageScale's crop "center"."""
    info = probe(long_video)  # 48x32, aspect 3:2
    assert video_io.cover_size(32, 48, 16, 16) == (16, 24)
    wide = read_frames(long_video, 100, 103, (16, 24), info=info)
    square = read_frames(long_video, 100, 103, (16, 16), info=info, crop=True)
    assert square.shape == (3, 16, 16, 3) and torch.equal(square, wide[:, :, 4:20])


def test_a_container_without_a_frame_count_is_counted_from_its_packets(tmp_path):
    path = encode(tmp_path / "v.mkv", 50, codec="ffv1")
    info = probe(path)
    assert info.frames == 50 and not info.frames_from_header
    check_random_ranges(path, tries=6)


def test_variable_frame_rate_is_read_in_order_at_the_average_rate(tmp_path, caplog):
    stamps = np.cumsum([0] + [33 if i % 3 else 50 for i in range(59)]).tolist()  # uneven gaps, in ms
    path = encode(tmp_path / "vfr.mkv", 60, codec="ffv1", pts=stamps)
    info = probe(path)
    assert info.variable_frame_rate and info.frames == 60
    reference = full_decode(path)
    for start, end in [(10, 30), (59, 60), (0, 60)]:
        assert torch.equal(read_frames(path, start, end, info=info), reference[start:end])
    assert sum("variable frame rate" in r.message for r in caplog.records) == 1  # warned once per file


def test_variable_frame_rate_reads_seek_to_a_keyframe_instead_of_decoding_from_the_start(tmp_path, monkeypatch):
    # Uneven gaps, B-frames and a keyframe every 12 frames: each read must still equal a full decode, and a read
    # deep into the file must not decode from frame 0 (that made a long phone video quadratic in its length).
    stamps = np.cumsum([0] + [33 if i % 4 else 47 for i in range(149)]).tolist()
    path = encode(tmp_path / "vfr.mkv", 150, options={"g": "12", "bf": "2"}, pts=stamps)
    info = probe(path)
    assert info.variable_frame_rate and info.frames == 150 and len(info.keyframes) >= 10
    from_start = []
    counting = video_io._read_counting
    monkeypatch.setattr(video_io, "_read_counting", lambda frames, start, end, out, resize: (
        from_start.append(start), counting(frames, start, end, out, resize))[1])
    reference = full_decode(path)
    rng = random.Random(1)
    ranges = [(149, 150), (0, 150), (13, 40)] + [(s, min(150, s + rng.randint(1, 30))) for s in
                                                 (rng.randrange(150) for _ in range(20))]
    for start, end in ranges:
        assert torch.equal(read_frames(path, start, end, info=info), reference[start:end]), (start, end)
    second_key = info.keyframes[1][1]
    assert info.keyframes[0] == (stamps[0], 0) and 0 < second_key <= 12
    # Only reads that start inside the first GOP decode from frame 0.
    assert from_start and all(start < second_key for start in from_start), (from_start, second_key)
    assert len(from_start) == sum(start < second_key for start, _ in ranges)


def test_bad_inputs_get_one_clear_error(tmp_path, long_video):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(VideoDecodeError, match="junk.mp4.*cannot be opened.*Re-encode"):
        probe(junk)
    with pytest.raises(VideoDecodeError, match="does not exist"):
        probe(tmp_path / "missing.mp4")
    info = probe(long_video)
    for start, end in [(-1, 5), (10, 10), (2990, 3001)]:
        with pytest.raises(ValueError, match=r"has 3000 frames.*0 <= start < end <= 3000"):
            read_frames(long_video, start, end, info=info)
    with pytest.raises(ValueError, match=r"size=\(0, 5\)"):
        read_frames(long_video, 0, 1, (0, 5), info=info)
    truncated = tmp_path / "cut.mp4"
    data = long_video.read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(VideoDecodeError):
        info = probe(truncated)
        read_frames(truncated, 2990, 3000, info=info)


def test_a_file_object_source_reads_like_its_path(long_video):
    import io

    buffer = io.BytesIO(long_video.read_bytes())
    info = probe(buffer)
    assert info.frames == 3000
    assert torch.equal(read_frames(buffer, 1500, 1520, info=info), read_frames(long_video, 1500, 1520))


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_lossless_writer_round_trips_frames_fps_and_audio(tmp_path, suffix):
    source = encode(tmp_path / "src.mp4", 90, fps=Fraction(30000, 1001), audio=True)
    info = probe(source)
    frames = full_decode(source)
    out = tmp_path / f"out{suffix}"
    with VideoWriter(out, info.frame_rate, lossless=True, audio_from=source) as writer:
        for start in range(0, 90, 25):  # chunks, as segments arrive
            writer.write(frames[start:start + 25])
        assert not out.exists()  # only a hidden temporary file until it is complete
    written = probe(out)
    assert (written.frames, written.frame_rate, written.has_audio) == (90, Fraction(30000, 1001), True)
    assert torch.equal(full_decode(out), frames)
    with av.open(str(source)) as a, av.open(str(out)) as b:
        sent = [bytes(p) for p in a.demux(a.streams.audio[0]) if p.size]
        kept = [bytes(p) for p in b.demux(b.streams.audio[0]) if p.size]
    assert kept == sent  # the audio packets copied unchanged
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_default_writer_is_h264_and_close_to_the_frames(tmp_path):
    frames = torch.from_numpy(np.stack([pattern(i) for i in range(20)])).float() / 255
    with VideoWriter(tmp_path / "out.mp4", 24) as writer:
        writer.write(frames)
    info = probe(tmp_path / "out.mp4")
    assert (info.codec, info.frames, info.frame_rate, info.has_audio) == ("h264", 20, 24, False)
    assert (full_decode(tmp_path / "out.mp4") - frames).abs().mean() < 0.03


def test_a_failed_write_leaves_no_file_and_says_what_to_do(tmp_path, monkeypatch):
    out = tmp_path / "out.mp4"
    frames = torch.rand(4, 32, 48, 3)
    writer = VideoWriter(out, 30)
    writer.write(frames)

    def full_disk(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(av.container.OutputContainer, "mux", full_disk)
    with pytest.raises(VideoWriteError, match=r"out.mp4 failed.*No space left.*free disk space in"):
        with writer:
            writer.write(frames)
            writer.write(torch.rand(40, 32, 48, 3))
    assert list(tmp_path.iterdir()) == []


def test_an_error_inside_the_block_discards_the_file(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "out.mkv", 30, lossless=True) as writer:
            writer.write(torch.rand(3, 8, 8, 3))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blend", ["cut", "linear"])
def test_an_identity_edit_stitched_from_disk_reproduces_the_source(tmp_path, blend):
    """Segments read from the file, unedited, stitched while writing losslessly: the written file decodes to the
    source's frames bit for bit, with its frame count, exact frame rate and audio."""
    from memv2v_core.segments import plan_segments, stitch_stream

    source = encode(tmp_path / "src.mp4", 130, fps=Fraction(25), options=OPEN_GOP, audio=True)
    info = probe(source)
    plan = plan_segments(info.frames, 33, 8)
    pieces = [lambda s=s, e=e: read_frames(source, s, e, info=info) for s, e in plan]
    out = tmp_path / "stitched.mkv"
    with VideoWriter(out, info.frame_rate, lossless=True, audio_from=source) as writer:
        assert stitch_stream(pieces, plan, info.frames, writer.write, blend) == 130
    written = probe(out)
    assert (written.frames, written.frame_rate, written.has_audio) == (130, Fraction(25), True)
    assert torch.equal(full_decode(out), full_decode(source))


def test_the_video_bench_runs_at_a_tiny_size(capsys):
    """The benchmark's command line works end to end (tiny and not timed; the real run is 600 vs 3000 at 480p)."""
    import json

    from memv2v_core.bench import video as video_bench

    assert video_bench.main(["--frames", "20", "45", "--width", "32", "--height", "24", "--length", "9",
                             "--overlap", "2", "--old-frames", "20", "--limit", "10"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [row["frames"] for row in summary["stream"]] == [20, 45] and summary["outputs_exact"]
    assert summary["old"]["frames"] == 20 and summary["peak_ratio"] > 0
