"""The pack's own socket types, shared by every node module (the frontend links sockets by these names)."""

from comfy_api.latest import io

Bank = io.Custom("MEMV2V_BANK")
Camera = io.Custom("MEMV2V_CAMERA")
Selection = io.Custom("MEMV2V_SELECTION")
Context = io.Custom("MEMV2V_CONTEXT")
Modules = io.Custom("MEMV2V_MODULES")
Embedder = io.Custom("MEMV2V_EMBEDDER")
Descriptor = io.Custom("MEMV2V_DESCRIPTOR")
