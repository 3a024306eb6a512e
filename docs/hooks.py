"""MkDocs hooks (``hooks:`` in ``mkdocs.yml``): the pages generated from the code at build time.

- ``<!-- cli-reference -->`` becomes every registered ``prism`` command's ``--help``
  (``prism.cli.reference``), so the CLI page follows the registry and the options.
- ``<!-- api-reference: PACKAGE -->`` becomes mkdocstrings directives for the package's public
  surface. The packages export their names lazily (``probes.core.exports.lazy_exports``), which
  static analysis cannot follow, so each name is documented where it is defined: the export map in
  the package's ``__init__`` (and any names imported under ``TYPE_CHECKING``) says which module
  that is. A package without an export map (``figures``) is documented module by module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prism.cli.reference import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
CLI_MARKER = "<!-- cli-reference -->"
API_MARKER = re.compile(r"<!-- api-reference: ([\w.]+) -->")


def export_map(package: str, source: str | None = None) -> dict[str, list[str]]:
    """Each module that defines a public name of ``package`` -> those names, read from its ``__init__``.

    Args:
        package: e.g. ``"probes"`` or ``"prism.server"``.
        source: the ``__init__``'s text (default: read from the package's folder).

    Returns:
        ``{"probes.core.models": ["eager_attention", "load_model", "set_attention"], ...}`` in the
        order the ``__init__`` gives; empty when the package has no export map.
    """
    tree = ast.parse(_init(package).read_text(encoding="utf-8") if source is None else source)
    found: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and node.keys and all(_is_module(key) for key in node.keys):
            for key, value in zip(node.keys, node.values):
                if isinstance(value, (ast.Tuple, ast.List)):
                    names = [element.value for element in value.elts if isinstance(element, ast.Constant)]
                    known = found.setdefault(key.value, [])
                    known.extend(name for name in names if name not in known)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                if isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
                    names = found.setdefault(statement.module, [])
                    names.extend(alias.name for alias in statement.names if alias.name not in names)
    return found


def api_markdown(package: str) -> str:
    """mkdocstrings directives for ``package``'s public surface, one section per defining module.

    Args:
        package: a package of the toolkit.

    Returns:
        Markdown: the package's docstring, a table of its public names with their defining modules,
        then a ``::: module`` directive per module restricted to those names.
    """
    lines = [f"::: {package}", "    options:", "      members: false", "      show_root_heading: false", ""]
    exports = export_map(package)
    if exports:
        lines += ["| name | defined in |", "|---|---|"]
        rows = sorted((name, module) for module, names in exports.items() for name in names)
        lines += [f"| [`{name}`][{module}.{name}] | `{module}` |" for name, module in rows]
        for module, names in exports.items():
            lines += ["", f"::: {module}", "    options:", "      members:"] + [f"        - {name}" for name in names]
    else:
        for module in _submodules(package):
            lines += ["", f"::: {module}"]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Fill the markers of the CLI and API reference pages."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, reference_markdown())
    return API_MARKER.sub(lambda found: api_markdown(found.group(1)), markdown)


def _init(package: str) -> Path:
    return ROOT.joinpath(*package.split("."), "__init__.py")


def _is_module(node: ast.expr | None) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", node.value) is not None
    )


def _submodules(package: str) -> list[str]:
    folder = _init(package).parent
    return [f"{package}.{path.stem}" for path in sorted(folder.glob("*.py")) if not path.stem.startswith("_")]
