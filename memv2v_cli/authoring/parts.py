"""What the shipped workflow specs share: the node helper, and the file names of ComfyUI's own Wan templates (so a
standard Wan install finds the models) and the default negative prompt."""

UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN21_VAE = "wan_2.1_vae.safetensors"
WAN22_VAE = "wan2.2_vae.safetensors"
NEGATIVE = "static, blurry, low quality, jpeg artifacts, deformed, distorted, watermark, subtitles"


def node(class_type: str, title: str, **inputs) -> dict:
    """An API-format node; the title is how the runner's ``--set`` and the notes name it."""
    return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
