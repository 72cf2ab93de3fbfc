"""The package's shape: folders by concept, imported only downward in the layering of docs/architecture.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hfprune"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def _layers() -> dict[str, int]:
    """Folder (or top-level module) -> layer, read from the table in docs/architecture.md."""
    rows = re.findall(r"^\| (\d+) \| `([\w.]+)/?` \|", ARCHITECTURE.read_text(), re.M)
    return {name.removesuffix(".py"): int(layer) for layer, name in rows}


def _imports() -> list[tuple[str, str, str]]:
    """(importing module, its top-level part, imported top-level part) for every relative import in the package."""
    out = []
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts if parts[-1] == "__init__" else parts[:-1]
        package = [p for p in package if p != "__init__"]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                if len(parts) > 1 and len(target) > 1:
                    out.append((".".join(parts), parts[1], target[1]))
    return out


def test_every_folder_has_a_layer_and_imports_only_downward():
    layers = _layers()
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))
            and p.stem not in ("__init__", "__main__")}
    assert tops <= set(layers), f"folders missing from docs/architecture.md: {sorted(tops - set(layers))}"
    upward = [(m, src, dst) for m, src, dst in _imports()
              if src != dst and src in layers and dst in layers and layers[dst] > layers[src]]
    assert upward == []


def test_at_most_eight_modules_at_the_top():
    flat = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(flat) <= 8, flat
