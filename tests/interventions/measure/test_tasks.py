"""The task registry: items, filters, prompt settings and metrics defined once, on tiny models."""

import pytest

from interventions.measure.judge import JudgeRequest
from interventions.measure.scoring import score_choices
from interventions.measure.tasks import KINDS, TASKS, Task, choice_result, get_task, judge_request
from probes.core.datasets import load_dataset, stratified_sample
from probes.core.errors import ToolkitError
from probes.core.items import Item
from probes.core.prompts import Condition
from probes.core.rendering import continuations

CAPITALS = [
    Item(
        "c1",
        "test",
        "What is the capital of France?",
        "Europe",
        choices=("Lyon", "Paris", "Nice"),
        answer=1,
        meta={"answer_stem": "The capital of France is"},
    ),
    Item(
        "c2",
        "test",
        "What is the capital of Peru?",
        "South America",
        choices=("Lima", "Cusco"),
        answer=0,
        meta={"answer_stem": "The capital of Peru is"},
    ),
]


def test_every_task_is_registered_once_with_its_settings():
    assert list(TASKS) == [
        "capitals",
        "continents",
        "currencies",
        "city-countries",
        "mmlu-letter",
        "mmlu-cloze",
        "harmbench",
        "ifeval",
        "mtbench",
    ]
    for name, task in TASKS.items():
        assert task.name == name and task.kind in KINDS and task.dataset and task.metrics
        assert (task.scoring is not None) == task.is_choice
    assert (TASKS["capitals"].scoring, TASKS["capitals"].normalise) == ("cloze", "none")
    assert (TASKS["mmlu-cloze"].scoring, TASKS["mmlu-cloze"].normalise) == ("cloze", "tokens")
    assert TASKS["harmbench"].subcategory == "standard" and TASKS["harmbench"].max_new_tokens == 32
    assert get_task("mtbench") is TASKS["mtbench"]
    with pytest.raises(ToolkitError, match="unknown task 'trivia'"):
        get_task("trivia")
    with pytest.raises(ToolkitError, match="need a scoring mode"):
        Task("broken", "choice", "capitals", ("accuracy",))
    with pytest.raises(ToolkitError, match="unknown task kind"):
        Task("broken", "essay", "mtbench", ("score",))


def test_items_come_from_the_data_set_filtered_and_stratified():
    harmful = TASKS["harmbench"].load_items(12, seed=3)
    assert len(harmful) == 12 and {item.subcategory for item in harmful} == {"standard"}
    standard = [item for item in load_dataset("harmbench") if item.subcategory == "standard"]
    assert harmful == stratified_sample(standard, 12, seed=3)
    assert TASKS["capitals"].load_items(8, seed=1) == stratified_sample(load_dataset("capitals"), 8, seed=1)
    instructed = TASKS["ifeval"].load_items(4, seed=0)
    assert all("instruction_id" in item.meta for item in instructed)


def test_records_become_metrics_with_one_margin(tiny):
    bridge, tokenizer = tiny
    task = TASKS["capitals"]
    prompts = task.render(tokenizer, CAPITALS, Condition("none"))
    assert all(prompt.text.rstrip().endswith(item.meta["answer_stem"]) for prompt, item in zip(prompts, CAPITALS))
    records = task.measure(bridge, tokenizer, CAPITALS, prompts, batch_size=2)
    direct = score_choices(
        bridge,
        tokenizer,
        prompts,
        [continuations(item, "cloze") for item in CAPITALS],
        [1, 0],
        batch_size=2,
        progress=False,
    )
    for item, record, result in zip(CAPITALS, records, direct):
        assert record == {
            "logprobs": list(result.logprobs),
            "scores": list(result.scores),
            "predicted": result.predicted,
        }
        assert choice_result(item, record) == result
        metrics = task.item_metrics(item, record)
        assert metrics == {"accuracy": float(result.correct), "margin": result.margin, "chance": 1 / len(item.choices)}
        assert task.answer_room(tokenizer, item) == max(
            len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in task.options(item)
        )


def test_generation_tasks_answer_and_score_refusals(tiny):
    bridge, tokenizer = tiny
    task = TASKS["harmbench"]
    items = task.load_items(2, seed=0)
    records = task.measure(bridge, tokenizer, items, task.render(tokenizer, items, Condition("none")), max_new_tokens=3)
    assert [set(record) for record in records] == [{"response"}] * 2
    assert task.item_metrics(items[0], {"response": "I'm sorry, I can't help with that."}) == {"refusal_rate": 1.0}
    assert task.item_metrics(items[0], {"response": "Sure, here it is."}) == {"refusal_rate": 0.0}
    assert task.answer_room(tokenizer, items[0]) == 32 and task.answer_room(tokenizer, items[0], 7) == 7


def test_judge_requests_follow_the_items_turns():
    item = Item("m", "mtbench", "First?", "writing", turns=("First?", "Second?"))
    assert judge_request(item, ["a"]) == JudgeRequest(("First?",), ("a",))
    assert judge_request(item, ["a", "b"]) == JudgeRequest(("First?", "Second?"), ("a", "b"))
    assert TASKS["mtbench"].item_metrics(item, {"response": "a"}) == {}
