"""A real Wan graph through /prompt: tiny DiT + KSampler + VAE decode + SaveVideo, and the saved file is checked."""

from pathlib import Path

import av


def tiny_t2v_prompt(dit: str, vae: str, frames: int = 5, size: int = 32, prefix: str = "host_test/t2v") -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": dit, "weight_dtype": "default"}},
        "2": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": "a red door", "tokens": 16}},
        "3": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": "", "tokens": 16}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": size, "height": size, "length": frames, "batch_size": 1}},
        "5": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": 7, "steps": 3, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 16.0}},
        "10": {"class_type": "SaveVideo", "inputs": {"video": ["9", 0], "filename_prefix": prefix,
                                                     "format": "mp4", "codec": "h264"}},
    }


def test_tiny_wan_t2v_graph_writes_a_video(host):
    prompt = tiny_t2v_prompt(Path(host.assets["dit"]).name, Path(host.assets["vae"]).name)
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
