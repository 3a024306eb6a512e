"""``prism --version`` and the help pages: every page as a reader sees it, with its data sets from the registry."""

import builtins
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from prism.cli import shell
from prism.cli.shell import COMMANDS, main
from probes.core.datasets import BUILTIN_DATASETS

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def _pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', PYPROJECT.read_text(), re.MULTILINE).group(1)


def _page(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width


def test_version_prints_the_distribution_and_its_version(capsys):
    assert _page(["--version"], capsys) == f"prism-toolkit {_pyproject_version()}"


def test_version_falls_back_to_the_pyproject_when_the_toolkit_is_not_installed(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(shell.metadata, "version", not_installed)
    assert shell.version() == _pyproject_version()
    monkeypatch.setattr(shell, "PYPROJECT", PYPROJECT.parent / "no-such-pyproject.toml")
    assert shell.version() == "unknown"


@pytest.mark.parametrize("argv", [[]] + [[name] for name in COMMANDS])
def test_no_help_page_shows_an_escaped_percent(argv, capsys):
    page = _page(argv + ["--help"], capsys)
    assert "%%" not in page and "%(" not in page
    if argv in ([], ["evaluate"]):
        assert "per-item JSON with a 95% CI" in page


@pytest.mark.parametrize("name", ["evaluate", "record"])
def test_dataset_help_names_every_built_in_data_set(name, capsys):
    page = _page([name, "--help"], capsys)
    assert "capitals" in BUILTIN_DATASETS
    assert f"--dataset DATASET {', '.join(BUILTIN_DATASETS)}, or a .jsonl/.csv file" in page


def test_a_missing_optional_package_names_the_extra_in_one_line(monkeypatch, capsys):

    real_import = builtins.__import__

    def without_fastapi(name, *args, **kwargs):
        if name == "fastapi" or name.startswith("fastapi."):
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real_import(name, *args, **kwargs)

    for module in [
        m for m in sys.modules if m == "fastapi" or m.startswith(("fastapi.", "prism.server", "prism.cli.serve"))
    ]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(builtins, "__import__", without_fastapi)
    assert main(["serve", "--help"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == ["prism serve: error: the package 'fastapi' is not installed: pip install 'prism-toolkit[serve]'"]
