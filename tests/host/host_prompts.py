"""API-prompt fragments shared by the host tests: a tiny Wan 2.1 sampler graph and a decode-and-save tail."""


def tiny_sampler_nodes(dit: str, seed: int = 7, frames: int = 5, size: int = 32, steps: int = 2,
                       text: str = "a red door") -> dict:
    """Nodes 1-6: tiny DiT, demo conditioning (no text encoder), empty latent, shift, KSampler (output ["6", 0])."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": dit, "weight_dtype": "default"}},
        "2": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": text, "tokens": 16}},
        "3": {"class_type": "MemV2VDemo_TextConditioning", "inputs": {"text": "", "tokens": 16}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": size, "height": size, "length": frames,
                                                                  "batch_size": 1}},
        "5": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
    }


def decode_and_save_nodes(vae: str, samples: list, prefix: str, fps: float = 16.0) -> dict:
    """Nodes 7-10: VAE load, decode ``samples``, make a video, save it as mp4."""
    return {
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": samples, "vae": ["7", 0]}},
        "9": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": fps}},
        "10": {"class_type": "SaveVideo", "inputs": {"video": ["9", 0], "filename_prefix": prefix, "format": "mp4",
                                                     "codec": "h264"}},
    }
