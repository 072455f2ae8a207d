"""Frame embedders: the weight-free colour histogram, the encode_image wrapper (ComfyUI CLIP_VISION), and open_clip
loaded from a local file (a tiny random model written by the test: shapes, normalisation, loading, errors)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded: any attempt fails loudly

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from memv2v_core.retrieval.descriptors import describe_segment  # noqa: E402
from memv2v_core.retrieval.embedders import (ColorHistogramEmbedder, EncodeImageEmbedder, FrameEmbedder,  # noqa: E402
                                   load_open_clip, open_clip_architectures, resize_and_crop, weights_fingerprint)

TINY = "MemV2V-Test-Tiny"
TINY_WIDE = "MemV2V-Test-Tiny-Wide"
TINY_CONFIG = {"embed_dim": 24,
               "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1}}


def frames(count=5, height=90, width=160, seed=0):
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(seed))


# -- colour histogram ---------------------------------------------------------------------------------------------

def test_colour_histogram_rows_are_unit_vectors_of_fixed_size():
    embedder = ColorHistogramEmbedder()
    out = embedder.embed_frames(frames())
    assert isinstance(embedder, FrameEmbedder)
    assert out.shape == (5, embedder.dim) == (5, 8 ** 3 + 3 * 8 * 8) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


def test_colour_histogram_is_deterministic_batch_and_resolution_independent():
    clip = frames(7)
    whole = ColorHistogramEmbedder(batch_size=64).embed_frames(clip)
    assert torch.equal(whole, ColorHistogramEmbedder(batch_size=2).embed_frames(clip))
    assert torch.equal(whole, ColorHistogramEmbedder().embed_frames(clip.clone()))
    ramp = torch.linspace(0, 1, 160)
    smooth = torch.stack([ramp.expand(90, 160), ramp.flip(0).expand(90, 160), torch.full((90, 160), 0.3)], -1)
    large = torch.nn.functional.interpolate(smooth.permute(2, 0, 1)[None], size=(360, 640), mode="bilinear")
    small_out = ColorHistogramEmbedder().embed_frames(smooth[None])[0]
    large_out = ColorHistogramEmbedder().embed_frames(large.permute(0, 2, 3, 1))[0]
    assert small_out @ large_out > 0.98  # the same picture at 4x the resolution


def test_colour_histogram_separates_colours_and_layouts():
    red, blue = torch.zeros(1, 32, 32, 3), torch.zeros(1, 32, 32, 3)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    left_bright = torch.zeros(1, 32, 32, 3)
    left_bright[:, :, :16] = 1.0
    right_bright = left_bright.flip(2)
    out = ColorHistogramEmbedder().embed_frames(torch.cat([red, blue, left_bright, right_bright]))
    cosine = out @ out.T
    assert abs(cosine[0, 1]) < 1e-6                # different colours, both flat: nothing in common
    assert abs(cosine[2, 3]) < 1e-6                # same colours (histograms agree), opposite layout
    dimmer = ColorHistogramEmbedder().embed_frames(left_bright * 0.95)[0]
    assert dimmer @ out[2] > 0.99                  # same layout, nearly the same colours


def test_uint8_frames_are_scaled_and_bad_shapes_are_refused():
    clip = frames(2)
    as_bytes = (clip * 255).round().to(torch.uint8)
    assert torch.allclose(ColorHistogramEmbedder().embed_frames(as_bytes),
                          ColorHistogramEmbedder().embed_frames(as_bytes.float() / 255), atol=1e-6)
    with pytest.raises(ValueError, match=r"frames is \[2, 8, 8, 4\]; expected RGB images"):
        ColorHistogramEmbedder().embed_frames(torch.zeros(2, 8, 8, 4))
    with pytest.raises(ValueError, match="batch_size=0"):
        ColorHistogramEmbedder(batch_size=0)


def test_resize_and_crop_covers_the_target_then_takes_the_centre():
    image = torch.zeros(1, 3, 90, 160)
    image[..., 35:125] = 1.0  # a bright centre square 90 wide
    out = resize_and_crop(image, (32, 32))
    assert out.shape == (1, 3, 32, 32)
    assert out[..., 2:-2].min() > 0.99  # the crop lands inside the bright square


# -- encode_image wrapper (ComfyUI CLIP_VISION) -------------------------------------------------------------------

class FakeClipVision:
    """Stands in for ComfyUI's ClipVisionModel: records batches, returns a dict with image_embeds."""

    def __init__(self):
        self.batches = []

    def encode_image(self, image):
        self.batches.append(tuple(image.shape))
        return {"image_embeds": image.mean(dim=(1, 2)) * 2.0, "last_hidden_state": None}


