"""The provenance block: versions, the checkout's commit, the command line with its secrets masked, and the loaded
model's revision (a hub commit or the weights' hash), device and dtype."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from probes.core import provenance as provenance_module
from probes.core.commandline import MASK, command_line, command_scope, running_command
from probes.core.models import load_model
from probes.core.provenance import PACKAGES, ROOT, file_sha256, git_state, provenance, toolkit_version

BLOCK = "import json; from probes.core.provenance import provenance; print(json.dumps(provenance()))"


def test_secrets_on_a_command_line_are_masked_and_nothing_else():
    argv = [
        "prism",
        "study",
        "--judge-api-key-env",
        "MY_KEY",
        "--hf-token=hf_abcdefghijklmnopqrstuv",
        "--password",
        "hunter2",
        "--apikey",
        "k",
        "--secret-file=/run/s",
        "--judge-url",
        "https://bob:pw@host:8/v1?api_key=abc&x=1",
        "--max-new-tokens",
        "48",
        "--answer-tokens",
        "8",
        "--model",
        "default",
        "sk-abcdefghijklmnopqrstuvwx",
        "--keys-from",
        "-",
        "--out",
        "runs/a",
    ]
    assert command_line(argv) == [
        "prism",
        "study",
        "--judge-api-key-env",
        MASK,
        f"--hf-token={MASK}",
        "--password",
        MASK,
        "--apikey",
        MASK,
        f"--secret-file={MASK}",
        "--judge-url",
        f"https://host:8/v1?api_key={MASK}&x=1",
        "--max-new-tokens",
        "48",
        "--answer-tokens",
        "8",
        "--model",
        "default",
        MASK,
        "--keys-from",
        "-",
        "--out",
        "runs/a",
    ]  # "-" reads as an option, not a value: left as it is
    assert command_line(["x", "--note=see https://u:p@example.org/a"]) == ["x", "--note=see https://example.org/a"]


def test_the_command_line_is_the_running_commands_inside_it_and_sys_argv_outside():
    assert provenance()["command"] == command_line(sys.argv) and command_scope() == 0
    with running_command(["prism", "evaluate", "--judge-api-key-env", "K"]) as shown:
        assert shown == ["prism", "evaluate", "--judge-api-key-env", MASK] == provenance()["command"]
        outer = command_scope()
        with running_command(["prism", "report", "x"]):
            assert provenance()["command"] == ["prism", "report", "x"] and command_scope() > outer
        assert provenance()["command"] == shown and command_scope() == outer
    assert provenance()["command"] == command_line(sys.argv) and command_scope() == 0


def test_versions_and_the_commit_of_the_checkout_it_runs_from():
    block = provenance()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert block["toolkit"] == toolkit_version() == re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE).group(1)
    assert block["packages"]["torch"] == torch.__version__ and set(block["packages"]) == set(PACKAGES)
    assert block["python"] == ".".join(map(str, sys.version_info[:3]))
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert block["git"] == git_state() == {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def test_without_a_checkout_or_without_git_the_block_just_has_no_commit(tmp_path):
    shutil.copytree(ROOT / "probes", tmp_path / "copy" / "probes", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "copy" / "pyproject.toml").write_text('[project]\nname = "prism-toolkit"\nversion = "9.9.9"\n')
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "copy")}
    installed = subprocess.run(
        [sys.executable, "-c", BLOCK], env=environment, capture_output=True, text=True, check=True, cwd=tmp_path
    )
    block = json.loads(installed.stdout)
    assert "git" not in block and block["toolkit"] and block["packages"]["numpy"]
    if (ROOT / ".git").exists():  # the checkout itself, with no git to run
        no_git = subprocess.run(
            [sys.executable, "-c", BLOCK],
            env={**os.environ, "PATH": str(tmp_path / "nothing")},
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        assert "git" not in json.loads(no_git.stdout) and not no_git.stderr.strip()


def test_a_file_digest_is_saved_when_large_and_reused_while_the_file_is_unchanged(tmp_path):
    weights, saved = tmp_path / "w.safetensors", tmp_path / "cache" / "w.sha256.json"
    weights.write_bytes(os.urandom(4096))
    truth = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights, saved, save_from=10**6) == truth and not saved.exists()  # small: not saved
    provenance_module._digests.clear()
    assert file_sha256(weights, saved, save_from=0) == truth
    record = json.loads(saved.read_text())
    assert record["sha256"] == truth and record["size"] == 4096 and record["path"] == str(weights.resolve())
    saved.write_text(json.dumps({**record, "sha256": "0" * 64}))  # a later process reads the saved digest
    provenance_module._digests.clear()
    assert file_sha256(weights, saved, save_from=0) == "0" * 64
    with open(weights, "ab") as handle:  # the file changed: its size no longer matches, so it is hashed again
        handle.write(b"more")
    assert file_sha256(weights, saved, save_from=0) == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads(saved.read_text())["size"] == 4100


def test_a_loaded_model_is_described_by_its_weights_hash_device_and_dtype(tiny_llama_directory):
    model, _ = load_model(tiny_llama_directory, dtype="bfloat16")
    digest = hashlib.sha256((Path(tiny_llama_directory) / "model.safetensors").read_bytes()).hexdigest()
    described = provenance()["model"]
    assert (
        described
        == provenance(tiny_llama_directory)["model"]
        == {
            "id": tiny_llama_directory,
            "name": tiny_llama_directory,
            "revision": f"sha256:{digest}",
            "weights": {"model.safetensors": digest},
            "device": "cpu",
            "dtype": "bfloat16",
            "attention": "sdpa",
        }
    )
    assert "model" not in provenance("a model this process never loaded")
    with running_command(["prism", "report", "somewhere"]):
        assert "model" not in provenance()  # a command's records name only the models it loaded itself


def test_a_model_from_the_hub_cache_is_described_by_its_commit(tiny_llama_directory, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repository = tmp_path / "hub" / "models--prism-test--tiny"
    shutil.copytree(tiny_llama_directory, repository / "snapshots" / commit)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(commit)
    code = (
        "import json; from probes.core.models import load_model; from probes.core.provenance import provenance\n"
        "load_model('prism-test/tiny'); print(json.dumps(provenance()['model']))"
    )
    environment = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    shown = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    described = json.loads(shown.stdout.strip().splitlines()[-1])
    assert described["id"] == "prism-test/tiny" and described["revision"] == commit and "weights" not in described
