"""Let a torchvision wheel whose compiled ops cannot load (a CUDA build on a CPU-only torch) still import.

torchvision registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms`` at import; when its ``_C``
library failed to load, those operators do not exist and the import dies. This hook declares their schemas just
before torchvision is first imported, only when ``_C`` cannot load, so the pure-Python parts (transforms, models,
open_clip, ComfyUI) work; the compiled ops themselves still raise if called. A working torchvision is never touched.
Put this folder on PYTHONPATH (it chains to any other ``sitecustomize`` further along the path).
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

# Schemas as torchvision's C++ library declares them; only ops that torchvision registers fakes for unconditionally.
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _compiled_ops_load(package_dir: str) -> bool:
    import torch

    for name in os.listdir(package_dir):
        if name.startswith("_C.") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(package_dir, name))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def _declare_schemas() -> None:
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        library.define(schema)
    sys.modules[__name__].__dict__["_torchvision_library"] = library  # keep the registration alive


class _TorchvisionImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.submodule_search_locations:
            if not _compiled_ops_load(list(spec.submodule_search_locations)[0]):
                _declare_schemas()
        return spec


def install() -> None:
    """Install the hook once, unless torchvision is already imported."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionImportHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionImportHook())


def _chain_next_sitecustomize() -> None:
    """Run the ``sitecustomize`` this one shadows, if there is one further along sys.path."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_memv2v_chained_sitecustomize", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return


install()
if __name__ == "sitecustomize":
    _chain_next_sitecustomize()
