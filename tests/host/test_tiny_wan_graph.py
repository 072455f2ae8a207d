"""A real Wan graph through /prompt: tiny DiT + KSampler + VAE decode + SaveVideo, and the saved file is checked."""

from pathlib import Path

import av

from host_prompts import decode_and_save_nodes, tiny_sampler_nodes


def test_tiny_wan_t2v_graph_writes_a_video(host):
    prompt = tiny_sampler_nodes(Path(host.assets["dit"]).name, steps=3)
    prompt.update(decode_and_save_nodes(Path(host.assets["vae"]).name, ["6", 0], "host_test/t2v"))
    result = host.run(prompt)
    files = result.output_files(host.server.base_dir)
    videos = [Path(f) for f in files if f.endswith(".mp4")]
    assert len(videos) == 1, files
    assert videos[0].is_file() and videos[0].stat().st_size > 0
    with av.open(str(videos[0])) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height) == (32, 32)
    assert frames == 5
    kinds = [kind for kind, _ in result.messages]
    assert "progress" in kinds, "KSampler should report progress over the websocket"
