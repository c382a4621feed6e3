"""The package's layers: no import circle anywhere in prs_jax, and every import points downward.

The graph is read from the source (every import statement, inside functions too), so the test
needs no import of the package and catches an upward import before it can become a circle.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "prs_jax"

# Lower imports nothing above it. A module may import its own layer and those below.
LAYERS = (
    ("errors",),  # UserError, which any layer may raise for a problem the user can fix
    ("cpu",),  # what a CPU host needs before JAX starts
    ("models", "method", "data"),  # the networks, PRS itself, the input pipelines
    ("training",),  # one run: config, state, steps, checkpoints, metrics, the loop
    ("analysis",),  # what a run shows: spectra, the Fourier analysis, reports
    ("tools",),  # what the benchmark drives
    ("commands",),  # prs_jax/*.py: main, evaluate, fourier, report, bench, sweep, convert, cli
)
# The loop's one way into analysis: the in-training spectra (config.fourier_every_epochs).
ALLOWED_UPWARD = {("prs_jax.training.train", "prs_jax.analysis.spectra")}


def module_name(path: pathlib.Path) -> str:
    parts = ("prs_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: the prs_jax modules it imports}, a package's `__init__` counted as the package."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("prs_jax"))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.startswith("prs_jax"):
                    for alias in node.names:  # `from pkg import submodule` imports the submodule
                        full = f"{node.module}.{alias.name}"
                        targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import; prs_jax uses absolute imports")
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], path[len(path) :] = "open", [node]
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def layer_of(module: str) -> int:
    """prs_jax.GROUP[.name] is in GROUP's layer; a top-level module prs_jax.name is a command."""
    if module == "prs_jax":
        return -1  # the package's own __init__ imports nothing
    group = module.split(".")[1]
    group = group if group in {g for groups in LAYERS for g in groups} else "commands"
    return next(rank for rank, groups in enumerate(LAYERS) if group in groups)


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_import_points_to_the_same_layer_or_below():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module) and (module, target) not in ALLOWED_UPWARD
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(sorted(upward))


def test_the_documented_commands_are_top_level_modules():
    for command in ("main", "evaluate", "fourier", "report", "bench", "sweep", "convert"):
        assert (PACKAGE / f"{command}.py").is_file(), f"python -m prs_jax.{command} would fail"


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b", "c"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
    ],
)
def test_find_cycle_finds_a_circle_and_only_one(graph, cycle):
    assert find_cycle(graph) == cycle