def test_encode_image_embedder_batches_frames_and_returns_image_embeds():
    encoder = FakeClipVision()
    clip = frames(5, 16, 16)
    out = EncodeImageEmbedder(encoder, batch_size=2).embed_frames(clip)
    assert encoder.batches == [(2, 16, 16, 3), (2, 16, 16, 3), (1, 16, 16, 3)]
    assert torch.allclose(out, clip.mean(dim=(1, 2)) * 2.0)


class TinyEncoder:
    """An encode_image encoder with real weights, laid out like ComfyUI's ClipVisionModel (``model``, ``image_size``,
    ``image_mean``, ``image_std``), so its identity comes from its weights."""

    def __init__(self, seed, dtype=torch.float32, image_size=224):
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.LayerNorm(16)).to(dtype)
        self.image_size, self.image_mean, self.image_std = image_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

    def encode_image(self, image):
        weight = self.model[0].weight
        return {"image_embeds": self.model(image.mean(dim=(1, 2)).to(weight.dtype)).float()}


def test_the_fallback_is_labelled_as_such_in_its_name_and_identity():
    embedder = ColorHistogramEmbedder()
    assert embedder.name.startswith("fallback:") and embedder.identity.kind == "fallback-colour-histogram"
    assert embedder.identity.key == ColorHistogramEmbedder(batch_size=4).identity.key  # batching changes nothing
    assert embedder.identity.key != ColorHistogramEmbedder(bins=4).identity.key


def test_encoder_identity_tells_two_encoders_of_one_size_apart_but_not_precisions():
    first, other = EncodeImageEmbedder(TinyEncoder(0)), EncodeImageEmbedder(TinyEncoder(1))
    clip = frames(2, 16, 16)
    assert first.embed_frames(clip).shape == other.embed_frames(clip).shape == (2, 16)
    assert first.identity.architecture == other.identity.architecture == "Sequential(224px)"
    assert first.identity.layout == other.identity.layout
    assert first.identity.weights != other.identity.weights and first.identity.key != other.identity.key
    # A file loaded in float16 (ComfyUI on a GPU) or float32 (--fp32-text-enc) keeps its identity: from a float32
    # file, and from a bfloat16 file in any of the three precisions.
    assert EncodeImageEmbedder(TinyEncoder(0, torch.float16)).identity.key == first.identity.key
    bf16_file = [EncodeImageEmbedder(TinyEncoder(0, torch.bfloat16)) for _ in range(3)]
    for embedder, dtype in zip(bf16_file, (torch.float32, torch.float16, torch.bfloat16)):
        embedder.encoder.model.to(dtype)
    assert len({e.identity.key for e in bf16_file}) == 1
    # Another input size or normalisation is another embedder, even with the same weights.
    assert EncodeImageEmbedder(TinyEncoder(0, image_size=518)).identity.key != first.identity.key
    assert first.name == "clip_vision:Sequential"


def test_weights_fingerprint_samples_every_tensor_exactly():
    state = {"a": torch.arange(1000, dtype=torch.float32), "b": torch.zeros(3, 4)}
    layout, weights = weights_fingerprint(state)
    changed = dict(state, a=state["a"].clone())
    changed["a"][999] += 1  # the last value is always sampled
    assert weights_fingerprint(changed) == (layout, weights_fingerprint(changed)[1])
    assert weights_fingerprint(changed)[1] != weights
    assert weights_fingerprint(dict(state, b=torch.zeros(4, 3)))[0] != layout  # same values, other shape
    assert weights_fingerprint(state, extra="size=518")[0] != layout


def test_encode_image_embedder_refuses_objects_without_encode_image():
    with pytest.raises(ValueError, match="clip_vision: object has no encode_image"):
        EncodeImageEmbedder(object())


