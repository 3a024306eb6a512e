"""The packages' layering, checked on every import statement of the toolkit's source.

Layers, lowest first: ``probes.core`` (ground), ``probes`` (reading the model), ``interventions``
(changing and measuring it), ``prism`` (the router), ``prism.cli`` (the shell). An import may
point to its own layer or below, never up; ``figures`` is a leaf called only by report writers:
a figure module imports no toolkit package and, of ``figures``, only ``figures.style`` (the shared
style and heatmap cell annotation), which imports nothing of the toolkit itself, so no figure
module depends on another; imports inside functions are not allowed (they hide cycles); and the
module graph has no cycle. Package ``__init__`` files are the public surface for users: the
toolkit's own modules import the defining module, never a package's ``__init__``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from probes.core.summary import Summary

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probes", "interventions", "prism", "figures")
LAYERS = (("probes.core", 1), ("probes", 2), ("interventions", 3), ("prism.cli", 5), ("prism", 4))
SHARED_FIGURES = "figures.style"  # the one module the figure modules share


def layer(module: str) -> int:
    for prefix, number in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return number
    raise AssertionError(f"{module} belongs to no layer")


def source_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = source_modules()


def toolkit_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level?)`` for every import of a toolkit module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports for type checkers only sit at module level too
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            top_level |= {id(child) for child in node.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from package import module" names a module; "from module import name" the module
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        found += [
            (target, node.lineno, id(node) in top_level) for target in targets if target.split(".")[0] in PACKAGES
        ]
    return found


def figures_may_import(module: str, target: str) -> bool:
    """Whether figure module ``module`` may import toolkit module ``target``: only the shared style, and that
    module itself imports nothing of the toolkit."""
    return target == SHARED_FIGURES and module != SHARED_FIGURES


def import_graph() -> dict[str, set[str]]:
    return {module: {target for target, _, _ in toolkit_imports(path)} for module, path in MODULES.items()}


def test_every_module_belongs_to_a_layer_and_the_layout_is_found():
    assert {"probes.core.models", "probes.recording", "interventions.hooks", "prism.gate", "prism.cli"} <= set(MODULES)
    for module in MODULES:
        if not module.startswith("figures"):
            layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    path = MODULES[module]
    for target, line, top_level in toolkit_imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {target}"
        assert top_level, f"{where} inside a function: import at the top of the module"
        assert target in MODULES, f"{where}, which does not exist"
        if module.startswith("figures"):
            assert figures_may_import(module, target), (
                f"{where}: a figure module imports only {SHARED_FIGURES} of the toolkit; pass it plain results"
            )
            continue
        if target.startswith("figures"):
            assert layer(module) >= 2, f"{where}: only report writers call figures"
            continue
        assert layer(target) <= layer(module), f"{where}: an import up the layers"
        is_package = MODULES[target].name == "__init__.py"
        assert not is_package or module == target.rsplit(".", 1)[0] or MODULES[module].name == "__init__.py", (
            f"{where}: a package's public surface; import the module that defines the name"
        )


def test_the_module_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("circular import: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_a_backwards_and_a_function_level_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from interventions.hooks import AddDirection\n\ndef f():\n    from prism.gate import Gate\n")
    assert toolkit_imports(bad) == [("interventions.hooks", 1, True), ("prism.gate", 4, False)]
    assert layer("probes.core.stats") < layer("probes.linear") < layer("interventions.hooks") < layer("prism.gate")
    assert layer("prism.gate") < layer("prism.cli.router")


def test_figure_modules_share_the_style_module_and_nothing_else():
    assert figures_may_import("figures.study", "figures.style") and figures_may_import("figures", "figures.style")
    for target in ("figures.probes", "probes.core.files", "interventions.hooks"):
        assert not figures_may_import("figures.study", target)
    assert not figures_may_import("figures.style", "figures.study")
    shared = {
        module
        for module in MODULES
        if module.startswith("figures")
        if SHARED_FIGURES in {target for target, _, _ in toolkit_imports(MODULES[module])}
    }
    assert {"figures", "figures.interventions", "figures.probes", "figures.study"} <= shared


@pytest.mark.parametrize("package", ["probes", "interventions", "prism", "prism.cli"])
def test_every_public_name_resolves_to_the_toolkit_module_that_defines_it(package):
    facade = importlib.import_module(package)
    assert facade.__all__ and dir(facade) == sorted(facade.__all__)
    submodules = {m.rsplit(".", 1)[1] for m in MODULES if "." in m and m.rsplit(".", 1)[0] == package}
    assert not set(facade.__all__) & submodules, "a public name that is also a submodule's name is shadowed by it"
    for name in facade.__all__:
        value = getattr(facade, name)
        if isinstance(value, dict):  # a registry: no __module__ of its own
            continue
        origin = value.__module__
        assert origin in MODULES and getattr(importlib.import_module(origin), name) is value, f"{package}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        facade.nothing_here


@pytest.mark.parametrize("package", ["probes", "interventions", "prism", "prism.server", "prism.cli"])
def test_type_checkers_see_the_same_names_the_package_exports_lazily(package):
    """Each facade's ``if TYPE_CHECKING:`` imports name exactly its lazily exported names, from the same modules,
    so type checkers and IDEs see ``from probes import load_model`` typed, not as ``Any``."""
    facade = importlib.import_module(package)
    tree = ast.parse(Path(facade.__file__).read_text(encoding="utf-8"))
    checking = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    assert len(checking) == 1, f"{package} has no single `if TYPE_CHECKING:` block"
    seen = {
        alias.name: node.module for node in checking[0].body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert sorted(seen) == facade.__all__
    for name, module in seen.items():
        assert getattr(importlib.import_module(module), name) is getattr(facade, name), f"{package}.{name}"


def test_every_run_entry_point_takes_a_model_and_tokenizer_and_returns_its_summary():
    found = {}
    for name, path in source_modules().items():
        if name.startswith("prism.cli"):
            continue  # the shell's run_* take parsed arguments
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("run_"):
                found[f"{name}.{node.name}"] = node
    assert len(found) >= 6, sorted(found)
    for qualified, node in found.items():
        module = importlib.import_module(qualified.rsplit(".", 1)[0])
        positional = [argument.arg for argument in node.args.args]
        assert positional[1:3] == ["model", "tokenizer"], f"{qualified} takes {positional}"
        returned = getattr(module, ast.unparse(node.returns), None)
        assert isinstance(returned, type) and issubclass(returned, Summary), f"{qualified} returns {returned}"
