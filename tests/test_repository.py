"""What the repository tracks: no large file that is neither data the toolkit reads nor documentation,
and the license ``pyproject.toml`` names."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # bytes: a tracked file above this must match ALLOWED
# Large files the repository may track, each with why: data the toolkit reads at run time, or documentation.
# fnmatch patterns: "*" also matches "/".
ALLOWED = {
    "probes/core/*.json": "reference data the toolkit reads (the persona library)",
    "*.md": "documentation",
    "docs/*.png": "documentation figures",
    "docs/*.svg": "documentation figures",
}


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in listed.decode("utf-8").split("\0") if name]


def allowed(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ALLOWED)


def large_files(root: Path, names: list[str]) -> list[str]:
    """One line per tracked file over ``LIMIT`` that ``ALLOWED`` does not name: the file and its size."""
    found = []
    for name in names:
        path = root / name
        if path.is_file() and path.stat().st_size > LIMIT and not allowed(name):
            found.append(
                f"{name} is tracked and {path.stat().st_size / 1e6:.1f} MB, over {LIMIT / 1e6:.0f} MB, but is "
                f"neither data the toolkit reads nor documentation (allow-list: tests/test_repository.py)"
            )
    return found


def test_no_large_file_is_tracked_unless_it_is_data_or_documentation():
    found = large_files(ROOT, tracked_files())
    if found:
        pytest.fail("\n".join(found), pytrace=False)


def test_a_large_binary_is_named_in_one_line(tmp_path):
    (tmp_path / "tool-1.0-py3-none-any.whl").write_bytes(b"\0" * (LIMIT + 1))
    (tmp_path / "README.md").write_text("x" * (LIMIT + 1))
    (tmp_path / "small.bin").write_bytes(b"\0" * 10)
    found = large_files(tmp_path, ["tool-1.0-py3-none-any.whl", "README.md", "small.bin"])
    assert found == [found[0]] and "\n" not in found[0]
    assert found[0].startswith("tool-1.0-py3-none-any.whl is tracked and 1.0 MB")


def test_the_allow_list_names_no_code_or_archives():
    for pattern in ALLOWED:
        assert not pattern.endswith((".py", ".whl", ".zip", ".tar.gz", ".gguf", ".safetensors")), pattern


def test_the_license_file_matches_pyproject():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'license = { text = "Apache-2.0" }' in pyproject
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "[yyyy]" not in text


def test_wheels_are_ignored():
    assert "*.whl" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
