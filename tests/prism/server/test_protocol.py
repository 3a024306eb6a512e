"""The OpenAI wire format: chat messages become the prompts the gate was trained on; bad settings are refused in one
line naming the parameter."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from prism.server.prompts import Budget, chat_prompt, completion_prompts, encode_within, fit_context
from prism.server.protocol import ApiError, parse_body, settings
from probes.core.prompts import Condition, encode, render, render_conversation, render_messages


@pytest.fixture(scope="module")
def tokenizer(tiny_model_directory):
    return AutoTokenizer.from_pretrained(tiny_model_directory)


def test_a_lone_user_message_is_the_prompt_prism_route_answers(tokenizer):
    query = "What is the capital of Peru?"
    ids = chat_prompt(tokenizer, {"messages": [{"role": "user", "content": query}]})
    assert ids == encode(tokenizer, render(tokenizer, query, Condition("none")))
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of Peru?"}]
    assert chat_prompt(tokenizer, {"messages": [{"role": "user", "content": parts}]}) == ids


def test_system_messages_and_conversations_go_through_the_chat_template(tokenizer):
    system = {"role": "system", "content": "You are terse."}
    ids = chat_prompt(tokenizer, {"messages": [system, {"role": "user", "content": "Hi?"}]})
    assert ids == encode(tokenizer, render_messages(tokenizer, "You are terse.", "Hi?"))
    developer = chat_prompt(
        tokenizer, {"messages": [{**system, "role": "developer"}, {"role": "user", "content": "Hi?"}]}
    )
    assert developer == ids
    turns = [
        system,
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a river."},
    ]
    expected = render_conversation(
        tokenizer, render_messages(tokenizer, "You are terse.", "Hi?"), "Hello.", "Name a river."
    )
    assert chat_prompt(tokenizer, {"messages": turns}) == encode(tokenizer, expected)
    text = tokenizer.decode(chat_prompt(tokenizer, {"messages": turns}))
    assert text.index("Hi?") < text.index("Hello.") < text.index("Name a river.")


@pytest.mark.parametrize(
    "messages, param, message",
    [
        (None, "messages", "messages must be a non-empty list"),
        ([], "messages", "messages must be a non-empty list"),
        ("hello", "messages", "messages must be a non-empty list"),
        (
            [{"role": "wizard", "content": "hi"}],
            "messages[0].role",
            "must be one of system, developer, user, assistant",
        ),
        ([{"role": "user", "content": "   "}], "messages[0].content", "must be a non-empty string"),
        ([{"role": "user"}], "messages[0].content", "must be a non-empty string"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content",
            "only hold text",
        ),
        (["hi"], "messages[0]", "must be an object"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "messages", "must alternate"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            "messages",
            "end with a user message",
        ),
    ],
)
def test_bad_messages_are_refused_naming_the_parameter(tokenizer, messages, param, message):
    with pytest.raises(ApiError, match=message) as refused:
        chat_prompt(tokenizer, {"messages": messages} if messages is not None else {})
    assert refused.value.status == 400 and refused.value.param == param and "\n" not in refused.value.message


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"temperature": -0.1}, "temperature", r"temperature must be in \[0, 2\], got -0.1"),
        ({"temperature": 2.5}, "temperature", "temperature must be in"),
        ({"temperature": "hot"}, "temperature", "temperature must be a number"),
        ({"top_p": 0}, "top_p", r"top_p must be in \(0, 1\], got 0"),
        ({"top_p": 1.5}, "top_p", "top_p must be in"),
        ({"max_tokens": 0}, "max_tokens", r"max_tokens must be at least 1 \(0 only with echo\), got 0"),
        ({"max_tokens": 2.5}, "max_tokens", "max_tokens must be an integer"),
        ({"max_completion_tokens": -3}, "max_completion_tokens", "must be at least 1"),
        ({"n": 2}, "n", "n must be 1"),
        ({"seed": 2**70}, "seed", "seed must be a 64-bit integer"),
        ({"seed": True}, "seed", "seed must be an integer"),
        ({"stop": ["a", ""]}, "stop", "stop must be"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"stream": "yes"}, "stream", "stream must be true or false"),
        ({"model": 3}, "model", "model must be a string"),
        ({"presence_penalty": 0.5}, "presence_penalty", "presence_penalty is not supported by this server"),
        ({"logprobs": 1}, "logprobs", "logprobs must be true or false"),
        ({"top_logprobs": 3}, "top_logprobs", "top_logprobs needs logprobs: true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", r"top_logprobs must be in \[0, 20\]"),
        ({"logprobs": True, "stream": True}, "stream", "not supported with stream"),
        ({"tools": [{"type": "function"}]}, "tools", "tools is not supported"),
    ],
)
def test_bad_settings_are_refused_naming_the_parameter(body, param, message):
    with pytest.raises(ApiError, match=message) as refused:
        settings(body)
    assert refused.value.status == 400 and refused.value.param == param


@pytest.mark.parametrize(
    "body, param, message",
    [
        ({"logprobs": 21}, "logprobs", r"logprobs must be in \[0, 20\], got 21"),
        ({"logprobs": -1}, "logprobs", "logprobs must be in"),
        ({"logprobs": True}, "logprobs", "logprobs must be an integer"),
        ({"logprobs": "5"}, "logprobs", "logprobs must be an integer"),
        ({"echo": "yes"}, "echo", "echo must be true or false"),
        ({"max_tokens": 0}, "max_tokens", "0 only with echo"),
        ({"echo": True, "max_tokens": -1}, "max_tokens", "must be at least 1"),
        ({"echo": True, "stream": True}, "stream", "not supported with stream"),
    ],
)
def test_bad_completion_logprobs_are_refused_naming_the_parameter(body, param, message):
    with pytest.raises(ApiError, match=message) as refused:
        settings(body, chat=False)
    assert refused.value.status == 400 and refused.value.param == param


def test_completions_take_logprobs_echo_and_max_tokens_0():
    asked = settings({"logprobs": 5, "echo": True, "max_tokens": 0, "temperature": 0}, chat=False)
    assert (asked.logprobs, asked.echo, asked.max_tokens) == (5, True, 0)
    assert settings({"logprobs": True, "top_logprobs": 3}).logprobs == 3 and settings({"logprobs": True}).logprobs == 0
    assert settings({"logprobs": False}).logprobs is None and settings({}, chat=False).logprobs is None


def test_settings_default_as_openai_does_and_read_what_is_given():
    default = settings({})
    assert (default.temperature, default.top_p, default.max_tokens, default.seed, default.stop, default.stream) == (
        1.0,
        1.0,
        None,
        None,
        (),
        False,
    )
    given = settings(
        {
            "temperature": 0,
            "top_p": 0.5,
            "max_tokens": 7,
            "seed": -4,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
            "model": "base",
            "presence_penalty": 0,
            "logprobs": False,
            "tools": [],
            "user": "someone",
        }
    )  # what asks for nothing, and what is only a label, is fine
    assert (
        given.temperature,
        given.top_p,
        given.max_tokens,
        given.seed,
        given.stop,
        given.stream,
        given.include_usage,
        given.model,
    ) == (0.0, 0.5, 7, -4, ("\n",), True, True, "base")


def test_malformed_bodies_prompts_and_contexts_are_refused(tokenizer):
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        with pytest.raises(ApiError, match="JSON") as refused:
            parse_body(raw)
        assert refused.value.code == "invalid_json"
    ids = tokenizer("Once upon")["input_ids"]
    assert completion_prompts(tokenizer, {"prompt": "Once upon"}) == [(ids, "Once upon")]
    assert completion_prompts(tokenizer, {"prompt": ["Once upon", "a"]})[0] == (ids, "Once upon")
    assert completion_prompts(tokenizer, {"prompt": ids}) == [(ids, None)]
    assert completion_prompts(tokenizer, {"prompt": [ids, [5]]}) == [(ids, None), ([5], None)]
    for body in (
        {},
        {"prompt": ""},
        {"prompt": ["a", ""]},
        {"prompt": 5},
        {"prompt": [[1], "a", []]},
        {"prompt": []},
        {"prompt": [True]},
    ):
        with pytest.raises(ApiError, match="prompt must be a non-empty string, a list of them"):
            completion_prompts(tokenizer, body)
    with pytest.raises(ApiError, match="outside the vocabulary"):
        completion_prompts(tokenizer, {"prompt": [[1, len(tokenizer)]]})
    assert fit_context(10, None, 256, 100) == 90 and fit_context(10, 50, 256, 100) == 50
    with pytest.raises(
        ApiError, match="the prompt has 10 tokens plus max_tokens 91 but the model's context is 100"
    ) as refused:
        fit_context(10, 91, 256, 100)
    assert refused.value.code == "context_length_exceeded"
    with pytest.raises(ApiError, match="the prompt has 120 tokens but"):
        fit_context(120, None, 256, 100)


def test_a_prompt_is_tokenised_only_as_far_as_the_context_needs(tokenizer):
    text = ("#" * 64 + " ") * 40 + "end"  # few tokens for many characters: longer than the first window
    ids = tokenizer(text)["input_ids"]
    fits = Budget.of(tokenizer, len(ids))
    assert len(text) > 8 * (fits.n_ctx + 1)
    assert encode_within(tokenizer, text, fits, add_special_tokens=True, param="prompt") == ids
    with pytest.raises(ApiError, match="the prompt has more than 200 tokens, the model's context") as refused:
        encode_within(tokenizer, "word " * 2000, Budget.of(tokenizer, 200), add_special_tokens=True, param="prompt")
    assert refused.value.code == "context_length_exceeded" and refused.value.param == "prompt"
    with pytest.raises(ApiError, match="more than the model's context of 2 tokens can hold"):
        encode_within(
            tokenizer,
            "x" * (2 * fits.longest_token + 1),
            Budget.of(tokenizer, 2),
            add_special_tokens=True,
            param="prompt",
        )
