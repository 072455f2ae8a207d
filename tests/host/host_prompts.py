"""API-prompt fragments shared by the host tests: a tiny Wan 2.1 sampler graph, a decode-and-save tail, and the
shipped long-edit graphs on tiny models."""

import copy

from memv2v_cli import graph


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


def one_node(prompt: dict, class_type: str) -> str:
    """The id of the shipped graph's only node of ``class_type``."""
    found = graph.find_nodes(prompt, class_type)
    assert len(found) == 1, f"expected one {class_type} in the shipped workflow, found {found}"
    return found[0]


def tiny_edit_graph(prompt: dict, models: dict[str, str], video: str) -> dict:
    """A copy of a shipped long-edit graph on the tiny LucyEdit DiT, the random Wan 2.2 VAE and the demo DINOv2,
    with the demo text conditioning in place of the text encoder, reading ``video``."""
    prompt = copy.deepcopy(prompt)
    prompt[one_node(prompt, "UNETLoader")]["inputs"]["unet_name"] = models["dit"]
    prompt[one_node(prompt, "VAELoader")]["inputs"]["vae_name"] = models["vae"]
    prompt[one_node(prompt, "LoadVideo")]["inputs"]["file"] = video
    prompt[one_node(prompt, "CLIPVisionLoader")].update(class_type="MemV2VDemo_CLIPVisionLoader",
                                                        inputs={"clip_name": models["dinov2"]})
    del prompt[one_node(prompt, "CLIPLoader")]
    for node_id in graph.find_nodes(prompt, "CLIPTextEncode"):
        prompt[node_id] = {"class_type": "MemV2VDemo_TextConditioning",
                           "inputs": {"text": prompt[node_id]["inputs"]["text"], "tokens": 16}}
    return prompt
