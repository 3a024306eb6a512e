"""Log-probabilities from ``prism serve``: a completion's echoed prompt scores exactly what the toolkit scores
(``score_choices``), in modes base and prism, alone, in a batch of prompts and under concurrent requests; the
completions and chat formats; the tokenizer endpoints; bad values refused in one line."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from lm_eval.models.openai_completions import LocalCompletionsAPI

from prism.adapters import load_adapter
from prism.gate import Gate
from prism.persona_path import GATED
from prism.server.launch import served_files
from probes.core.models import load_model
from probes.core.prompts import Condition, encode, render

OPTIONS = [" Paris", " rain on the roof", " 42", " the capital"]


@pytest.fixture(scope="module")
def reference(tiny_prism):
    """The toolkit's own copy of the served model, with the gated adapter and the gate."""
    model_name, files = served_files(tiny_prism)
    model, tokenizer = load_model(model_name)
    load_adapter(model, GATED, files.adapter)
    return model, tokenizer, Gate.load(files.gate)


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def _echo(server, prompts: list[list[int]], mode: str) -> list[dict]:
    """lm-eval's loglikelihood request for a batch of token-id prompts: the choices, in order."""
    response = _post(
        server,
        "/v1/completions",
        {
            "model": mode,
            "prompt": prompts,
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": 1,
            "echo": True,
            "seed": 1234,
        },
    )
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [choice["index"] for choice in choices] == list(range(len(prompts)))
    return choices


def test_echoed_logprobs_equal_the_toolkits_scores_alone_batched_and_concurrent(
    tiny_server, reference, queries, scores_as_served
):
    model, tokenizer, gate = reference
    prompts = [render(tokenizer, query, Condition("none"), answer_prefix="Answer:") for query in queries]
    contexts = [encode(tokenizer, prompt) for prompt in prompts]
    pairs = [(p, o) for p in range(len(prompts)) for o in range(len(OPTIONS))]
    full = [contexts[p] + tokenizer(OPTIONS[o], add_special_tokens=False)["input_ids"] for p, o in pairs]

    def summed(choice: dict, p: int) -> float:
        return sum(choice["logprobs"]["token_logprobs"][len(contexts[p]) : -1])

    for mode in ("base", "prism"):
        scores, routes = scores_as_served(model, tokenizer, gate, prompts, [OPTIONS] * len(prompts), mode)
        assert {routes[p][o][1] for p, o in pairs} == {True, False}  # both routes among the requests
        alone = [_echo(tiny_server, [ids], mode)[0] for ids in full]
        batched = _echo(tiny_server, full, mode)
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda ids: _echo(tiny_server, [ids], mode)[0], full))
        for (p, o), ids, one, in_batch, concurrent in zip(pairs, full, alone, batched, together):
            probability, routed = routes[p][o]
            for got in (one, in_batch, concurrent):
                assert summed(got, p) == pytest.approx(scores[p][o], abs=1e-4)
                assert got["prism"]["route"] == ("persona" if mode == "prism" and routed else "base")
                assert got["prism"]["gate_probability"] == pytest.approx(probability, abs=1e-5)
                assert len(got["logprobs"]["token_logprobs"]) == len(ids) + 1  # every prompt token, then one generated
                assert got["logprobs"]["token_logprobs"][0] is None and got["logprobs"]["top_logprobs"][0] is None