# -- open_clip from a local file ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_clip(tmp_path_factory):
    """open_clip with two tiny architectures registered from config files written here (no download)."""
    import open_clip

    folder = tmp_path_factory.mktemp("open_clip_configs")
    wide = json.loads(json.dumps(TINY_CONFIG))
    wide["vision_cfg"]["width"] = 48
    for name, config in ((TINY, TINY_CONFIG), (TINY_WIDE, wide)):
        (folder / f"{name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder / f"{name}.json")
    return open_clip


@pytest.fixture(scope="module")
def tiny_weights(open_clip, tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(TINY, pretrained=None)
    folder = tmp_path_factory.mktemp("weights")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "tiny.safetensors"))
    torch.save(state, folder / "tiny.pt")
    return folder, model


@pytest.mark.parametrize("file_name", ["tiny.safetensors", "tiny.pt"])
def test_open_clip_loads_the_local_file_and_embeds_frames(tiny_weights, file_name):
    folder, model = tiny_weights
    embedder = load_open_clip(TINY, folder / file_name, batch_size=2)
    loaded = embedder.visual.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.visual.state_dict().items())  # the file's weights
    assert embedder.image_size == (32, 32) and TINY in embedder.name and file_name in embedder.name

    clip = frames(3)
    out = embedder.embed_frames(clip)
    assert out.shape == (3, 24) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # Same as the model's own image tower on CLIP-preprocessed input (cover-resize, centre crop, normalise).
    pixels = resize_and_crop(clip.permute(0, 3, 1, 2), (32, 32))
    with torch.no_grad():
        expected = model.encode_image((pixels - embedder.mean) / embedder.std)
    assert torch.allclose(out, expected, atol=1e-5)

    descriptor = describe_segment(embedder, clip, 2, "video-a")
    assert descriptor.vector.shape == (24,) and descriptor.dim == 24 and descriptor.frames == 3
    assert descriptor.vector.norm() <= 1.0 + 1e-6  # a mean of unit vectors


def test_open_clip_identity_follows_the_weights_not_the_file_name(open_clip, tiny_weights, tmp_path):
    folder, _ = tiny_weights
    first = load_open_clip(TINY, folder / "tiny.safetensors")
    assert first.identity.kind == "open_clip" and first.identity.file == "tiny.safetensors"
    assert first.identity.architecture == f"{TINY}(32px)"
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes((folder / "tiny.safetensors").read_bytes())
    assert load_open_clip(TINY, renamed).identity.key == first.identity.key  # a renamed copy: same embedder
    torch.manual_seed(1)
    reseeded = {k: v.contiguous() for k, v in open_clip.create_model(TINY, pretrained=None).state_dict().items()}
    save_file(reseeded, str(tmp_path / "tiny.safetensors"))  # same name and architecture, other weights
    other = load_open_clip(TINY, tmp_path / "tiny.safetensors")
    assert other.embed_frames(frames(1)).shape == first.embed_frames(frames(1)).shape
    assert other.identity.key != first.identity.key and other.identity.layout == first.identity.layout


def test_open_clip_refuses_a_missing_file_an_unknown_or_mismatched_architecture(tiny_weights, tmp_path):
    folder, _ = tiny_weights
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.safetensors")):
        load_open_clip(TINY, tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match=r"architecture='ViT-B-3' is not an open_clip architecture; did you mean"):
        load_open_clip("ViT-B-3", folder / "tiny.safetensors")
    with pytest.raises(ValueError) as error:
        load_open_clip(TINY_WIDE, folder / "tiny.safetensors")
    assert "does not load as open_clip architecture 'MemV2V-Test-Tiny-Wide'" in str(error.value)


def test_architectures_that_would_download_a_text_tower_are_not_offered(open_clip, tiny_weights):
    offered = open_clip_architectures()
    assert TINY in offered and "ViT-B-32" in offered and "roberta-ViT-B-32" not in offered
    assert "roberta-ViT-B-32" in open_clip_architectures(local_only=False)
    with pytest.raises(ValueError, match="Hugging Face"):
        load_open_clip("roberta-ViT-B-32", tiny_weights[0] / "tiny.safetensors")
