"""The Long Video Edit memory benchmark's own parts, without a server: arguments, segment counts, /proc reading and
the report (the benchmark itself runs with ``python -m memv2v_cli.bench_long_edit``; it is not a timed test)."""

from __future__ import annotations

import json
import os
import time

import pytest

from memv2v_cli import bench_long_edit as bench

MIB = 1024 * 1024


def test_arguments_default_to_600_and_3000_frames_at_a_tiny_model_size():
    args = bench.parse_args([])
    assert args.frames == [600, 3000]
    assert (args.source_width, args.source_height, args.width, args.height) == (832, 480, 32, 32)
    assert (args.segment_length, args.overlap, args.steps) == (81, 8, 1)


@pytest.mark.parametrize("argv", [["--frames", "3000", "600"], ["--frames", "600"], ["--width", "40"],
                                  ["--height", "0"]])
def test_bad_arguments_stop_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        bench.parse_args(argv)
    assert caught.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_segment_counts_follow_the_plan_on_the_wan22_stride():
    # 81-frame windows sharing 8 frames: ceil((frames - 8) / 73) windows
    assert bench.segment_count(600, 81, 8) == 9
    assert bench.segment_count(3000, 81, 8) == 41


def test_proc_status_and_the_sampler_read_this_process():
    own = bench.proc_status(os.getpid())
    assert 0 < own["VmRSS"] <= own["VmHWM"]
    with bench.RssSampler(os.getpid(), interval=0.01) as sampler:
        time.sleep(0.1)
    assert len(sampler.samples) >= 2
    assert sampler.at_fraction(1.0) == max(rss for t, rss in sampler.samples if t >= 0.9 * sampler.samples[-1][0])


def _row(frames: int, segments: int, base: int, peak: int, exact: bool = True) -> dict:
    return {"frames": frames, "segments": segments, "baseline_rss": base * MIB, "peak_rss": peak * MIB,
            "end_rss": peak * MIB, "rss_half": None, "rss_last_tenth": peak * MIB, "wall_s": frames / 10,
            "out_frames": frames, "out_fps": 30.0, "src_frames": frames, "src_fps": 30.0, "exact": exact,
            "summary": "segment 1/1 edited"}


def test_report_shows_both_lengths_side_by_side_with_ratios_and_one_json_line():
    args = bench.parse_args([])
    lines = bench.format_report([_row(600, 8, 500, 1500), _row(3000, 41, 500, 3000, exact=False)], args)
    assert "TINY RANDOM" in lines[0] and "32x32" in lines[0] and "832x480" in lines[0]
    table = "\n".join(lines[1:4])
    assert "600 |        8 |" in table and "3000 |       41 |" in table
    assert "1,000" in lines[2] and "2,500" in lines[3]  # peak minus baseline
    assert "MISMATCH" in lines[3] and "MISMATCH" not in lines[2]
    assert "peak RSS 2.00x, peak above baseline 2.50x" in lines[4]
    result = json.loads(lines[-1])
    assert result["peak_ratio"] == pytest.approx(2.0) and len(result["runs"]) == 2
    assert "summary" not in result["runs"][0]
