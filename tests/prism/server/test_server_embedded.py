"""``prism serve`` on the embedded model (slow): the same answers as ``prism route``, streamed or not, alone or
together, and the serving page's client example as written."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from prism import pipeline
from tests.code_blocks import DOCS, marked_blocks

SERVING = DOCS / "serving.md"


def client_example():
    """The marked Python block of ``docs/serving.md`` that uses the ``openai`` client."""
    (block,) = [block for block in marked_blocks(SERVING, "python") if "from openai import OpenAI" in block.code]
    return block


@pytest.fixture(scope="module")
def embedded(smol_directory, tmp_path_factory, make_directory, server_over):
    """A trained PRISM directory on the embedded model (adapters distilled for one epoch) and a server over it."""
    work = make_directory(smol_directory, tmp_path_factory.mktemp("smol-prism"), epochs=1)
    with server_over(work, batch_wait_ms=100) as server:
        yield work, server


def test_the_embedded_model_answers_as_prism_route_streamed_or_not_alone_or_together(embedded, queries, openai_client):
    work, server = embedded
    client = openai_client(server)
    expected = pipeline.route(work, queries, via="adapter", max_new_tokens=12)
    assert {row["routed"] for row in expected} == {True, False}

    def ask(query: str, **options):
        answer = client.chat.completions.create(
            model="prism", messages=[{"role": "user", "content": query}], max_tokens=12, **options
        )
        return answer.choices[0].message.content, answer.model_extra["prism"]

    with ThreadPoolExecutor(len(queries)) as pool:  # together
        together = list(pool.map(lambda query: ask(query, temperature=0), queries))
    for row, (text, prism) in zip(expected, together):
        assert text == row["answer"] and prism["route"] == ("persona" if row["routed"] else "base")
        assert prism["gate_probability"] == pytest.approx(row["probability"], abs=1e-4)
    for query in (row["prompt"] for row in expected[:2]):
        whole = ask(query, temperature=0.8, top_p=0.95, seed=7)
        stream = client.chat.completions.create(
            model="prism",
            messages=[{"role": "user", "content": query}],
            max_tokens=12,
            temperature=0.8,
            top_p=0.95,
            seed=7,
            stream=True,
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == whole[0]
    sampled = [ask(query, temperature=0.8, seed=index) for index, query in enumerate(queries[:4])]
    with ThreadPoolExecutor(4) as pool:
        assert (
            list(pool.map(lambda pair: ask(pair[1], temperature=0.8, seed=pair[0]), enumerate(queries[:4]))) == sampled
        )


def test_the_serving_page_client_example_runs_against_a_server(embedded, capsys):
    _, server = embedded
    block = client_example()
    assert "http://127.0.0.1:8000/v1" in block.code
    exec(compile(block.code.replace("http://127.0.0.1:8000", server.url), block.where, "exec"), {})
    shown = capsys.readouterr().out
    assert len(re.findall(r"^(persona|base) [01]\.\d+ ", shown, flags=re.M)) == 2


def test_lm_eval_on_the_embedded_model_scores_as_the_toolkit(embedded, tmp_path, scores_as_served):
    """lm-eval's local-completions on the embedded model in mode prism: its accuracy is the toolkit's, option by
    option routed as the server routes each request."""
    from prism.adapters import load_adapter
    from prism.gate import Gate
    from prism.persona_path import GATED
    from prism.server.launch import served_files
    from probes.core.models import load_model
    from probes.core.prompts import Condition, render
    from probes.core.rendering import continuations
    from tests.prism.server.lm_eval_tasks import capital_items, logged, run_local_completions, write_tasks

    work, server = embedded
    model_name, files = served_files(work)
    model, tokenizer = load_model(model_name)
    load_adapter(model, GATED, files.adapter)
    items = capital_items()
    prompts = [render(tokenizer, item.prompt, Condition("none"), answer_prefix="Answer:") for item in items]
    scores, routes = scores_as_served(
        model, tokenizer, Gate.load(files.gate), prompts, [continuations(item, "cloze") for item in items], "prism"
    )
    predicted = [max(range(4), key=values.__getitem__) for values in scores]
    accuracy = sum(choice == item.answer for choice, item in zip(predicted, items)) / len(items)
    include = write_tasks(tmp_path, items, [prompt.text for prompt in prompts], ["Write a haiku about rain."])
    results = run_local_completions(server.url, "prism", include, ["prism_capitals"], max_length=8000, batch_size=1)
    assert results["results"]["prism_capitals"]["acc,none"] == pytest.approx(accuracy)
    for sample, values in zip(logged(results, "prism_capitals"), scores):
        assert [resp[0][0] for resp in sample["resps"]] == pytest.approx(values, abs=1e-4)
    print(
        f"lm-eval accuracy {accuracy:.3f} on {len(items)} items; routed options "
        f"{sum(routed for option in routes for _, routed in option)} of {4 * len(items)}"
    )