def test_lm_evals_parser_reads_the_answers(tiny_server, reference):
    _, tokenizer, _ = reference
    context = tokenizer("The capital of France is")["input_ids"]
    greedy = _post(
        tiny_server,
        "/v1/completions",
        {"model": "base", "prompt": [context], "max_tokens": 1, "temperature": 0, "logprobs": 1},
    )
    token = greedy.json()["choices"][0]["logprobs"]["tokens"][0]
    continuation = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(token)) if token else []
    prompts = [context + continuation, context + tokenizer(" zebra", add_special_tokens=False)["input_ids"]]
    response = _post(
        tiny_server,
        "/v1/completions",
        {"model": "base", "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1, "echo": True},
    )
    parsed = LocalCompletionsAPI.parse_logprobs(response.json(), ctxlens=[len(context)] * 2)
    assert parsed[0][1] is True  # the server's own greedy continuation is greedy
    assert all(value < 0 for value, _ in parsed)


def test_completions_as_openai_and_vllm_define_them(tiny_server, reference):
    _, tokenizer, _ = reference
    text = "Once upon a time"
    ids = tokenizer(text)["input_ids"]
    one = _post(
        tiny_server,
        "/v1/completions",
        {"model": "base", "prompt": text, "max_tokens": 3, "temperature": 0, "logprobs": 3},
    ).json()["choices"][0]
    assert len(one["logprobs"]["tokens"]) == 3 and "".join(one["logprobs"]["tokens"]) == one["text"]
    for value, top in zip(one["logprobs"]["token_logprobs"], one["logprobs"]["top_logprobs"]):
        assert value == max(top.values()) and 3 <= len(top) <= 4  # greedy: the token is the most likely one
    offsets = one["logprobs"]["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)
    echoed = _post(
        tiny_server,
        "/v1/completions",
        {"model": "base", "prompt": [text, ids], "max_tokens": 3, "temperature": 0, "echo": True},
    ).json()
    assert [choice["text"] for choice in echoed["choices"]] == [text + one["text"]] * 2
    assert echoed["usage"]["prompt_tokens"] == 2 * len(ids)
    prompt_only = _post(
        tiny_server, "/v1/completions", {"model": "base", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 0}
    ).json()
    choice = prompt_only["choices"][0]
    assert choice["text"] == text and prompt_only["usage"]["completion_tokens"] == 0
    assert len(choice["logprobs"]["token_logprobs"]) == len(ids) and choice["finish_reason"] == "length"
    assert "".join(choice["logprobs"]["tokens"]) == text


def test_chat_logprobs_in_openais_chat_format(tiny_server, openai_client):
    client = openai_client(tiny_server)
    answer = client.chat.completions.create(
        model="prism",
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = answer.choices[0].logprobs.content
    assert 1 <= len(content) <= 5
    for token in content:
        assert len(token.top_logprobs) == 2 and token.logprob == token.top_logprobs[0].logprob
        assert bytes(token.bytes).decode("utf-8", "replace") == token.token
    assert "".join(token.token for token in content).strip().startswith(answer.choices[0].message.content[:3])
    plain = client.chat.completions.create(
        model="prism", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=5, temperature=0
    )
    assert plain.choices[0].logprobs is None and plain.choices[0].message.content == answer.choices[0].message.content


def test_the_tokenizer_endpoints_answer_as_vllms(tiny_server, reference):
    _, tokenizer, _ = reference
    info = httpx.get(tiny_server.url + "/tokenizer_info").json()
    assert info["eos_token"] == tokenizer.eos_token and info["model_max_length"] == 512 and info["chat_template"]
    tokens = _post(tiny_server, "/tokenize", {"prompt": "Hello world", "add_special_tokens": False}).json()
    assert tokens["tokens"] == tokenizer("Hello world", add_special_tokens=False)["input_ids"] and tokens["count"] == 2
    assert _post(tiny_server, "/detokenize", {"tokens": tokens["tokens"]}).json() == {"prompt": "Hello world"}
    chat = _post(tiny_server, "/tokenize", {"messages": [{"role": "user", "content": "Hi?"}]}).json()["tokens"]
    assert chat == encode(tokenizer, render(tokenizer, "Hi?", Condition("none")))
    assert _post(tiny_server, "/detokenize", {"tokens": [-1]}).status_code == 400


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "hi", "logprobs": 21}, r"logprobs must be in [0, 20], got 21"),
        ({"prompt": "hi", "logprobs": "all"}, "logprobs must be an integer"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens must be at least 1 (0 only with echo)"),
        ({"prompt": list(range(600)), "echo": True, "max_tokens": 0, "logprobs": 1}, "the prompt has 600 tokens"),
        ({"prompt": "word " * 600, "echo": True, "max_tokens": 1, "logprobs": 1}, "the model's context is 512 tokens"),
        ({"prompt": [[1, 2], "text"], "stream": True}, "stream takes one prompt"),
        ({"prompt": [[1, 99999999]]}, "outside the vocabulary"),
    ],
)
def test_bad_logprobs_and_echo_requests_get_one_line_400s(tiny_server, body, message):
    response = _post(tiny_server, "/v1/completions", {"model": "base", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"] and "\n" not in error["message"]
    assert _post(tiny_server, "/v1/completions", {"model": "base", "prompt": "hi", "max_tokens": 1}).status_code == 200
