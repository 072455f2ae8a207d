"""Memory-V2V for ComfyUI: a persistent video memory for the Wan video DiT.

ComfyUI imports this file when the pack sits in ``custom_nodes/``. Registration only:
the nodes live in ``nodes/``, the library in ``memv2v_core/``.
"""

import importlib
import logging
import pkgutil
import os

WEB_DIRECTORY = "./web"

logger = logging.getLogger(__name__)


def _node_classes() -> list:
    """Import every ``nodes/*_nodes.py``; a module that fails is logged and skipped, the rest still load."""
    classes: list = []
    nodes_dir = os.path.join(os.path.dirname(__file__), "nodes")
    for module_info in sorted(pkgutil.iter_modules([nodes_dir]), key=lambda m: m.name):
        if not module_info.name.endswith("_nodes"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.nodes.{module_info.name}")
            classes.extend(module.NODES)
        except Exception:
            logger.exception("Memory-V2V: node module nodes/%s.py failed to import; its nodes are unavailable "
                             "(the rest of the pack still loads)", module_info.name)
    return classes


try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (e.g. by pytest collecting the repo): there is nothing to register
    ComfyExtension = None

def _register_routes() -> None:
    """Add the bank browser's HTTP routes (``nodes/routes.py``) to ComfyUI's server; a failure leaves the nodes
    working."""
    try:
        from server import PromptServer
        routes = PromptServer.instance.routes
    except (ImportError, AttributeError):  # no ComfyUI server in this process (e.g. a script importing the pack)
        return
    try:
        importlib.import_module(f"{__name__}.nodes.routes").register(routes)
    except Exception:
        logger.exception("Memory-V2V: the bank routes (/memv2v/...) failed to load; the nodes still work")


if ComfyExtension is not None:
    _register_routes()

    class MemoryV2VExtension(ComfyExtension):
        async def get_node_list(self) -> list:
            return _node_classes()

    async def comfy_entrypoint() -> MemoryV2VExtension:
        return MemoryV2VExtension()
