"""Layers point one way, read from the source with `ast` (every import, inside functions too):
the library knows nothing of the layers above it, training and the gRPC service know nothing of
each other, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folder -> the import name it installs as (pyproject.toml's package-dir).
FOLDERS = {
    "recsvc": "recsvc",
    "training": "recsvc.training",
    "service": "recsvc.service",
    "loadtest": "recsvc.loadtest",
    "cli": "recsvc.cli",
    "console": "recsvc.console",
}
UPPER = ("recsvc.training", "recsvc.service", "recsvc.loadtest", "recsvc.cli", "recsvc.console")
# Layer -> the layers above the library it must never import.
FORBIDDEN = {
    "recsvc": UPPER,
    "recsvc.training": ("recsvc.service", "recsvc.loadtest", "recsvc.cli", "recsvc.console"),
    "recsvc.service": ("recsvc.training", "recsvc.loadtest", "recsvc.cli", "recsvc.console"),
    "recsvc.loadtest": ("recsvc.training", "recsvc.service", "recsvc.cli", "recsvc.console"),
    "recsvc.console": ("recsvc.training", "recsvc.service", "recsvc.loadtest", "recsvc.cli"),
    "recsvc.cli": (),
}
# Import names the wheel must not claim, nor the code use (they collide with other projects').
GENERIC = ("service", "training", "loadtest", "cli", "console")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def layer_of(name: str) -> str:
    return next((upper for upper in UPPER if name.startswith(upper)), "recsvc")


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_layers_only_point_down() -> None:
    broken = []
    for name, path in modules().items():
        layer = layer_of(name)
        for imported in imports_of(name, path):
            if any(within(imported, above) for above in FORBIDDEN[layer]):
                broken.append(f"{path.relative_to(ROOT)} ({layer}) imports {imported}")
            if imported.split(".")[0] in GENERIC:
                broken.append(f"{path.relative_to(ROOT)} imports the generic name {imported}")
    assert not broken, "\n".join(sorted(broken))


def test_no_two_modules_import_each_other() -> None:
    known = modules()
    graph = {
        name: {m for m in known if m != name and m in imports_of(name, path)}
        for name, path in known.items()
    }
    pairs = sorted({tuple(sorted((a, b))) for a, bs in graph.items() for b in bs if a in graph[b]})
    assert not pairs, pairs


def test_the_checks_see_a_forbidden_import(tmp_path: Path) -> None:
    """The reader catches the imports it is meant to: in functions, relative, and aliased."""
    source = tmp_path / "probe.py"
    source.write_text(
        "def f():\n    from recsvc.training import pipeline\n"
        "from ..service import servicer\nimport recsvc.cli as c\n"
    )
    found = imports_of("recsvc.serving.probe", source)
    assert {"recsvc.training.pipeline", "recsvc.service.servicer", "recsvc.cli"} <= found
