"""Prompt formats: the plain layout is what every prompt was before formats; qa labels question and answer."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoTokenizer

from interventions.measure.tasks import TASKS
from probes.core.errors import ToolkitError
from probes.core.formats import FORMATS, get_format
from probes.core.items import Item
from probes.core.prompts import Condition, render, token_groups

QUERY = "What is the capital of Peru?"
CAPITAL = Item(
    "capitals/PE",
    "capitals",
    QUERY,
    "Americas",
    choices=("Lima", "Quito", "Bogota", "Caracas"),
    answer=0,
    meta={"answer_stem": "The capital of Peru is"},
)


@pytest.fixture(scope="module")
def chat(tiny_llama_directory):
    return AutoTokenizer.from_pretrained(tiny_llama_directory)


@pytest.fixture(scope="module")
def base(chat):
    plain = copy.deepcopy(chat)
    plain.chat_template = None
    return plain


def test_base_model_layouts(base):
    math = Condition("math", "min", "user")
    plain = render(base, QUERY, math, answer_prefix="The capital of Peru is")
    qa = render(base, QUERY, math, answer_prefix="The capital of Peru is", prompt_format="qa")
    assert (
        plain.text == f"You are a mathematician.\n\n{QUERY}\n\nThe capital of Peru is"
        and plain.prompt_format == "plain"
    )
    assert qa.text == f"You are a mathematician.\n\nQuestion: {QUERY}\nAnswer: The capital of Peru is"
    assert qa.prompt_format == "qa" and qa.text[slice(*qa.query_span)] == QUERY
    assert qa.text[slice(*qa.persona_span)] == "You are a mathematician."
    none = render(base, QUERY, Condition(), answer_prefix="Answer:", prompt_format="qa")
    assert none.text == f"Question: {QUERY}\nAnswer:"  # the task's own "Answer:" is not labelled twice


def test_chat_model_labels_the_user_message_and_the_assistant_turn(chat):
    qa = render(
        chat, QUERY, Condition("math", "min", "system"), answer_prefix="The capital of Peru is", prompt_format="qa"
    )
    plain = render(chat, QUERY, Condition("math", "min", "system"), answer_prefix="The capital of Peru is")
    assert f"user\nQuestion: {QUERY}<|im_end|>" in qa.text and qa.text.endswith(
        "assistant\nAnswer: The capital of Peru is"
    )
    assert qa.text.replace("Question: ", "").replace("Answer: ", "") == plain.text
    groups = token_groups(chat, qa)
    assert groups["persona"] and groups["query"] and groups["query"][0] > groups["persona"][-1]


def test_every_knowledge_task_renders_in_every_format(base):
    mmlu = Item("mmlu/x/1", "mmlu", "2 + 2 = ?", "STEM", choices=("3", "4", "5", "6"), answer=1)
    for name, item in (("capitals", CAPITAL), ("mmlu-letter", mmlu), ("mmlu-cloze", mmlu)):
        texts = {fmt: TASKS[name].render(base, [item], Condition(), prompt_format=fmt)[0].text for fmt in FORMATS}
        assert texts["plain"] != texts["qa"] and texts["qa"].startswith("Question: ") and "\nAnswer:" in texts["qa"]
        assert texts["qa"].count("Answer:") == 1
    assert TASKS["mmlu-letter"].render(base, [mmlu], Condition(), prompt_format="qa")[0].text == (
        "Question: 2 + 2 = ?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    )


def test_unknown_format_is_one_line(base):
    with pytest.raises(ToolkitError, match="unknown prompt format 'chatml': use any of plain, qa"):
        render(base, QUERY, prompt_format="chatml")
    with pytest.raises(ToolkitError, match="unknown prompt format"):
        get_format("")
