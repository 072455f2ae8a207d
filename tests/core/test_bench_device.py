"""The real-size DiT benchmark says clearly when the device it was asked for is missing (no traceback)."""

import pytest
import torch

from memv2v_core.bench import dit


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present, so the benchmark would run")
def test_device_bench_without_a_gpu_says_so_and_exits_3(capsys):
    assert dit.main(["--device", "cuda", "--size", "14B"]) == 3
    err = capsys.readouterr().err
    assert "No CUDA GPU is visible" in err and "--device cpu --size tiny" in err


def test_size_without_device_is_refused():
    with pytest.raises(SystemExit) as stop:
        dit.main(["--size", "14B"])
    assert stop.value.code == 2
