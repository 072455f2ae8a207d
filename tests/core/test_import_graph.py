"""The house rules, checked on the source: no import circle among the project's modules or core packages, and the core
library imports nothing from ComfyUI."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("memv2v_core", "memv2v_cli", "nodes")
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "server", "execution", "nodes", "latent_preview")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "cpu_torchvision" not in path.parts:
                found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules ``name`` imports (at any depth of the file: lazy imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                # a relative import above the top-level package reaches the pack root (nodes -> ..memv2v_core)
                prefix = ".".join(base + ([node.module] if node.module else [])) if base else (node.module or "")
            else:
                prefix = node.module or ""
            candidates = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def module_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        # a package's __init__ re-exporting its own modules is not a circle through them
        graph[name] = {t for t in imports_of(name, path, modules) if not (path.name == "__init__.py" and t.startswith(name + "."))}
    return graph


def test_no_import_circle_among_the_projects_modules():
    graph = module_graph()
    assert len(graph) > 40  # the walk found the project
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_core_stages_depend_one_way():
    """Between the core's stage packages too: bank and camera first, then retrieval, then memory."""
    stages = {}
    for source, targets in module_graph().items():
        if source.startswith("memv2v_core."):
            a = source.split(".")[1]
            for target in targets:
                if target.startswith("memv2v_core.") and target.split(".")[1] != a:
                    stages.setdefault(a, set()).add(target.split(".")[1])
    stages.pop("bench", None)  # benchmarks measure every stage
    assert find_cycle(stages) is None, f"stage circle: {' -> '.join(find_cycle(stages))}"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_memv2v_core_imports_nothing_from_comfyui():
    offenders = []
    for path in sorted((REPO / "memv2v_core").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in HOST_MODULES]
    assert not offenders, offenders
