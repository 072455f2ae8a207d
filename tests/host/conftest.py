"""Host tests: a real ComfyUI started as a subprocess on 127.0.0.1 with a private base directory and tiny random models.

ComfyUI is found through the ComfyUI that contains this pack, else COMFYUI_PATH, else ~/comfy/ComfyUI. Without one,
every host test is skipped with one reason that says how to enable them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memv2v_cli.demo import setup as demo_setup
from memv2v_cli.host import comfy_host

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSET_CACHE = Path(os.environ.get("MEMV2V_TEST_CACHE", Path.home() / ".cache" / "memv2v" / "test-assets"))

COMFYUI, WHERE = comfy_host.find_comfyui()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.host)
            if COMFYUI is None:
                item.add_marker(pytest.mark.skip(reason=f"host tests skipped: {WHERE}"))


@dataclass
class Host:
    """A running ComfyUI with this pack and the demo pack installed, plus the demo assets."""

    server: comfy_host.ComfyServer
    assets: dict[str, str]
    _object_info: dict | None = field(default=None, repr=False)

    @property
    def client(self) -> comfy_host.ComfyClient:
        return self.server.client()

    @property
    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.client.object_info()
        return self._object_info

    def run(self, prompt: dict, timeout: float = 600) -> comfy_host.PromptResult:
        return self.client.run(prompt, timeout=timeout)

    def output_path(self, relative: str) -> Path:
        return self.server.output_dir / relative


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> Host:
    assert COMFYUI is not None  # unreachable: host tests are skipped without a host
    assets = demo_setup.build_assets("demo.models", COMFYUI, ASSET_CACHE / comfy_host.comfyui_version(COMFYUI))
    # ComfyUI's default CPU attention chunks by free memory at call time, so results depend on what ran before;
    # PyTorch's attention is deterministic, which exact comparisons between prompts need.
    server = demo_setup.private_server(COMFYUI, tmp_path_factory.mktemp("comfy-base"), assets,
                                       extra_args=("--use-pytorch-cross-attention",))
    server.start()
    try:
        yield Host(server, assets)
    finally:
        server.stop()
