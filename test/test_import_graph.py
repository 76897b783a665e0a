"""The package's static import graph has no cycles, including imports written inside functions (which hide a
cycle from Python at import time but not from a reader: a module that needs its own caller is a layering error)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "flashocc_ros"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Package modules `path` imports anywhere in its body (top level or inside functions); `from X import Y`
    counts as X.Y when that is a module, else X. TYPE_CHECKING-only imports count too."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    # A submodule imports its package's __init__ implicitly: that edge is what makes __init__ re-exports cyclic.
    return out


def import_graph() -> dict[str, set[str]]:
    paths = [p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_local_imports_and_finds_a_cycle():
    """The checker itself: a cycle made only of function-local imports is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from flashocc_ros.network.model import FlashOcc\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(tree))


def test_known_edges_are_seen():
    graph = import_graph()
    assert "flashocc_ros.ros.rig" in graph["flashocc_ros.node"]
    assert "flashocc_ros.network.geometry" in graph["flashocc_ros.ros.rig"]
    # a function-local import (backends.loaders.LoadWeights -> loading) is an edge too
    assert "flashocc_ros.network.loading" in graph["flashocc_ros.backends.loaders"]


def test_package_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The layers of docs/architecture.md: a module may import only from its own layer or a lower one.
LAYERS = {
    0: "flashocc_ros network inference ros config topics stamps atomic grids transforms viz.colors dataset tools",
    1: "ros.tf_tree ros.sync ros.health ros.ratelimit network.preprocess network.centers network.panoptic "
    "metrics metrics.miou metrics.ray dataset.devkit dataset.synthetic ros.messages ros.launch_support "
    "metrics.parity ros.occupancy_codec",
    2: "network.geometry network.gpu_preprocess network.model network.model4d network.networks dataset.bagio "
    "metrics.evaluation viz viz.raster viz.render",
    3: "network.weights network.checkpoint network.loading backends backends.base backends.pooling "
    "backends.engine_cache backends.onnx_export backends.onnx_export4d backends.tensorrt_env "
    "backends.calibration backends.loaders backends.tensorrt_build backends.torch_runner "
    "backends.ort_runner backends.tensorrt_runner",
    4: "inference.pipeline inference.temporal ros.rig",
    5: "node ros.parameters ros.qos ros.tf_source",
    6: "dataset.nusc2bag viz.loaders viz.viewer",
}


def layer_of(module: str) -> int:
    short = module.removeprefix(PACKAGE + ".") if module != PACKAGE else PACKAGE
    for layer, names in LAYERS.items():
        if short in names.split():
            return layer
    if short.startswith("tools."):
        return 7
    raise AssertionError(f"{module} has no layer: add it to LAYERS here and to docs/architecture.md")


def test_every_import_goes_down_the_layers():
    graph = import_graph()
    upward = [
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
        for m, deps in sorted(graph.items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "\n".join(upward)
