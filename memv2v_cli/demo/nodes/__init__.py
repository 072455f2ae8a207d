"""Demo/test companion pack: installed only by the headless runner's demo mode and by the host tests, never by users.

It gives conditioning without a text encoder (Wan's umt5-xxl has no small variant) and a validate-only route,
so a whole workflow can be checked and run on a CPU with tiny random models.
"""

import hashlib

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


@PromptServer.instance.routes.post("/memv2v_demo/validate")
async def validate_only(request: web.Request) -> web.Response:
    """``/prompt``'s own validation, without queueing anything."""
    body = await request.json()
    valid, error, outputs, node_errors = await execution.validate_prompt("validate-only", body.get("prompt", {}), None)
    return web.json_response({"valid": bool(valid), "error": error, "outputs": list(outputs), "node_errors": node_errors})


class DemoExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [DemoTextConditioning]


async def comfy_entrypoint() -> DemoExtension:
    return DemoExtension()
