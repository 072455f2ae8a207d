"""Demo/test companion pack: installed only by the headless runner's demo mode and by the host tests, never by users.

It gives conditioning without a text encoder (Wan's umt5-xxl has no small variant), a loader for tiny clip vision
models (ComfyUI's loader knows only full-size DINOv2), and a validate-only route, so a whole workflow can be checked
and run on a CPU with tiny random models.
"""

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from aiohttp import web
from comfy_api.latest import ComfyExtension, io

import execution
from server import PromptServer

TEXT_DIM = 4096  # Wan's text embedding width (umt5-xxl)


class DemoTextConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MemV2VDemo_TextConditioning",
            display_name="Memory-V2V Demo Text Conditioning (no text encoder)",
            category="MemoryV2V/demo",
            description="Stands in for CLIPTextEncode in demo runs and tests: a fixed pseudo-random embedding derived "
                        "from the text, so different prompts give different conditioning. Not a real text encoder.",
            inputs=[
                io.String.Input("text", multiline=True, default="", tooltip="The prompt; only its hash is used."),
                io.Int.Input("tokens", default=16, min=1, max=512,
                             tooltip="Number of text tokens; positive and negative must match to batch together."),
            ],
            outputs=[io.Conditioning.Output(tooltip="Conditioning shaped like Wan's text embedding [1, tokens, 4096].")],
        )

    @classmethod
    def execute(cls, text: str, tokens: int) -> io.NodeOutput:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        embedding = torch.randn(1, tokens, TEXT_DIM, generator=generator) if text else torch.zeros(1, tokens, TEXT_DIM)
        return io.NodeOutput([[embedding, {}]])


class DemoCLIPVisionLoader(io.ComfyNode):
    """Stands in for CLIPVisionLoader with the tiny DINOv2-layout files of memv2v_cli/demo/clip_vision.py."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        import folder_paths

        return io.Schema(
            node_id="MemV2VDemo_CLIPVisionLoader",
            display_name="Memory-V2V Demo Load CLIP Vision (tiny models)",
            category="MemoryV2V/demo",
            description="Builds ComfyUI's own ClipVisionModel from a tiny file that carries its config in its "
                        "metadata (ComfyUI's Load CLIP Vision knows only full-size DINOv2). Demo runs and tests only.",
            inputs=[io.Combo.Input("clip_name", options=folder_paths.get_filename_list("clip_vision"),
                                   tooltip="A tiny clip vision file from memv2v_cli.demo.clip_vision, in "
                                           "models/clip_vision.")],
            outputs=[io.ClipVision.Output(tooltip="ComfyUI's ClipVisionModel, as Load CLIP Vision returns it.")],
        )

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        import comfy.clip_vision
        import comfy.utils
        import folder_paths

        path = folder_paths.get_full_path_or_raise("clip_vision", clip_name)
        state, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
        config = (metadata or {}).get("memv2v.clip_vision_config")
        if config is None:
            raise ValueError(f"clip_name: {clip_name} holds no memv2v.clip_vision_config; load real models with "
                             "ComfyUI's Load CLIP Vision")
        with tempfile.TemporaryDirectory() as folder:  # ClipVisionModel reads its config from a JSON file
            config_path = os.path.join(folder, "config.json")
            with open(config_path, "w") as handle:
                json.dump(json.loads(config), handle)
            clip = comfy.clip_vision.ClipVisionModel(config_path)
        missing, unexpected = clip.load_sd(state)
        if missing or unexpected:
            raise ValueError(f"clip_name: {clip_name} does not match its config (missing {missing}, unexpected "
                             f"{unexpected})")
        return io.NodeOutput(clip)


@PromptServer.instance.routes.post("/memv2v_demo/validate")
async def validate_only(request: web.Request) -> web.Response:
    """``/prompt``'s own validation, without queueing anything."""
    body = await request.json()
    valid, error, outputs, node_errors = await execution.validate_prompt("validate-only", body.get("prompt", {}), None)
    return web.json_response({"valid": bool(valid), "error": error, "outputs": list(outputs), "node_errors": node_errors})


def _install_demo_rewrite() -> None:
    """In a demo server (``python -m memv2v_cli demo-server``; MEMV2V_DEMO_REWRITE names the demo assets' JSON),
    rewrite every prompt queued on ``/prompt`` into its demo form, so the shipped templates run from the browser on
    the tiny models. Host tests do not set it: their prompts reach the server as sent."""
    manifest = os.environ.get("MEMV2V_DEMO_REWRITE")
    if not manifest:
        return
    # memv2v_cli/demo/rewrite.py by its path: this folder is installed under another name in custom_nodes.
    spec = importlib.util.spec_from_file_location("memv2v_demo_rewrite",
                                                  Path(__file__).resolve().parent.parent / "rewrite.py")
    rewrite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewrite)
    with open(manifest) as handle:
        assets = json.load(handle)

    def demo_prompt(json_data: dict) -> dict:
        if isinstance(json_data.get("prompt"), dict):
            json_data["prompt"] = rewrite.to_demo(json_data["prompt"], assets)
        return json_data

    PromptServer.instance.add_on_prompt_handler(demo_prompt)
    logging.info("Memory-V2V demo: every queued prompt runs on the demo models (%s)", manifest)


_install_demo_rewrite()


class DemoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DemoTextConditioning, DemoCLIPVisionLoader]


async def comfy_entrypoint() -> DemoExtension:
    return DemoExtension()
