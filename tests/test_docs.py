"""The docs site: its marked code blocks, the CLI reference generated from the registry, the API reference's names.

Fast: nothing here loads a model or builds the site (``.ci/run`` builds it with ``mkdocs build --strict``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path

import pytest

from prism.cli.reference import command_help, reference_markdown
from prism.cli.shell import COMMANDS, build_parser
from tests.code_blocks import DOCS, README, ROOT, code_blocks, docs_pages, marked_blocks, prism_commands

PAGES = [README, *docs_pages()]


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_every_marked_python_block_compiles():
    blocks = [block for page in PAGES for block in marked_blocks(page, "python")]
    assert len(blocks) >= 5
    for block in blocks:
        compile(block.code, block.where, "exec")


def test_every_prism_command_in_a_marked_shell_block_parses(parser):
    commands = 0
    for page in PAGES:
        for block in marked_blocks(page, "bash", "sh", "shell", "console"):
            for argv in prism_commands(block):
                name = next((word for word in argv if not word.startswith("-")), None)
                assert name in COMMANDS, f"{block.where}: `prism {' '.join(argv)}` names no registered command"
                errors = StringIO()
                try:
                    with redirect_stderr(errors):
                        parser.parse_args(argv)
                except SystemExit:
                    pytest.fail(f"{block.where}: `prism {' '.join(argv)}` does not parse: {errors.getvalue().strip()}")
                commands += 1
    assert commands >= 20


def test_the_serving_page_has_the_client_example_the_server_tests_run():
    (block,) = [
        block for block in marked_blocks(DOCS / "serving.md", "python") if "from openai import OpenAI" in block.code
    ]
    assert "http://127.0.0.1:8000/v1" in block.code and "stream=True" in block.code


def test_every_benchmark_a_marked_block_runs_exists():
    for page in PAGES:
        for block in marked_blocks(page, "bash"):
            for script in re.findall(r"python\s+(bench/\S+\.py)", block.code):
                assert (ROOT / script).is_file(), f"{block.where}: {script} does not exist"


def test_every_prism_command_shown_is_in_a_marked_block():
    for page in PAGES:
        for block in code_blocks(page):
            if block.language in ("bash", "sh", "shell") and prism_commands(block):
                assert block.marked, f"{block.where}: a shell block with prism commands has no <!-- test --> marker"


def test_the_cli_reference_lists_every_registered_command():
    reference = reference_markdown()
    for name, registered in COMMANDS.items():
        assert f"## prism {name}\n" in reference, name
        assert f"usage: prism {name} " in reference, name
        assert registered.help.split(":")[0] in reference, name
    assert "<!-- cli-reference -->" in (DOCS / "cli.md").read_text(encoding="utf-8")
    assert "docs/hooks.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


def test_a_command_reference_is_argparse_help_at_a_fixed_width():
    text = command_help("evaluate", width=80)
    assert text.startswith("usage: prism evaluate")
    assert "--dataset" in text and max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize("package", ["probes", "interventions", "prism", "prism.server", "prism.cli"])
def test_the_api_reference_documents_every_public_name(package):
    exports = load_hooks().export_map(package)
    documented = {name for names in exports.values() for name in names}
    assert documented == set(importlib.import_module(package).__all__)
    page = load_hooks().api_markdown(package)
    for module, names in exports.items():
        assert f"::: {module}\n" in page and all(f"        - {name}\n" in page for name in names)


def test_the_export_map_also_reads_names_imported_for_type_checkers():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from probes.core.exports import lazy_exports\n"
        "if TYPE_CHECKING:\n"
        "    from probes.core.models import load_model\n"
        "    from probes.linear import fit_probe\n"
        "__getattr__, __dir__, __all__ = lazy_exports(__name__, {\n"
        "    'probes.core.models': ('load_model', 'set_attention'),\n"
        "})\n"
    )
    assert load_hooks().export_map("probes", source) == {
        "probes.core.models": ["load_model", "set_attention"],
        "probes.linear": ["fit_probe"],
    }


def test_every_package_page_of_the_api_reference_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((DOCS / "reference").glob("*.md")):
        marker = re.search(r"<!-- api-reference: ([\w.]+) -->", page.read_text(encoding="utf-8"))
        assert marker, page
        assert f"reference/{page.name}" in config, page
        assert Path(ROOT, *marker.group(1).split("."), "__init__.py").is_file(), marker.group(1)
