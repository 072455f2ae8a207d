"""The demo rewrite maps nodes by class type and model file, not by workflow: a new graph built from the same
loaders gets the tiny models, demo conditioning, the demo clip and small sizes; a demo prompt comes back unchanged."""

from __future__ import annotations

from memv2v_cli.demo.rewrite import DEMO_SEGMENT, to_demo

ASSETS = {kind: f"/cache/{kind}.safetensors" for kind in
          ("dit", "vae", "lucy_dit", "wan22_vae", "dinov2", "i2v_high", "i2v_low", "storymem_lora", "recammaster_ckpt")}
ASSETS["video"] = "/cache/clip.mp4"


def node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": class_type}}


def one_run_edit() -> dict:
    """A graph like the one-run long edit: loaders by file name, an editing node with its own sizes and steps."""
    return {
        "1": node("UNETLoader", unet_name="lucy-edit-dev-cui-fp16.safetensors", weight_dtype="fp8_e4m3fn"),
        "2": node("CLIPLoader", clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", device="default"),
        "4": node("CLIPTextEncode", clip=["2", 0], text="make it red"),
        "6": node("VAELoader", vae_name="wan2.2_vae.safetensors"),
        "7": node("LoadVideo", file="my_long_video.mp4"),
        "9": node("CLIPVisionLoader", clip_name="dinov2_large.safetensors"),
        "11": node("MemV2V_LongVideoEdit", model=["1", 0], positive=["4", 0], vae=["6", 0], video=["7", 0],
                   clip_vision=["9", 0], width=832, height=480, segment_length=81, overlap=8, steps=50,
                   fine_kernel="1x4x4", coarse_kernel="1x8x8", seed=42),
    }


def test_a_new_edit_graph_gets_the_edit_demo_models_and_sizes():
    demo = to_demo(one_run_edit(), ASSETS)
    assert demo["1"]["inputs"] == {"unet_name": "lucy_dit.safetensors", "weight_dtype": "default"}
    assert "2" not in demo  # the text encoder: nothing reads it any more
    assert demo["4"]["class_type"] == "MemV2VDemo_TextConditioning" and demo["4"]["inputs"]["text"] == "make it red"
    assert demo["6"]["inputs"]["vae_name"] == "wan22_vae.safetensors"
    assert demo["7"]["inputs"]["file"] == "clip.mp4"
    assert demo["9"] == {"class_type": "MemV2VDemo_CLIPVisionLoader", "_meta": {"title": "CLIPVisionLoader"},
                         "inputs": {"clip_name": "dinov2.safetensors"}}
    edit = demo["11"]["inputs"]
    assert (edit["width"], edit["height"], edit["steps"], edit["seed"]) == (32, 32, 3, 42)
    assert {k: edit[k] for k in DEMO_SEGMENT} == DEMO_SEGMENT
    assert edit["fine_kernel"] == edit["coarse_kernel"] == "1x2x2"  # a 32 px frame is 2x2 latent under Wan 2.2


def test_the_rewrite_is_idempotent():
    demo = to_demo(one_run_edit(), ASSETS)
    assert to_demo(demo, ASSETS) == demo


def test_a_camera_graph_gets_the_checkpoint_with_camera_modules_and_a_t2v_graph_the_plain_dit():
    camera = {"1": node("UNETLoader", unet_name="step20000.ckpt", weight_dtype="default"),
              "2": node("MemV2V_LoadModules", checkpoint="step20000.ckpt"),
              "3": node("VAELoader", vae_name="wan_2.1_vae.safetensors")}
    demo = to_demo(camera, ASSETS)
    assert demo["1"]["inputs"]["unet_name"] == demo["2"]["inputs"]["checkpoint"] == "recammaster_ckpt.safetensors"
    assert demo["3"]["inputs"]["vae_name"] == "vae.safetensors"
    plain = to_demo({"1": camera["1"], "3": camera["3"]}, ASSETS)
    assert plain["1"]["inputs"]["unet_name"] == "dit.safetensors"
