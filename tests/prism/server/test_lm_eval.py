"""lm-evaluation-harness's ``local-completions`` against ``prism serve``: a local multiple-choice task and a local
generate_until task (JSON data and task YAML files, no hub), four requests at a time, in modes base and prism; the
accuracy and answers equal the toolkit's own on the same prompt text."""

from __future__ import annotations

import json

import pytest
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from interventions.measure.evaluate import evaluate
from interventions.measure.generation import generate
from prism.adapters import load_adapter
from prism.gate import Gate
from prism.persona_path import GATED
from prism.routing import Routed
from prism.server.launch import served_files
from probes.core.items import Item
from probes.core.models import load_model
from probes.core.prompts import Condition, render
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


def _items() -> list[Item]:
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


@pytest.fixture(scope="module")
def reference(tiny_prism):
    model_name, files = served_files(tiny_prism)
    model, tokenizer = load_model(model_name)
    load_adapter(model, GATED, files.adapter)
    return model, tokenizer, Gate.load(files.gate)


def _task_files(tmp_path, items, prompts, queries) -> str:
    rows = [
        {"prompt": prompt, "options": continuations(item, "cloze"), "answer": item.answer}
        for item, prompt in zip(items, prompts)
    ]
    (tmp_path / "capitals.json").write_text(json.dumps(rows))
    (tmp_path / "haiku.json").write_text(json.dumps([{"prompt": prompt} for prompt in queries]))
    (tmp_path / "capitals.yaml").write_text(MULTIPLE_CHOICE.format(data=tmp_path / "capitals.json"))
    (tmp_path / "haiku.yaml").write_text(GENERATION.format(data=tmp_path / "haiku.json"))
    return str(tmp_path)


@pytest.mark.parametrize("mode", ["base", "prism"])
def test_lm_eval_on_prism_serve_scores_as_the_toolkit(
    tiny_server, reference, queries, tmp_path, mode, scores_as_served
):
    model, tokenizer, gate = reference
    items = _items()
    own = evaluate(model, tokenizer, items, Condition("none"), scoring="cloze", normalise="none", progress=False)
    prompts = [row["prompt"] for row in own["items"]]
    rendered = [render(tokenizer, item.prompt, Condition("none"), answer_prefix="Answer:") for item in items]
    assert [prompt.text for prompt in rendered] == prompts  # the same prompt text as the toolkit's evaluate
    options = [continuations(item, "cloze") for item in items]
    scores, routes = scores_as_served(model, tokenizer, gate, rendered, options, mode)
    predicted = [max(range(len(values)), key=values.__getitem__) for values in scores]
    accuracy = sum(p == item.answer for p, item in zip(predicted, items)) / len(items)
    if mode == "base":
        assert accuracy == own["summary"]["mean"]
        assert predicted == [row["predicted"] for row in own["items"]]
    else:
        assert any(routed for option in routes for _, routed in option)  # the adapter answered some requests
    generation_prompts = [render(tokenizer, query, Condition("none")) for query in queries[:4]]
    if mode == "prism":
        with Routed(model, gate, adapter=GATED):
            answers = generate(model, tokenizer, generation_prompts, max_new_tokens=8, batch_size=1, progress=False)
    else:
        answers = generate(model, tokenizer, generation_prompts, max_new_tokens=8, batch_size=1, progress=False)

    include = _task_files(tmp_path, items, prompts, [prompt.text for prompt in generation_prompts])
    results = simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": tiny_server.url + "/v1/completions",
            "model": mode,
            "num_concurrent": 4,
            "max_retries": 1,
            "max_length": 500,
            "batch_size": 2,
            "seed": 1234,
        },
        tasks=["prism_capitals", "prism_haiku"],
        task_manager=TaskManager(include_path=include),
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    assert results["results"]["prism_capitals"]["acc,none"] == pytest.approx(accuracy)
    samples = sorted(results["samples"]["prism_capitals"], key=lambda sample: sample["doc_id"])
    for sample, values in zip(samples, scores):
        logprobs = [resp[0][0] for resp in sample["resps"]]
        assert logprobs == pytest.approx(values, abs=1e-4)
    generated = sorted(results["samples"]["prism_haiku"], key=lambda sample: sample["doc_id"])
    assert [sample["resps"][0][0].strip() for sample in generated] == answers
