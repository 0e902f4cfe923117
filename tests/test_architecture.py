"""The package's shape, as the next engineer meets it: a few modules at the top, concepts in folders, no import
cycle (lazy imports inside functions included), and the settings' values in conf/ only."""

import ast
import inspect
from pathlib import Path

import pytest
from helpers import DEAREST_FIRST, REPO

PACKAGE = REPO / "carvana"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every carvana module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("carvana"):
                found.add(name)
    return found - {module_name(path)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_cycle_between_modules_lazy_imports_included():
    graph = {name: imports(path) - {"carvana"} for name, path in MODULES.items() if name != "carvana"}
    assert cycles(graph) == []


def test_no_import_cycle_between_folders():
    """carvana.data needs nothing of model, predict, report or training; model needs only data; and so on."""
    def folder(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2])

    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        if name != "carvana":
            graph.setdefault(folder(name), set()).update(folder(m) for m in imports(path) if m != "carvana")
    for node, edges in graph.items():
        edges.discard(node)
    assert cycles(graph) == []
    assert graph["carvana.data"] <= {"carvana.files", "carvana.hardware", "carvana.progress"}, graph["carvana.data"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_at_most_twelve_modules_at_the_top():
    top = [p.name for p in PACKAGE.iterdir() if (p.suffix == ".py" and p.name != "__init__.py")
           or (p.is_dir() and (p / "__init__.py").is_file())]
    assert len([n for n in top if n.endswith(".py")]) <= 12, sorted(top)
    assert len(top) <= 16, sorted(top)  # and a few folders, one per concept


def configured():
    from carvana.data.boxes import write_bboxes
    from carvana.data.datamodule import SegDataModule
    from carvana.data.transforms import augmentations
    from carvana.model.module import SegModule
    from carvana.submission import make_submission

    return [SegModule.__init__, SegDataModule.__init__, augmentations, make_submission, write_bboxes]


@pytest.mark.parametrize("function", configured(), ids=lambda f: f.__qualname__)
def test_configured_classes_take_their_values_from_conf(function):
    """The YAML is the one truth: what train.py, submit.py and crops read from conf/ has no second default here."""
    defaulted = [name for name, p in inspect.signature(function).parameters.items()
                 if p.default is not inspect.Parameter.empty]
    assert defaulted == [], f"{function.__qualname__} defaults {defaulted}: the value belongs in conf/"


def test_the_dearest_test_files_named_for_scheduling_exist():
    """make test hands out helpers' DEAREST_FIRST files first: a renamed file would silently lose its place."""
    missing = [name for name in DEAREST_FIRST if not (REPO / "tests" / name).is_file()]
    assert not missing, f"tests/helpers.py DEAREST_FIRST names files that do not exist: {missing}"



LONGEST_FUNCTION = 40  # lines from its def, docstring included (a parametrize table above it is data): one screen


def long_functions(paths: list[Path], root: Path = REPO) -> list[str]:
    """'path:line name (N lines)' of every function in `paths` (named from `root`) longer than LONGEST_FUNCTION."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_40_lines():
    paths = [*PACKAGE.rglob("*.py"), *(REPO / "bench").glob("*.py"), *(REPO / "tests").glob("*.py"),
             *REPO.glob("*.py")]
    found = long_functions(paths)
    assert not found, "split these into named steps: " + ", ".join(found)


def test_the_function_length_check_finds_a_long_function(tmp_path: Path):
    body = "".join(f"    x{i} = {i}\n" for i in range(LONGEST_FUNCTION))
    (tmp_path / "code.py").write_text(f"def short():\n    return 1\n\n\n@staticmethod\ndef long():\n{body}")
    assert long_functions([tmp_path / "code.py"], tmp_path) == [f"code.py:6 long ({LONGEST_FUNCTION + 1} lines)"]
