"""The package's layout rules, read from its imports.

The tree is the table of contents: an event flows events → ingest → pricing → budgets →
anomaly → ledger → reports, with the SDK and the CLI beside it and everything that reaches
into Faust or aiokafka fenced in ``runtime/``. These rules keep it that way:

- only ``streams/app.py`` and ``streams/runtime/`` import Faust's, mode's or aiokafka's
  internals (private names, or modules outside their public surface);
- no import cycles between the package's modules (imports inside functions count too);
- ``bench/`` never imports ``tests/``;
- the lower layers import nothing above them: ``events`` only itself, ``pricing`` only
  ``events`` and itself (both may use ``streams.resources``, which finds the packaged data
  files and imports nothing from the package).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streams"

# What any module may use of the stream libraries: their documented, public surface.
PUBLIC = {
    "faust": {"faust", "faust.web"},
    "mode": {"mode"},
    "aiokafka": {"aiokafka", "aiokafka.admin", "aiokafka.errors", "aiokafka.helpers", "aiokafka.structs"},
}
FENCED = ("streams/app.py", "streams/runtime/")
LOWER_LAYERS = {
    "streams.resources": (),
    "streams.events": ("streams.events", "streams.resources"),
    "streams.pricing": ("streams.events", "streams.pricing", "streams.resources"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> Iterator[tuple[str, str]]:
    """``(module, name)`` for every import in ``path``; ``name`` is "" for ``import module``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ""
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_only_app_and_runtime_touch_stream_library_internals() -> None:
    offenders = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(FENCED):
            continue
        for module, name in imports(path):
            library = module.split(".")[0]
            if library not in PUBLIC:
                continue
            if module not in PUBLIC[library] or name.startswith("_"):
                offenders.add(f"{relative}: from {module} import {name or '*'}")
    assert not offenders, "Faust/aiokafka internals outside streams/runtime/ and app.py:\n" + "\n".join(sorted(offenders))


def dependency_graph() -> dict[str, set[str]]:
    """Module → the package modules it imports (``from streams.ledger import sink`` names the module sink)."""
    modules = package_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, imported in imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in modules else module
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def test_no_import_cycles() -> None:
    graph = dependency_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_benchmarks_do_not_import_tests() -> None:
    offenders = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in (ROOT / "bench").rglob("*.py")
        for module, _ in imports(path)
        if module == "tests" or module.startswith("tests.")
    }
    assert not offenders, sorted(offenders)


def test_lower_layers_import_nothing_above_them() -> None:
    offenders = set()
    for name, path in package_modules().items():
        allowed = next((ok for layer, ok in LOWER_LAYERS.items() if name == layer or name.startswith(layer + ".")), None)
        if allowed is None:
            continue
        for module, _ in imports(path):
            if module.startswith("streams") and not module.startswith(allowed):
                offenders.add(f"{name} imports {module}")
    assert not offenders, "\n".join(sorted(offenders))
