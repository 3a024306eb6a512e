"""lm-evaluation-harness's ``local-completions`` against ``prism serve``: a local multiple-choice task and a local
generate_until task (JSON data and task YAML files, no hub), four requests at a time, in modes base and prism; the
accuracy and answers equal the toolkit's own on the same prompt text."""

from __future__ import annotations

import pytest

from interventions.measure.evaluate import evaluate
from prism.adapters import load_adapter
from prism.gate import Gate
from prism.persona_path import GATED
from prism.server.launch import served_files
from probes.core.models import load_model
from probes.core.prompts import Condition, render
from probes.core.rendering import continuations
from tests.prism.server.lm_eval_tasks import capital_items, greedy_answers, logged, run_local_completions, write_tasks


@pytest.fixture(scope="module")
def reference(tiny_prism):
    model_name, files = served_files(tiny_prism)
    model, tokenizer = load_model(model_name)
    load_adapter(model, GATED, files.adapter)
    return model, tokenizer, Gate.load(files.gate)


@pytest.mark.parametrize("mode", ["base", "prism"])
def test_lm_eval_on_prism_serve_scores_as_the_toolkit(
    tiny_server, reference, queries, tmp_path, mode, scores_as_served
):
    model, tokenizer, gate = reference
    items = capital_items()
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
    answers = greedy_answers(model, tokenizer, gate, generation_prompts, mode)
    include = write_tasks(tmp_path, items, prompts, [prompt.text for prompt in generation_prompts])
    results = run_local_completions(tiny_server.url, mode, include, ["prism_capitals", "prism_haiku"])
    assert results["results"]["prism_capitals"]["acc,none"] == pytest.approx(accuracy)
    for sample, values in zip(logged(results, "prism_capitals"), scores):
        logprobs = [resp[0][0] for resp in sample["resps"]]
        assert logprobs == pytest.approx(values, abs=1e-4)
    assert [sample["resps"][0][0].strip() for sample in logged(results, "prism_haiku")] == answers
