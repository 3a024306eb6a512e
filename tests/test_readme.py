"""The README's Python examples, run as written, in order, on the embedded model.

The examples are the README's Python blocks marked ``<!-- test -->`` (``tests/code_blocks.py``); the docs pages
include them from the README (``--8<-- "README.md:NAME"``), so one copy is run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from prism import DistillConfig, Gate, PrismDirectory, Sample, save_adapter
from prism.distill import distill
from probes import load_model
from tests.code_blocks import DOCS, README, code_blocks, docs_pages, marked_blocks

SECTION = re.compile(r"--8<-- \[(start|end):([\w-]+)\]")


def python_blocks() -> list[str]:
    return [block.code for block in marked_blocks(README, "python")]


def prepare_prism_directory(root: Path) -> None:
    """What `prism bootstrap` and `prism train` leave for the PRISM example, made by the same code
    at a tiny scale: a gate on block 0 and an adapter distilled from one bootstrapped sample."""
    model, tokenizer = load_model()
    work = PrismDirectory(root)
    torch.manual_seed(0)
    weight = torch.randn(model.cfg.d_model) / model.cfg.d_model**0.5
    Gate("logistic", 0, "last", {"weight": weight, "bias": torch.tensor(0.0)}).save(work.gate)
    sample = Sample(
        "math/0", "math", "What is 12 times 12?", "144.", "As a mathematician: 12 x 12 = 144.", True, True, (1.0, 1.0)
    )
    training = distill(model, tokenizer, [sample], "prism", DistillConfig(epochs=1), progress=False)
    save_adapter(model, "prism", work.adapter("prism"), training["peft_config"])


def test_the_readme_has_the_examples_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) == 4
    assert "from probes import" in blocks[0] and "from prism import" in blocks[3]
    unmarked = [block.where for block in code_blocks(README) if block.language == "python" and not block.marked]
    assert not unmarked, f"Python blocks without the <!-- test --> marker: {unmarked}"


def test_the_readme_is_short_and_opens_with_the_two_commands_and_an_example():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the manual belongs in docs/"
    first_screen = "\n".join(lines[:60])
    assert "bash .ci/setup && .venv/bin/prism demo" in first_screen and "bash .ci/run" in first_screen
    assert "from probes import" in first_screen and "docs/getting-started.md" in first_screen


def test_every_readme_section_the_docs_include_exists():
    readme = README.read_text(encoding="utf-8")
    sections = {(kind, name) for kind, name in SECTION.findall(readme)}
    included = {
        name
        for page in docs_pages()
        for name in re.findall(r'--8<-- "README\.md:([\w-]+)"', page.read_text(encoding="utf-8"))
    }
    assert included, f"no page in {DOCS} includes a README example"
    for name in included:
        assert ("start", name) in sections and ("end", name) in sections, f"README.md has no section {name!r}"
    for kind, name in sections:  # each section is one marked block
        body = readme.split(f"[start:{name}]", 1)[1].split(f"[end:{name}]", 1)[0]
        assert body.count("<!-- test -->") == 1 and body.count("```") == 2, name


@pytest.mark.slow
def test_the_readme_python_examples_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare_prism_directory(tmp_path / "runs" / "prism")
    namespace: dict = {}
    for number, block in enumerate(python_blocks(), start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    assert tuple(namespace["acts"].shape) == (40, namespace["model"].cfg.d_model)
    assert 0.0 <= namespace["score"].auc.mean <= 1.0 and namespace["score"].auc.n == 20
    assert namespace["metadata"]["layer"] == 3
    assert namespace["steer"].record()  # the steering hook fired
    assert tuple(namespace["logprobs"].shape) == (namespace["model"].cfg.n_layers, 2)
    assert len(namespace["answers"]) == 2 and len(namespace["routed"].decisions) == 2
