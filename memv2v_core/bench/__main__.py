"""Dispatch ``python -m memv2v_core.bench <name> [args]`` to ``memv2v_core.bench.<name>.main(args)``."""

import importlib
import pkgutil
import sys

import memv2v_core.bench as _package


def _available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(_package.__path__) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = _available()
    if not argv or argv[0] not in names:
        print(f"usage: python -m memv2v_core.bench {{{','.join(names)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"memv2v_core.bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
