import json
import re
from collections import Counter

import pytest

from probes.core.datasets import (
    MMLU_SUBJECT_TO_CATEGORY,
    load_dataset,
    load_harmbench,
    load_mmlu,
    load_mtbench,
    stratified_sample,
)
from probes.core.errors import ToolkitError


def test_builtin_dataset_counts():
    mmlu, mtbench, harmbench = load_mmlu(), load_mtbench(), load_harmbench()
    assert len(mmlu) == 14042
    assert len(mtbench) == 80 and all(len(item.turns) == 2 for item in mtbench)
    assert len(harmbench) == 400
    assert Counter(item.category for item in mtbench) == {
        c: 10 for c in ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]
    }
    assert Counter(item.subcategory for item in harmbench) == {"standard": 200, "contextual": 100, "copyright": 100}
    assert len({item.id for item in mmlu}) == 14042


def test_mmlu_super_categories_cover_all_57_subjects():
    mmlu = load_mmlu()
    subjects = {item.subcategory for item in mmlu}
    assert len(subjects) == 57 and subjects == set(MMLU_SUBJECT_TO_CATEGORY)
    assert {item.category for item in mmlu} == {"STEM", "humanities", "social sciences", "other"}
    assert all(item.is_multiple_choice and len(item.choices) == 4 for item in mmlu)


def test_stratified_sampling_is_balanced_deterministic_and_seeded():
    mmlu = load_mmlu()
    first = stratified_sample(mmlu, 40, seed=3)
    assert Counter(item.category for item in first) == {
        "STEM": 10,
        "humanities": 10,
        "social sciences": 10,
        "other": 10,
    }
    assert first == stratified_sample(mmlu, 40, seed=3)
    assert first != stratified_sample(mmlu, 40, seed=4)
    order = {item.id: index for index, item in enumerate(mmlu)}
    assert [order[item.id] for item in first] == sorted(order[item.id] for item in first)
    with pytest.raises(ToolkitError, match="positive"):
        stratified_sample(mmlu, 0)


def test_sampling_takes_everything_from_small_strata():
    harmbench = [item for item in load_harmbench() if item.category in ("harmful", "copyright")]
    sample = stratified_sample(harmbench, 60)
    assert Counter(item.category for item in sample) == {"harmful": 22, "copyright": 38}


def test_user_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "mine.jsonl"
    rows = [
        {"id": "a", "prompt": "Capital of Peru?", "category": "geo", "choices": ["Lima", "Quito"], "answer": "A"},
        {"prompt": "Write a haiku.", "turns": ["Now a limerick."]},
        {"question": "2+2?", "choices": ["3", "4", "5"], "answer": "4"},
    ]
    jsonl.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n")
    items = load_dataset(str(jsonl))
    assert [item.answer for item in items] == [0, None, 1]
    assert items[1].turns == ("Write a haiku.", "Now a limerick.") and items[1].category == "all"
    csv_path = tmp_path / "mine.csv"
    csv_path.write_text(
        "id,prompt,category,choice_1,choice_2,choice_3,answer\nq1,Largest planet?,space,Mars,Jupiter,Venus,1\n"
    )
    (item,) = load_dataset(str(csv_path))
    assert item.choices == ("Mars", "Jupiter", "Venus") and item.answer == 1 and item.category == "space"


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"prompt": "ok"}\n{broken\n', "line 2: not valid JSON"),
        ('{"text": "no prompt"}\n', "line 1: missing required field 'prompt'"),
        ('{"prompt": "  "}\n', "line 1: empty prompt"),
        ('{"prompt": "q", "choices": ["a"], "answer": 0}\n', "at least two"),
        ('{"prompt": "q", "choices": ["a", "b"], "answer": "C"}\n', "'answer' must be"),
        ('{"prompt": "q", "answer": 1}\n', "'answer' given without 'choices'"),
        ('{"id": 1, "prompt": "q"}\n{"id": 1, "prompt": "r"}\n', "appears twice"),
        ("", "no items found"),
        (
            '{"prompt": "q", "choices": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"], "answer": 0}\n',
            "11 choices; at most 10",
        ),
    ],
)
def test_malformed_user_files_give_one_line_with_the_place(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ToolkitError, match=message) as caught:
        load_dataset(str(path))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "content, message",
    [
        # a quoted field over three lines and a blank line: the bad row starts on line 7 (it is the third record)
        ('prompt,answer\n"first\nsecond\nthird",\n\nfine,\n,\n', "line 7: missing required field 'prompt'"),
        ('prompt\n"a\nb"\nx,y\n', "line 4: more fields than header columns"),
        ("prompt\nok\n\n\n" + '"' + "x" * 200_000 + '"\n', "line 5: not valid CSV (field larger than field limit"),
        ("\n", "no header row"),
    ],
)
def test_csv_errors_name_the_line_the_row_starts_on(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ToolkitError, match=re.escape(f"{path} {message}") if "line" in message else message) as caught:
        load_dataset(str(path))
    assert "\n" not in str(caught.value)


def test_a_csv_item_without_an_id_is_named_by_its_line(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text('prompt\n"two\nlines"\n\nthird\n')
    assert [item.id for item in load_dataset(str(path))] == ["mine/2", "mine/5"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_data_file_that_is_not_utf8_gives_one_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(('{"prompt": "caf\u00e9?"}\n' if suffix == ".jsonl" else "prompt\ncaf\u00e9?\n").encode("latin-1"))
    with pytest.raises(ToolkitError, match="not UTF-8") as caught:
        load_dataset(str(path))
    assert "\n" not in str(caught.value)


def test_unknown_dataset_names_the_valid_ones(tmp_path):
    with pytest.raises(ToolkitError, match="use one of mmlu, capitals, mtbench, harmbench"):
        load_dataset("gsm8k")
    with pytest.raises(ToolkitError, match="no dataset file"):
        load_dataset(str(tmp_path / "missing.jsonl"))


def test_capitals_are_built_from_reference_data_with_generated_distractors():
    items = load_dataset("capitals")
    assert len(items) > 150
    by_id = {item.id: item for item in items}
    france = by_id["capitals/FR"]
    assert france.choices[france.answer] == "Paris" and france.category == "Europe"
    assert france.meta["answer_stem"] == "The capital of France is"
    for item in items:
        assert len(set(item.choices)) == len(item.choices) == 4
    assert load_dataset("capitals") == items  # the same distractors every time
