"""Two small lm-evaluation-harness tasks as local files (JSON data, task YAML; no hub): capital cities as a
multiple-choice task scored as the toolkit scores it (cloze options after the rendered prompt), and a generate_until
task of given prompts."""

from __future__ import annotations

import json
from contextlib import nullcontext
from typing import Sequence

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from interventions.measure.generation import generate
from prism.persona_path import GATED
from prism.routing import Routed
from probes.core.items import Item
from probes.core.rendering import continuations

CAPITALS = [
    ("France", "Paris"),
    ("Peru", "Lima"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Chile", "Santiago"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Canada", "Ottawa"),
]
MULTIPLE_CHOICE = """task: prism_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: prompt
doc_to_choice: options
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GENERATION = """task: prism_haiku
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: ""
generation_kwargs:
  until: ["<never>"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def capital_items() -> list[Item]:
    """Eight capital-city items, four options each, the answer at varying places."""
    names = [city for _, city in CAPITALS]
    items = []
    for index, (country, city) in enumerate(CAPITALS):
        choices = (city, *[name for name in names if name != city][index % 5 :][:3])
        order = sorted(range(4), key=lambda k: (k * 7 + index) % 4)
        items.append(
            Item(
                f"capitals/{country}",
                "capitals",
                f"What is the capital of {country}?",
                "geography",
                choices=tuple(choices[k] for k in order),
                answer=order.index(0),
            )
        )
    return items


def write_tasks(tmp_path, items, prompts, queries) -> str:
    """The tasks ``prism_capitals`` (``items`` after their rendered ``prompts``) and ``prism_haiku`` (``queries``) in
    ``tmp_path``; returns it as lm-eval's include path."""
    rows = [
        {"prompt": prompt, "options": continuations(item, "cloze"), "answer": item.answer}
        for item, prompt in zip(items, prompts)
    ]
    (tmp_path / "capitals.json").write_text(json.dumps(rows))
    (tmp_path / "haiku.json").write_text(json.dumps([{"prompt": prompt} for prompt in queries]))
    (tmp_path / "capitals.yaml").write_text(MULTIPLE_CHOICE.format(data=tmp_path / "capitals.json"))
    (tmp_path / "haiku.yaml").write_text(GENERATION.format(data=tmp_path / "haiku.json"))
    return str(tmp_path)


def run_local_completions(url: str, mode: str, include: str, tasks: Sequence[str], **model_args) -> dict:
    """lm-eval's ``local-completions`` against the server at ``url`` in ``mode``: four requests at a time, samples
    logged, every seed fixed; ``model_args`` add to or replace its defaults."""
    return simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": url + "/v1/completions",
            "model": mode,
            "num_concurrent": 4,
            "max_retries": 1,
            "max_length": 500,
            "batch_size": 2,
            "seed": 1234,
            **model_args,
        },
        tasks=list(tasks),
        task_manager=TaskManager(include_path=include),
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


def logged(results: dict, task: str) -> list[dict]:
    """A task's logged samples in document order."""
    return sorted(results["samples"][task], key=lambda sample: sample["doc_id"])


def greedy_answers(model, tokenizer, gate, prompts, mode: str) -> list[str]:
    """The toolkit's own greedy answers (8 tokens) to ``prompts`` as ``prism serve`` gives them in ``mode``: in mode
    prism inside ``Routed`` with the gated adapter (``model`` carries it)."""
    with Routed(model, gate, adapter=GATED) if mode == "prism" else nullcontext():
        return generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=1, progress=False)
